//! The producer thread of an epoch: builds each batch by running the transforms in parallel,
//! with the bytes of shard samples from a reader thread that streams ahead of it.

use super::{Batch, EpochPlan, Item, LoaderConfig};
use crate::dataset::Dataset;
use crate::shards::ShardSet;
use crate::stream::RankStream;
use crate::stream_reader::{Payload, StreamReader};
use crate::{DataError, Rng};
use rayon::prelude::*;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

/// What the producer thread needs, detached from the `Loader`.
pub(super) struct Producer {
    pub(super) data: Arc<Dataset>,
    pub(super) cfg: LoaderConfig,
    pub(super) pool: Option<Arc<rayon::ThreadPool>>,
    pub(super) epoch: u64,
    pub(super) chw: [usize; 3],
    pub(super) stop: Arc<AtomicBool>,
    /// Batch buffers the consumer handed back (only producer threads take them).
    pub(super) recycled: Arc<std::sync::Mutex<Receiver<Vec<f32>>>>,
}

/// Outcome of one sample: written into its slot, or an error the batch may skip, or one
/// that always ends the epoch (a panic is a bug, not a bad file).
enum Outcome {
    Ok,
    Failed(DataError),
    Fatal(DataError),
    Cancelled,
}

/// Reads a rank's stream on its own thread, one batch's bytes at a time, ahead of the
/// producer; it stops when the producer drops the receiver.
fn spawn_reader(set: Arc<ShardSet>, stream: RankStream, positions: Vec<Vec<usize>>, range: std::ops::Range<usize>, ahead: usize) -> (Receiver<Vec<Payload>>, Option<JoinHandle<()>>) {
    let (tx, rx) = sync_channel(ahead.max(1));
    let handle = std::thread::Builder::new().name("et-loader-reader".into()).spawn(move || {
        let mut reader = StreamReader::new(set, &stream, range);
        for ps in positions {
            if tx.send(reader.take(&ps)).is_err() {
                return;
            }
        }
    });
    (rx, handle.ok())
}

impl Producer {
    pub(super) fn run<F>(self, plan: EpochPlan, transform: &F, tx: SyncSender<Result<Batch, DataError>>)
    where
        F: Fn(&Item, &mut Rng, &mut [f32]) -> Result<(), DataError> + Sync + ?Sized,
    {
        let (bytes, reader) = match (&*self.data, plan.stream) {
            (Dataset::Shards(s), Some((rs, positions, range))) => {
                let (rx, handle) = spawn_reader(s.clone(), rs, positions, range, self.cfg.prefetch + 1);
                (Some(rx), handle)
            }
            _ => (None, None),
        };
        for indices in plan.batches {
            let payloads = match &bytes {
                Some(rx) => match rx.recv() {
                    Ok(p) => Some(p),
                    Err(_) => {
                        let _ = tx.send(Err(DataError::Invalid("the shard reader thread stopped".into())));
                        break;
                    }
                },
                None => None,
            };
            let Some(item) = self.batch(&indices, payloads.as_deref(), transform) else { break };
            let fatal = item.is_err();
            if tx.send(item).is_err() || fatal {
                break;
            }
        }
        // The reader ends once its channel is gone; no thread outlives the epoch.
        drop(bytes);
        if let Some(h) = reader {
            let _ = h.join();
        }
    }

    fn sample<F>(&self, index: usize, payload: Option<&Payload>, transform: &F, slot: &mut [f32]) -> Outcome
    where
        F: Fn(&Item, &mut Rng, &mut [f32]) -> Result<(), DataError> + Sync + ?Sized,
    {
        if self.stop.load(Ordering::Relaxed) {
            return Outcome::Cancelled;
        }
        let name = self.data.name(index);
        let label = self.data.label(index);
        let item = match payload {
            None => Item::file(index, &name, label),
            Some(Ok(bytes)) => Item::in_memory(index, &name, label, bytes),
            Some(Err(reason)) => return Outcome::Failed(DataError::Member { path: name.into_owned(), reason: reason.clone() }),
        };
        let mut rng = Rng::from_keys(&[self.cfg.seed, self.epoch, index as u64]);
        match catch_unwind(AssertUnwindSafe(|| transform(&item, &mut rng, slot))) {
            Ok(Ok(())) => Outcome::Ok,
            Ok(Err(e)) => Outcome::Failed(e),
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                Outcome::Fatal(DataError::Invalid(format!("the transform panicked on {}: {msg}", name.display())))
            }
        }
    }

    /// A batch buffer of `len` values: a recycled one (its old values are overwritten),
    /// or a zeroed one (fresh memory from the allocator costs no zeroing pass).
    fn buffer(&self, len: usize) -> Vec<f32> {
        let recycled = self.recycled.lock().ok().and_then(|r| r.try_recv().ok());
        match recycled {
            Some(mut v) => {
                v.resize(len, 0.0);
                v
            }
            None => vec![0.0; len],
        }
    }

    /// Builds one batch (`payloads`: the samples' bytes when streaming shards); `None` when
    /// the consumer has gone away.
    fn batch<F>(&self, indices: &[usize], payloads: Option<&[Payload]>, transform: &F) -> Option<Result<Batch, DataError>>
    where
        F: Fn(&Item, &mut Rng, &mut [f32]) -> Result<(), DataError> + Sync + ?Sized,
    {
        let [c, h, w] = self.chw;
        let size = c * h * w;
        let mut images = self.buffer(indices.len() * size);
        let payload = |k: usize| payloads.and_then(|p| p.get(k));
        let outcomes: Vec<Outcome> = match &self.pool {
            Some(pool) => pool.install(|| images.par_chunks_mut(size).zip(indices.par_iter()).enumerate().map(|(k, (slot, &i))| self.sample(i, payload(k), transform, slot)).collect()),
            None => images.chunks_mut(size).zip(indices).enumerate().map(|(k, (slot, &i))| self.sample(i, payload(k), transform, slot)).collect(),
        };
        let mut batch = Batch { images: Vec::new(), labels: Vec::with_capacity(indices.len()), indices: Vec::with_capacity(indices.len()), shape: [0, c, h, w], skipped: Vec::new() };
        for (k, (&i, outcome)) in indices.iter().zip(outcomes).enumerate() {
            match outcome {
                Outcome::Ok => {
                    // Close the gap a skipped sample left.
                    let kept = batch.labels.len();
                    if kept != k {
                        images.copy_within(k * size..(k + 1) * size, kept * size);
                    }
                    batch.labels.push(self.data.label(i));
                    batch.indices.push(i);
                }
                Outcome::Failed(e) if self.cfg.skip_corrupt => {
                    batch.skipped.push((self.data.name(i).into_owned(), e.to_string()));
                }
                Outcome::Failed(e) | Outcome::Fatal(e) => return Some(Err(e)),
                Outcome::Cancelled => return None,
            }
        }
        batch.shape[0] = batch.labels.len();
        images.truncate(batch.labels.len() * size);
        batch.images = images;
        Some(Ok(batch))
    }
}
