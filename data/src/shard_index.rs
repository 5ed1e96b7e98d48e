//! Where each sample of a shard lies: `index.json` (et-pack writes it beside the shards),
//! and the scan of a shard's tar headers that builds the same list for a shard the index
//! does not describe, grouping members into WebDataset samples by key.

use crate::folder::IMG_EXTENSIONS;
use crate::shards::{Member, MAX_MEMBER};
use crate::tar::{self, Entry};
use crate::DataError;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::path::Path;

pub const FORMAT: u32 = 1;

/// One sample of an index: key, image extension, data offset, size, class.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexSample(pub String, pub String, pub u64, pub u64, pub u32);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexShard {
    /// File name, beside the index.
    pub file: String,
    /// Its size: a shard of another size is not the one indexed, and is scanned.
    pub bytes: u64,
    pub samples: Vec<IndexSample>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Index {
    pub format: u32,
    pub shards: Vec<IndexShard>,
}

impl Index {
    /// The index at `path`: `Ok(None)` without one, `Err(message)` for one that cannot be
    /// used (the shards are then scanned).
    pub fn read(path: &Path) -> Result<Option<Index>, String> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{} cannot be read ({e}): the shards are indexed by reading them", path.display())),
        };
        let index: Index = serde_json::from_str(&text).map_err(|e| format!("{} is not a shard index ({e}): the shards are indexed by reading them", path.display()))?;
        if index.format != FORMAT {
            return Err(format!("{} has index format {}, this build reads {FORMAT}: the shards are indexed by reading them", path.display(), index.format));
        }
        Ok(Some(index))
    }

    /// The samples of the shard at `path` of `bytes` bytes, if the index describes it.
    pub fn members(&self, path: &Path, bytes: u64) -> Option<Vec<Member>> {
        let name = path.file_name()?.to_str()?;
        let shard = self.shards.iter().find(|s| s.file == name && s.bytes == bytes)?;
        Some(
            shard
                .samples
                .iter()
                .map(|IndexSample(key, field, offset, size, label)| {
                    let inside = offset.checked_add(*size).is_some_and(|end| end <= bytes);
                    let label = if inside { Ok(*label) } else { Err("the index places it beyond the end of the shard".into()) };
                    Member { key: key.as_str().into(), field: field.as_str().into(), offset: *offset, size: *size, label }
                })
                .collect(),
        )
    }

    /// Writes the index atomically.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let text = serde_json::to_string(self).map_err(std::io::Error::other)?;
        et_runfiles::write(path, (text + "\n").as_bytes())
    }
}

fn is_image_field(field: &str) -> bool {
    IMG_EXTENSIONS.iter().any(|e| e[1..].eq_ignore_ascii_case(field))
}

/// The members of one key while they are being grouped.
#[derive(Default)]
struct Group<'a> {
    key: &'a str,
    image: Option<(&'a str, &'a Entry)>,
    cls: Option<&'a Entry>,
}

/// Longest `.cls` member read (a class number).
const MAX_CLS: u64 = 64;

fn class_of(f: &mut File, e: &Entry) -> Result<u32, String> {
    if e.truncated {
        return Err("truncated: the shard ends inside its .cls member".into());
    }
    if e.size > MAX_CLS {
        return Err(format!("its .cls member has {} bytes, not a class number", e.size));
    }
    let m = Member { key: "".into(), field: "cls".into(), offset: e.offset, size: e.size, label: Ok(0) };
    let bytes = crate::shards::read_member(f, &m)?;
    let text = String::from_utf8_lossy(&bytes);
    text.trim().parse().map_err(|_| format!("its .cls member holds {:?}, not a class number", text.trim()))
}

impl Group<'_> {
    /// The sample, `None` for a key with neither an image nor a class (other fields only).
    fn finish(self, f: &mut File) -> Option<Member> {
        let (field, entry) = match (self.image, self.cls) {
            (None, None) => return None,
            (Some(img), _) => img,
            (None, Some(cls)) => ("cls", cls),
        };
        let label = if self.image.is_none() {
            Err(format!("no image member ({}) for this key", IMG_EXTENSIONS.join(", ")))
        } else if entry.truncated || entry.size > MAX_MEMBER {
            Err("truncated: the shard ends inside this member".to_string())
        } else {
            match self.cls {
                None => Err("no .cls member (the class number) for this key".to_string()),
                Some(c) => class_of(f, c),
            }
        };
        Some(Member { key: self.key.into(), field: field.into(), offset: entry.offset, size: entry.size, label: label.map_err(Into::into) })
    }
}

/// Groups a shard's members into samples: consecutive members sharing a key form one; the
/// first image member is its image.
fn group(entries: &[Entry], f: &mut File) -> Vec<Member> {
    let mut out = Vec::new();
    let mut g = Group::default();
    for e in entries {
        let Some((key, field)) = tar::key_and_field(&e.name) else { continue };
        if key != g.key {
            out.extend(std::mem::take(&mut g).finish(f));
            g.key = key;
        }
        if is_image_field(field) && g.image.is_none() {
            g.image = Some((field, e));
        } else if field.eq_ignore_ascii_case("cls") && g.cls.is_none() {
            g.cls = Some(e);
        }
    }
    out.extend(g.finish(f));
    out
}

/// Lists the samples of the shard at `path` (`len` bytes) from its tar headers.
pub fn scan(path: &Path, len: u64) -> Result<Vec<Member>, DataError> {
    let mut f = File::open(path).map_err(|source| DataError::Io { path: path.to_path_buf(), source })?;
    let entries = tar::list(&mut f, len).map_err(|e| DataError::Shard { path: path.to_path_buf(), reason: e.to_string() })?;
    Ok(group(&entries, &mut f))
}

/// A shard's samples as an index lists them (the usable ones), from its headers.
pub fn scan_as_index(path: &Path) -> Result<Vec<IndexSample>, DataError> {
    let len = std::fs::metadata(path).map_err(|source| DataError::Io { path: path.to_path_buf(), source })?.len();
    Ok(scan(path, len)?.iter().filter_map(|m| m.label.as_ref().ok().map(|&l| IndexSample(m.key.to_string(), m.field.to_string(), m.offset, m.size, l))).collect())
}
