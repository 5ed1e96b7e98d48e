//! Checkpoints for exact resumption: the weights, their EMA, the optimiser's moments and a
//! JSON training state, written into a fresh directory that is renamed into place and then
//! named by `checkpoints/latest` (itself replaced by rename), so a run killed at any instant
//! leaves the previous complete checkpoint or the new one, never a mix.
//!
//! Every random draw of a run is keyed by counters (seed, loader epoch, sample index,
//! optimiser step), so the RNG state *is* those counters: restoring them, the weights, the
//! moments and the compute progress (stored bit-exactly) continues the run exactly.

use crate::config::TrainConfig;
use crate::schedule::Schedule;
use crate::TrainError;
use serde::{Deserialize, Serialize};
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

/// Writes a checkpoint of `state` under `out/checkpoints/step-NNNNNNNN/`: `write_tensors`
/// fills the directory with the tensor files, then the state is added, the directory renamed
/// into place, `latest` pointed at it and older checkpoints removed. Returns its path.
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
    let json = serde_json::to_vec_pretty(state).map_err(|e| TrainError::Internal(format!("training state: {e}")))?;
    write_atomic(&tmp.join(STATE_FILE), &json)?;
    let dir = root.join(&name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
    }
    std::fs::rename(&tmp, &dir).map_err(|e| io_err(&dir, e))?;
    et_runfiles::sync_dir(&root).map_err(|e| io_err(&root, e))?;
    write_atomic(&root.join(LATEST), name.as_bytes())?;
    // Only `latest` is ever read; anything else is a superseded checkpoint or a leftover.
    for entry in std::fs::read_dir(&root).map_err(|e| io_err(&root, e))?.flatten() {
        let p = entry.path();
        if p.is_dir() && p.file_name().is_some_and(|n| n != name.as_str()) {
            std::fs::remove_dir_all(&p).ok();
        }
    }
    Ok(dir)
}

/// The checkpoint directory named by `dir`: a checkpoint itself (has state.json), or a run
/// directory whose `checkpoints/latest` names one.
pub fn locate(dir: &Path) -> Result<PathBuf, TrainError> {
    if dir.join(STATE_FILE).is_file() {
        return Ok(dir.to_path_buf());
    }
    let latest = dir.join(CHECKPOINTS_DIR).join(LATEST);
    match std::fs::read_to_string(&latest) {
        Ok(name) => {
            let ckpt = dir.join(CHECKPOINTS_DIR).join(name.trim());
            if ckpt.join(STATE_FILE).is_file() {
                Ok(ckpt)
            } else {
                Err(TrainError::Config(format!("{} names {}, which has no {STATE_FILE}: the checkpoint is incomplete", latest.display(), ckpt.display())))
            }
        }
        Err(_) => Err(TrainError::Config(format!(
            "no checkpoint in {}: pass a run directory with {CHECKPOINTS_DIR}/{LATEST} (written with --save-every-steps or at stage ends) or a checkpoint directory",
            dir.display()
        ))),
    }
}

/// Reads the training state of a checkpoint directory.
pub fn load_state(ckpt: &Path) -> Result<TrainState, TrainError> {
    let path = ckpt.join(STATE_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| TrainError::Config(format!("cannot read {}: {e}", path.display())))?;
    let state: TrainState = serde_json::from_str(&text).map_err(|e| TrainError::Config(format!("{} is not a training state: {e}", path.display())))?;
    if state.format != FORMAT {
        return Err(TrainError::Config(format!("{} has format {}, this et-train reads {FORMAT}", path.display(), state.format)));
    }
    Ok(state)
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
    fn save_replaces_and_locate_finds_the_latest() {
        let out = std::env::temp_dir().join(format!("et-ckpt-{}", std::process::id()));
        std::fs::create_dir_all(&out).unwrap();
        let cfg = TrainConfig::default();
        let mut st = TrainState::fresh(cfg, Schedule::baseline(32, 1.0), 2);
        st.set_progress(0.1 + 0.2);
        st.step = 3;
        let writer = |d: &Path| std::fs::write(d.join("model.safetensors"), b"x").map_err(|e| io_err(d, e));
        let a = save(&out, &st, &writer).unwrap();
        st.step = 7;
        let b = save(&out, &st, &writer).unwrap();
        assert!(!a.exists(), "superseded checkpoint removed");
        assert_eq!(locate(&out).unwrap(), b);
        assert_eq!(locate(&b).unwrap(), b);
        assert_eq!(run_dir_of(&b).unwrap(), out);
        let back = load_state(&b).unwrap();
        assert_eq!(back.step, 7);
        assert_eq!(back.progress().to_bits(), (0.1f64 + 0.2).to_bits(), "progress is bit-exact");
        assert!(locate(&out.join("nothing")).unwrap_err().to_string().contains("no checkpoint"));
        std::fs::remove_dir_all(&out).ok();
    }
}
