//! Shared helpers of the end-to-end tests: the built binaries, small datasets copied from
//! the bundled assets, and assertions on how a command failed.

#![allow(dead_code)]

pub mod hub_server;
pub mod runs;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// A workspace binary, next to this test's own executable (target/<profile>/deps/..).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target/<profile>");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the binaries first with `cargo build --release --workspace --bins` (scripts/test.sh does)",
        path.display()
    );
    path
}

pub fn run(name: &str, args: &[&str]) -> Output {
    run_env(name, args, &[])
}

pub fn run_env(name: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(bin(name));
    cmd.args(args).current_dir(repo_root());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("spawn")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn assert_ok(o: &Output, what: &str) {
    assert!(o.status.success(), "{what} failed ({:?}):\nstdout:\n{}\nstderr:\n{}", o.status, stdout(o), stderr(o));
}

/// A clean failure: non-zero exit, no panic, and a one-line message containing `needle`.
pub fn assert_clean_failure(o: &Output, tool: &str, needle: &str) {
    let err = stderr(o);
    assert!(!o.status.success(), "{tool} should have failed; stdout:\n{}", stdout(o));
    assert!(o.status.code().is_some_and(|c| c != 101), "{tool} panicked or was killed: {:?}\n{err}", o.status);
    assert!(!err.contains("panicked"), "{tool} panicked:\n{err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{tool} should print exactly one error line, got:\n{err}");
    assert!(lines[0].starts_with(&format!("{tool}: error:")), "unexpected message: {}", lines[0]);
    assert!(lines[0].contains(needle), "message should mention {needle:?}: {}", lines[0]);
}

/// A fresh temporary directory, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let p = std::env::temp_dir().join(format!("et-e2e-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }

    pub fn s(&self, p: &str) -> String {
        self.join(p).to_string_lossy().into_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

/// Copies `per_class` images of each of `classes` bundled CIFAR-10 classes into
/// `dest/{train,val}` (val gets half as many).
pub fn mini_dataset(dest: &Path, classes: &[&str], per_class: usize) {
    let assets = repo_root().join("assets/cifar10-mini");
    for (split, n) in [("train", per_class), ("val", per_class.div_ceil(2))] {
        for class in classes {
            let src = assets.join(split).join(class);
            let dst = dest.join(split).join(class);
            std::fs::create_dir_all(&dst).expect("mkdir");
            let mut files: Vec<PathBuf> = std::fs::read_dir(&src).expect("bundled assets").map(|e| e.expect("entry").path()).collect();
            files.sort();
            for f in files.iter().take(n) {
                std::fs::copy(f, dst.join(f.file_name().expect("name"))).expect("copy");
            }
        }
    }
}

/// Runs `tool` with `args` in `dir` on a file system of `mb` megabytes (a tmpfs in a private mount
/// namespace), then copies what it wrote to `keep`. Returns the run's output.
pub fn on_small_disk(tool: &str, dir: &Path, keep: &Path, mb: u32, args: &[String]) -> Output {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::create_dir_all(keep).unwrap();
    let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
    let script = format!(
        "mount -t tmpfs -o size={mb}m tmpfs '{d}' || exit 97; cd '{root}'; '{bin}' {a}; rc=$?; cp -a '{d}/.' '{k}/'; exit $rc",
        d = dir.display(),
        k = keep.display(),
        root = repo_root().display(),
        bin = bin(tool).display(),
        a = quoted.join(" ")
    );
    let o = std::process::Command::new("unshare").args(["-Urm", "sh", "-c", &script]).output().expect("unshare (util-linux)");
    assert_ne!(o.status.code(), Some(97), "cannot mount a small tmpfs in a private mount namespace (`unshare -Urm`): {}", String::from_utf8_lossy(&o.stderr));
    o
}
