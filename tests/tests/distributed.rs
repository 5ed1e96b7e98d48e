//! Data parallelism under a real `mpirun` (Open MPI; scripts/test.sh installs it): two ranks
//! with one compute thread each against one process with the same global batch, a rank
//! killed mid-run and the job resumed, and ranks started with different settings. The
//! binaries must be built with `--features et-train/distributed` (scripts/test.sh does).

mod common;
use common::*;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Open MPI refuses to start as root (CI runs as root) and to put more ranks than cores.
const MPI_ENV: [(&str, &str); 3] = [("OMPI_ALLOW_RUN_AS_ROOT", "1"), ("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1"), ("OMPI_MCA_rmaps_base_oversubscribe", "1")];

fn mpirun_cmd(np: usize, args: &[String]) -> Command {
    let mut c = Command::new("mpirun");
    c.args(["-np", &np.to_string()]).arg(bin("et-train")).args(args).current_dir(repo_root()).envs(MPI_ENV);
    c
}

fn mpirun(np: usize, args: &[String]) -> Output {
    let out = mpirun_cmd(np, args).output().unwrap_or_else(|e| panic!("cannot run mpirun ({e}): install Open MPI (`apt-get install openmpi-bin libopenmpi-dev`; scripts/test.sh does)"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("built without MPI"), "et-train was built without MPI: build with `cargo build --release --workspace --bins --features et-train/distributed` (scripts/test.sh does)\n{err}");
    out
}

/// The common command line, with `extra` flags (which replace a common flag of the same name).
fn args(data: &str, out: &str, extra: &[&str]) -> Vec<String> {
    let base = [("--data", data), ("--schedule", "baseline"), ("--epochs", "2"), ("--batch-size", "8"), ("--compute-threads", "1"), ("--log-every", "1"), ("--out", out)];
    let mut v: Vec<String> = base.iter().filter(|(k, _)| !extra.contains(k)).flat_map(|(k, val)| [k.to_string(), val.to_string()]).collect();
    v.push("--deterministic".into());
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn step_losses(dir: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["event"] == "step")
        .map(|v| (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap()))
        .collect()
}

fn weights(path: &Path) -> Vec<(String, Vec<f32>)> {
    let t = candle_core::safetensors::load(path, &candle_core::Device::Cpu).unwrap();
    let mut v: Vec<(String, Vec<f32>)> = t.into_iter().map(|(k, t)| (k, t.flatten_all().unwrap().to_vec1().unwrap())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = walk(dir).into_iter().map(|p| p.strip_prefix(dir).unwrap().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir).unwrap().flatten().flat_map(|e| if e.path().is_dir() { walk(&e.path()) } else { vec![e.path()] }).collect()
}

#[test]
fn two_ranks_train_as_one_process_with_the_same_global_batch() {
    let tmp = TempDir::new("dp");
    mini_dataset(&tmp.join("data"), &["airplane", "cat", "ship", "frog"], 16);
    let data = tmp.s("data");
    let one = run("et-train", &args(&data, &tmp.s("one"), &[]).iter().map(String::as_str).collect::<Vec<_>>());
    assert_ok(&one, "et-train, one process");
    let two = mpirun(2, &args(&data, &tmp.s("two"), &[]));
    assert_ok(&two, "mpirun -np 2 et-train");
    assert!(stdout(&two).contains("data-parallel over MPI") && stdout(&two).contains("2 ranks"), "{}", stdout(&two));

    let (a, b) = (step_losses(&tmp.join("one")), step_losses(&tmp.join("two")));
    assert_eq!(a.len(), b.len(), "one record per step: only rank 0 logs");
    assert!(!a.is_empty());
    for ((s1, l1), (s2, l2)) in a.iter().zip(&b) {
        assert_eq!(s1, s2);
        assert!(((l1 - l2) / l1).abs() < 1e-4, "step {s1}: loss {l1} with one process, {l2} with two");
    }
    let (wa, wb) = (weights(&tmp.join("one/model.safetensors")), weights(&tmp.join("two/model.safetensors")));
    for ((name, x), (_, y)) in wa.iter().zip(&wb) {
        let scale = x.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
        let diff = x.iter().zip(y).fold(0f32, |m, (p, q)| m.max((p - q).abs()));
        assert!(diff <= 1e-3 * scale, "{name}: weights differ by {diff} (largest {scale})");
    }
    assert_eq!(listing(&tmp.join("one")), listing(&tmp.join("two")), "the run directory of two ranks is a single process's");
}

/// The PID of the rank `rank` that `mpirun` (PID `parent`) started, from /proc.
fn rank_pid(parent: u32, rank: usize) -> Option<u32> {
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let ppid: Option<u32> = stat.rsplit(')').next().and_then(|s| s.split_whitespace().nth(1)).and_then(|s| s.parse().ok());
        if ppid != Some(parent) {
            continue;
        }
        let env = std::fs::read(e.path().join("environ")).unwrap_or_default();
        if env.split(|&b| b == 0).any(|v| v == format!("OMPI_COMM_WORLD_RANK={rank}").as_bytes()) {
            return Some(pid);
        }
    }
    None
}

#[test]
fn a_killed_rank_ends_the_job_and_the_run_resumes_exactly() {
    let tmp = TempDir::new("dp-kill");
    mini_dataset(&tmp.join("data"), &["airplane", "cat", "ship"], 8);
    std::fs::write(tmp.join("s.toml"), "[[stage]]\nfraction = 0.5\nmagnitude = 1\ncompute = 1\nreplay = { times = 2, size = 4, split = 2 }\n[[stage]]\nresolution = 32\nmagnitude = 5\ncompute = 1\n").unwrap();
    let (data, schedule) = (tmp.s("data"), tmp.s("s.toml"));
    let extra = ["--schedule", "SCHEDULE", "--batch-size", "4", "--effective-batch", "8", "--ema-decay", "0.9", "--save-every-steps", "2"];
    let make = |out: &str| -> Vec<String> {
        let mut a = args(&data, out, &extra);
        let i = a.iter().position(|s| s == "SCHEDULE").unwrap();
        a[i] = schedule.clone();
        a
    };
    let o = mpirun(2, &make(&tmp.s("a")));
    assert_ok(&o, "uninterrupted 2-rank run");

    let mut job = mpirun_cmd(2, &make(&tmp.s("b"))).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("mpirun");
    let latest = tmp.join("b/checkpoints/latest");
    let t0 = Instant::now();
    while !latest.exists() {
        assert!(job.try_wait().unwrap().is_none(), "the job ended before its first checkpoint");
        assert!(t0.elapsed() < Duration::from_secs(300), "no checkpoint after 300 s");
        std::thread::sleep(Duration::from_millis(2));
    }
    let pid = rank_pid(job.id(), 1).expect("rank 1's process");
    // SAFETY: a plain kill(2) of a process this test started.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    let killed = Instant::now();
    let status = loop {
        if let Some(s) = job.try_wait().unwrap() {
            break s;
        }
        assert!(killed.elapsed() < Duration::from_secs(60), "the job still runs 60 s after one rank was killed");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success(), "the job must fail when a rank dies");

    // A copy resumes under one process, the original under two.
    copy_dir(&tmp.join("b"), &tmp.join("c"));
    let o = mpirun(2, &["--resume".to_string(), tmp.s("b")]);
    assert_ok(&o, "mpirun -np 2 et-train --resume");
    assert!(stdout(&o).contains("resumed from"), "{}", stdout(&o));
    for f in ["model.safetensors", "ema.safetensors"] {
        assert!(std::fs::read(tmp.join("a").join(f)).unwrap() == std::fs::read(tmp.join("b").join(f)).unwrap(), "{f}: the resumed 2-rank run differs from the uninterrupted one");
    }
    let o = run("et-train", &["--resume", &tmp.s("c")]);
    assert_ok(&o, "et-train --resume of a 2-rank run as one process");
    assert!(tmp.join("c/model.safetensors").is_file());
}

fn copy_dir(from: &Path, to: &Path) {
    for p in walk(from) {
        let dst = to.join(p.strip_prefix(from).unwrap());
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(&p, &dst).unwrap();
    }
}

#[test]
fn ranks_with_other_settings_are_refused() {
    let tmp = TempDir::new("dp-mismatch");
    mini_dataset(&tmp.join("data"), &["airplane", "cat"], 4);
    let data = tmp.s("data");
    let mut cmd = Command::new("mpirun");
    cmd.current_dir(repo_root()).envs(MPI_ENV);
    let et = bin("et-train");
    cmd.args(["-np", "1"]).arg(&et).args(args(&data, &tmp.s("m"), &["--lr", "0.001"]));
    cmd.arg(":").args(["-np", "1"]).arg(&et).args(args(&data, &tmp.s("m"), &["--lr", "0.002"]));
    let o = cmd.output().expect("mpirun");
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("rank 1 of 2: error:") && err.contains("lr is 0.002 here and 0.001 on rank 0"), "{err}");
    assert!(!tmp.join("m/model.safetensors").exists(), "nothing trained");
}

#[test]
fn two_ranks_train_on_their_own_shards() {
    let tmp = TempDir::new("dp-shards");
    mini_dataset(&tmp.join("data"), &["airplane", "cat", "ship", "frog"], 16);
    let o = run("et-pack", &[&tmp.s("data"), &tmp.s("shards"), "--shard-mb", "0.02"]);
    assert_ok(&o, "et-pack");
    let extra = ["--shuffle-buffer", "8"];
    let two = mpirun(2, &args(&tmp.s("shards"), &tmp.s("two"), &extra));
    assert_ok(&two, "mpirun -np 2 et-train on shards");
    assert!(stdout(&two).contains("val top-1"), "{}", stdout(&two));
    let steps = step_losses(&tmp.join("two"));
    assert_eq!(steps.len(), 16, "2 epochs of 64 images in global batches of 8, one record per step");
    assert!(steps.iter().all(|(_, l)| l.is_finite()));
}
