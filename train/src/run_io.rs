//! The run directory: checks that it can take the run before training starts, and the
//! append-only `metrics.jsonl` (truncatable to a checkpoint's length on resume).

use crate::TrainError;
use std::io::{Seek, Write};
use std::path::Path;

/// Fails early if `dir` cannot be created or written to.
pub fn check_writable(dir: &Path) -> Result<(), TrainError> {
    let err = |e: std::io::Error| TrainError::Output(format!("cannot write to output directory {}: {e} (choose another --out)", dir.display()));
    std::fs::create_dir_all(dir).map_err(err)?;
    let probe = dir.join(".et-train-write-test");
    std::fs::write(&probe, b"ok").map_err(err)?;
    std::fs::remove_file(&probe).map_err(err)
}

/// Free bytes on the file system holding `dir` (None where it cannot be asked).
pub fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a properly sized out-parameter.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    (rc == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
}

/// Refuses to start when the disk cannot hold what the run will write: `needed` bytes
/// (the final weights plus one checkpoint, the new one written before the old is removed).
pub fn check_space(dir: &Path, needed: u64) -> Result<(), TrainError> {
    match free_bytes(dir) {
        Some(free) if free < needed => Err(TrainError::Output(format!(
            "not enough disk space in {}: the run needs about {:.1} MB for weights and checkpoints, {:.1} MB are free (free space or choose another --out)",
            dir.display(),
            needed as f64 / 1e6,
            free as f64 / 1e6
        ))),
        _ => Ok(()),
    }
}

pub struct Metrics {
    /// `None` on the ranks of a data-parallel job other than rank 0, which alone writes.
    file: Option<std::fs::File>,
}

impl Metrics {
    /// Creates `metrics.jsonl`, or with `keep = Some(len)` reopens it cut to its first `len`
    /// bytes (the records a checkpoint had seen: what came after is written again).
    pub fn open(path: &Path, keep: Option<u64>) -> Result<Metrics, TrainError> {
        let err = |e: std::io::Error| TrainError::Output(format!("cannot write {}: {e}", path.display()));
        let mut file = match keep {
            None => std::fs::File::create(path).map_err(err)?,
            Some(len) => {
                let f = std::fs::OpenOptions::new().write(true).create(true).truncate(false).open(path).map_err(err)?;
                f.set_len(len).map_err(err)?;
                f
            }
        };
        file.seek(std::io::SeekFrom::End(0)).map_err(err)?;
        Ok(Metrics { file: Some(file) })
    }

    /// Records nothing (a rank that does not write).
    pub fn discard() -> Metrics {
        Metrics { file: None }
    }

    pub fn log(&mut self, v: serde_json::Value) -> Result<(), TrainError> {
        match &mut self.file {
            Some(f) => writeln!(f, "{v}").map_err(|e| TrainError::Output(format!("cannot write metrics.jsonl: {e}"))),
            None => Ok(()),
        }
    }

    pub fn position(&mut self) -> Result<u64, TrainError> {
        match &mut self.file {
            Some(f) => f.stream_position().map_err(|e| TrainError::Output(format!("metrics.jsonl: {e}"))),
            None => Ok(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_truncate_on_resume_and_space_checks() {
        let dir = std::env::temp_dir().join(format!("et-runio-{}", std::process::id()));
        check_writable(&dir).unwrap();
        let p = dir.join("m.jsonl");
        let mut m = Metrics::open(&p, None).unwrap();
        m.log(serde_json::json!({"a": 1})).unwrap();
        let keep = m.position().unwrap();
        m.log(serde_json::json!({"b": 2})).unwrap();
        drop(m);
        let mut m = Metrics::open(&p, Some(keep)).unwrap();
        m.log(serde_json::json!({"c": 3})).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "{\"a\":1}\n{\"c\":3}\n");
        assert!(free_bytes(&dir).is_some_and(|b| b > 0));
        assert!(check_space(&dir, 1).is_ok());
        assert!(check_space(&dir, u64::MAX).unwrap_err().to_string().contains("not enough disk space"));
        std::fs::remove_dir_all(&dir).ok();
    }
}
