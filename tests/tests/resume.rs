//! Exact resumption: a run SIGKILLed mid-stage and resumed with `--resume` ends with the same
//! bytes in model.safetensors and ema.safetensors as the same run left alone — through a
//! resolution change, gradient accumulation, clipping, EMA and the ET++ replay buffer.

mod common;
use common::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Three stages at 16, 24 and 32 px; the first replays from a buffer.
const SCHEDULE: &str = r#"
name = "resume-test"
[[stage]]
fraction = 0.5
magnitude = 1
compute = 1
replay = { times = 2, size = 4, split = 2 }
[[stage]]
fraction = 0.75
magnitude = 3
compute = 1
[[stage]]
resolution = 32
magnitude = 5
compute = 1
"#;

fn args(data: &str, schedule: &str, out: &str) -> Vec<String> {
    [
        "--data", data, "--schedule", schedule, "--epochs", "2", "--batch-size", "4", "--effective-batch", "8", "--clip-grad", "1.0",
        "--ema-decay", "0.9", "--mixup", "0.8", "--cutmix", "1.0", "--save-every-steps", "3", "--log-every", "1", "--deterministic",
        "--compute-threads", "2", "--out", out,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn read(p: &std::path::Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn sigkill_mid_stage_then_resume_is_bit_identical() {
    let tmp = TempDir::new("resume");
    mini_dataset(&tmp.join("data"), &["airplane", "cat", "ship"], 8);
    std::fs::write(tmp.join("s.toml"), SCHEDULE).unwrap();
    let (data, schedule) = (tmp.s("data"), tmp.s("s.toml"));

    let a = args(&data, &schedule, &tmp.s("a"));
    let o = run("et-train", &a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_ok(&o, "uninterrupted et-train");
    let plan = stdout(&o);
    assert!(plan.contains("replay x2"), "{plan}");

    // Stages of 8, 4 and 2 steps; checkpoints every 3 steps and at stage ends. Killed as
    // soon as the first checkpoint appears (step 3, or step 6 on a slow start): mid-stage,
    // with a replay buffer, mid-epoch. A run that got past the stage first is tried again.
    let b = args(&data, &schedule, &tmp.s("b"));
    let mut killed_at = None;
    for _attempt in 0..3 {
        let _ = std::fs::remove_dir_all(tmp.join("b"));
        let mut child = Command::new(bin("et-train")).args(&b).current_dir(repo_root()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn");
        let latest = tmp.join("b/checkpoints/latest");
        let t0 = Instant::now();
        while !latest.exists() {
            assert!(child.try_wait().unwrap().is_none(), "et-train ended before its first checkpoint");
            assert!(t0.elapsed() < Duration::from_secs(300), "timed out waiting for a checkpoint");
            std::thread::sleep(Duration::from_millis(1));
        }
        child.kill().expect("SIGKILL"); // Child::kill sends SIGKILL on Unix.
        assert!(!child.wait().unwrap().success());
        let name = std::fs::read_to_string(&latest).unwrap().trim().to_string();
        let state: serde_json::Value = serde_json::from_slice(&read(&tmp.join("b/checkpoints").join(&name).join("state.json"))).unwrap();
        if state["stage"] == 0 && state["stage_step"].as_u64().unwrap() > 0 {
            killed_at = Some((name, state));
            break;
        }
    }
    let (name, state) = killed_at.expect("three runs got past the first stage before the kill");
    let step = state["step"].as_u64().unwrap();
    assert!(step == 3 || step == 6, "{name}");
    assert_eq!(state["stage_step"], step, "the checkpoint is in the middle of the first stage");
    assert!(state["next_batch"].as_u64().unwrap() > 0, "... and in the middle of a loader epoch");
    for f in ["model.safetensors", "optimizer.safetensors", "ema.safetensors", "replay.safetensors", "state.json"] {
        assert!(tmp.join("b/checkpoints").join(&name).join(f).is_file(), "{f} in the checkpoint");
    }

    let o = run("et-train", &["--resume", &tmp.s("b")]);
    assert_ok(&o, "et-train --resume");
    assert!(stdout(&o).contains("resumed from") && stdout(&o).contains(&format!("at step {step}")), "{}", stdout(&o));
    for f in ["model.safetensors", "ema.safetensors"] {
        assert!(read(&tmp.join("a").join(f)) == read(&tmp.join("b").join(f)), "{f} differs between the uninterrupted and the resumed run");
    }
    // The log after the checkpoint was cut and written again: same step records.
    let steps = |dir: &str| -> Vec<(u64, f64)> {
        std::fs::read_to_string(tmp.join(dir).join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v["event"] == "step")
            .map(|v| (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap()))
            .collect()
    };
    assert_eq!(steps("a"), steps("b"));

    // New settings, or no checkpoint, are refused cleanly.
    let o = run("et-train", &["--resume", &tmp.s("b"), "--lr", "1"]);
    assert_clean_failure(&o, "et-train", "drop --lr");
    let o = run("et-train", &["--resume", &tmp.s("nothing-here")]);
    assert_clean_failure(&o, "et-train", "no checkpoint");
}

/// Preparing the next micro-batch during the current one (the default) and copying it on
/// the upload thread (what a GPU does; `ET_PREFETCH=thread` forces it on the CPU) change
/// nothing: the same batches in the same order, so the same weights, EMA and logged losses
/// and input shapes as preparing each micro-batch when its step needs it (`ET_PREFETCH=0`).
/// Mid-stage checkpoints (every 3 steps) interleave with the look-ahead; their resumption
/// is the test above.
#[test]
fn preparing_batches_ahead_changes_nothing() {
    let tmp = TempDir::new("prefetch");
    mini_dataset(&tmp.join("data"), &["airplane", "cat", "ship"], 8);
    std::fs::write(tmp.join("s.toml"), SCHEDULE).unwrap();
    let (data, schedule) = (tmp.s("data"), tmp.s("s.toml"));
    // Everything a run logs, apart from times and its own paths.
    let log = |dir: &str| -> Vec<serde_json::Value> {
        std::fs::read_to_string(tmp.join(dir).join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v["event"] != "plan")
            .map(|mut v| {
                for k in ["img_per_s", "time_s", "seconds", "val_seconds", "stage_seconds"] {
                    v.as_object_mut().unwrap().remove(k);
                }
                v
            })
            .collect()
    };
    for (dir, mode) in [("none", "0"), ("ahead", ""), ("thread", "thread")] {
        let a = args(&data, &schedule, &tmp.s(dir));
        let o = run_env("et-train", &a.iter().map(String::as_str).collect::<Vec<_>>(), &[("ET_PREFETCH", mode)]);
        assert_ok(&o, &format!("et-train with ET_PREFETCH={mode}"));
    }
    let steps = log("none").iter().filter(|v| v["event"] == "step").count();
    assert!(steps >= 10, "{steps} step records");
    for dir in ["ahead", "thread"] {
        for f in ["model.safetensors", "ema.safetensors"] {
            assert!(read(&tmp.join("none").join(f)) == read(&tmp.join(dir).join(f)), "{f} differs with ET_PREFETCH for {dir}");
        }
        assert_eq!(log("none"), log(dir), "metrics differ for {dir}");
    }
}
