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
