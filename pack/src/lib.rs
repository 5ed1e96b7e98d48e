//! et-pack: an ImageFolder written as WebDataset shards, the layout et-train, et-eval and
//! et-bench read with `--data` (docs/training.md, "Sharded data").
//!
//! `SRC/train` and `SRC/val` become `OUT/train/train-000000.tar ...` and
//! `OUT/val/val-000000.tar ...` (a folder without splits becomes `OUT/shard-000000.tar ...`),
//! each split with `classes.json` and `index.json`. Each sample is `KEY.EXT` + `KEY.cls`.
//! The output depends only on the input and the options: files in the folder's order
//! (training images in a fixed pseudo-random order, so that every shard mixes the classes),
//! tar headers with fixed mode, owner and time, images processed in parallel and written in
//! order. The whole output is written beside OUT under a temporary name and renamed into
//! place at the end, so OUT is either absent, the old one, or complete.

pub mod encode;

use et_data::folder::ImageFolder;
use et_data::shard_index::{Index, IndexSample, IndexShard, FORMAT};
use et_data::shards::{CLASSES_FILE, INDEX_FILE};
use et_data::tar::{TarWriter, BLOCK};
use et_data::Rng;
use rayon::prelude::*;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("{path} is not an ImageFolder ({why}): SRC must hold one sub-folder of images per class, or train/ and val/ folders that do")]
    NotImageFolder { path: PathBuf, why: String },
    #[error("{0} exists and is not empty: choose another OUT, or pass --force to replace it")]
    OutExists(PathBuf),
    #[error("cannot write {path}: {source}{}", if is_full(source) { " (the disk is full: free space or write OUT elsewhere)" } else { "" })]
    Write { path: PathBuf, source: std::io::Error },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Invalid(String),
}

fn is_full(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::StorageFull || matches!(e.raw_os_error(), Some(28) | Some(122))
}

#[derive(Clone, Debug)]
pub struct PackOptions {
    /// Re-encode images whose shorter side exceeds this.
    pub shorter_side: Option<u32>,
    /// JPEG quality of re-encoded images.
    pub quality: u8,
    /// Largest shard (a single larger image gets a shard of its own).
    pub shard_bytes: u64,
    /// Write training images in the folder's order instead of the fixed shuffled one.
    pub keep_order: bool,
    /// Replace a non-empty OUT.
    pub force: bool,
}

/// What one split became.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SplitSummary {
    pub split: String,
    pub images: usize,
    pub shards: usize,
    pub bytes: u64,
    pub reencoded: usize,
    /// Files above the size limit that could not be decoded, copied as they are (training
    /// will skip them as it would in the folder).
    pub unreadable: Vec<(PathBuf, String)>,
}

/// Progress of the whole job: images done of the total, bytes written.
pub type Progress<'a> = &'a (dyn Fn(usize, usize, u64) + Sync);

/// The splits of `src`: (name, folder, shard prefix).
fn splits(src: &Path) -> Result<Vec<(String, ImageFolder)>, PackError> {
    let not = |e: et_data::DataError| PackError::NotImageFolder { path: src.to_path_buf(), why: e.to_string() };
    if !src.is_dir() {
        return Err(PackError::NotImageFolder { path: src.to_path_buf(), why: "no such directory".into() });
    }
    if !src.join("train").is_dir() {
        return Ok(vec![(String::new(), ImageFolder::open(src).map_err(not)?)]);
    }
    let train = ImageFolder::open(&src.join("train")).map_err(not)?;
    let mut out = Vec::new();
    if src.join("val").is_dir() {
        out.push(("val".to_string(), ImageFolder::with_classes(&src.join("val"), &train.classes).map_err(not)?));
    }
    out.insert(0, ("train".to_string(), train));
    Ok(out)
}

/// A sibling of `out` for the work in progress (`partial`) or the replaced output (`old`).
fn sibling(out: &Path, what: &str) -> PathBuf {
    let name = out.file_name().map_or_else(|| "out".into(), |n| n.to_string_lossy().into_owned());
    out.with_file_name(format!(".{name}.{what}"))
}

fn write_err(path: &Path) -> impl FnOnce(std::io::Error) -> PackError + '_ {
    move |source| PackError::Write { path: path.to_path_buf(), source }
}

/// Packs `src` into `out`.
pub fn pack(src: &Path, out: &Path, opts: &PackOptions, progress: Progress) -> Result<Vec<SplitSummary>, PackError> {
    if !(1..=100).contains(&opts.quality) {
        return Err(PackError::Invalid(format!("--quality must be between 1 and 100, got {}", opts.quality)));
    }
    if opts.shard_bytes == 0 {
        return Err(PackError::Invalid("--shard-mb must be positive".into()));
    }
    let sets = splits(src)?;
    if out.is_file() {
        return Err(PackError::OutExists(out.to_path_buf()));
    }
    let non_empty = out.is_dir() && std::fs::read_dir(out).map_err(write_err(out))?.next().is_some();
    if non_empty && !opts.force {
        return Err(PackError::OutExists(out.to_path_buf()));
    }
    let partial = sibling(out, "partial");
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(write_err(&partial))?;
    }
    let total: usize = sets.iter().map(|(_, f)| f.len()).sum();
    let done = std::sync::atomic::AtomicUsize::new(0);
    let written = std::sync::atomic::AtomicU64::new(0);
    let job = || -> Result<Vec<SplitSummary>, PackError> {
        let mut summaries = Vec::new();
        for (split, folder) in &sets {
            let dir = if split.is_empty() { partial.clone() } else { partial.join(split) };
            std::fs::create_dir_all(&dir).map_err(write_err(&dir))?;
            let tick = |n: usize, bytes: u64| {
                let d = done.fetch_add(n, std::sync::atomic::Ordering::Relaxed) + n;
                let w = written.fetch_add(bytes, std::sync::atomic::Ordering::Relaxed) + bytes;
                progress(d, total, w);
            };
            summaries.push(pack_split(split, folder, &dir, opts, &tick)?);
        }
        Ok(summaries)
    };
    let summaries = match job() {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&partial);
            return Err(e);
        }
    };
    replace(out, &partial)?;
    Ok(summaries)
}

/// Moves the finished output into place (the old OUT, if any, is removed after).
fn replace(out: &Path, partial: &Path) -> Result<(), PackError> {
    let old = sibling(out, "old");
    if out.exists() {
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(write_err(&old))?;
        }
        std::fs::rename(out, &old).map_err(write_err(out))?;
    }
    std::fs::rename(partial, out).map_err(write_err(out))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(write_err(&old))?;
    }
    et_runfiles::sync_dir(out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))).map_err(write_err(out))
}

/// Images processed in parallel before they are written in order (bounds memory).
const CHUNK: usize = 256;

/// Writes one split's shards, `classes.json` and `index.json` into `dir`.
fn pack_split(split: &str, folder: &ImageFolder, dir: &Path, opts: &PackOptions, tick: &(dyn Fn(usize, u64) + Sync)) -> Result<SplitSummary, PackError> {
    let mut order: Vec<usize> = (0..folder.len()).collect();
    if split == "train" && !opts.keep_order {
        Rng::from_keys(&[0x7061_636b]).shuffle(&mut order);
    }
    let relative: Vec<String> = order.iter().map(|&i| folder.samples[i].path.strip_prefix(&folder.root).unwrap_or(&folder.samples[i].path).to_string_lossy().replace('\\', "/")).collect();
    let keys = encode::keys(&relative);
    let prefix = if split.is_empty() { "shard" } else { split };
    let mut summary = SplitSummary { split: split.to_string(), images: folder.len(), ..Default::default() };
    let mut shards = ShardSink { dir: dir.to_path_buf(), prefix: prefix.to_string(), limit: opts.shard_bytes, pending: Vec::new(), pending_bytes: 0, index: Vec::new() };
    for (chunk, chunk_keys) in order.chunks(CHUNK).zip(keys.chunks(CHUNK)) {
        let prepared: Vec<Result<encode::Prepared, PackError>> = chunk
            .par_iter()
            .map(|&i| {
                let path = &folder.samples[i].path;
                let bytes = std::fs::read(path).map_err(|source| PackError::Read { path: path.clone(), source })?;
                encode::prepare(path, bytes, opts.shorter_side, opts.quality).map_err(PackError::Invalid)
            })
            .collect();
        let mut chunk_bytes = 0;
        for ((&i, key), p) in chunk.iter().zip(chunk_keys).zip(prepared) {
            let p = p?;
            summary.reencoded += usize::from(p.reencoded);
            if let Some(why) = p.unreadable {
                summary.unreadable.push((folder.samples[i].path.clone(), why));
            }
            chunk_bytes += p.bytes.len() as u64;
            shards.add(key, p.field, p.bytes, folder.samples[i].label as u32)?;
        }
        tick(chunk.len(), chunk_bytes);
    }
    shards.flush()?;
    summary.shards = shards.index.len();
    summary.bytes = shards.index.iter().map(|s| s.bytes).sum();
    let classes = serde_json::to_string(&folder.classes).map_err(|e| PackError::Invalid(e.to_string()))?;
    let path = dir.join(CLASSES_FILE);
    et_runfiles::write(&path, (classes + "\n").as_bytes()).map_err(write_err(&path))?;
    let path = dir.join(INDEX_FILE);
    Index { format: FORMAT, shards: shards.index }.write(&path).map_err(write_err(&path))?;
    Ok(summary)
}

/// Collects samples into shards of at most `limit` bytes and writes each when full.
struct ShardSink {
    dir: PathBuf,
    prefix: String,
    limit: u64,
    pending: Vec<(String, String, Vec<u8>, u32)>,
    pending_bytes: u64,
    index: Vec<IndexShard>,
}

/// Bytes a member takes in a tar: its header and padded data, and a pax header with the
/// name when the name is over 100 bytes.
fn tar_bytes(name_len: usize, size: usize) -> u64 {
    let pad = |n: usize| (n as u64).div_ceil(BLOCK) * BLOCK;
    BLOCK + pad(size) + if name_len > 100 { BLOCK + pad(name_len + 20) } else { 0 }
}

impl ShardSink {
    fn add(&mut self, key: &str, field: String, bytes: Vec<u8>, label: u32) -> Result<(), PackError> {
        let size = tar_bytes(key.len() + field.len() + 1, bytes.len()) + tar_bytes(key.len() + 4, 10);
        // Room for the end-of-archive blocks.
        if !self.pending.is_empty() && self.pending_bytes + size + 2 * BLOCK > self.limit {
            self.flush()?;
        }
        self.pending_bytes += size;
        self.pending.push((key.to_string(), field, bytes, label));
        Ok(())
    }

    fn flush(&mut self) -> Result<(), PackError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let file = format!("{}-{:06}.tar", self.prefix, self.index.len());
        let path = self.dir.join(&file);
        let mut samples = Vec::with_capacity(self.pending.len());
        let mut t = TarWriter::new(Vec::with_capacity(self.pending_bytes as usize + 1024));
        for (key, field, bytes, label) in self.pending.drain(..) {
            let offset = t.append(&format!("{key}.{field}"), &bytes).map_err(write_err(&path))?;
            t.append(&format!("{key}.cls"), label.to_string().as_bytes()).map_err(write_err(&path))?;
            samples.push(IndexSample(key, field, offset, bytes.len() as u64, label));
        }
        let tar = t.finish().map_err(write_err(&path))?;
        et_runfiles::write(&path, &tar).map_err(write_err(&path))?;
        self.index.push(IndexShard { file, bytes: tar.len() as u64, samples });
        self.pending_bytes = 0;
        Ok(())
    }
}
