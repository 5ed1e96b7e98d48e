//! Where a step's micro-batches come from: the stage's loader (across epoch boundaries,
//! its position kept in the run state), the replay buffer and mixing on the host, then the
//! copy to the device. The next micro-batch is prepared while the current one computes
//! (`Ahead`), except across a checkpoint or a stage end, so that a checkpoint's loader
//! position and replay buffer are those of the steps it holds.

use super::{step_rng, Event, StageRun, Trainer};
use crate::upload::{HostBatch, Pending, Uploader};
use crate::TrainError;
use candle_core::Device;
use et_data::loader::{Batch, BatchIter, Item, Loader};
use et_data::mixup;
use et_data::{DataError, Rng};
use std::sync::Arc;

pub(super) type SampleTransform = dyn Fn(&Item, &mut Rng, &mut [f32]) -> Result<(), DataError> + Send + Sync;

/// Micro-batches across epoch boundaries, tracking the loader's position in the state.
pub(super) struct Stream {
    pub loader: Loader,
    pub transform: Arc<SampleTransform>,
    pub chw: [usize; 3],
    pub iter: Option<BatchIter>,
}

impl Stream {
    fn next(&mut self, st: &mut crate::checkpoint::TrainState) -> Result<Batch, TrainError> {
        loop {
            if self.iter.is_none() && self.loader.batches_in_epoch(st.epoch) == 0 {
                return Err(self.no_batch(st.epoch));
            }
            let iter = self.iter.get_or_insert_with(|| self.loader.epoch_from(st.epoch, st.next_batch, self.chw, self.transform.clone()));
            match iter.next() {
                Some(b) => {
                    st.next_batch += 1;
                    return Ok(b?);
                }
                None => {
                    st.epoch += 1;
                    st.next_batch = 0;
                    self.iter = None;
                }
            }
        }
    }

    /// An epoch that gives a rank no whole batch (shards too few or too uneven for the ranks).
    fn no_batch(&self, epoch: u64) -> TrainError {
        let c = self.loader.config();
        TrainError::Config(format!(
            "epoch {epoch} gives process {} of {} no whole batch of {} images from its shards ({} images in all): use more, smaller shards (et-pack --shard-mb), fewer processes or a smaller --batch-size",
            c.shard.rank,
            c.shard.world,
            c.batch_size,
            self.loader.len()
        ))
    }
}

/// A micro-batch prepared ahead: micro-batch `k` of step `step`, on its way to the device.
pub(super) struct Ahead {
    pub step: usize,
    pub k: usize,
    pub pending: Pending,
    pub images: usize,
    pub shape: Vec<usize>,
}

/// How micro-batches are prepared; `ET_PREFETCH` (for tests) overrides the default:
/// `0` prepares each micro-batch when the step needs it, `thread` uses the upload thread
/// even on the CPU. By default the next micro-batch is prepared during the current one,
/// and copied by the upload thread on a GPU.
pub(super) fn prefetch(device: &Device) -> Result<(bool, Uploader), TrainError> {
    let mode = std::env::var("ET_PREFETCH").unwrap_or_default();
    let (look_ahead, threaded) = match mode.as_str() {
        "0" => (false, false),
        "thread" => (true, true),
        _ => (true, device.is_cuda()),
    };
    let uploader = Uploader::new(device, threaded).map_err(|e| TrainError::Internal(format!("cannot start the upload thread: {e}")))?;
    Ok((look_ahead, uploader))
}

impl Trainer<'_> {
    /// The next loaded batch; a batch whose every image was unreadable is skipped whole.
    fn next_batch(&mut self, stage: &mut StageRun) -> Result<Batch, TrainError> {
        loop {
            let b = stage.stream.next(&mut self.state)?;
            for (path, reason) in &b.skipped {
                self.state.skipped += 1;
                stage.skipped += 1;
                (self.on_event)(&Event::Skipped { path, reason });
            }
            if !b.labels.is_empty() {
                return Ok(b);
            }
        }
    }

    /// Micro-batch `k` of step `step`: replayed chunks added, mixed, and sent to the device.
    pub(super) fn prepare(&mut self, stage: &mut StageRun, step: usize, k: usize) -> Result<Ahead, TrainError> {
        let mut batch = self.next_batch(stage)?;
        let (seed, rank) = (self.cfg.run.seed, self.rank_key());
        let key = |stream: u64| step_rng(seed, step, stream ^ rank, k);
        let times = self.stage(stage.index).replay.map_or(1, |rp| rp.times.max(1));
        let (mut images, labels, shape) = match &mut stage.replay {
            Some(buf) => buf.step_batch(&batch.images, batch.shape, &batch.labels, times, &mut key(0x7270))?,
            None => (std::mem::take(&mut batch.images), batch.labels.clone(), batch.shape),
        };
        let classes = self.data.classes();
        let targets = if self.mix.enabled() {
            mixup::apply(&self.mix, &mut images, shape, &labels, &mut key(0x6d78))
        } else {
            mixup::smoothed_targets(&labels, classes, self.cfg.optim.label_smoothing)
        };
        let shape = shape.to_vec();
        let pending = self.uploader.upload(HostBatch { images, shape: shape.clone(), targets, classes });
        Ok(Ahead { step, k, pending, images: labels.len(), shape })
    }

    /// Micro-batch `k` of step `step`: the one prepared ahead, or prepared now.
    pub(super) fn take_input(&mut self, stage: &mut StageRun, step: usize, k: usize) -> Result<Ahead, TrainError> {
        match stage.ahead.take() {
            Some(a) if (a.step, a.k) == (step, k) => Ok(a),
            Some(a) => Err(TrainError::Internal(format!("micro-batch {} of step {} was prepared for micro-batch {k} of step {step}", a.k, a.step))),
            None => self.prepare(stage, step, k),
        }
    }
}
