//! The plan of a run, before any image is decoded: per stage the micro-batch, gradient
//! accumulation and optimiser steps, and the learning-rate and weight-decay schedules over
//! compute progress. `et-train --dry-run` prints it; the trainer follows it.

use crate::config::TrainConfig;
use crate::lr::CosineSchedule;
use crate::schedule::Schedule;
use crate::TrainError;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StagePlan {
    /// Images per forward pass over all ranks (the stage's batch size, or the run's).
    pub micro_batch: usize,
    /// Freshly loaded images per micro-batch over all ranks (fewer than `micro_batch` with a
    /// replay buffer).
    pub fresh: usize,
    /// This rank's share of `fresh` (each of the `world` ranks loads as many).
    pub fresh_per_rank: usize,
    /// Micro-batches per optimiser step.
    pub accumulation: usize,
    pub steps: usize,
    /// Learning rate at the stage's first step.
    pub lr: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub schedule: Schedule,
    pub stages: Vec<StagePlan>,
    pub effective_batch: usize,
    pub total_steps: usize,
    pub lr: CosineSchedule,
    pub wd: CosineSchedule,
}

impl Plan {
    /// The plan of `cfg` with `schedule` over `train_images` images, for `world` ranks that
    /// split every batch (batch sizes are global: the recipe is the same at any scale).
    pub fn new(cfg: &TrainConfig, schedule: &Schedule, train_images: usize, world: usize) -> Result<Plan, TrainError> {
        let o = &cfg.optim;
        let effective = cfg.effective_batch();
        let lr = CosineSchedule { lr: o.lr, min_lr: o.min_lr, warmup_lr: o.min_lr.min(o.lr), warmup: (o.warmup_epochs / cfg.schedule.epochs).clamp(0.0, 1.0) };
        let wd = CosineSchedule { lr: o.weight_decay, min_lr: o.weight_decay_end.unwrap_or(o.weight_decay), warmup_lr: o.weight_decay, warmup: 0.0 };
        let mut stages = Vec::new();
        let mut progress = 0.0;
        for (i, st) in schedule.stages.iter().enumerate() {
            let micro = st.batch_size.unwrap_or(o.batch_size);
            if !effective.is_multiple_of(micro) {
                return Err(TrainError::Config(format!("the effective batch {effective} is not a multiple of stage {}'s batch size {micro}: change --effective-batch or the batch sizes", i + 1)));
            }
            let fresh = micro / st.replay.map_or(1, |r| r.times.max(1));
            if fresh == 0 || train_images < fresh {
                return Err(TrainError::Config(format!("stage {}: {train_images} training images cannot fill a batch of {} fresh images: lower --batch-size", i + 1, fresh.max(1))));
            }
            if !fresh.is_multiple_of(world) {
                return Err(TrainError::Config(format!(
                    "stage {}: its batch of {fresh} freshly loaded images cannot be split evenly over {world} processes: --batch-size (and --effective-batch) are global, so give a multiple of {world}{}",
                    i + 1,
                    if micro != fresh { " times the stage's replay factor" } else { "" }
                )));
            }
            let steps = ((st.epochs * train_images as f64 / effective as f64).round() as usize).max(1);
            stages.push(StagePlan { micro_batch: micro, fresh, fresh_per_rank: fresh / world, accumulation: effective / micro, steps, lr: lr.at(progress) });
            progress += schedule.stage_compute(i) / schedule.budget;
        }
        let total_steps = stages.iter().map(|s| s.steps).sum();
        Ok(Plan { schedule: schedule.clone(), stages, effective_batch: effective, total_steps, lr, wd })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::Replay;

    #[test]
    fn accumulation_and_replay_shape_the_stages() {
        let mut cfg = TrainConfig::default();
        cfg.optim.batch_size = 8;
        cfg.optim.effective_batch = Some(32);
        cfg.schedule.epochs = 2.0;
        let mut s = Schedule::baseline(32, 2.0);
        s.stages[0].replay = Some(Replay { times: 2, size: 4, split: 2 });
        let p = Plan::new(&cfg, &s, 100, 1).unwrap();
        assert_eq!(p.stages[0], StagePlan { micro_batch: 8, fresh: 4, fresh_per_rank: 4, accumulation: 4, steps: 6, lr: p.lr.at(0.0) });
        assert_eq!(Plan::new(&cfg, &s, 100, 2).unwrap().stages[0].fresh_per_rank, 2, "batches are global");
        assert!(Plan::new(&cfg, &s, 100, 3).unwrap_err().to_string().contains("split evenly over 3 processes"));
        cfg.optim.effective_batch = Some(12);
        assert!(Plan::new(&cfg, &s, 100, 1).unwrap_err().to_string().contains("not a multiple"));
        cfg.optim.effective_batch = None;
        assert!(Plan::new(&cfg, &s, 3, 1).unwrap_err().to_string().contains("cannot fill"));
    }
}
