//! The random crop that becomes a training image of a curriculum stage, made in one of the
//! two ways `--low-freq` chooses (docs/training.md, "Low-resolution stages"):
//!
//! - `fft` (the default): RandomResizedCrop to the base resolution; the exact
//!   low-frequency crop (`lowfreq`) down to the stage's resolution B comes later, after the
//!   flip and RandAugment;
//! - `resize`: RandomResizedCrop straight to B × B, from a JPEG decoded at the smallest
//!   DCT scale (1/8, 2/8, 4/8 or 8/8) that keeps the crop at least B pixels on both sides:
//!   a fraction of the decoding and resampling work.
//!
//! Both draw the crop box from the full-resolution image with the same random numbers (the
//! box does not depend on the output size), so for one seed the two modes crop the same
//! part of the same image and differ only in how it becomes B × B pixels. At a stage at the
//! base resolution there is nothing to low-pass and the two modes are one pipeline.

use crate::decode::{decode_crop, Cropped};
use crate::resample::Filter;
use crate::transform::RandomResizedCrop;
use crate::{DataError, Rng};
use image::RgbImage;
use std::path::Path;

/// How a low-resolution stage's B × B input is made from the base-resolution crop.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LowFreq {
    /// The exact low-frequency crop of the base-resolution crop (a brick-wall low-pass).
    #[default]
    Fft,
    /// An antialiased resize of the crop straight to B, from a DCT-scaled decode.
    Resize,
}

impl std::str::FromStr for LowFreq {
    type Err = String;

    fn from_str(s: &str) -> Result<LowFreq, String> {
        match s.to_ascii_lowercase().as_str() {
            "fft" => Ok(LowFreq::Fft),
            "resize" => Ok(LowFreq::Resize),
            _ => Err(format!("unknown low-frequency mode '{s}': expected fft or resize")),
        }
    }
}

impl std::fmt::Display for LowFreq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LowFreq::Fft => "fft",
            LowFreq::Resize => "resize",
        })
    }
}

/// A crop resampled to its output size, and the DCT scale 1/`denom` it was decoded at.
#[derive(Clone, Debug, PartialEq)]
pub struct Resized {
    pub img: RgbImage,
    pub denom: u32,
}

/// `resize` mode on one file: the box `plan(width, height)` picks (`(top, left, height,
/// width)` in full-resolution pixels, as `RandomResizedCrop::params`) resized to
/// `size × size` with `filter`. A JPEG is decoded at the largest scale-down 1/d (d = 8, 4
/// or 2) that keeps the box at least `size` pixels on both sides (`decode::choose_denom`),
/// and only as far as the box reaches; the box is kept exactly, in fractional coordinates
/// of the scaled image (scaled pixel i covers full pixels [i·d, (i + 1)·d)), and resampled
/// from the whole scaled pixels that cover it with Pillow's `box` semantics. That is
/// Pillow's `draft('RGB', (W // d, H // d))`, a crop to those pixels and `resize((size,
/// size), box=...)` (data/tests/lowfreq_resize.rs). Other formats, and every JPEG in a
/// build without libjpeg, are decoded in full: the exact crop, resized.
pub fn decode_resized(bytes: &[u8], size: u32, filter: Filter, plan: impl FnOnce(u32, u32) -> (u32, u32, u32, u32)) -> Result<Resized, String> {
    let c = decode_crop(bytes, Some(size), plan)?;
    Ok(Resized { img: c.resize(size, size, filter), denom: c.denom })
}

/// The crop step of a stage's training transform: `crop` is RandomResizedCrop at the base
/// resolution (its scale, ratio and filter serve both modes), `resolution` the stage's B.
#[derive(Clone, Debug, PartialEq)]
pub struct StageCrop {
    pub crop: RandomResizedCrop,
    pub resolution: u32,
    pub mode: LowFreq,
}

impl StageCrop {
    pub fn new(crop: RandomResizedCrop, resolution: u32, mode: LowFreq) -> StageCrop {
        StageCrop { crop, resolution, mode }
    }

    /// Whether the crop goes straight to the stage's resolution (resize mode below the base).
    pub fn resizes(&self) -> bool {
        self.mode == LowFreq::Resize && self.resolution < self.crop.size
    }

    /// The side of the images this step returns: the stage's resolution when it resizes to
    /// it, otherwise the base resolution (the low-frequency crop follows, if B is lower).
    pub fn out_size(&self) -> u32 {
        if self.resizes() {
            self.resolution
        } else {
            self.crop.size
        }
    }

    /// From a decoded image (no DCT scaling): `RandomResizedCrop::apply` at `out_size()`,
    /// with the box drawn exactly as at the base resolution.
    pub fn apply(&self, img: &RgbImage, rng: &mut Rng) -> RgbImage {
        let (top, left, h, w) = self.crop.params(img.width(), img.height(), rng);
        let cropped = crate::pixels::crop(img, top as i64, left as i64, h, w);
        crate::resample::resize(&cropped, self.out_size(), self.out_size(), self.crop.filter)
    }

    /// From an encoded file: resize mode decodes at a DCT scale for B (`decode_resized`);
    /// otherwise `RandomResizedCrop::decode_apply` at the base resolution, with
    /// `reduced_dct` as there (the exact crop without it).
    pub fn decode(&self, bytes: &[u8], rng: &mut Rng, reduced_dct: bool) -> Result<Resized, String> {
        let plan = |w, h| self.crop.params(w, h, rng);
        if self.resizes() {
            return decode_resized(bytes, self.resolution, self.crop.filter, plan);
        }
        let s = self.crop.size;
        let c: Cropped = decode_crop(bytes, reduced_dct.then_some(s), plan)?;
        Ok(Resized { img: c.resize(s, s, self.crop.filter), denom: c.denom })
    }

    /// `decode` on the file at `path`, with errors naming it.
    pub fn decode_path(&self, path: &Path, rng: &mut Rng, reduced_dct: bool) -> Result<Resized, DataError> {
        let bytes = std::fs::read(path).map_err(|source| DataError::Io { path: path.to_path_buf(), source })?;
        self.decode(&bytes, rng, reduced_dct).map_err(|reason| DataError::Decode { path: path.to_path_buf(), reason })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::decode_bytes;

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lowfreq_resize").join(name)).unwrap()
    }

    #[test]
    fn modes_parse_and_print() {
        for m in [LowFreq::Fft, LowFreq::Resize] {
            assert_eq!(m.to_string().parse::<LowFreq>(), Ok(m));
            assert_eq!(serde_json::to_string(&m).unwrap(), format!("\"{m}\""));
        }
        assert_eq!("RESIZE".parse::<LowFreq>(), Ok(LowFreq::Resize));
        let e = "lanczos".parse::<LowFreq>().unwrap_err();
        assert!(e.contains("fft or resize") && !e.contains('\n'), "{e}");
        assert_eq!(LowFreq::default(), LowFreq::Fft);
    }

    /// For the same seed the two modes draw the same box: the fft mode's output is the box
    /// `params` draws at the base resolution, resized to the base; the resize mode's is that
    /// same box through `decode_resized` (which a different box would not give: the image is
    /// textured everywhere). The random stream is left in the same state by both.
    #[test]
    fn both_modes_crop_the_same_box() {
        let bytes = fixture("rgb420.jpg");
        let full = decode_bytes(&bytes).unwrap();
        let (w, h) = full.dimensions();
        let mut base = RandomResizedCrop::new(64);
        base.scale = (0.25, 1.0);
        let (fft, resize) = (StageCrop::new(base.clone(), 16, LowFreq::Fft), StageCrop::new(base.clone(), 16, LowFreq::Resize));
        assert_eq!((fft.out_size(), resize.out_size()), (64, 16));
        let mut denoms = std::collections::BTreeSet::new();
        for k in 0..40u64 {
            let key = [k, 0x5eed];
            let bx = base.params(w, h, &mut Rng::from_keys(&key));
            let (mut ra, mut rb) = (Rng::from_keys(&key), Rng::from_keys(&key));
            let a = fft.decode(&bytes, &mut ra, false).unwrap();
            let b = resize.decode(&bytes, &mut rb, false).unwrap();
            assert_eq!(ra.next_u64(), rb.next_u64(), "seed {k}: the same random numbers consumed");
            let (top, left, ch, cw) = bx;
            let want_a = crate::resample::resize(&crate::pixels::crop(&full, top as i64, left as i64, ch, cw), 64, 64, base.filter);
            assert!(a.img == want_a && a.denom == 1, "seed {k}: fft mode crops {bx:?}");
            let want_b = decode_resized(&bytes, 16, base.filter, |_, _| bx).unwrap();
            assert!(b == want_b, "seed {k}: resize mode crops {bx:?}");
            // The same box from the decoded image (no DCT scaling) in both modes.
            assert_eq!(fft.apply(&full, &mut Rng::from_keys(&key)), want_a);
            let want_apply = crate::resample::resize(&crate::pixels::crop(&full, top as i64, left as i64, ch, cw), 16, 16, base.filter);
            assert_eq!(resize.apply(&full, &mut Rng::from_keys(&key)), want_apply);
            denoms.insert(b.denom);
        }
        if crate::decode::jpeg_decoder() == "libjpeg-turbo" {
            assert!(denoms.len() >= 2, "several DCT scales exercised: {denoms:?}");
        }
    }

    /// At the base resolution, and above it, resize mode is the base pipeline: the same
    /// pixels as the fft mode, reduced-DCT setting included.
    #[test]
    fn at_the_base_resolution_the_modes_are_one() {
        let bytes = fixture("rgb420.jpg");
        let base = RandomResizedCrop::new(40);
        for reduced in [false, true] {
            for k in 0..10u64 {
                let fft = StageCrop::new(base.clone(), 40, LowFreq::Fft).decode(&bytes, &mut Rng::from_keys(&[k]), reduced).unwrap();
                let resize = StageCrop::new(base.clone(), 40, LowFreq::Resize);
                assert!(!resize.resizes());
                assert_eq!(resize.decode(&bytes, &mut Rng::from_keys(&[k]), reduced).unwrap(), fft);
            }
        }
    }

    #[test]
    fn bad_files_are_errors() {
        let s = StageCrop::new(RandomResizedCrop::new(32), 16, LowFreq::Resize);
        let bytes = fixture("rgb420.jpg");
        for bad in [&bytes[..bytes.len() / 2], &b"not an image"[..], &[]] {
            assert!(s.decode(bad, &mut Rng::new(1), false).is_err());
        }
        let missing = Path::new("/nonexistent/x.jpg");
        assert!(matches!(s.decode_path(missing, &mut Rng::new(1), false), Err(DataError::Io { .. })));
    }
}
