//! A sample as the loader hands it to a transform: a file to read, or bytes in memory.

use crate::DataError;
use std::borrow::Cow;
use std::path::Path;

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
