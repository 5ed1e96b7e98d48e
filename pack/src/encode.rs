//! What goes into a shard for one image: its original bytes, or — with a shorter-side
//! limit, for an image above it — the image resized (Pillow's antialiased Lanczos, the
//! shorter side to the limit, as torchvision's `Resize(S)`) and encoded as a JPEG.

use et_data::resample::Filter;
use et_data::transform::resize_shorter;
use image::codecs::jpeg::JpegEncoder;
use image::{ExtendedColorType, ImageReader};
use std::io::Cursor;
use std::path::Path;

/// One image ready to be written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prepared {
    /// The member's extension (lower case): the original's, or `jpg` when re-encoded.
    pub field: String,
    pub bytes: Vec<u8>,
    pub reencoded: bool,
    /// Why a file above the limit was copied as it is (it could not be decoded).
    pub unreadable: Option<String>,
}

/// The width and height a file's header states, if it has a readable one.
pub fn dimensions(bytes: &[u8]) -> Option<(u32, u32)> {
    ImageReader::new(Cursor::new(bytes)).with_guessed_format().ok()?.into_dimensions().ok()
}

/// The shard member for the image file `path` (already read into `bytes`).
pub fn prepare(path: &Path, bytes: Vec<u8>, shorter_side: Option<u32>, quality: u8) -> Result<Prepared, String> {
    let field = path.extension().map_or_else(|| "jpg".to_string(), |e| e.to_string_lossy().to_lowercase());
    let keep = |bytes, unreadable| Ok(Prepared { field: field.clone(), bytes, reencoded: false, unreadable });
    let Some(limit) = shorter_side else { return keep(bytes, None) };
    match dimensions(&bytes) {
        Some((w, h)) if w.min(h) > limit => {}
        // Small enough, or no readable header: training decides what to do with the file.
        Some(_) => return keep(bytes, None),
        None => return keep(bytes, Some("its header cannot be read".into())),
    }
    let img = match et_data::decode::decode_bytes(&bytes) {
        Ok(img) => img,
        Err(why) => return keep(bytes, Some(why)),
    };
    let small = resize_shorter(&img, limit, Filter::Lanczos);
    let mut out = Vec::new();
    JpegEncoder::new_with_quality(&mut out, quality)
        .encode(small.as_raw(), small.width(), small.height(), ExtendedColorType::Rgb8)
        .map_err(|e| format!("cannot encode {} as JPEG: {e}", path.display()))?;
    Ok(Prepared { field: "jpg".into(), bytes: out, reencoded: true, unreadable: None })
}

/// WebDataset keys from paths relative to the split (`class/name.ext`): the path without its
/// extension, with the dots webdataset would take for a field separator replaced by `_`,
/// and `_2`, `_3`, ... appended to a key already taken.
pub fn keys(relative: &[String]) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    relative
        .iter()
        .map(|r| {
            let stem = match r.rfind('.') {
                Some(i) if i > r.rfind('/').map_or(0, |s| s + 1) => &r[..i],
                _ => r.as_str(),
            };
            let (dir, base) = stem.rsplit_once('/').map_or(("", stem), |(d, b)| (d, b));
            let base = base.replace('.', "_");
            let key = if dir.is_empty() { base } else { format!("{dir}/{base}") };
            let mut unique = key.clone();
            let mut n = 2;
            while !seen.insert(unique.clone()) {
                unique = format!("{key}_{n}");
                n += 1;
            }
            unique
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_unique_and_webdataset_safe() {
        let rel: Vec<String> = ["cat/a.jpg", "cat/a.b.png", "cat/a_b.jpg", "d.o.g/x.JPEG", "cat/sub/a.jpg", "cat/a.JPG"].iter().map(|s| s.to_string()).collect();
        let k = keys(&rel);
        assert_eq!(k, ["cat/a", "cat/a_b", "cat/a_b_2", "d.o.g/x", "cat/sub/a", "cat/a_2"]);
        for key in &k {
            let name = format!("{key}.jpg");
            assert_eq!(et_data::tar::key_and_field(&name), Some((key.as_str(), "jpg")));
        }
    }
}
