//! What `--data` names, for every tool: an ImageFolder or WebDataset shards, each with an
//! optional `train/` + `val/` split. `DATA/train` and `DATA/val` are the splits when they
//! are directories (of class folders or of `.tar` shards), otherwise `DATA` is the one set;
//! a brace pattern (`DIR/train-{000000..000127}.tar`) is always one set of shards.

use crate::folder::ImageFolder;
use crate::shards::{self, ShardSet};
use crate::DataError;
use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The samples of one split: files of an ImageFolder, or members of tar shards.
#[derive(Clone, Debug)]
pub enum Dataset {
    Folder(ImageFolder),
    Shards(Arc<ShardSet>),
}

impl Dataset {
    /// Opens the one set at `path`: shards when `path` is a pattern or a directory holding
    /// `.tar` files, an ImageFolder otherwise. `log` hears notes about shards (indexing,
    /// empty shards).
    pub fn open(path: &Path, log: &mut dyn FnMut(&str)) -> Result<Dataset, DataError> {
        if shards::is_pattern(path) || shards::has_shards(path) {
            return Ok(Dataset::Shards(Arc::new(ShardSet::open(path, log)?)));
        }
        Ok(Dataset::Folder(ImageFolder::open(path)?))
    }

    /// Split `split` of `data`: `data/split` when it is a directory, else `data` itself.
    pub fn open_split(data: &Path, split: &str, log: &mut dyn FnMut(&str)) -> Result<Dataset, DataError> {
        Dataset::open(&Self::split_root(data, split), log)
    }

    /// Where split `split` of `data` is (see the module documentation).
    pub fn split_root(data: &Path, split: &str) -> PathBuf {
        if shards::is_pattern(data) {
            data.to_path_buf()
        } else {
            ImageFolder::split_root(data, split)
        }
    }

    /// Whether `data` has a separate `split` (a `data/split` directory).
    pub fn has_split(data: &Path, split: &str) -> bool {
        !shards::is_pattern(data) && data.join(split).is_dir()
    }

    /// Opens split `split` of `data` and requires its classes to be `classes` (a validation
    /// split must use the training split's labels).
    pub fn open_with_classes(data: &Path, split: &str, classes: &[String], log: &mut dyn FnMut(&str)) -> Result<Dataset, DataError> {
        let set = Self::open_split(data, split, log)?;
        if set.classes() != classes {
            let missing: Vec<&String> = classes.iter().filter(|c| !set.classes().contains(c)).take(5).collect();
            let extra: Vec<&String> = set.classes().iter().filter(|c| !classes.contains(c)).take(5).collect();
            return Err(DataError::Invalid(format!(
                "{} has {} classes but {} were expected (missing e.g. {:?}, unexpected e.g. {:?}, or another order): train and val must have the same classes",
                set.root().display(),
                set.classes().len(),
                classes.len(),
                missing,
                extra
            )));
        }
        Ok(set)
    }

    pub fn classes(&self) -> &[String] {
        match self {
            Dataset::Folder(f) => &f.classes,
            Dataset::Shards(s) => &s.classes,
        }
    }

    /// The directory or pattern it was opened from.
    pub fn root(&self) -> &Path {
        match self {
            Dataset::Folder(f) => &f.root,
            Dataset::Shards(s) => &s.root,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Dataset::Folder(f) => f.samples.len(),
            Dataset::Shards(s) => s.members.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sample `i`'s class (0 for a shard sample that has none: it is skipped when read).
    pub fn label(&self, i: usize) -> usize {
        match self {
            Dataset::Folder(f) => f.samples[i].label,
            Dataset::Shards(s) => s.members[i].label.as_ref().map_or(0, |&l| l as usize),
        }
    }

    /// How messages name sample `i`: its file, or `SHARD/KEY.EXT`.
    pub fn name(&self, i: usize) -> Cow<'_, Path> {
        match self {
            Dataset::Folder(f) => Cow::Borrowed(&f.samples[i].path),
            Dataset::Shards(s) => Cow::Owned(s.name(i)),
        }
    }

    /// Sample `i`'s encoded image.
    pub fn read(&self, i: usize) -> Result<Vec<u8>, DataError> {
        match self {
            Dataset::Folder(f) => {
                let path = &f.samples[i].path;
                std::fs::read(path).map_err(|source| DataError::Io { path: path.clone(), source })
            }
            Dataset::Shards(s) => s.read(i),
        }
    }

    /// "ImageFolder" or "N shards", for reports.
    pub fn kind(&self) -> String {
        match self {
            Dataset::Folder(_) => "ImageFolder".into(),
            Dataset::Shards(s) => format!("{} shard{}", s.shards.len(), if s.shards.len() == 1 { "" } else { "s" }),
        }
    }
}
