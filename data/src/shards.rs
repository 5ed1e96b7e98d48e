//! WebDataset shards: tar files of samples, each `KEY.jpg` (or another image extension)
//! plus `KEY.cls` holding the class number, with the class names in `classes.json` beside
//! the shards. A data set is a directory of `.tar` files or a brace pattern
//! (`DIR/train-{000000..000127}.tar`).
//!
//! Opening one lists every sample once — from `index.json` (written by et-pack: each shard's
//! size and its samples' offsets) or, for shards the index does not describe as they are, by
//! reading their headers, in parallel — so reading later needs no header scan. A sample that
//! cannot be used (no `.cls`, an unknown class, a member cut off by the end of the file) stays
//! in the list with the reason: the loader skips and counts it as it does an undecodable
//! image. A file that is not a tar, or whose headers are damaged, is an error.

use crate::shard_index::{self, Index};
use crate::DataError;
use rayon::prelude::*;
use std::fs::File;
use std::path::{Path, PathBuf};

/// The class names beside the shards.
pub const CLASSES_FILE: &str = "classes.json";
/// The sample offsets of the shards beside it.
pub const INDEX_FILE: &str = "index.json";
/// Largest image member read (a larger size is taken for a damaged header).
pub const MAX_MEMBER: u64 = 1 << 30;

/// One sample: where its image lies in its shard, and its class (or why it cannot be used).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub key: Box<str>,
    /// The image's extension as in the member name (`jpg`, `png`, ...).
    pub field: Box<str>,
    pub offset: u64,
    pub size: u64,
    pub label: Result<u32, Box<str>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardFile {
    pub path: PathBuf,
    pub bytes: u64,
    /// Its samples are `members[first..first + count]`.
    pub first: usize,
    pub count: usize,
}

#[derive(Clone, Debug)]
pub struct ShardSet {
    /// The directory or pattern given (for messages).
    pub root: PathBuf,
    pub classes: Vec<String>,
    pub shards: Vec<ShardFile>,
    pub members: Vec<Member>,
    /// Shards without a sample.
    pub empty_shards: usize,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DataError + '_ {
    move |source| DataError::Io { path: path.to_path_buf(), source }
}

/// Whether `spec` is a brace pattern rather than a path.
pub fn is_pattern(spec: &Path) -> bool {
    let s = spec.to_string_lossy();
    s.contains('{') && s.contains('}')
}

/// Whether `dir` is a directory of shards: it holds `.tar` files, and a `classes.json` or no
/// sub-directories (an ImageFolder with a stray archive beside its class folders is not).
pub fn has_shards(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else { return false };
    let paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    paths.iter().any(|p| is_tar(p)) && (dir.join(CLASSES_FILE).is_file() || !paths.iter().any(|p| p.is_dir()))
}

fn is_tar(p: &Path) -> bool {
    p.extension().is_some_and(|e| e.eq_ignore_ascii_case("tar")) && p.is_file()
}

/// Most shard names one pattern may expand to.
const MAX_SHARDS: usize = 1_000_000;

/// Expands `{a..b}` numeric ranges (zero-padded to `a`'s width when `a` has a leading zero
/// or both ends have the same width) and `{x,y,z}` lists, as webdataset's braceexpand.
pub fn expand_braces(pattern: &str) -> Result<Vec<String>, String> {
    let Some(open) = pattern.find('{') else { return Ok(vec![pattern.to_string()]) };
    let close = pattern[open..].find('}').map(|i| i + open).ok_or_else(|| format!("'{{' without '}}' in {pattern}"))?;
    let (head, body, tail) = (&pattern[..open], &pattern[open + 1..close], &pattern[close + 1..]);
    let choices: Vec<String> = if let Some((a, b)) = body.split_once("..") {
        let (x, y) = (a.parse::<u64>().map_err(|_| format!("{{{body}}}: {a} is not a number"))?, b.parse::<u64>().map_err(|_| format!("{{{body}}}: {b} is not a number"))?);
        if y < x {
            return Err(format!("{{{body}}} counts down"));
        }
        if y - x >= MAX_SHARDS as u64 {
            return Err(format!("{{{body}}} names more than {MAX_SHARDS} shards"));
        }
        let width = if a.len() > 1 && a.starts_with('0') || a.len() == b.len() { a.len() } else { 0 };
        (x..=y).map(|v| format!("{v:0width$}")).collect()
    } else {
        body.split(',').map(str::to_string).collect()
    };
    let rest = expand_braces(tail)?;
    if choices.len().saturating_mul(rest.len()) > MAX_SHARDS {
        return Err(format!("{pattern} names more than {MAX_SHARDS} shards"));
    }
    Ok(choices.iter().flat_map(|c| rest.iter().map(move |r| format!("{head}{c}{r}"))).collect())
}

/// The shard files of `spec` (a directory or a pattern), sorted by name for a directory,
/// in the pattern's order otherwise; and the directory they are in.
fn shard_paths(spec: &Path) -> Result<(PathBuf, Vec<PathBuf>), DataError> {
    if is_pattern(spec) {
        let text = spec.to_string_lossy();
        let names = expand_braces(&text).map_err(|e| DataError::Invalid(format!("shard pattern {text}: {e}")))?;
        let paths: Vec<PathBuf> = names.into_iter().map(PathBuf::from).collect();
        let missing: Vec<&PathBuf> = paths.iter().filter(|p| !p.is_file()).collect();
        if missing.len() == paths.len() {
            return Err(DataError::Invalid(format!("no shards match {text}: check the directory and the numbers in braces")));
        }
        if let Some(m) = missing.first() {
            return Err(DataError::Invalid(format!("{} of the pattern {text} is missing ({} of {} shards are): fix the pattern's range", m.display(), missing.len(), paths.len())));
        }
        let dir = paths[0].parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        return Ok((dir, paths));
    }
    if !spec.is_dir() {
        return Err(DataError::MissingDir(spec.to_path_buf()));
    }
    let mut paths: Vec<PathBuf> = std::fs::read_dir(spec).map_err(io_err(spec))?.flatten().map(|e| e.path()).filter(|p| is_tar(p)).collect();
    paths.sort_by(|a, b| a.as_os_str().as_encoded_bytes().cmp(b.as_os_str().as_encoded_bytes()));
    if paths.is_empty() {
        return Err(DataError::Invalid(format!("{} has no .tar shards", spec.display())));
    }
    Ok((spec.to_path_buf(), paths))
}

/// `classes.json` of `dir`: a JSON list of class names.
pub fn read_classes(dir: &Path) -> Result<Vec<String>, DataError> {
    let path = dir.join(CLASSES_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        DataError::Invalid(format!("{}: {e}: shards need the class names beside them, as a JSON list (et-pack writes it)", path.display()))
    })?;
    let classes: Vec<String> = serde_json::from_str(&text).map_err(|e| DataError::Invalid(format!("{} is not a JSON list of class names: {e}", path.display())))?;
    if classes.is_empty() {
        return Err(DataError::Invalid(format!("{} lists no classes", path.display())));
    }
    Ok(classes)
}

impl ShardSet {
    /// Opens the shards of `spec`; `log` hears what takes time or was left out (shards
    /// indexed by reading them, empty shards).
    pub fn open(spec: &Path, log: &mut dyn FnMut(&str)) -> Result<ShardSet, DataError> {
        let (dir, paths) = shard_paths(spec)?;
        let classes = read_classes(&dir)?;
        let index = match Index::read(&dir.join(INDEX_FILE)) {
            Ok(i) => i,
            Err(e) => {
                log(&e);
                None
            }
        };
        let sizes: Vec<u64> = paths.iter().map(|p| std::fs::metadata(p).map(|m| m.len()).map_err(io_err(p))).collect::<Result<_, _>>()?;
        let known: Vec<Option<Vec<Member>>> = paths.iter().zip(&sizes).map(|(p, &n)| index.as_ref().and_then(|i| i.members(p, n))).collect();
        let unknown = known.iter().filter(|k| k.is_none()).count();
        if unknown > 0 {
            log(&format!("indexing {unknown} of {} shards in {} by reading their headers (et-pack writes an {INDEX_FILE} that spares this)", paths.len(), dir.display()));
        }
        let lists: Vec<Vec<Member>> = paths
            .par_iter()
            .zip(&sizes)
            .zip(known)
            .map(|((p, &n), k)| match k {
                Some(m) => Ok(m),
                None => shard_index::scan(p, n),
            })
            .collect::<Result<_, _>>()?;
        let (mut shards, mut members, mut empty_shards) = (Vec::with_capacity(paths.len()), Vec::new(), 0);
        for ((path, bytes), list) in paths.into_iter().zip(sizes).zip(lists) {
            empty_shards += usize::from(list.is_empty());
            shards.push(ShardFile { path, bytes, first: members.len(), count: list.len() });
            members.extend(list.into_iter().map(|m| check_class(m, classes.len())));
        }
        if members.is_empty() {
            return Err(DataError::Invalid(format!("the shards of {} hold no samples (KEY.jpg + KEY.cls members)", spec.display())));
        }
        if empty_shards > 0 {
            log(&format!("{empty_shards} of {} shards in {} hold no sample", shards.len(), dir.display()));
        }
        Ok(ShardSet { root: spec.to_path_buf(), classes, shards, members, empty_shards })
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Samples per shard.
    pub fn sizes(&self) -> Vec<usize> {
        self.shards.iter().map(|s| s.count).collect()
    }

    /// The shard holding sample `id`.
    pub fn shard_of(&self, id: usize) -> usize {
        self.shards.partition_point(|s| s.first + s.count <= id)
    }

    /// `SHARD/KEY.FIELD`: how messages name sample `id`.
    pub fn name(&self, id: usize) -> PathBuf {
        let m = &self.members[id];
        self.shards[self.shard_of(id)].path.join(format!("{}.{}", m.key, m.field))
    }

    /// Reads sample `id`'s image bytes (or says why it cannot be used).
    pub fn read(&self, id: usize) -> Result<Vec<u8>, DataError> {
        let path = &self.shards[self.shard_of(id)].path;
        let mut f = File::open(path).map_err(io_err(path))?;
        read_member(&mut f, &self.members[id]).map_err(|reason| DataError::Member { path: self.name(id), reason })
    }
}

/// A sample whose class is not among the `classes` is unusable.
fn check_class(mut m: Member, classes: usize) -> Member {
    if let Ok(l) = m.label {
        if l as usize >= classes {
            m.label = Err(format!("class {l} is not one of the {classes} classes of {CLASSES_FILE}").into());
        }
    }
    m
}

/// The image bytes of `m` from its open shard.
pub fn read_member(f: &mut File, m: &Member) -> Result<Vec<u8>, String> {
    if let Err(why) = &m.label {
        return Err(why.to_string());
    }
    if m.size > MAX_MEMBER {
        return Err(format!("{} bytes is too large for an image", m.size));
    }
    let mut buf = vec![0u8; m.size as usize];
    read_at(f, &mut buf, m.offset).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            "truncated: the shard ends inside this member".to_string()
        } else {
            e.to_string()
        }
    })?;
    Ok(buf)
}

#[cfg(unix)]
fn read_at(f: &mut File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(f, buf, offset)
}

#[cfg(not(unix))]
fn read_at(f: &mut File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    f.seek(SeekFrom::Start(offset))?;
    f.read_exact(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn braces_expand_like_webdataset() {
        assert_eq!(expand_braces("a-{000..002}.tar").unwrap(), ["a-000.tar", "a-001.tar", "a-002.tar"]);
        assert_eq!(expand_braces("a-{8..10}.tar").unwrap(), ["a-8.tar", "a-9.tar", "a-10.tar"]);
        assert_eq!(expand_braces("{x,y}-{0..1}").unwrap(), ["x-0", "x-1", "y-0", "y-1"]);
        assert_eq!(expand_braces("plain.tar").unwrap(), ["plain.tar"]);
        assert!(expand_braces("a-{3..1}").unwrap_err().contains("down"));
        assert!(expand_braces("a-{0..99999999999}").unwrap_err().contains("more than"));
        assert!(expand_braces("a-{0..x}").unwrap_err().contains("not a number"));
        assert!(expand_braces("a-{0..2").unwrap_err().contains("without"));
    }
}
