//! The files of a run directory — their names, defined once for every tool (et-train writes
//! them, et-export and et-eval read them, the Hub crate uploads and downloads them) — and the
//! one way the tools write a file: atomically.
//!
//! An atomic write fills a temporary file beside the target, flushes it to the disk, renames
//! it over the target and flushes the directory, so a crash, a kill or a full disk leaves
//! either the old file or the new one under the name, never a mix or a truncated file.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// `config.json`: the architecture, classes and preprocessing of a trained model.
pub const CONFIG_FILE: &str = "config.json";
/// `model.safetensors`: the weights, with timm's names.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// `ema.safetensors`: the exponential moving average of the weights.
pub const EMA_FILE: &str = "ema.safetensors";
/// `metrics.jsonl`: one JSON record per event of the run (plan, steps, stage ends).
pub const METRICS_FILE: &str = "metrics.jsonl";
/// `training.png`: loss, validation accuracy and learning rate over the run.
pub const PLOT_FILE: &str = "training.png";
/// `checkpoints/`: the resumable states of the run.
pub const CHECKPOINTS_DIR: &str = "checkpoints";
/// `checkpoints/latest`: the name of the newest complete checkpoint.
pub const LATEST: &str = "latest";
/// A checkpoint's training state.
pub const STATE_FILE: &str = "state.json";
/// A checkpoint's optimiser moments.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// A checkpoint's ET++ replay buffer (mid-stage checkpoints of stages that replay).
pub const REPLAY_FILE: &str = "replay.safetensors";
/// The model card of a run uploaded to the Hugging Face Hub.
pub const MODEL_CARD: &str = "README.md";

/// The temporary file an atomic write of `path` goes through (hidden, in the same directory,
/// so the rename never crosses file systems).
pub fn temporary(path: &Path) -> PathBuf {
    let name = path.file_name().map_or_else(|| "file".into(), |n| n.to_string_lossy().into_owned());
    path.with_file_name(format!(".{name}.tmp"))
}

/// Writes `path` atomically with `write`, which creates and fills the file at the path it is
/// given. On error the temporary file is removed and `path` is left as it was.
pub fn write_with(path: &Path, write: impl FnOnce(&Path) -> io::Result<()>) -> io::Result<()> {
    let tmp = temporary(path);
    let result = write(&tmp).and_then(|()| File::open(&tmp)?.sync_all()).and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Writes `bytes` to `path` atomically.
pub fn write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_with(path, |tmp| {
        let mut f = File::create(tmp)?;
        f.write_all(bytes)?;
        f.flush()
    })
}

/// Flushes a directory's entries (a rename into it) to the disk.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_leaves_the_old_file() {
        let dir = std::env::temp_dir().join(format!("et-runfiles-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("a.json");
        write(&p, b"old").unwrap();
        let err = write_with(&p, |tmp| {
            std::fs::write(tmp, b"half")?;
            Err(io::Error::other("disk full"))
        });
        assert!(err.is_err());
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert!(!temporary(&p).exists(), "the temporary file is removed");
        write(&p, b"new").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
        assert_eq!(temporary(&p), dir.join(".a.json.tmp"));
        std::fs::remove_dir_all(&dir).ok();
    }
}
