//! Nothing loses a run: SIGKILL at random instants (checkpoints every step, so many kills land
//! inside a checkpoint write), a damaged newest checkpoint, a disk that fills up mid-run — each
//! time `--resume` continues from the last complete checkpoint and the run ends bit-identical
//! (`--deterministic`) to one that was never interrupted.

mod common;
use common::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Two stages at 16 and 32 px, the first replaying from a buffer.
const SCHEDULE: &str = "[[stage]]\nfraction = 0.5\nmagnitude = 1\ncompute = 1\nreplay = { times = 2, size = 4, split = 2 }\n[[stage]]\nresolution = 32\nmagnitude = 5\ncompute = 1\n";

fn args(data: &str, schedule: &str, out: &str, every: &str) -> Vec<String> {
    ["--data", data, "--schedule", schedule, "--epochs", "2", "--batch-size", "4", "--effective-batch", "8", "--ema-decay", "0.9", "--save-every-steps", every, "--deterministic", "--compute-threads", "2", "--log-every", "1", "--out", out]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

fn same_result(a: &Path, b: &Path) {
    for f in ["model.safetensors", "ema.safetensors"] {
        assert!(std::fs::read(a.join(f)).unwrap() == std::fs::read(b.join(f)).unwrap(), "{f} differs from the uninterrupted run");
    }
}

fn setup(tag: &str) -> (TempDir, String, String) {
    let tmp = TempDir::new(tag);
    mini_dataset(&tmp.join("data"), &["airplane", "cat", "ship"], 8);
    std::fs::write(tmp.join("s.toml"), SCHEDULE).unwrap();
    let (data, schedule) = (tmp.s("data"), tmp.s("s.toml"));
    (tmp, data, schedule)
}

/// A small xorshift, so the kill instants are random but the same on every run of the test.
struct Xorshift(u64);

impl Xorshift {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn sigkill_at_random_instants_then_resume_ends_bit_identical() {
    let (tmp, data, schedule) = setup("kills");
    let a = args(&data, &schedule, &tmp.s("a"), "1");
    assert_ok(&run("et-train", &a.iter().map(String::as_str).collect::<Vec<_>>()), "uninterrupted et-train");

    let b = args(&data, &schedule, &tmp.s("b"), "1");
    let mut rng = Xorshift(0x5eed_1234_abcd);
    let (mut kills, mut resumes) = (0, 0);
    loop {
        // Resume when a complete checkpoint exists: a kill before the first one, or inside its
        // write (which leaves only a `.tmp-step-N` directory), starts over.
        let resume = std::fs::read_dir(tmp.join("b/checkpoints")).into_iter().flatten().flatten().any(|e| e.file_name().to_string_lossy().starts_with("step-"));
        let cmd_args: Vec<String> = if resume { vec!["--resume".into(), tmp.s("b")] } else { b.clone() };
        resumes += usize::from(resume);
        let mut child = Command::new(bin("et-train")).args(&cmd_args).current_dir(repo_root()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("spawn");
        if kills < 5 {
            let wait = Duration::from_millis(200 + rng.below(1200));
            let t0 = Instant::now();
            while t0.elapsed() < wait && child.try_wait().unwrap().is_none() {
                std::thread::sleep(Duration::from_millis(5));
            }
            if child.try_wait().unwrap().is_none() {
                child.kill().expect("SIGKILL");
                child.wait().unwrap();
                kills += 1;
                continue;
            }
        }
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "et-train after {kills} kills: {}", String::from_utf8_lossy(&out.stderr));
        break;
    }
    assert!(kills >= 3, "only {kills} kills landed: the run is too short for the test");
    assert!(resumes >= 1);
    same_result(&tmp.join("a"), &tmp.join("b"));
}

#[test]
fn a_damaged_newest_checkpoint_resumes_from_the_one_before() {
    let (tmp, data, schedule) = setup("damaged");
    let a = args(&data, &schedule, &tmp.s("a"), "3");
    assert_ok(&run("et-train", &a.iter().map(String::as_str).collect::<Vec<_>>()), "uninterrupted et-train");
    let names = |dir: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir.join("checkpoints")).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.starts_with("step-")).collect();
        v.sort();
        v
    };
    assert_eq!(names(&tmp.join("a")).len(), 2, "the last two checkpoints are kept");

    // Each kind of damage to the newest checkpoint of an interrupted run.
    let damage: [(&str, fn(&Path)); 4] = [
        ("truncated", |d| {
            let f = d.join("model.safetensors");
            let n = std::fs::metadata(&f).unwrap().len();
            std::fs::OpenOptions::new().write(true).open(&f).unwrap().set_len(n / 2).unwrap();
        }),
        ("SHA-256", |d| {
            let f = d.join("optimizer.safetensors");
            let mut b = std::fs::read(&f).unwrap();
            let i = b.len() - 100;
            b[i] ^= 0x40;
            std::fs::write(&f, b).unwrap();
        }),
        ("training state", |d| std::fs::write(d.join("state.json"), b"{\"format\": 1, \"step\": ").unwrap()),
        ("latest", |d| std::fs::write(d.parent().unwrap().join("latest"), b"step-99999999").unwrap()),
    ];
    for (i, (what, hurt)) in damage.iter().enumerate() {
        let b = tmp.join(&format!("b{i}"));
        let b_args = args(&data, &schedule, &b.to_string_lossy(), "3");
        let mut child = Command::new(bin("et-train")).args(&b_args).current_dir(repo_root()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn");
        let t0 = Instant::now();
        while !b.join("checkpoints/latest").is_file() || names(&b).len() < 2 {
            assert!(child.try_wait().unwrap().is_none(), "the run ended before two checkpoints");
            assert!(t0.elapsed() < Duration::from_secs(300));
            std::thread::sleep(Duration::from_millis(2));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        // The checkpoint `latest` names (a kill between a checkpoint's rename and the update
        // of `latest` leaves a newer directory that resuming never reads).
        let latest = std::fs::read_to_string(b.join("checkpoints/latest")).unwrap();
        hurt(&b.join("checkpoints").join(latest.trim()));
        let o = run("et-train", &["--resume", &b.to_string_lossy()]);
        assert_ok(&o, &format!("et-train --resume past a damaged checkpoint ({what})"));
        if *what != "latest" {
            assert!(stderr(&o).contains("passing over a damaged checkpoint") && stderr(&o).contains(what), "{what}: {}", stderr(&o));
        }
        same_result(&tmp.join("a"), &b);
    }
}

#[test]
fn a_full_disk_stops_the_run_cleanly_and_the_last_checkpoint_resumes() {
    let (tmp, data, schedule) = setup("full");
    let a = args(&data, &schedule, &tmp.s("a"), "2");
    assert_ok(&run("et-train", &a.iter().map(String::as_str).collect::<Vec<_>>()), "uninterrupted et-train");
    // ConvNeXt-atto's weights are 15 MB, a checkpoint (weights, EMA, moments) 60 MB: the
    // first checkpoint fits in 140 MB, the second does not fit beside it.
    let small = tmp.join("small");
    let kept = tmp.join("b");
    let o = on_small_disk("et-train", &small, &kept, 140, &args(&data, &schedule, &small.to_string_lossy(), "2"));
    assert_clean_failure(&o, "et-train", "No space left on device");
    assert!(kept.join("checkpoints").is_dir(), "a checkpoint was written before the disk filled");
    // With room again (here: the copy on the big disk), the run resumes and ends as if never
    // interrupted.
    let o = run("et-train", &["--resume", &kept.to_string_lossy()]);
    assert_ok(&o, "et-train --resume after a full disk");
    same_result(&tmp.join("a"), &kept);
}
