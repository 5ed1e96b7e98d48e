//! Checkpoints for exact resumption: the weights, their EMA, the optimiser's moments and a
//! JSON training state, written into a fresh directory that is renamed into place and then
//! named by `checkpoints/latest` (itself replaced by rename), so a run killed at any instant
//! leaves the previous complete checkpoint or the new one, never a mix.
//!
//! Every random draw of a run is keyed by counters (seed, loader epoch, sample index,
//! optimiser step), so the RNG state *is* those counters: restoring them, the weights, the
//! moments and the compute progress (stored bit-exactly) continues the run exactly.
//!
//! The state records each file's size and SHA-256 and its own checksum, so a checkpoint that
//! a crash, a full disk or a bad sector damaged is recognised; the last two complete
//! checkpoints are kept, and `--resume` takes the newest that verifies.

use crate::config::TrainConfig;
use crate::schedule::Schedule;
use crate::TrainError;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use et_runfiles::{CHECKPOINTS_DIR, EMA_FILE, LATEST, OPTIMIZER_FILE, REPLAY_FILE, STATE_FILE};
const FORMAT: u32 = 1;

/// Where the run is: enough, with the tensors, to continue it bit-exactly.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainState {
    pub format: u32,
    /// The run's settings (a resumed run uses these, not new ones).
    pub config: TrainConfig,
    pub schedule: Schedule,
    /// Stage in progress (== number of stages when the run is complete).
    pub stage: usize,
    /// Optimiser steps done in `stage`.
    pub stage_step: usize,
    /// Optimiser steps done in all.
    pub step: usize,
    /// The data loader's position: epoch counter and next batch of that epoch.
    pub epoch: u64,
    pub next_batch: usize,
    /// Compute progress ∈ [0, 1] (f64 bits: JSON decimals need not round-trip exactly).
    pub progress_bits: u64,
    /// Human-readable copy of the progress (not read back).
    pub progress: f64,
    pub stage_loss_sum_bits: u64,
    pub stage_images: usize,
    pub skipped: usize,
    /// Wall time of finished stages, and of the current one so far.
    pub stage_seconds: Vec<f64>,
    pub stage_elapsed_s: f64,
    pub elapsed_s: f64,
    pub val_top1: Option<f64>,
    pub val_top5: Option<f64>,
    pub ema_top1: Option<f64>,
    /// Bytes of metrics.jsonl written at this point (a resumed run truncates the rest).
    pub metrics_len: u64,
    /// The compute thread count (fixed with --deterministic).
    pub compute_threads: usize,
    /// Processes of the run (data parallelism); a resume under another count continues at
    /// the same global sample position.
    #[serde(default = "one")]
    pub world: usize,
    /// Keys of the counter-based RNG streams, for the record.
    pub rng: RngState,
    /// Size and SHA-256 of every other file of the checkpoint.
    #[serde(default)]
    pub files: BTreeMap<String, FileDigest>,
    /// SHA-256 of this state written with an empty checksum (empty: not checked, an older
    /// checkpoint).
    #[serde(default)]
    pub checksum: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FileDigest {
    pub bytes: u64,
    pub sha256: String,
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

impl FileDigest {
    fn of(path: &Path) -> std::io::Result<FileDigest> {
        let bytes = std::fs::read(path)?;
        Ok(FileDigest { bytes: bytes.len() as u64, sha256: sha256_hex(&bytes) })
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RngState {
    pub seed: u64,
    /// "per-sample: (seed, epoch, index); per-step: (seed, step, stream)".
    pub scheme: String,
}

fn one() -> usize {
    1
}

impl TrainState {
    pub fn fresh(config: TrainConfig, schedule: Schedule, compute_threads: usize) -> Self {
        let seed = config.run.seed;
        TrainState {
            format: FORMAT,
            config,
            schedule,
            stage: 0,
            stage_step: 0,
            step: 0,
            epoch: 0,
            next_batch: 0,
            progress_bits: 0f64.to_bits(),
            progress: 0.0,
            stage_loss_sum_bits: 0f64.to_bits(),
            stage_images: 0,
            skipped: 0,
            stage_seconds: Vec::new(),
            stage_elapsed_s: 0.0,
            elapsed_s: 0.0,
            val_top1: None,
            val_top5: None,
            ema_top1: None,
            metrics_len: 0,
            compute_threads,
            world: 1,
            files: BTreeMap::new(),
            checksum: String::new(),
            rng: RngState { seed, scheme: "per-sample transforms keyed (seed, epoch, index); mixup and drop path keyed (seed, step, stream)".into() },
        }
    }

    pub fn progress(&self) -> f64 {
        f64::from_bits(self.progress_bits)
    }

    pub fn set_progress(&mut self, p: f64) {
        self.progress_bits = p.to_bits();
        self.progress = p;
    }

    pub fn stage_loss_sum(&self) -> f64 {
        f64::from_bits(self.stage_loss_sum_bits)
    }

    pub fn add_stage_loss(&mut self, l: f64) {
        self.stage_loss_sum_bits = (self.stage_loss_sum() + l).to_bits();
    }

    /// The state's checksum: SHA-256 of its JSON with the checksum field empty.
    fn compute_checksum(&self) -> Result<String, TrainError> {
        let mut copy = self.clone();
        copy.checksum = String::new();
        let json = serde_json::to_vec(&copy).map_err(|e| TrainError::Internal(format!("training state: {e}")))?;
        Ok(sha256_hex(&json))
    }

    /// Moves on to the next stage after one that took `seconds`. The next stage starts a
    /// fresh epoch (the loader's position is per stage).
    pub fn finish_stage(&mut self, seconds: f64) {
        if self.next_batch > 0 {
            self.epoch += 1;
            self.next_batch = 0;
        }
        self.stage_seconds.push(seconds);
        self.stage += 1;
        self.stage_step = 0;
        self.stage_images = 0;
        self.stage_loss_sum_bits = 0f64.to_bits();
        self.stage_elapsed_s = 0.0;
    }
}

fn io_err(what: &Path, e: std::io::Error) -> TrainError {
    TrainError::Output(format!("cannot write checkpoint {}: {e}", what.display()))
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    et_runfiles::write(path, bytes).map_err(|e| io_err(path, e))
}

/// Checkpoints kept: the newest and the one before, so that one damaged by a crash or a
/// failing disk still leaves one to resume from.
const KEEP: usize = 2;

/// Writes a checkpoint of `state` under `out/checkpoints/step-NNNNNNNN/`: `write_tensors`
/// fills a temporary directory with the tensor files, then the state (with their digests and
/// its checksum) is added, the directory renamed into place, `latest` pointed at it and all
/// but the newest `KEEP` checkpoints removed. Returns its path.
pub fn save(out: &Path, state: &TrainState, write_tensors: &dyn Fn(&Path) -> Result<(), TrainError>) -> Result<PathBuf, TrainError> {
    let root = out.join(CHECKPOINTS_DIR);
    std::fs::create_dir_all(&root).map_err(|e| io_err(&root, e))?;
    let name = format!("step-{:08}", state.step);
    let tmp = root.join(format!(".tmp-{name}"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| io_err(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| io_err(&tmp, e))?;
    // Every file is written atomically (flushed to the disk) before the directory is renamed.
    write_tensors(&tmp)?;
    let mut state = state.clone();
    state.files.clear();
    for entry in std::fs::read_dir(&tmp).map_err(|e| io_err(&tmp, e))? {
        let p = entry.map_err(|e| io_err(&tmp, e))?.path();
        let file = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        state.files.insert(file, FileDigest::of(&p).map_err(|e| io_err(&p, e))?);
    }
    state.checksum = state.compute_checksum()?;
    let json = serde_json::to_vec_pretty(&state).map_err(|e| TrainError::Internal(format!("training state: {e}")))?;
    check_reads_back(&json, &state.checksum)?;
    write_atomic(&tmp.join(STATE_FILE), &json)?;
    let dir = root.join(&name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
    }
    std::fs::rename(&tmp, &dir).map_err(|e| io_err(&dir, e))?;
    et_runfiles::sync_dir(&root).map_err(|e| io_err(&root, e))?;
    write_atomic(&root.join(LATEST), name.as_bytes())?;
    prune(&root);
    Ok(dir)
}

/// A state is written only if reading it gives the same checksum: a number that does not
/// survive JSON (a non-finite one, or a parser that rounds) would otherwise make the
/// checkpoint look damaged at `--resume`, when it is too late.
fn check_reads_back(json: &[u8], checksum: &str) -> Result<(), TrainError> {
    let back: TrainState = serde_json::from_slice(json).map_err(|e| TrainError::Internal(format!("the training state does not read back from its JSON ({e}); no checkpoint written")))?;
    if back.compute_checksum()? != checksum {
        return Err(TrainError::Internal("the training state reads back from its JSON with other values (a non-finite number?); no checkpoint written".into()));
    }
    Ok(())
}

/// The checkpoint directories of `root` by step, newest first.
fn by_step(root: &Path) -> Vec<(u64, PathBuf)> {
    let mut v: Vec<(u64, PathBuf)> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.strip_prefix("step-")?.parse().ok()?, e.path())))
        .filter(|(_, p): &(u64, PathBuf)| p.is_dir())
        .collect();
    v.sort_by(|a, b| b.0.cmp(&a.0));
    v
}

/// Removes leftovers of interrupted writes and all but the newest `KEEP` checkpoints.
fn prune(root: &Path) {
    for entry in std::fs::read_dir(root).into_iter().flatten().flatten() {
        if entry.file_name().to_string_lossy().starts_with(".tmp-") {
            std::fs::remove_dir_all(entry.path()).ok();
        }
    }
    for (_, old) in by_step(root).into_iter().skip(KEEP) {
        std::fs::remove_dir_all(old).ok();
    }
}

/// Reads and checks a checkpoint: its state parses, has this et-train's format, matches its
/// checksum and is consistent, and every file it lists has its size and SHA-256.
pub fn verify(ckpt: &Path) -> Result<TrainState, String> {
    let path = ckpt.join(STATE_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {STATE_FILE}: {e}"))?;
    let state: TrainState = serde_json::from_str(&text).map_err(|e| format!("{STATE_FILE} is not a training state ({e})"))?;
    if state.format != FORMAT {
        return Err(format!("{STATE_FILE} has format {}, this et-train reads {FORMAT}", state.format));
    }
    if !state.checksum.is_empty() && state.compute_checksum().map_err(|e| e.to_string())? != state.checksum {
        return Err(format!("{STATE_FILE} does not match its checksum (damaged)"));
    }
    let n = state.schedule.stages.len();
    if n == 0 || state.stage > n || state.world == 0 || !state.progress().is_finite() {
        return Err(format!("{STATE_FILE} is inconsistent (stage {} of {n}, world {})", state.stage, state.world));
    }
    for (file, want) in &state.files {
        let got = FileDigest::of(&ckpt.join(file)).map_err(|e| format!("cannot read {file}: {e}"))?;
        if got.bytes != want.bytes {
            return Err(format!("{file} has {} bytes, {} were written (truncated or damaged)", got.bytes, want.bytes));
        }
        if got.sha256 != want.sha256 {
            return Err(format!("{file} does not match the SHA-256 written with it (damaged)"));
        }
    }
    Ok(state)
}

/// The checkpoint to resume from and what was passed over to find it.
#[derive(Debug)]
pub struct Located {
    pub dir: PathBuf,
    pub state: TrainState,
    /// Newer checkpoints found damaged, with the reason (the caller says so).
    pub damaged: Vec<String>,
}

/// The checkpoint named by `dir`: a checkpoint itself (has state.json), or the newest
/// complete one of a run directory — the one `checkpoints/latest` names, or, if that one
/// is missing or damaged, the newest other that verifies.
pub fn locate(dir: &Path) -> Result<Located, TrainError> {
    if dir.join(STATE_FILE).is_file() {
        let state = verify(dir).map_err(|e| TrainError::Config(format!("checkpoint {} is damaged: {e}", dir.display())))?;
        return Ok(Located { dir: dir.to_path_buf(), state, damaged: Vec::new() });
    }
    let root = dir.join(CHECKPOINTS_DIR);
    let named = std::fs::read_to_string(root.join(LATEST)).ok().map(|n| n.trim().to_string()).filter(|n| n.starts_with("step-") && !n.contains('/'));
    let mut candidates: Vec<PathBuf> = named.iter().map(|n| root.join(n)).filter(|p| p.is_dir()).collect();
    let others: Vec<PathBuf> = by_step(&root).into_iter().map(|(_, p)| p).filter(|p| Some(p) != candidates.first()).collect();
    candidates.extend(others);
    if candidates.is_empty() {
        return Err(TrainError::Config(format!(
            "no checkpoint in {}: pass a run directory with {CHECKPOINTS_DIR}/ (written at every stage end and with --save-every-steps) or a checkpoint directory",
            dir.display()
        )));
    }
    let mut damaged = Vec::new();
    for c in candidates {
        match verify(&c) {
            Ok(state) => return Ok(Located { dir: c, state, damaged }),
            Err(e) => damaged.push(format!("{}: {e}", c.display())),
        }
    }
    Err(TrainError::Config(format!("no complete checkpoint in {}: {}", root.display(), damaged.join("; "))))
}

/// The run directory that holds checkpoint `ckpt` (…/RUN/checkpoints/step-N).
pub fn run_dir_of(ckpt: &Path) -> Option<PathBuf> {
    let parent = ckpt.parent()?;
    (parent.file_name()? == CHECKPOINTS_DIR).then(|| parent.parent().map(Path::to_path_buf)).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::Schedule;

    #[test]
    fn two_are_kept_and_a_damaged_latest_is_passed_over() {
        let out = std::env::temp_dir().join(format!("et-ckpt-{}", std::process::id()));
        std::fs::create_dir_all(&out).unwrap();
        let mut st = TrainState::fresh(TrainConfig::default(), Schedule::baseline(32, 1.0), 2);
        st.set_progress(0.1 + 0.2);
        let writer = |d: &Path| std::fs::write(d.join("model.safetensors"), b"weights").map_err(|e| io_err(d, e));
        let dirs: Vec<PathBuf> = [3, 7, 9].iter().map(|&s| {
            st.step = s;
            save(&out, &st, &writer).unwrap()
        }).collect();
        assert!(!dirs[0].exists() && dirs[1].exists() && dirs[2].exists(), "the newest two are kept");
        let found = locate(&out).unwrap();
        assert_eq!((found.dir.clone(), found.state.step), (dirs[2].clone(), 9));
        assert_eq!(found.state.progress().to_bits(), (0.1f64 + 0.2).to_bits(), "progress is bit-exact");
        assert_eq!(locate(&dirs[2]).unwrap().dir, dirs[2]);
        assert_eq!(run_dir_of(&dirs[2]).unwrap(), out);

        // Each kind of damage to the newest: the one before is found, and the damage named.
        let damage: [(&str, &dyn Fn(&Path)); 5] = [
            ("truncated", &|d| std::fs::write(d.join("model.safetensors"), b"weig").unwrap()),
            ("SHA-256", &|d| std::fs::write(d.join("model.safetensors"), b"WEIGHTS").unwrap()),
            ("not a training state", &|d| std::fs::write(d.join(STATE_FILE), b"{\"format\": 1").unwrap()),
            ("checksum", &|d| {
                let t = std::fs::read_to_string(d.join(STATE_FILE)).unwrap().replacen("\"step\": 9", "\"step\": 8", 1);
                std::fs::write(d.join(STATE_FILE), t).unwrap()
            }),
            ("cannot read", &|d| std::fs::remove_file(d.join("model.safetensors")).unwrap()),
        ];
        for (what, hurt) in damage {
            st.step = 9;
            save(&out, &st, &writer).unwrap();
            hurt(&dirs[2]);
            let found = locate(&out).unwrap();
            assert_eq!(found.dir, dirs[1], "{what}");
            assert!(found.damaged.len() == 1 && found.damaged[0].contains(what), "{what}: {:?}", found.damaged);
            assert!(locate(&dirs[2]).unwrap_err().to_string().contains("is damaged"), "{what}");
        }
        // A `latest` that names nothing sensible is passed over too.
        std::fs::write(out.join(CHECKPOINTS_DIR).join(LATEST), b"../../etc").unwrap();
        assert_eq!(locate(&out).unwrap().dir, dirs[1]);
        assert!(locate(&out.join("nothing")).unwrap_err().to_string().contains("no checkpoint"));
        std::fs::remove_dir_all(&out).ok();
    }
    #[test]
    fn timings_and_rates_read_back_bit_exactly() {
        // Values that serde_json's default (rounding) float parser reads back 1 ulp off, which
        // made a third of checkpoints look damaged at --resume.
        let out = std::env::temp_dir().join(format!("et-ckpt-floats-{}", std::process::id()));
        let mut st = TrainState::fresh(TrainConfig::default(), Schedule::baseline(32, 1.0), 2);
        st.elapsed_s = 994.1414234139935;
        st.stage_elapsed_s = 958.7872702291189;
        st.stage_seconds = vec![994.1414234139935, 958.7872702291189];
        st.val_top1 = Some(958.7872702291189);
        let writer = |d: &Path| std::fs::write(d.join("model.safetensors"), b"weights").map_err(|e| io_err(d, e));
        let dir = save(&out, &st, &writer).unwrap();
        let back = verify(&dir).unwrap();
        assert_eq!(back.elapsed_s.to_bits(), st.elapsed_s.to_bits());
        assert_eq!(back.stage_seconds, st.stage_seconds);
        // A state that cannot read back is refused at save time, not found damaged later.
        st.elapsed_s = f64::NAN;
        st.step = 1;
        let err = save(&out, &st, &writer).unwrap_err().to_string();
        assert!(err.contains("no checkpoint written"), "{err}");
        assert_eq!(locate(&out).unwrap().dir, dir, "the good checkpoint stays the latest");
        std::fs::remove_dir_all(&out).ok();
    }
}
