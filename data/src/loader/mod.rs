//! A deterministic, multi-threaded, prefetching batch loader.
//!
//! Determinism comes from keying every random draw by `(seed, epoch, dataset index)`
//! and assembling each batch in order, so the number of threads and their scheduling
//! never change a batch. A producer thread builds batches ahead of the consumer
//! through a bounded channel; the samples of one batch are transformed in parallel
//! on the loader's own rayon pool, so the loader does not compete with (or deadlock
//! on) the global pool used by the training step. Each transform writes its sample
//! straight into its slot of the batch (no per-sample tensor, no copy by the producer,
//! which would leave the pool idle meanwhile); a consumer that is done with a batch can
//! hand its buffer back (`BatchIter::recycle`).
//!
//! An ImageFolder is visited in a shuffled order of its indices, each transform reading its
//! own file. Shards are streamed (`stream.rs`): a reader thread goes through this rank's
//! shards front to back and hands each batch's bytes to the producer.

mod item;
mod producer;

pub use item::Item;
use crate::dataset::Dataset;
use crate::shards::ShardSet;
use crate::stream::{self, RankStream};
use crate::{DataError, Rng};
use producer::Producer;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoaderConfig {
    pub batch_size: usize,
    pub shuffle: bool,
    pub drop_last: bool,
    pub seed: u64,
    /// Transform threads; 0 lets rayon choose (one per core).
    pub threads: usize,
    /// Batches built ahead of the consumer (0: build the next one while it waits).
    pub prefetch: usize,
    /// Leave undecodable samples out of their batch (listed in `Batch::skipped`)
    /// instead of ending the epoch with an error.
    pub skip_corrupt: bool,
    /// This process's share of every batch in a data-parallel job.
    pub shard: Shard,
    /// Samples of the shuffle buffer when streaming shards (`stream.rs`).
    pub shuffle_buffer: usize,
}

/// Rank `rank` of `world` processes that split the data. An ImageFolder: with a batch size
/// of b each, the epoch is cut into global batches of b·world samples, and rank r takes
/// samples r·b..(r + 1)·b of each, so over an epoch the ranks see every sample once, and
/// together each step's batch is the one a single process would see. Shards: each rank
/// reads its own shards (`stream.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub rank: usize,
    pub world: usize,
}

impl Default for Shard {
    fn default() -> Self {
        Shard { rank: 0, world: 1 }
    }
}

/// The dataset indices of each batch of rank `shard` in an epoch visited in `order`, from
/// global batch `first_batch` on.
pub fn shard_batches(order: &[usize], batch_size: usize, drop_last: bool, shard: Shard, first_batch: usize) -> Vec<Vec<usize>> {
    let global = batch_size * shard.world.max(1);
    order
        .chunks(global)
        .filter(|b| !drop_last || b.len() == global)
        .skip(first_batch)
        .map(|b| b[(shard.rank * batch_size).min(b.len())..((shard.rank + 1) * batch_size).min(b.len())].to_vec())
        .collect()
}

/// One batch in NCHW layout. With `skip_corrupt`, `N` may be smaller than the batch
/// size, and 0 if every sample of the batch failed.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub images: Vec<f32>,
    pub labels: Vec<usize>,
    /// Dataset indices of the samples, in batch order.
    pub indices: Vec<usize>,
    pub shape: [usize; 4],
    /// Samples left out of this batch, with the reason.
    pub skipped: Vec<(PathBuf, String)>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// The visiting order of one epoch: a Fisher–Yates shuffle keyed by `(seed, epoch)`,
/// or the identity.
pub fn epoch_order(len: usize, seed: u64, epoch: u64, shuffle: bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    if shuffle {
        Rng::from_keys(&[seed, epoch, 0x5348]).shuffle(&mut order);
    }
    order
}

/// What one epoch of this rank reads: batches of dataset indices, and for shards the
/// stream and the input positions of each batch.
struct EpochPlan {
    batches: Vec<Vec<usize>>,
    stream: Option<(RankStream, Vec<Vec<usize>>, std::ops::Range<usize>)>,
}

pub struct Loader {
    data: Arc<Dataset>,
    cfg: LoaderConfig,
    /// `None` only if the OS refused to start threads; transforms then run on the
    /// producer thread, with the same results.
    pool: Option<Arc<rayon::ThreadPool>>,
    /// Batch buffers handed back (`BatchIter::recycle`), kept across epochs: at most
    /// `prefetch + 2`, what can be in flight at once; more are dropped.
    recycle: SyncSender<Vec<f32>>,
    recycled: Arc<std::sync::Mutex<Receiver<Vec<f32>>>>,
}

impl Loader {
    pub fn new(data: Arc<Dataset>, cfg: LoaderConfig) -> Self {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(cfg.threads)
            .thread_name(|i| format!("et-loader-{i}"))
            .build()
            .ok()
            .map(Arc::new);
        let (recycle, recycled) = sync_channel(cfg.prefetch + 2);
        Loader { data, cfg, pool, recycle, recycled: Arc::new(std::sync::Mutex::new(recycled)) }
    }

    pub fn config(&self) -> &LoaderConfig {
        &self.cfg
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Steps (batches of this rank) in `epoch`: global batches of an ImageFolder; for shards
    /// the same count on every rank when dropping incomplete batches (`stream::batches`).
    pub fn batches_in_epoch(&self, epoch: u64) -> usize {
        let (b, shard, c) = (self.cfg.batch_size.max(1), self.cfg.shard, &self.cfg);
        match &*self.data {
            Dataset::Folder(f) => {
                let (n, global) = (f.samples.len(), b * shard.world.max(1));
                if c.drop_last {
                    n / global
                } else {
                    n.div_ceil(global)
                }
            }
            Dataset::Shards(s) => stream::batches(&self.rank_sizes(s, epoch), shard.rank, b, c.drop_last),
        }
    }

    /// Samples each rank streams in `epoch`.
    fn rank_sizes(&self, s: &ShardSet, epoch: u64) -> Vec<usize> {
        let (sizes, world) = (s.sizes(), self.cfg.shard.world.max(1));
        if self.cfg.shuffle {
            stream::rank_sizes(&sizes, world, self.cfg.seed, epoch)
        } else {
            let n = s.len();
            (0..world).map(|r| n / world + usize::from(r < n % world)).collect()
        }
    }

    fn plan(&self, epoch: u64, first_batch: usize) -> EpochPlan {
        let c = &self.cfg;
        match &*self.data {
            Dataset::Folder(f) => {
                let order = epoch_order(f.samples.len(), c.seed, epoch, c.shuffle);
                EpochPlan { batches: shard_batches(&order, c.batch_size, c.drop_last, c.shard, first_batch), stream: None }
            }
            Dataset::Shards(s) => {
                let rs = stream::rank_stream(&s.sizes(), c.shard.rank, c.shard.world, c.seed, epoch, c.shuffle, c.shuffle_buffer);
                let (b, n) = (c.batch_size, rs.output.len());
                let end = (self.batches_in_epoch(epoch) * b).min(n);
                let start = (first_batch * b).min(end);
                let positions: Vec<Vec<usize>> = (start..end).step_by(b).map(|p| rs.output[p..(p + b).min(end)].to_vec()).collect();
                let batches = positions.iter().map(|ps| ps.iter().map(|&i| rs.input[i]).collect()).collect();
                EpochPlan { batches, stream: Some((rs, positions, start..end)) }
            }
        }
    }

    /// Starts producing the batches of `epoch`. `transform(item, rng, slot)` writes
    /// the sample's CHW tensor of shape `chw` into `slot` (exactly that many values, of
    /// a recycled or zeroed buffer); its `rng` is `Rng::from_keys(&[seed, epoch, index])`.
    pub fn epoch<F>(&self, epoch: u64, chw: [usize; 3], transform: Arc<F>) -> BatchIter
    where
        F: Fn(&Item, &mut Rng, &mut [f32]) -> Result<(), DataError> + Send + Sync + 'static + ?Sized,
    {
        self.epoch_from(epoch, 0, chw, transform)
    }

    /// The batches of `epoch` from batch `first_batch` on, identical to the tail of
    /// `epoch(..)` (sample keys do not depend on where iteration starts): how a resumed
    /// run picks up in the middle of an epoch without decoding what it already used.
    pub fn epoch_from<F>(&self, epoch: u64, first_batch: usize, chw: [usize; 3], transform: Arc<F>) -> BatchIter
    where
        F: Fn(&Item, &mut Rng, &mut [f32]) -> Result<(), DataError> + Send + Sync + 'static + ?Sized,
    {
        let (tx, rx) = sync_channel(self.cfg.prefetch);
        let recycle = self.recycle.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let invalid = if self.cfg.batch_size == 0 {
            Some("batch size must be at least 1")
        } else if self.cfg.shard.rank >= self.cfg.shard.world {
            Some("the shard's rank must be below its world size")
        } else if chw.contains(&0) {
            Some("the sample shape must not be empty")
        } else {
            None
        };
        if let Some(msg) = invalid {
            let _ = tx.send(Err(DataError::Invalid(msg.into())));
            return BatchIter { rx: Some(rx), recycle, stop, handle: None, remaining: 1 };
        }
        let plan = self.plan(epoch, first_batch);
        let remaining = plan.batches.len();
        let job = Producer {
            data: self.data.clone(),
            cfg: self.cfg.clone(),
            pool: self.pool.clone(),
            epoch,
            chw,
            stop: stop.clone(),
            recycled: self.recycled.clone(),
        };
        let spawned = std::thread::Builder::new().name("et-loader-producer".into()).spawn(move || job.run(plan, &*transform, tx));
        match spawned {
            Ok(handle) => BatchIter { rx: Some(rx), recycle, stop, handle: Some(handle), remaining },
            Err(e) => {
                let (tx, rx) = sync_channel(1);
                let _ = tx.send(Err(DataError::Invalid(format!("cannot start the loader thread: {e}"))));
                BatchIter { rx: Some(rx), recycle, stop, handle: None, remaining: 1 }
            }
        }
    }
}

/// The batches of one epoch. Dropping it stops the producer (after the batch in
/// progress) and waits for it, so no thread outlives the iterator.
pub struct BatchIter {
    rx: Option<Receiver<Result<Batch, DataError>>>,
    recycle: SyncSender<Vec<f32>>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
    remaining: usize,
}

impl Iterator for BatchIter {
    type Item = Result<Batch, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        let item = self.rx.as_ref()?.recv().ok();
        match item {
            Some(Ok(b)) => {
                self.remaining = self.remaining.saturating_sub(1);
                Some(Ok(b))
            }
            Some(Err(e)) => {
                self.finish();
                Some(Err(e))
            }
            None => {
                // The producer is done; a panic outside the transforms would otherwise
                // look like a short epoch.
                let panicked = self.handle.take().map(|h| h.join().is_err()).unwrap_or(false);
                self.finish();
                panicked.then(|| Err(DataError::Invalid("the loader thread panicked".into())))
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        if self.rx.is_some() {
            (0, Some(self.remaining))
        } else {
            (0, Some(0))
        }
    }
}

impl BatchIter {
    /// Hands a batch's `images` back for a later batch to be written into: no fresh
    /// memory to fault in and zero. Optional; a buffer the loader has no room for is
    /// dropped.
    pub fn recycle(&self, images: Vec<f32>) {
        let _ = self.recycle.try_send(images);
    }

    fn finish(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Dropping the receiver wakes a producer blocked on a full channel.
        self.rx = None;
        self.remaining = 0;
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for BatchIter {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests;
