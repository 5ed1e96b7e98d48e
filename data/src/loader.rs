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

use crate::dataset::Dataset;
use crate::shards::ShardSet;
use crate::stream::{self, RankStream};
use crate::stream_reader::{Payload, StreamReader};
use crate::{DataError, Rng};
use rayon::prelude::*;
use std::borrow::Cow;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
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

/// One sample as a transform gets it: its index, name (for messages), class and bytes.
pub struct Item<'a> {
    pub index: usize,
    pub name: &'a Path,
    pub label: usize,
    source: Source<'a>,
}

enum Source<'a> {
    File,
    Bytes(&'a [u8]),
}

impl<'a> Item<'a> {
    /// An item whose bytes are the file `name`.
    pub fn file(index: usize, name: &'a Path, label: usize) -> Self {
        Item { index, name, label, source: Source::File }
    }

    /// An item whose bytes are in memory.
    pub fn in_memory(index: usize, name: &'a Path, label: usize, bytes: &'a [u8]) -> Self {
        Item { index, name, label, source: Source::Bytes(bytes) }
    }

    /// The encoded image (a file is read now, on the calling thread).
    pub fn bytes(&self) -> Result<Cow<'a, [u8]>, DataError> {
        match self.source {
            Source::File => std::fs::read(self.name).map(Cow::Owned).map_err(|source| DataError::Io { path: self.name.to_path_buf(), source }),
            Source::Bytes(b) => Ok(Cow::Borrowed(b)),
        }
    }

    /// The decoded image, RGB.
    pub fn decode(&self) -> Result<crate::RgbImage, DataError> {
        crate::decode::decode_bytes(&self.bytes()?).map_err(|reason| DataError::Decode { path: self.name.to_path_buf(), reason })
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

/// What the producer thread needs, detached from the `Loader`.
struct Producer {
    data: Arc<Dataset>,
    cfg: LoaderConfig,
    pool: Option<Arc<rayon::ThreadPool>>,
    epoch: u64,
    chw: [usize; 3],
    stop: Arc<AtomicBool>,
    /// Batch buffers the consumer handed back (only producer threads take them).
    recycled: Arc<std::sync::Mutex<Receiver<Vec<f32>>>>,
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
    fn run<F>(self, plan: EpochPlan, transform: &F, tx: SyncSender<Result<Batch, DataError>>)
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
mod tests {
    use super::*;
    use crate::folder::{ImageFolder, Sample};
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    fn sample_list(n: usize) -> Vec<Sample> {
        (0..n).map(|i| Sample { path: PathBuf::from(format!("img{i}.jpg")), label: i % 7 }).collect()
    }

    /// A folder of `n` files that are never read (the transforms below do not).
    fn samples(n: usize) -> Arc<Dataset> {
        Arc::new(Dataset::Folder(ImageFolder { root: PathBuf::from("."), classes: (0..7).map(|c| c.to_string()).collect(), samples: sample_list(n) }))
    }

    fn cfg(batch_size: usize, threads: usize) -> LoaderConfig {
        LoaderConfig { batch_size, shuffle: true, drop_last: false, seed: 42, threads, prefetch: 2, skip_corrupt: false, shard: Shard::default(), shuffle_buffer: 16 }
    }

    /// A transform that uses its rng and encodes the sample.
    fn noisy(s: &Item, rng: &mut Rng, out: &mut [f32]) -> Result<(), DataError> {
        out.copy_from_slice(&[s.label as f32, rng.uniform() as f32, rng.normal() as f32, s.name.as_os_str().len() as f32]);
        Ok(())
    }

    fn collect(l: &Loader, epoch: u64) -> Vec<Batch> {
        l.epoch(epoch, [1, 2, 2], Arc::new(noisy)).map(|b| b.unwrap()).collect()
    }

    #[test]
    fn order_is_a_keyed_permutation() {
        let a = epoch_order(100, 1, 0, true);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_eq!(a, epoch_order(100, 1, 0, true));
        assert_ne!(a, epoch_order(100, 1, 1, true));
        assert_ne!(a, epoch_order(100, 2, 0, true));
        assert_eq!(epoch_order(5, 1, 0, false), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn identical_whatever_the_thread_count() {
        let s = samples(53);
        let one = Loader::new(s.clone(), cfg(8, 1));
        let three = Loader::new(s.clone(), cfg(8, 3));
        assert_eq!(one.batches_in_epoch(3), 7);
        let a = collect(&one, 3);
        assert_eq!(a, collect(&three, 3));
        assert_ne!(a, collect(&three, 4));
        assert_eq!(a.len(), 7);
        assert_eq!(a[6].shape, [5, 1, 2, 2]);
        let tail: Vec<Batch> = three.epoch_from(3, 4, [1, 2, 2], Arc::new(noisy)).map(|b| b.unwrap()).collect();
        assert_eq!(tail, a[4..].to_vec(), "starting mid-epoch gives the same remaining batches");
        let seen: Vec<usize> = a.iter().flat_map(|b| b.indices.clone()).collect();
        assert_eq!(seen, epoch_order(53, 42, 3, true));
        for b in &a {
            assert_eq!(b.images.len(), b.shape.iter().product::<usize>());
            for (k, &i) in b.indices.iter().enumerate() {
                assert_eq!(b.labels[k], s.label(i));
                assert_eq!(b.images[k * 4], s.label(i) as f32);
            }
        }
        let mut c = cfg(8, 2);
        c.drop_last = true;
        let l = Loader::new(s, c);
        assert_eq!(l.batches_in_epoch(0), 6);
        assert!(collect(&l, 0).iter().all(|b| b.len() == 8));
    }

    fn failing(s: &Item, rng: &mut Rng, out: &mut [f32]) -> Result<(), DataError> {
        let i: usize = s.name.to_string_lossy().trim_start_matches("img").trim_end_matches(".jpg").parse().unwrap();
        if i % 5 == 3 {
            out.fill(f32::NAN); // a half-written slot must not show
            return Err(DataError::Decode { path: s.name.to_path_buf(), reason: "truncated".into() });
        }
        noisy(s, rng, out)
    }

    #[test]
    fn skip_mode_leaves_out_failures() {
        let mut c = cfg(4, 3);
        c.skip_corrupt = true;
        c.shuffle = false;
        let l = Loader::new(samples(12), c);
        let b: Vec<Batch> = l.epoch(0, [1, 2, 2], Arc::new(failing)).map(|b| b.unwrap()).collect();
        assert_eq!(b.len(), 3);
        assert_eq!(b[0].indices, vec![0, 1, 2]);
        assert_eq!(b[0].shape, [3, 1, 2, 2]);
        assert_eq!(b[0].skipped.len(), 1);
        assert_eq!(b[0].skipped[0].0, PathBuf::from("img3.jpg"));
        assert!(b[0].skipped[0].1.contains("truncated"));
        assert_eq!(b[2].indices, vec![9, 10, 11]);
        assert_eq!(b[1].indices, vec![4, 5, 6, 7]);
        // The samples after a skipped one moved up: each slot holds its own sample.
        let s = sample_list(12);
        for b in &b {
            assert_eq!(b.images.len(), b.shape.iter().product::<usize>());
            for (k, &i) in b.indices.iter().enumerate() {
                assert_eq!(b.images[k * 4], s[i].label as f32);
                assert_eq!(b.images[k * 4 + 3], s[i].path.as_os_str().len() as f32);
            }
        }
    }

    /// Buffers handed back are written over completely: the batches are the same as
    /// with fresh buffers, whatever the recycled ones held.
    #[test]
    fn recycled_buffers_give_the_same_batches() {
        let l = Loader::new(samples(53), cfg(8, 2));
        let fresh = collect(&l, 5);
        let mut it = l.epoch(5, [1, 2, 2], Arc::new(noisy));
        let mut recycled = Vec::new();
        while let Some(b) = it.next() {
            let mut b = b.unwrap();
            recycled.push(b.clone());
            b.images.fill(f32::NAN);
            b.images.extend_from_slice(&[7.0; 9]); // longer than a batch
            it.recycle(std::mem::take(&mut b.images));
        }
        assert_eq!(recycled, fresh);
        // The loader keeps them for the next epoch.
        assert_eq!(collect(&l, 6), collect(&Loader::new(samples(53), cfg(8, 2)), 6));
    }

    #[test]
    fn fatal_mode_stops_at_the_first_failure() {
        let mut c = cfg(2, 2);
        c.shuffle = false;
        let l = Loader::new(samples(12), c);
        let mut it = l.epoch(0, [1, 2, 2], Arc::new(failing));
        assert!(it.next().unwrap().is_ok());
        match it.next() {
            Some(Err(DataError::Decode { path, .. })) => assert_eq!(path, PathBuf::from("img3.jpg")),
            other => panic!("expected the decode error, got {other:?}"),
        }
        assert!(it.next().is_none());
        // A wrong tensor size (here the slot's copy panics) is fatal even when skipping.
        let mut c = cfg(2, 2);
        c.skip_corrupt = true;
        let l = Loader::new(samples(4), c);
        let r: Vec<_> = l.epoch(0, [3, 2, 2], Arc::new(noisy)).collect();
        assert!(matches!(r.as_slice(), [Err(DataError::Invalid(_))]));
        // So is an empty sample shape.
        let r: Vec<_> = l.epoch(0, [3, 0, 2], Arc::new(noisy)).collect();
        assert!(matches!(r.as_slice(), [Err(DataError::Invalid(m))] if m.contains("shape")), "{r:?}");
    }

    #[test]
    fn a_panicking_transform_is_an_error_not_a_short_epoch() {
        let l = Loader::new(samples(6), cfg(3, 2));
        let t = |s: &Item, _: &mut Rng, _: &mut [f32]| -> Result<(), DataError> {
            if s.label == 4 {
                panic!("boom");
            }
            Ok(())
        };
        let r: Vec<_> = l.epoch(0, [1, 2, 2], Arc::new(t)).collect();
        assert!(r.iter().any(|b| matches!(b, Err(DataError::Invalid(m)) if m.contains("boom"))), "{r:?}");
    }

    #[test]
    fn dropping_early_stops_the_producer() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = calls.clone();
        let slow = move |s: &Item, rng: &mut Rng, out: &mut [f32]| {
            counter.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(2));
            noisy(s, rng, out)
        };
        let mut c = cfg(4, 2);
        c.prefetch = 1;
        let l = Loader::new(samples(2000), c);
        let mut it = l.epoch(0, [1, 2, 2], Arc::new(slow));
        assert!(it.next().unwrap().is_ok());
        let start = std::time::Instant::now();
        drop(it);
        assert!(start.elapsed() < Duration::from_secs(2));
        let after_drop = calls.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(calls.load(Ordering::SeqCst), after_drop);
        assert!(after_drop < 40, "{after_drop} samples transformed");
        // The loader is reusable afterwards.
        assert_eq!(collect(&Loader::new(samples(9), cfg(4, 2)), 0).len(), 3);
    }

    #[test]
    fn zero_batch_size_is_an_error() {
        let l = Loader::new(samples(3), cfg(0, 1));
        let r: Vec<_> = l.epoch(0, [1, 2, 2], Arc::new(noisy)).collect();
        assert!(matches!(r.as_slice(), [Err(DataError::Invalid(_))]));
    }

    #[test]
    fn shards_split_every_global_batch_and_cover_the_epoch_once() {
        let order = epoch_order(103, 7, 3, true);
        let one = shard_batches(&order, 8, true, Shard::default(), 0);
        for world in [2, 4] {
            let per: Vec<Vec<Vec<usize>>> = (0..world).map(|rank| shard_batches(&order, 8 / world, true, Shard { rank, world }, 0)).collect();
            let mut seen: Vec<usize> = per.iter().flatten().flatten().copied().collect();
            assert_eq!(seen.len(), 96, "12 whole global batches of 8");
            seen.sort();
            seen.dedup();
            assert_eq!(seen.len(), 96, "no sample twice");
            for (k, batch) in one.iter().enumerate() {
                let joined: Vec<usize> = per.iter().flat_map(|p| p[k].clone()).collect();
                assert_eq!(&joined, batch, "step {k}: the ranks' batches make the single-process batch");
            }
            let resumed = shard_batches(&order, 8 / world, true, Shard { rank: 1, world }, 5);
            assert_eq!(resumed[..], per[1][5..], "a resumed epoch continues at the same global batch");
        }
    }

}
