//! WebDataset shards: listing (index or header scan), unusable samples skipped and counted,
//! structural damage refused with one line, and the loader's streamed order: deterministic,
//! resumable mid-shard, disjoint over ranks, within the shuffle buffer's memory.

use et_data::dataset::Dataset;
use et_data::loader::{Batch, Item, Loader, LoaderConfig, Shard};
use et_data::shard_index::{scan_as_index, Index, IndexShard, FORMAT};
use et_data::shards::{ShardSet, CLASSES_FILE, INDEX_FILE};
use et_data::stream::rank_stream;
use et_data::stream_reader::StreamReader;
use et_data::tar::TarWriter;
use et_data::{DataError, Rng};
use std::path::{Path, PathBuf};
use std::sync::Arc;

struct Tmp(PathBuf);

impl Tmp {
    fn new(tag: &str) -> Tmp {
        let d = std::env::temp_dir().join(format!("et-data-shards-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Tmp(d)
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A shard of members (name, bytes), written as they are.
fn write_tar(path: &Path, members: &[(String, Vec<u8>)]) {
    let mut t = TarWriter::new(Vec::new());
    for (n, b) in members {
        t.append(n, b).unwrap();
    }
    std::fs::write(path, t.finish().unwrap()).unwrap();
}

/// Sample bytes that name the sample, so a test can tell which one it got.
fn payload(key: &str) -> Vec<u8> {
    format!("bytes of {key}").into_bytes()
}

/// `shards[i]` samples in shard i, keys `s{i}-{j}`, class `(i + j) % 3`.
fn dataset(dir: &Path, shards: &[usize]) {
    std::fs::write(dir.join(CLASSES_FILE), r#"["a", "b", "c"]"#).unwrap();
    for (i, &n) in shards.iter().enumerate() {
        let mut m = Vec::new();
        for j in 0..n {
            let key = format!("s{i}-{j:03}");
            m.push((format!("{key}.jpg"), payload(&key)));
            m.push((format!("{key}.cls"), format!("{}", (i + j) % 3).into_bytes()));
        }
        write_tar(&dir.join(format!("train-{i:06}.tar")), &m);
    }
}

fn open(dir: &Path) -> (ShardSet, Vec<String>) {
    let mut notes = Vec::new();
    let set = ShardSet::open(dir, &mut |n: &str| notes.push(n.to_string())).unwrap();
    (set, notes)
}

#[test]
fn the_index_and_the_header_scan_list_the_same_samples() {
    let tmp = Tmp::new("index");
    dataset(&tmp.0, &[3, 0, 5]);
    let (scanned, notes) = open(&tmp.0);
    assert!(notes.iter().any(|n| n.contains("indexing 3 of 3 shards")), "{notes:?}");
    assert!(notes.iter().any(|n| n.contains("1 of 3 shards") && n.contains("no sample")), "{notes:?}");
    assert_eq!((scanned.len(), scanned.empty_shards, scanned.sizes()), (8, 1, vec![3, 0, 5]));
    assert_eq!(&*scanned.members[4].key, "s2-001");
    assert_eq!(scanned.members[4].label, Ok(0));
    assert_eq!(scanned.read(4).unwrap(), payload("s2-001"));
    assert_eq!(scanned.name(4), tmp.0.join("train-000002.tar/s2-001.jpg"));
    let shards = scanned.shards.iter().map(|s| IndexShard { file: s.path.file_name().unwrap().to_string_lossy().into(), bytes: s.bytes, samples: scan_as_index(&s.path).unwrap() }).collect();
    Index { format: FORMAT, shards }.write(&tmp.0.join(INDEX_FILE)).unwrap();
    let (indexed, notes) = open(&tmp.0);
    assert!(!notes.iter().any(|n| n.contains("indexing")), "{notes:?}");
    assert_eq!(indexed.members, scanned.members);
    // A shard replaced after indexing (another size) is scanned again.
    dataset(&tmp.0, &[3, 0, 6]);
    let (fresh, notes) = open(&tmp.0);
    assert!(notes.iter().any(|n| n.contains("indexing 1 of 3")), "{notes:?}");
    assert_eq!(fresh.len(), 9);
    // An index that is not one is passed over with a note.
    std::fs::write(tmp.0.join(INDEX_FILE), "{\"format\": 1, \"shards\": 5}").unwrap();
    let (again, notes) = open(&tmp.0);
    assert!(notes.iter().any(|n| n.contains("is not a shard index")), "{notes:?}");
    assert_eq!(again.members, fresh.members);
    // A brace pattern names the same shards.
    let (p, _) = open(&tmp.0.join("train-{000000..000002}.tar"));
    assert_eq!(p.members, fresh.members);
}

/// A loader transform that checks each sample got its own bytes and writes its label.
fn check_bytes(set: &Arc<Dataset>) -> Arc<dyn Fn(&Item, &mut Rng, &mut [f32]) -> Result<(), DataError> + Send + Sync> {
    let Dataset::Shards(s) = &**set else { panic!("shards") };
    let keys: Vec<String> = s.members.iter().map(|m| m.key.to_string()).collect();
    Arc::new(move |item: &Item, rng: &mut Rng, out: &mut [f32]| {
        let bytes = item.bytes()?;
        assert_eq!(&*bytes, &payload(&keys[item.index])[..], "sample {} got another's bytes", item.index);
        out[0] = item.label as f32;
        out[1] = rng.uniform() as f32;
        Ok(())
    })
}

fn cfg(batch: usize, threads: usize, shard: Shard) -> LoaderConfig {
    LoaderConfig { batch_size: batch, shuffle: true, drop_last: true, seed: 5, threads, prefetch: 2, skip_corrupt: true, shard, shuffle_buffer: 6 }
}

fn epoch(l: &Loader, set: &Arc<Dataset>, e: u64, first: usize) -> Vec<Batch> {
    l.epoch_from(e, first, [1, 1, 2], check_bytes(set)).map(|b| b.unwrap()).collect()
}

#[test]
fn streaming_is_deterministic_resumable_and_split_over_ranks() {
    let tmp = Tmp::new("stream");
    dataset(&tmp.0, &[7, 9, 4, 11, 6]);
    let set = Arc::new(Dataset::open(&tmp.0, &mut |_: &str| {}).unwrap());
    let one = Loader::new(set.clone(), cfg(4, 1, Shard::default()));
    let a = epoch(&one, &set, 2, 0);
    assert_eq!(a.len(), 37 / 4);
    assert_eq!(a, epoch(&Loader::new(set.clone(), cfg(4, 3, Shard::default())), &set, 2, 0), "thread count changes nothing");
    assert_ne!(a, epoch(&one, &set, 3, 0), "another epoch, another order");
    // Resuming at batch 5 (mid-shard) gives the same remaining batches.
    assert_eq!(epoch(&one, &set, 2, 5), a[5..].to_vec());
    let mut seen: Vec<usize> = a.iter().flat_map(|b| b.indices.clone()).collect();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), 36, "no sample twice; one incomplete batch dropped");
    for b in &a {
        for (k, &i) in b.indices.iter().enumerate() {
            assert_eq!(b.labels[k], set.label(i));
            assert_eq!(b.images[2 * k], set.label(i) as f32);
        }
    }
    // Two ranks: disjoint samples, the same number of steps.
    let ranks: Vec<Vec<Batch>> = (0..2).map(|rank| epoch(&Loader::new(set.clone(), cfg(4, 2, Shard { rank, world: 2 })), &set, 2, 0)).collect();
    assert_eq!(ranks[0].len(), ranks[1].len());
    assert!(!ranks[0].is_empty());
    let ids = |r: &[Batch]| -> Vec<usize> { r.iter().flat_map(|b| b.indices.clone()).collect() };
    assert!(ids(&ranks[0]).iter().all(|i| !ids(&ranks[1]).contains(i)), "ranks read disjoint samples");
    let per_rank = Loader::new(set.clone(), cfg(4, 1, Shard { rank: 1, world: 2 }));
    assert_eq!(per_rank.batches_in_epoch(2), ranks[1].len());
    assert_eq!(epoch(&per_rank, &set, 2, 2), ranks[1][2..].to_vec());
}

#[test]
fn the_reader_holds_at_most_the_buffer() {
    let tmp = Tmp::new("window");
    dataset(&tmp.0, &[40, 25, 35]);
    let (set, _) = open(&tmp.0);
    let set = Arc::new(set);
    let rs = rank_stream(&set.sizes(), 0, 1, 9, 0, true, 10);
    let mut r = StreamReader::new(set.clone(), &rs, 0..100);
    for chunk in rs.output.chunks(4) {
        let got = r.take(chunk);
        for (p, bytes) in chunk.iter().zip(got) {
            assert_eq!(bytes.unwrap(), payload(&set.members[rs.input[*p]].key));
        }
        assert!(r.held() < 10, "{} samples held", r.held());
    }
}

#[test]
fn unusable_samples_are_skipped_and_counted() {
    let tmp = Tmp::new("defects");
    std::fs::write(tmp.0.join(CLASSES_FILE), r#"["a", "b"]"#).unwrap();
    let jpg = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/cifar10-mini/train/cat").read_dir().unwrap().next().unwrap().unwrap().path()).unwrap();
    let m = |n: &str, b: &[u8]| (n.to_string(), b.to_vec());
    write_tar(
        &tmp.0.join("a.tar"),
        &[m("good.jpg", &jpg), m("good.cls", b"1"), m("nocls.jpg", &jpg), m("far.jpg", &jpg), m("far.cls", b"7"), m("word.png", &jpg), m("word.cls", b"cat"), m("lonely.cls", b"0"), m("bad.jpg", b"not an image"), m("bad.cls", b"0"), m("notes.txt", b"x")],
    );
    write_tar(&tmp.0.join("b.tar"), &[]);
    // A shard cut inside its second image.
    let mut t = TarWriter::new(Vec::new());
    t.append("c1.jpg", &jpg).unwrap();
    t.append("c1.cls", b"0").unwrap();
    let at = t.append("c2.jpg", &jpg).unwrap() as usize;
    let full = t.finish().unwrap();
    std::fs::write(tmp.0.join("c.tar"), &full[..at + jpg.len() / 2]).unwrap();
    let set = Arc::new(Dataset::open(&tmp.0, &mut |_: &str| {}).unwrap());
    let Dataset::Shards(s) = &*set else { panic!() };
    let reasons: Vec<String> = s.members.iter().map(|m| format!("{}: {:?}", m.key, m.label)).collect();
    assert_eq!(s.len(), 8, "{reasons:#?}");
    let tf = Arc::new(|item: &Item, _: &mut Rng, out: &mut [f32]| {
        item.decode()?;
        out[0] = item.label as f32;
        Ok(())
    });
    let mut c = cfg(8, 2, Shard::default());
    (c.shuffle, c.drop_last) = (false, false);
    let b: Vec<Batch> = Loader::new(set.clone(), c.clone()).epoch(0, [1, 1, 1], tf.clone()).map(|b| b.unwrap()).collect();
    assert_eq!(b.len(), 1);
    let names: Vec<String> = b[0].indices.iter().map(|&i| set.name(i).file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["good.jpg", "c1.jpg"]);
    assert_eq!(b[0].labels, [1, 0]);
    let skipped: Vec<String> = b[0].skipped.iter().map(|(p, why)| format!("{}: {why}", p.file_name().unwrap().to_string_lossy())).collect();
    let want = [("nocls.jpg", "no .cls member"), ("far.jpg", "class 7 is not one of the 2 classes"), ("word.png", "not a class number"), ("lonely.cls", "no image member"), ("bad.jpg", "cannot decode"), ("c2.jpg", "truncated")];
    assert_eq!(skipped.len(), want.len(), "{skipped:#?}");
    for (got, (name, why)) in skipped.iter().zip(want) {
        assert!(got.starts_with(name) && got.contains(why), "{got} should be {name}: {why}");
    }
    // --strict-data: the first one ends the epoch.
    c.skip_corrupt = false;
    let r: Vec<_> = Loader::new(set.clone(), c).epoch(0, [1, 1, 1], tf).collect();
    assert!(matches!(r.last(), Some(Err(DataError::Member { .. }))), "{r:?}");
}

fn open_err(spec: &Path) -> String {
    let e = Dataset::open(spec, &mut |_: &str| {}).unwrap_err().to_string();
    assert!(!e.contains('\n'), "one line: {e}");
    e
}

#[test]
fn structural_problems_are_one_line_errors() {
    let tmp = Tmp::new("structure");
    dataset(&tmp.0, &[2, 2]);
    assert!(open_err(&tmp.0.join("train-{000005..000007}.tar")).contains("no shards match"));
    assert!(open_err(&tmp.0.join("train-{000000..000002}.tar")).contains("train-000002.tar of the pattern"));
    let shard = tmp.0.join("train-000001.tar");
    let good = std::fs::read(&shard).unwrap();
    let mut bad = good.clone();
    bad[1024 + 5] ^= 0x20; // the second header's name
    std::fs::write(&shard, &bad).unwrap();
    let e = open_err(&tmp.0);
    assert!(e.contains("train-000001.tar") && e.contains("byte 1024") && e.contains("damaged"), "{e}");
    std::fs::write(&shard, b"PK\x03\x04 this is a zip file, not a tar".repeat(20)).unwrap();
    assert!(open_err(&tmp.0).contains("not a tar archive"));
    std::fs::write(&shard, &good).unwrap();
    std::fs::write(tmp.0.join(CLASSES_FILE), "{\"a\": 1}").unwrap();
    assert!(open_err(&tmp.0).contains("not a JSON list of class names"));
    std::fs::remove_file(tmp.0.join(CLASSES_FILE)).unwrap();
    let e = open_err(&tmp.0);
    assert!(e.contains(CLASSES_FILE) && e.contains("class names"), "{e}");
    write_tar(&tmp.0.join("train-000000.tar"), &[]);
    write_tar(&shard, &[]);
    std::fs::write(tmp.0.join(CLASSES_FILE), r#"["a"]"#).unwrap();
    assert!(open_err(&tmp.0).contains("hold no samples"));
}
