//! The order in which sharded data is read: a pure function of (seed, epoch, the shards'
//! sample counts, rank, world size, buffer size), so that a checkpoint's position (epoch,
//! batch) names the same samples when a run is resumed.
//!
//! Shuffled (training): the shards are shuffled, then dealt out to the ranks in that order,
//! each to the rank holding the fewest samples so far, so ranks read disjoint shards and
//! every sample once per epoch over all ranks. A rank reads its shards one after the other
//! (the *input* order) and emits them through a shuffle buffer: the buffer holds `buffer`
//! samples, each output is one of them drawn at random, replaced by the next input. Sample
//! `i` of the input is thus emitted at position ≥ i + 1 − buffer, and the reader never holds
//! more than `buffer` samples besides the batch being assembled.
//!
//! Unshuffled (evaluation): rank r of w takes every w-th sample of all shards in order.

use crate::Rng;

/// What one rank reads in an epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RankStream {
    /// Sample ids in reading order.
    pub input: Vec<usize>,
    /// `output[p]` = the input position emitted at position `p`.
    pub output: Vec<usize>,
}

/// Which shards each of `world` ranks reads, in reading order, given the shards' sample
/// counts: shuffled by (seed, epoch) and dealt to the least-loaded rank (ties: the lowest).
pub fn assign_shards(sizes: &[usize], world: usize, seed: u64, epoch: u64) -> Vec<Vec<usize>> {
    let world = world.max(1);
    let mut order: Vec<usize> = (0..sizes.len()).collect();
    Rng::from_keys(&[seed, epoch, 0x7368_6172]).shuffle(&mut order);
    let mut ranks: Vec<Vec<usize>> = vec![Vec::new(); world];
    let mut load = vec![0usize; world];
    for s in order {
        let r = (0..world).min_by_key(|&r| (load[r], r)).unwrap_or(0);
        load[r] += sizes[s];
        ranks[r].push(s);
    }
    ranks
}

/// The shuffle buffer's permutation of `n` inputs: `out[p]` = the input emitted at `p`.
pub fn buffer_order(n: usize, buffer: usize, rng: &mut Rng) -> Vec<usize> {
    let buffer = buffer.max(1);
    let mut held: Vec<usize> = Vec::with_capacity(buffer.min(n));
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        held.push(i);
        if held.len() == buffer {
            out.push(held.swap_remove(rng.below(held.len())));
        }
    }
    while !held.is_empty() {
        out.push(held.swap_remove(rng.below(held.len())));
    }
    out
}

/// The shards' samples as one list: `firsts[s]` is the id of shard s's first sample.
fn samples_of(shards: &[usize], firsts: &[usize], sizes: &[usize]) -> Vec<usize> {
    shards.iter().flat_map(|&s| firsts[s]..firsts[s] + sizes[s]).collect()
}

/// What rank `rank` of `world` reads in `epoch`, for shards of `sizes` samples whose ids
/// are consecutive from 0 in shard order.
pub fn rank_stream(sizes: &[usize], rank: usize, world: usize, seed: u64, epoch: u64, shuffle: bool, buffer: usize) -> RankStream {
    let firsts: Vec<usize> = sizes.iter().scan(0, |acc, &n| {
        let first = *acc;
        *acc += n;
        Some(first)
    }).collect();
    if !shuffle {
        let all: Vec<usize> = (0..sizes.iter().sum()).collect();
        let input: Vec<usize> = all.into_iter().skip(rank).step_by(world.max(1)).collect();
        let output = (0..input.len()).collect();
        return RankStream { input, output };
    }
    let shards = assign_shards(sizes, world, seed, epoch);
    let input = samples_of(&shards[rank.min(shards.len() - 1)], &firsts, sizes);
    let output = buffer_order(input.len(), buffer, &mut Rng::from_keys(&[seed, epoch, 0x6275_6666, rank as u64]));
    RankStream { input, output }
}

/// Samples each rank reads in `epoch` (shuffled order).
pub fn rank_sizes(sizes: &[usize], world: usize, seed: u64, epoch: u64) -> Vec<usize> {
    assign_shards(sizes, world, seed, epoch).iter().map(|r| r.iter().map(|&s| sizes[s]).sum()).collect()
}

/// Batches of `batch` samples each rank makes in an epoch where ranks read `per_rank`
/// samples. All ranks must take the same number of steps (gradients are averaged every
/// step), so with `drop_last` it is the smallest rank's whole batches: every rank drops
/// what its stream has beyond that. Without, each rank's own count (evaluation).
pub fn batches(per_rank: &[usize], rank: usize, batch: usize, drop_last: bool) -> usize {
    let b = batch.max(1);
    if drop_last {
        per_rank.iter().map(|n| n / b).min().unwrap_or(0)
    } else {
        per_rank.get(rank).map_or(0, |n| n.div_ceil(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_permutation(v: &[usize], n: usize) -> bool {
        let mut s = v.to_vec();
        s.sort_unstable();
        s == (0..n).collect::<Vec<_>>()
    }

    #[test]
    fn the_buffer_order_is_a_keyed_permutation_within_its_window() {
        for (n, buffer) in [(0, 4), (1, 4), (10, 1), (100, 7), (1000, 64), (50, 500)] {
            let a = buffer_order(n, buffer, &mut Rng::from_keys(&[1, 2]));
            assert!(is_permutation(&a, n), "n {n}, buffer {buffer}");
            assert_eq!(a, buffer_order(n, buffer, &mut Rng::from_keys(&[1, 2])), "deterministic");
            for (p, &i) in a.iter().enumerate() {
                // Input i can only be emitted once it has been read into the buffer.
                assert!(i < p + buffer, "input {i} at {p} with a buffer of {buffer}");
            }
        }
        assert_eq!(buffer_order(10, 1, &mut Rng::new(3)), (0..10).collect::<Vec<_>>(), "a buffer of one keeps the order");
        assert_ne!(buffer_order(100, 10, &mut Rng::new(3)), buffer_order(100, 10, &mut Rng::new(4)));
        // The buffer holds at most `buffer` read-but-unemitted inputs at any position.
        let a = buffer_order(2000, 50, &mut Rng::new(9));
        let mut max_read = 0;
        for (p, &i) in a.iter().enumerate() {
            max_read = max_read.max(i + 1);
            assert!(max_read - (p + 1) < 50, "{} inputs held after position {p}", max_read - p - 1);
        }
    }

    #[test]
    fn ranks_read_disjoint_shards_that_cover_the_epoch() {
        let sizes = [5, 9, 0, 7, 7, 3, 12, 6, 1];
        let total: usize = sizes.iter().sum();
        for world in [1, 2, 3, 4] {
            for epoch in 0..3 {
                let streams: Vec<RankStream> = (0..world).map(|r| rank_stream(&sizes, r, world, 11, epoch, true, 4)).collect();
                let mut all: Vec<usize> = streams.iter().flat_map(|s| s.input.clone()).collect();
                assert!(is_permutation(&all, total), "world {world}: every sample once");
                all.clear();
                for s in &streams {
                    assert!(is_permutation(&s.output, s.input.len()));
                }
                // Shards are whole: a shard's samples are consecutive in one rank's input.
                let shards = assign_shards(&sizes, world, 11, epoch);
                let load: Vec<usize> = shards.iter().map(|r| r.iter().map(|&s| sizes[s]).sum()).collect();
                assert!(load.iter().max().unwrap() - load.iter().min().unwrap() <= 12, "balanced within a shard: {load:?}");
                assert_eq!(load, rank_sizes(&sizes, world, 11, epoch));
            }
            assert_eq!(rank_stream(&sizes, 0, world, 11, 1, true, 4), rank_stream(&sizes, 0, world, 11, 1, true, 4));
        }
        assert_ne!(assign_shards(&sizes, 1, 11, 0), assign_shards(&sizes, 1, 11, 1), "shards reshuffled every epoch");
        assert_ne!(assign_shards(&sizes, 1, 11, 0), assign_shards(&sizes, 1, 12, 0));
    }

    #[test]
    fn unshuffled_ranks_take_every_world_th_sample() {
        let sizes = [3, 4];
        assert_eq!(rank_stream(&sizes, 0, 1, 0, 0, false, 9).input, (0..7).collect::<Vec<_>>());
        let r1 = rank_stream(&sizes, 1, 3, 0, 0, false, 9);
        assert_eq!(r1.input, vec![1, 4]);
        assert_eq!(r1.output, vec![0, 1]);
    }

    #[test]
    fn every_rank_takes_the_smallest_ranks_step_count() {
        assert_eq!(batches(&[10, 17, 9], 1, 4, true), 2);
        assert_eq!(batches(&[10, 17, 9], 1, 4, false), 5);
        assert_eq!(batches(&[3], 0, 4, true), 0);
    }
}
