//! The EfficientTrain++ replay buffer (docs/algorithm.md), for CPU-bound data loading: each
//! freshly loaded batch is split into `split` chunks that are appended to a FIFO buffer of
//! at most `size · split` chunks; a training step uses the fresh batch plus
//! `(replay_times − 1) · split` chunks drawn uniformly, with replacement, from the buffer.
//!
//! This follows the official code (`engine_buffer.py` of LeapLabTHU/EfficientTrain):
//! - a batch is split like `torch.tensor_split(x, split)`: the first `n % split` chunks
//!   hold `n / split + 1` samples, the rest `n / split` (so chunks can be empty when
//!   `n < split`);
//! - the fresh batch is pushed *before* the draws, so a step may replay chunks of its own
//!   batch;
//! - when the buffer exceeds its capacity the oldest chunks go first (the official code
//!   deletes the first `split` entries, which is the same when every push is one batch);
//! - draws are `torch.randint(0, len, (k,))`: uniform, with replacement;
//! - the buffer holds hard labels; Mixup/CutMix are applied afterwards, to the whole step
//!   batch;
//! - the official script trains one stage per run, so a buffer holds one resolution: a
//!   push of another per-sample shape is refused (start a new buffer per stage).

use crate::{DataError, Rng};
use std::collections::VecDeque;

/// `n_samples` samples of shape `chw` (NCHW images, one label each).
#[derive(Clone, Debug, PartialEq)]
pub struct Chunk {
    pub images: Vec<f32>,
    pub labels: Vec<usize>,
}

impl Chunk {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

#[derive(Clone, Debug)]
pub struct ReplayBuffer {
    size_batches: usize,
    split: usize,
    chw: Option<[usize; 3]>,
    chunks: VecDeque<Chunk>,
}

/// The sizes of `torch.tensor_split(x, sections)` along a dimension of length `n`.
pub fn tensor_split_sizes(n: usize, sections: usize) -> Vec<usize> {
    (0..sections).map(|i| n / sections + usize::from(i < n % sections)).collect()
}

impl ReplayBuffer {
    /// A buffer of at most `size_batches · split` chunks (`--replay_buffer_size`,
    /// `--replay_buffer_split_factor`; the official default split is 32).
    pub fn new(size_batches: usize, split: usize) -> Self {
        assert!(split > 0, "the split factor must be at least 1");
        ReplayBuffer { size_batches, split, chw: None, chunks: VecDeque::new() }
    }

    pub fn capacity(&self) -> usize {
        self.size_batches * self.split
    }

    pub fn split(&self) -> usize {
        self.split
    }

    /// Chunks held now.
    pub fn len(&self) -> usize {
        self.chunks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// A buffer holding exactly `chunks` (oldest first), e.g. as saved in a checkpoint.
    pub fn from_chunks(size_batches: usize, split: usize, chw: Option<[usize; 3]>, chunks: Vec<Chunk>) -> Result<Self, DataError> {
        let mut b = ReplayBuffer::new(size_batches, split.max(1));
        let per = chw.map_or(0, |c| c.iter().product::<usize>());
        if chunks.iter().any(|c| c.images.len() != c.labels.len() * per) || chunks.len() > b.capacity() || (chw.is_none() && !chunks.is_empty()) {
            return Err(DataError::Invalid("replay buffer: chunks do not match the sample shape or the capacity".into()));
        }
        b.chw = chw;
        b.chunks = chunks.into();
        Ok(b)
    }

    /// The per-sample shape [C, H, W] of the chunks, once something was pushed.
    pub fn sample_shape(&self) -> Option<[usize; 3]> {
        self.chw
    }

    pub fn chunks(&self) -> impl Iterator<Item = &Chunk> {
        self.chunks.iter()
    }

    /// Splits a batch (`images` NCHW of `shape`, one label per image) into `split` chunks,
    /// appends them and evicts the oldest chunks beyond the capacity.
    pub fn push(&mut self, images: &[f32], shape: [usize; 4], labels: &[usize]) -> Result<(), DataError> {
        let [n, c, h, w] = shape;
        let per = c * h * w;
        if images.len() != n * per || labels.len() != n {
            return Err(DataError::Invalid(format!(
                "replay buffer: a batch of shape {shape:?} needs {} values and {n} labels, got {} and {}",
                n * per,
                images.len(),
                labels.len()
            )));
        }
        match self.chw {
            Some(chw) if chw != [c, h, w] => {
                return Err(DataError::Invalid(format!(
                    "replay buffer holds {chw:?} samples, got {:?}: use one buffer per resolution",
                    [c, h, w]
                )))
            }
            _ => self.chw = Some([c, h, w]),
        }
        let mut start = 0;
        for len in tensor_split_sizes(n, self.split) {
            let end = start + len;
            self.chunks.push_back(Chunk { images: images[start * per..end * per].to_vec(), labels: labels[start..end].to_vec() });
            start = end;
        }
        while self.chunks.len() > self.capacity() {
            self.chunks.pop_front();
        }
        Ok(())
    }

    /// `n_chunks` chunks drawn uniformly with replacement (empty if the buffer is).
    pub fn sample(&self, n_chunks: usize, rng: &mut Rng) -> Vec<&Chunk> {
        if self.chunks.is_empty() {
            return Vec::new();
        }
        (0..n_chunks).map(|_| &self.chunks[rng.below(self.chunks.len())]).collect()
    }

    /// One training step of the official loop: pushes the fresh batch, then returns it
    /// followed by `(replay_times − 1) · split` replayed chunks, as one NCHW batch
    /// (images, labels, shape).
    pub fn step_batch(&mut self, images: &[f32], shape: [usize; 4], labels: &[usize], replay_times: usize, rng: &mut Rng) -> Result<(Vec<f32>, Vec<usize>, [usize; 4]), DataError> {
        self.push(images, shape, labels)?;
        let drawn = self.sample(replay_times.saturating_sub(1) * self.split, rng);
        let mut x = images.to_vec();
        let mut y = labels.to_vec();
        for ch in drawn {
            x.extend_from_slice(&ch.images);
            y.extend_from_slice(&ch.labels);
        }
        let out_shape = [y.len(), shape[1], shape[2], shape[3]];
        Ok((x, y, out_shape))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch whose every value names its sample: sample `id` is filled with `id`.
    fn batch(ids: std::ops::Range<usize>, chw: [usize; 3]) -> (Vec<f32>, [usize; 4], Vec<usize>) {
        let per: usize = chw.iter().product();
        let images = ids.clone().flat_map(|i| std::iter::repeat_n(i as f32, per)).collect();
        (images, [ids.len(), chw[0], chw[1], chw[2]], ids.collect())
    }

    #[test]
    fn split_sizes_follow_torch_tensor_split() {
        assert_eq!(tensor_split_sizes(10, 3), vec![4, 3, 3]);
        assert_eq!(tensor_split_sizes(64, 32), vec![2; 32]);
        assert_eq!(tensor_split_sizes(2, 4), vec![1, 1, 0, 0]);
    }

    #[test]
    fn chunks_have_the_right_shapes_and_contents() {
        let mut b = ReplayBuffer::new(2, 3);
        let (x, s, y) = batch(0..10, [3, 2, 2]);
        b.push(&x, s, &y).unwrap();
        assert_eq!(b.len(), 3);
        assert_eq!(b.sample_shape(), Some([3, 2, 2]));
        let sizes: Vec<usize> = b.chunks().map(Chunk::len).collect();
        assert_eq!(sizes, vec![4, 3, 3]);
        let mut next = 0;
        for ch in b.chunks() {
            assert_eq!(ch.images.len(), ch.len() * 12);
            for (k, &l) in ch.labels.iter().enumerate() {
                assert_eq!(l, next, "order is kept");
                assert!(ch.images[k * 12..(k + 1) * 12].iter().all(|&v| v == l as f32), "image travels with its label");
                next += 1;
            }
        }
        // Another resolution, or a mismatched batch, is refused.
        let (x, s, y) = batch(0..4, [3, 4, 4]);
        assert!(b.push(&x, s, &y).is_err());
        assert!(b.push(&x[1..], s, &y).is_err());
        assert_eq!(b.len(), 3);
    }

    #[test]
    fn capacity_and_fifo_eviction() {
        let mut b = ReplayBuffer::new(2, 4);
        assert_eq!(b.capacity(), 8);
        for k in 0..5 {
            let (x, s, y) = batch(k * 8..(k + 1) * 8, [1, 1, 1]);
            b.push(&x, s, &y).unwrap();
            assert_eq!(b.len(), (4 * (k + 1)).min(8));
        }
        // The last two batches (ids 24..40) remain, oldest first.
        let held: Vec<usize> = b.chunks().flat_map(|c| c.labels.clone()).collect();
        assert_eq!(held, (24..40).collect::<Vec<_>>());
        // Size 0 keeps nothing and samples nothing.
        let mut z = ReplayBuffer::new(0, 4);
        let (x, s, y) = batch(0..8, [1, 1, 1]);
        z.push(&x, s, &y).unwrap();
        assert!(z.is_empty());
        assert!(z.sample(5, &mut Rng::new(0)).is_empty());
    }

    #[test]
    fn sampling_is_uniform_with_replacement() {
        let mut b = ReplayBuffer::new(4, 4);
        for k in 0..4 {
            let (x, s, y) = batch(k * 4..(k + 1) * 4, [1, 1, 1]);
            b.push(&x, s, &y).unwrap();
        }
        assert_eq!(b.len(), 16);
        let mut counts = [0usize; 16];
        let mut rng = Rng::new(11);
        let draws = 32_000;
        let mut repeated = false;
        for _ in 0..draws / 32 {
            let got = b.sample(32, &mut rng);
            assert_eq!(got.len(), 32);
            let mut seen = [false; 16];
            for ch in got {
                let id = ch.labels[0];
                repeated |= seen[id];
                seen[id] = true;
                counts[id] += 1;
            }
        }
        assert!(repeated, "more draws than chunks must repeat (with replacement)");
        let expect = draws as f64 / 16.0;
        for (id, &c) in counts.iter().enumerate() {
            assert!((c as f64 - expect).abs() < 0.1 * expect, "chunk {id}: {c} draws, expected ~{expect}");
        }
    }

    #[test]
    fn step_batches_are_deterministic_and_keep_their_size() {
        let run = |seed: u64| {
            let mut b = ReplayBuffer::new(3, 4);
            let mut out = Vec::new();
            for k in 0..6 {
                // A fresh batch of 8 with replay_times 4: 8 + 3·4 chunks of 2 = 32 samples.
                let (x, s, y) = batch(k * 8..(k + 1) * 8, [2, 1, 1]);
                let (xs, ys, shape) = b.step_batch(&x, s, &y, 4, &mut Rng::from_keys(&[seed, k as u64])).unwrap();
                assert_eq!(shape, [32, 2, 1, 1]);
                assert_eq!(xs.len(), 64);
                assert_eq!(&ys[..8], &y[..], "the fresh batch comes first");
                assert!(ys[8..].iter().all(|&l| l < (k + 1) * 8 && l + 24 >= (k + 1) * 8), "replayed samples come from the last 3 batches");
                out.push(ys);
            }
            out
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
        // replay_times 1: the fresh batch only.
        let mut b = ReplayBuffer::new(1, 2);
        let (x, s, y) = batch(0..4, [1, 1, 1]);
        assert_eq!(b.step_batch(&x, s, &y, 1, &mut Rng::new(0)).unwrap(), (x.clone(), y.clone(), s));
    }
}
