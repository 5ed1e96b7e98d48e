//! `et-bench lowfreq-diff`: how far `--low-freq resize` moves a low-resolution stage's
//! inputs from the exact FFT crop. For every image, one crop box (the same random draw in
//! both modes, as in training) is brought to B × B three ways: the fft mode (bicubic to the
//! base resolution, then the low-frequency crop to B), the resize mode (bicubic straight to
//! B from the DCT-scaled decode), and the resize mode from the full decode (no DCT scaling),
//! which separates the filter's share of the difference from the DCT scaling's. The FFT
//! crop samples the crop on another grid than a resize does (output pixel j at base pixel
//! j·base/B, where a resize centres it at (j + ½)·base/B − ½), so a fourth form, the full
//! decode resized on the FFT's grid, separates the filters' difference from that sub-pixel
//! shift. Only the crop step is compared: the flip, RandAugment and erasing that follow are
//! the same random draws in both modes.

use anyhow::{Context, Result};
use et_data::decode::decode_rgb;
use et_data::folder::ImageFolder;
use et_data::lowfreq::lowfreq_crop_square;
use et_data::stage_crop::{LowFreq, StageCrop};
use et_data::transform::RandomResizedCrop;
use et_data::{RgbImage, Rng};
use rayon::prelude::*;
use std::path::Path;

/// Differences between two inputs, in 8-bit levels (0..255), accumulated over images.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Diff {
    pub values: usize,
    pub sum_abs: f64,
    pub sum_sq: f64,
    pub max_abs: f64,
}

impl Diff {
    pub fn between(a: &[f32], b: &[f32]) -> Diff {
        let mut d = Diff { values: a.len().min(b.len()), ..Diff::default() };
        for (&x, &y) in a.iter().zip(b) {
            let e = (x as f64 - y as f64).abs();
            d.sum_abs += e;
            d.sum_sq += e * e;
            d.max_abs = d.max_abs.max(e);
        }
        d
    }

    pub fn add(&mut self, o: &Diff) {
        self.values += o.values;
        self.sum_abs += o.sum_abs;
        self.sum_sq += o.sum_sq;
        self.max_abs = self.max_abs.max(o.max_abs);
    }

    pub fn mean_abs(&self) -> f64 {
        self.sum_abs / self.values.max(1) as f64
    }

    pub fn rms(&self) -> f64 {
        (self.sum_sq / self.values.max(1) as f64).sqrt()
    }

    /// Peak signal-to-noise ratio for a peak of 255 levels (infinite when equal).
    pub fn psnr_db(&self) -> f64 {
        20.0 * (255.0 / self.rms()).log10()
    }
}

/// An image as CHW values in 8-bit levels.
fn levels(img: &RgbImage) -> Vec<f32> {
    let n = (img.width() * img.height()) as usize;
    let mut out = vec![0f32; 3 * n];
    for (i, p) in img.pixels().enumerate() {
        for c in 0..3 {
            out[c * n + i] = p.0[c] as f32;
        }
    }
    out
}

/// One image's crop in the three forms, for the random key `key`.
pub struct Inputs {
    /// fft mode: the low-frequency crop of the base-resolution crop (unclipped, as the
    /// network sees it).
    pub fft: Vec<f32>,
    /// resize mode, as trained.
    pub resize: Vec<f32>,
    /// resize mode from the full decode.
    pub resize_full: Vec<f32>,
    /// resize mode from the full decode, sampled on the FFT crop's grid.
    pub resize_aligned: Vec<f32>,
    /// DCT scale 1/denom of the resize mode's decode.
    pub denom: u32,
}

pub fn inputs(path: &Path, crop: &RandomResizedCrop, b: u32, key: &[u64]) -> Result<Inputs> {
    let base = crop.size as usize;
    let fft_crop = StageCrop::new(crop.clone(), b, LowFreq::Fft);
    let resize_crop = StageCrop::new(crop.clone(), b, LowFreq::Resize);
    let at_base = fft_crop.decode_path(path, &mut Rng::from_keys(key), false)?.img;
    let fft = if b as usize == base { levels(&at_base) } else { lowfreq_crop_square(&levels(&at_base), 3, base, base, b as usize)? };
    let resized = resize_crop.decode_path(path, &mut Rng::from_keys(key), false)?;
    let full = decode_rgb(path)?;
    let resize_full = resize_crop.apply(&full, &mut Rng::from_keys(key));
    let (top, left, h, w) = crop.params(full.width(), full.height(), &mut Rng::from_keys(key));
    let cropped = et_data::pixels::crop(&full, top as i64, left as i64, h, w);
    // The FFT crop's output pixel j lies at crop coordinate (j·base/B + ½)·c/base, a
    // resize's at (j + ½)·c/B: the box moved up and left by ½·c·(1/B − 1/base) aligns them.
    let shift = |c: u32| 0.5 * c as f64 * (1.0 / b as f64 - 1.0 / base as f64);
    let region = [-shift(w), -shift(h), w as f64 - shift(w), h as f64 - shift(h)];
    let aligned = et_data::resample::resize_box(&cropped, region, b, b, crop.filter);
    Ok(Inputs { fft, resize: levels(&resized.img), resize_full: levels(&resize_full), resize_aligned: levels(&aligned), denom: resized.denom })
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    pub images: usize,
    pub skipped: usize,
    /// Images decoded at DCT scale 1/1, 1/2, 1/4, 1/8 in resize mode.
    pub by_denom: [usize; 4],
    pub fft_vs_resize: Diff,
    pub fft_vs_resize_full: Diff,
    pub resize_vs_full: Diff,
    pub fft_vs_resize_aligned: Diff,
}

/// The differences over the first `limit` training images (all with 0) of `dir`, image i
/// cropped with the key (seed, i), on `threads` threads (the result does not depend on it).
pub fn report(dir: &Path, crop: &RandomResizedCrop, b: u32, limit: usize, seed: u64, threads: usize) -> Result<Report> {
    anyhow::ensure!(b >= 1 && b <= crop.size, "--lowres must be between 1 and --size ({})", crop.size);
    anyhow::ensure!(crop.scale.0 > 0.0 && crop.scale.0 <= 1.0, "--crop-min-scale must be in (0, 1], got {}", crop.scale.0);
    let set = ImageFolder::open(&ImageFolder::split_root(dir, "train"))?;
    let n = if limit == 0 { set.samples.len() } else { limit.min(set.samples.len()) };
    anyhow::ensure!(n > 0, "no images in {}", dir.display());
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads.max(1)).build().context("starting threads")?;
    let per_image: Vec<Result<Inputs>> = pool.install(|| set.samples[..n].par_iter().enumerate().map(|(i, s)| inputs(&s.path, crop, b, &[seed, i as u64])).collect());
    let mut r = Report::default();
    // Summed in image order, so the totals do not depend on the thread count.
    for (x, s) in per_image.into_iter().zip(&set.samples) {
        match x {
            Ok(x) => {
                r.images += 1;
                r.by_denom[x.denom.trailing_zeros().min(3) as usize] += 1;
                r.fft_vs_resize.add(&Diff::between(&x.fft, &x.resize));
                r.fft_vs_resize_full.add(&Diff::between(&x.fft, &x.resize_full));
                r.resize_vs_full.add(&Diff::between(&x.resize, &x.resize_full));
                r.fft_vs_resize_aligned.add(&Diff::between(&x.fft, &x.resize_aligned));
            }
            Err(e) => {
                r.skipped += 1;
                eprintln!("skipped {}: {e:#}", s.path.display());
            }
        }
    }
    Ok(r)
}

impl Report {
    pub fn to_text(&self) -> String {
        let line = |name: &str, d: &Diff| format!("{name:<40} mean |diff| {:.3}, RMS {:.3}, max {:.1} levels; PSNR {:.2} dB\n", d.mean_abs(), d.rms(), d.max_abs, d.psnr_db());
        let mut out = format!(
            "{} images{}; resize mode decoded at DCT scale 1/1: {}, 1/2: {}, 1/4: {}, 1/8: {}\n",
            self.images,
            if self.skipped > 0 { format!(" ({} skipped)", self.skipped) } else { String::new() },
            self.by_denom[0],
            self.by_denom[1],
            self.by_denom[2],
            self.by_denom[3]
        );
        out += &line("fft vs resize:", &self.fft_vs_resize);
        out += &line("fft vs resize, full decode:", &self.fft_vs_resize_full);
        out += &line("resize, DCT-scaled vs full decode:", &self.resize_vs_full);
        out += &line("fft vs resize, full decode, FFT's grid:", &self.fft_vs_resize_aligned);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_in_levels() {
        let d = Diff::between(&[0.0, 10.0, 255.0], &[2.0, 10.0, 251.0]);
        assert_eq!((d.values, d.sum_abs, d.sum_sq, d.max_abs), (3, 6.0, 20.0, 4.0));
        assert!((d.psnr_db() - 20.0 * (255.0 / (20.0f64 / 3.0).sqrt()).log10()).abs() < 1e-12);
        let mut t = d;
        t.add(&Diff::between(&[1.0], &[1.0]));
        assert_eq!((t.values, t.mean_abs()), (4, 1.5));
        assert_eq!(Diff::between(&[3.0], &[3.0]).psnr_db(), f64::INFINITY);
    }

    fn mini() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/cifar10-mini")
    }

    /// On the bundled 32-px images: at the base resolution the modes give the same inputs;
    /// at 24 px they differ (by the two filters) but little, no crop is large enough for a
    /// DCT scale, and the totals do not depend on the thread count.
    #[test]
    fn report_on_the_bundled_images() {
        let crop = RandomResizedCrop::new(32);
        let same = report(&mini(), &crop, 32, 40, 0, 2).unwrap();
        assert_eq!((same.images, same.skipped), (40, 0));
        assert_eq!(same.fft_vs_resize.sum_abs, 0.0);
        assert_eq!(same.fft_vs_resize_full.max_abs, 0.0);
        assert_eq!(same.fft_vs_resize_aligned.max_abs, 0.0, "at the base resolution the grids agree");
        let r = report(&mini(), &crop, 24, 40, 0, 2).unwrap();
        assert_eq!(r.by_denom, [40, 0, 0, 0]);
        assert_eq!(r.resize_vs_full.max_abs, 0.0);
        let (mad, psnr) = (r.fft_vs_resize.mean_abs(), r.fft_vs_resize.psnr_db());
        assert!(mad > 0.1 && mad < 8.0 && psnr > 25.0, "mean {mad} levels, PSNR {psnr} dB");
        // Much of the difference is the grids' sub-pixel offset.
        assert!(r.fft_vs_resize_aligned.mean_abs() < 0.8 * mad, "{}", r.to_text());
        assert_eq!(report(&mini(), &crop, 24, 40, 0, 1).unwrap(), r);
        assert!(r.to_text().contains("PSNR"));
        assert!(report(&mini(), &crop, 33, 1, 0, 1).is_err());
    }
}
