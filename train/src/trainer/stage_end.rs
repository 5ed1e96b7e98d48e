//! The end of a stage — validation (sharded over the ranks), the weights and plot saved,
//! a checkpoint — and the end of the run.

use super::{Event, StageRun, Summary, Trainer};
use crate::checkpoint::{self, EMA_FILE, OPTIMIZER_FILE, REPLAY_FILE};
use crate::dist_sync::{average_buffers, sum_counts};
use crate::TrainError;
use candle_core::Tensor;
use et_data::dataset::Dataset;
use et_data::evaluation::{evaluate_dataset, EvalOptions};
use et_data::loader::Shard;
use et_data::replay::ReplayBuffer;
use et_kernels::CandleOps;
use et_models::Model;
use et_runfiles::{METRICS_FILE, PLOT_FILE, WEIGHTS_FILE};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// The replay buffer file of rank `rank` of `world` in a checkpoint.
pub(crate) fn replay_file(rank: usize, world: usize) -> String {
    if world == 1 {
        REPLAY_FILE.to_string()
    } else {
        format!("replay-rank{rank}.safetensors")
    }
}

impl Trainer<'_> {
    /// Top-1, top-5 and the number of unreadable images skipped, on the validation split at
    /// the base resolution: each rank evaluates its share of the images (the loader's
    /// `Shard`), the counts are summed.
    fn evaluate(&self, val: &Arc<Dataset>, model: &Model) -> Result<(f64, f64, usize), TrainError> {
        let (c, comm) = (&self.cfg, self.comm.as_ref());
        let device = &self.learner.device;
        let shard = Shard { rank: comm.rank(), world: comm.world() };
        let opts = EvalOptions { batch_size: c.optim.batch_size.max(64), threads: c.data.threads.max(1), skip_corrupt: !c.data.strict_data, shard };
        let out = evaluate_dataset::<TrainError, _>(val, self.data.base, self.data.classes(), &self.pre, &opts, |images, shape| {
            let x = Tensor::from_slice(images, shape.as_slice(), device)?;
            Ok(model.forward(&CandleOps::inference(), &x)?.flatten_all()?.to_vec1::<f32>()?)
        })?;
        let t = &out.totals;
        let [images, top1, top5, skipped] = sum_counts(comm, [t.images as f64, t.top1 as f64, t.top5 as f64, out.skipped.len() as f64])?;
        Ok((top1 / images.max(1.0), top5 / images.max(1.0), skipped as usize))
    }

    /// Validation (live weights, then the EMA), the weights saved, metrics, plot, checkpoint.
    pub(super) fn end_stage(&mut self, mut stage: StageRun) -> Result<(), TrainError> {
        let si = stage.index;
        // timm's --dist-bn reduce: every rank's batches moved the statistics differently.
        average_buffers(self.comm.as_ref(), &self.learner.params)?;
        if let Some(e) = &self.learner.ema {
            average_buffers(self.comm.as_ref(), &e.ema.store)?;
        }
        // The images this stage skipped, counted over all ranks.
        let global = sum_counts(self.comm.as_ref(), [stage.skipped as f64])?[0] as usize;
        self.state.skipped += global - stage.skipped;
        stage.skipped = global;
        let val_start = Instant::now();
        let (mut val_top1, mut val_top5, mut ema_top1) = (None, None, None);
        if let Some(val) = &self.data.val {
            let (t1, t5, sk) = self.evaluate(val, &self.learner.model)?;
            (val_top1, val_top5) = (Some(t1), Some(t5));
            stage.skipped += sk;
            self.state.skipped += sk;
            if let Some(e) = &self.learner.ema {
                ema_top1 = Some(self.evaluate(val, &e.model)?.0);
            }
        }
        (self.state.val_top1, self.state.val_top5, self.state.ema_top1) = (val_top1, val_top5, ema_top1);
        let val_seconds = val_start.elapsed().as_secs_f64();
        let out = self.cfg.run.out.clone();
        if self.comm.is_root() {
            self.learner.params.save(&out.join(WEIGHTS_FILE))?;
            if let Some(e) = &self.learner.ema {
                e.ema.store.save(&out.join(EMA_FILE))?;
            }
        }
        let seconds = stage.elapsed_before + stage.started.elapsed().as_secs_f64();
        let mean_loss = self.state.stage_loss_sum() / self.state.stage_step.max(1) as f64;
        let (resolution, magnitude) = (self.stage(si).resolution, self.stage(si).magnitude);
        let low_pass = self.stage(si).low_pass(self.plan.schedule.base_resolution, self.cfg.data.low_freq);
        (self.on_event)(&Event::StageEnd { stage: si, resolution, seconds, val_top1, val_top5, ema_top1, mean_loss, skipped: stage.skipped });
        let progress = self.state.progress();
        self.metrics.log(json!({"event": "stage_end", "stage": si, "resolution": resolution, "magnitude": magnitude, "low_pass": low_pass, "seconds": seconds, "val_seconds": val_seconds, "val_top1": val_top1, "val_top5": val_top5, "ema_top1": ema_top1, "train_loss": mean_loss, "progress": progress, "skipped": stage.skipped, "step": self.state.step}))?;
        if self.comm.is_root() {
            let curves = crate::plot::read_metrics(&out.join(METRICS_FILE), &self.plan.schedule.name)?;
            crate::plot::write_png(&[curves], &out.join(PLOT_FILE))?;
        }
        self.state.finish_stage(seconds);
        self.checkpoint(None)?;
        Ok(())
    }

    /// Writes a checkpoint of the run as it stands (with the stage's replay buffers
    /// mid-stage: every rank's, gathered on rank 0, which alone writes).
    pub(super) fn checkpoint(&mut self, replay: Option<&ReplayBuffer>) -> Result<Option<PathBuf>, TrainError> {
        let comm = self.comm.clone();
        let (rank, world) = (comm.rank(), comm.world());
        let replays = match replay {
            Some(buf) => Some(et_dist::all_gather_bytes(comm.as_ref(), &crate::replay_io::to_bytes(buf)?)?),
            None => None,
        };
        if rank != 0 {
            return Ok(None);
        }
        self.state.elapsed_s = self.elapsed();
        self.state.metrics_len = self.metrics.position()?;
        self.state.world = world;
        let l = &self.learner;
        let write = |dir: &Path| -> Result<(), TrainError> {
            l.params.save(&dir.join(WEIGHTS_FILE))?;
            et_models::params::save_tensors(&l.opt.state_tensors()?, &dir.join(OPTIMIZER_FILE))?;
            if let Some(e) = &l.ema {
                e.ema.store.save(&dir.join(EMA_FILE))?;
            }
            for (r, bytes) in replays.iter().flatten().enumerate() {
                et_runfiles::write(&dir.join(replay_file(r, world)), bytes).map_err(|e| TrainError::Output(format!("cannot write the replay buffer: {e}")))?;
            }
            Ok(())
        };
        let dir = checkpoint::save(&self.cfg.run.out, &self.state, &write)?;
        (self.on_event)(&Event::Checkpoint { dir: &dir, step: self.state.step });
        self.last_checkpoint = Some(dir.clone());
        Ok(Some(dir))
    }

    pub(super) fn finish(mut self) -> Result<Summary, TrainError> {
        let seconds = self.elapsed();
        let st = &self.state;
        let stages: Vec<(usize, f64)> = self.plan.schedule.stages.iter().map(|x| x.resolution).zip(st.stage_seconds.iter().copied()).collect();
        let summary = Summary { seconds, val_top1: st.val_top1, val_top5: st.val_top5, ema_top1: st.ema_top1, steps: st.step, skipped: st.skipped, stages };
        self.metrics.log(json!({"event": "done", "seconds": seconds, "val_top1": summary.val_top1, "val_top5": summary.val_top5, "ema_top1": summary.ema_top1, "steps": st.step, "skipped": st.skipped, "stage_seconds": &st.stage_seconds}))?;
        Ok(summary)
    }
}

