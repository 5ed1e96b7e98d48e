//! The torchvision / timm image transforms used for ImageNet training and evaluation.
//!
//! Each function reproduces its Python counterpart's geometry, including the places
//! where Python rounds half to even (`round()`) or truncates (`int()`), and draws its
//! random numbers in the same order, so a crop differs from the reference only by the
//! random stream itself.

pub use crate::pixels::crop;
use crate::resample::{resize, Filter};
use crate::{DataError, Rng};
use image::RgbImage;
use std::path::Path;

/// Python's `round()`: half to even.
fn py_round(x: f64) -> i64 {
    x.round_ties_even() as i64
}


/// torchvision `RandomResizedCrop` (and timm's `RandomResizedCropAndInterpolation`
/// with a fixed interpolation).
#[derive(Clone, Debug, PartialEq)]
pub struct RandomResizedCrop {
    pub size: u32,
    pub scale: (f64, f64),
    pub ratio: (f64, f64),
    pub filter: Filter,
}

impl RandomResizedCrop {
    /// The ImageNet defaults: scale (0.08, 1), ratio (3/4, 4/3), bicubic (timm).
    pub fn new(size: u32) -> Self {
        RandomResizedCrop { size, scale: (0.08, 1.0), ratio: (3.0 / 4.0, 4.0 / 3.0), filter: Filter::Bicubic }
    }

    /// torchvision `RandomResizedCrop.get_params` for a `w x h` image:
    /// returns `(top, left, height, width)` of the crop.
    pub fn params(&self, w: u32, h: u32, rng: &mut Rng) -> (u32, u32, u32, u32) {
        let (width, height) = (w as i64, h as i64);
        let area = (w as f64) * (h as f64);
        let log_ratio = (self.ratio.0.ln(), self.ratio.1.ln());
        for _ in 0..10 {
            let target_area = area * rng.uniform_range(self.scale.0, self.scale.1);
            let aspect = rng.uniform_range(log_ratio.0, log_ratio.1).exp();
            let cw = py_round((target_area * aspect).sqrt());
            let ch = py_round((target_area / aspect).sqrt());
            if 0 < cw && cw <= width && 0 < ch && ch <= height {
                let top = rng.below((height - ch + 1) as usize) as u32;
                let left = rng.below((width - cw + 1) as usize) as u32;
                return (top, left, ch as u32, cw as u32);
            }
        }
        // Fallback: the largest centred crop whose ratio is within bounds.
        let in_ratio = w as f64 / h as f64;
        let (rmin, rmax) = (self.ratio.0.min(self.ratio.1), self.ratio.0.max(self.ratio.1));
        let (cw, ch) = if in_ratio < rmin {
            (width, py_round(width as f64 / rmin))
        } else if in_ratio > rmax {
            (py_round(height as f64 * rmax), height)
        } else {
            (width, height)
        };
        // `//` floors; the clamp only matters for degenerate (empty) images.
        let top = (height - ch).div_euclid(2).max(0) as u32;
        let left = (width - cw).div_euclid(2).max(0) as u32;
        (top, left, ch.max(0) as u32, cw.max(0) as u32)
    }

    /// Crops at random and resizes the crop to `size x size`.
    pub fn apply(&self, img: &RgbImage, rng: &mut Rng) -> RgbImage {
        let (top, left, h, w) = self.params(img.width(), img.height(), rng);
        let cropped = crop(img, top as i64, left as i64, h, w);
        resize(&cropped, self.size, self.size, self.filter)
    }

    /// Reads and decodes `path` and applies the crop, drawing the same random numbers
    /// as `apply(&decode_rgb(path)?, rng)`. With `reduced_dct`, a JPEG crop at least
    /// twice the output size is decoded at 1/2, 1/4 or 1/8 DCT scale (see
    /// `decode::decode_crop`): several times cheaper, and no longer Pillow-exact (the
    /// crop box is kept exactly, in fractional coordinates of the scaled image). Without
    /// it the output equals `apply` on the full decode; only the rows down to the crop
    /// are decoded.
    pub fn decode_apply(&self, path: &Path, rng: &mut Rng, reduced_dct: bool) -> Result<RgbImage, DataError> {
        let bytes = std::fs::read(path).map_err(|source| DataError::Io { path: path.to_path_buf(), source })?;
        self.decode_apply_bytes(&bytes, path, rng, reduced_dct)
    }

    /// `decode_apply` of a file already in memory (a shard member); `path` names it in errors.
    pub fn decode_apply_bytes(&self, bytes: &[u8], path: &Path, rng: &mut Rng, reduced_dct: bool) -> Result<RgbImage, DataError> {
        let reduce_to = reduced_dct.then_some(self.size);
        let c = crate::decode::decode_crop(bytes, reduce_to, |w, h| self.params(w, h, rng))
            .map_err(|reason| DataError::Decode { path: path.to_path_buf(), reason })?;
        Ok(c.resize(self.size, self.size, self.filter))
    }
}

/// Mirrors left-right.
pub fn hflip(img: &RgbImage) -> RgbImage {
    let mut out = img.clone();
    hflip_in_place(&mut out);
    out
}

/// Mirrors left-right in place: each row's pixels reversed as 3-byte units.
pub fn hflip_in_place(img: &mut RgbImage) {
    let w = img.width() as usize;
    if w < 2 {
        return;
    }
    for row in img.chunks_exact_mut(3 * w) {
        row.as_chunks_mut::<3>().0.reverse();
    }
}

/// torchvision `RandomHorizontalFlip(p)`: one uniform draw, flip when below `p`.
pub fn random_hflip(mut img: RgbImage, p: f64, rng: &mut Rng) -> RgbImage {
    if rng.uniform() < p {
        hflip_in_place(&mut img);
    }
    img
}

/// torchvision `Resize(size)` with an int: the shorter side becomes `size` and the
/// longer one `int(size * long / short)` (truncated), keeping the aspect ratio.
pub fn resize_shorter(img: &RgbImage, size: u32, filter: Filter) -> RgbImage {
    let (w, h) = img.dimensions();
    if w == 0 || h == 0 {
        return img.clone();
    }
    let (short, long) = if w <= h { (w, h) } else { (h, w) };
    let new_long = (size as f64 * long as f64 / short as f64) as u32;
    let (nw, nh) = if w <= h { (size, new_long) } else { (new_long, size) };
    resize(img, nw, nh, filter)
}

/// torchvision `CenterCrop(size)`: zero-pads an image smaller than the crop (the
/// extra pixel of an odd padding goes right / bottom), then crops at
/// `int(round((h - size) / 2))`, `int(round((w - size) / 2))`.
pub fn center_crop(img: &RgbImage, size: u32) -> RgbImage {
    let (mut w, mut h) = (img.width() as i64, img.height() as i64);
    let s = size as i64;
    // Padding shifts the image by the left / top pad; the crop is then taken in the
    // padded frame, which `crop` addresses with a negative offset.
    let (mut off_x, mut off_y) = (0i64, 0i64);
    if s > w || s > h {
        if s > w {
            off_x = (s - w).div_euclid(2);
            w = s;
        }
        if s > h {
            off_y = (s - h).div_euclid(2);
            h = s;
        }
    }
    let top = py_round((h - s) as f64 / 2.0);
    let left = py_round((w - s) as f64 / 2.0);
    crop(img, top - off_y, left - off_x, size, size)
}

/// timm's evaluation transform: resize the shorter side to
/// `floor(resolution / crop_pct)`, then centre-crop `resolution`. A `crop_pct` that
/// is not positive and finite (which callers should reject) acts as 1.
pub fn eval_transform(img: &RgbImage, resolution: u32, crop_pct: f64, filter: Filter) -> RgbImage {
    let crop_pct = if crop_pct.is_finite() && crop_pct > 0.0 { crop_pct } else { 1.0 };
    let scale = (resolution as f64 / crop_pct).floor() as u32;
    center_crop(&resize_shorter(img, scale, filter), resolution)
}

/// torchvision `ToTensor`: HWC u8 to CHW f32 in [0, 1].
pub fn to_chw_f32(img: &RgbImage) -> Vec<f32> {
    let scaled: [f32; 256] = std::array::from_fn(|v| v as f32 / 255.0);
    planes_vec(img, &[scaled; 3])
}

/// `ToTensor` then `Normalize(mean, std)` in one pass: per channel, a table of the 256
/// values `(v / 255 - mean) / std`, computed with the same f32 operations as the two
/// steps, so the result is bit-identical to `to_chw_f32` followed by `normalize_chw`.
pub fn to_chw_normalized(img: &RgbImage, mean: &[f32; 3], std: &[f32; 3]) -> Vec<f32> {
    planes_vec(img, &normalization_tables(mean, std))
}

/// `to_chw_normalized` written into `out` (a batch slot), which must hold exactly
/// 3 · width · height values.
pub fn to_chw_normalized_into(img: &RgbImage, mean: &[f32; 3], std: &[f32; 3], out: &mut [f32]) -> Result<(), DataError> {
    if out.len() != img.as_raw().len() {
        return Err(DataError::Invalid(format!("a {}x{} image fills 3x{}x{} values, not {}", img.width(), img.height(), img.height(), img.width(), out.len())));
    }
    // SAFETY: f32 and MaybeUninit<f32> have the same layout, and `planes` only writes
    // initialised values, so `out` stays initialised.
    let slots = unsafe { std::slice::from_raw_parts_mut(out.as_mut_ptr().cast::<std::mem::MaybeUninit<f32>>(), out.len()) };
    planes(img, &normalization_tables(mean, std), slots);
    Ok(())
}

fn normalization_tables(mean: &[f32; 3], std: &[f32; 3]) -> [[f32; 256]; 3] {
    std::array::from_fn(|c| std::array::from_fn(|v| (v as f32 / 255.0 - mean[c]) / std[c]))
}

/// [`planes`] into a new vector, written once (no zeroing pass).
fn planes_vec(img: &RgbImage, tables: &[[f32; 256]; 3]) -> Vec<f32> {
    let len = img.as_raw().len();
    let mut out = Vec::with_capacity(len);
    planes(img, tables, &mut out.spare_capacity_mut()[..len]);
    // SAFETY: `planes` wrote every element of the spare capacity it was given.
    unsafe { out.set_len(len) };
    out
}

/// The three planes of `img` mapped through a table per channel, written once into
/// `out` (3 · pixels values; unfilled memory is fine).
fn planes(img: &RgbImage, tables: &[[f32; 256]; 3], out: &mut [std::mem::MaybeUninit<f32>]) {
    let raw = img.as_raw();
    let n = raw.len() / 3;
    let (r, rest) = out.split_at_mut(n);
    let (g, b) = rest.split_at_mut(n);
    let [tr, tg, tb] = tables;
    for (((p, r), g), b) in raw.chunks_exact(3).zip(r).zip(g).zip(b) {
        r.write(tr[p[0] as usize]);
        g.write(tg[p[1] as usize]);
        b.write(tb[p[2] as usize]);
    }
}

/// torchvision `Normalize`: `(x - mean[c]) / std[c]` in place, in f32 as PyTorch does.
pub fn normalize_chw(chw: &mut [f32], c: usize, mean: &[f32], std: &[f32]) {
    if c == 0 || mean.is_empty() || std.is_empty() {
        return;
    }
    let plane = chw.len() / c;
    for (ch, values) in chw.chunks_exact_mut(plane).enumerate().take(c) {
        let (m, s) = (mean[ch % mean.len()], std[ch % std.len()]);
        values.iter_mut().for_each(|v| *v = (*v - m) / s);
    }
}

/// timm `RandomErasing(probability, mode='pixel')` with one erase: a rectangle of
/// 2%..33% of the area and log-uniform aspect in [0.3, 1/0.3] is replaced by
/// per-pixel, per-channel standard normal noise (on the normalised tensor).
#[derive(Clone, Debug, PartialEq)]
pub struct RandomErasing {
    pub prob: f64,
}

impl RandomErasing {
    const MIN_AREA: f64 = 0.02;
    const MAX_AREA: f64 = 1.0 / 3.0;
    const MIN_ASPECT: f64 = 0.3;

    /// Returns the erased `(top, left, height, width)`, if any (never for a buffer
    /// that is not `c * h * w` long).
    pub fn apply(&self, chw: &mut [f32], c: usize, h: usize, w: usize, rng: &mut Rng) -> Option<(usize, usize, usize, usize)> {
        // timm skips when `random() > p`.
        if rng.uniform() > self.prob || chw.len() != c * h * w {
            return None;
        }
        let area = (h * w) as f64;
        let log_aspect = (Self::MIN_ASPECT.ln(), (1.0 / Self::MIN_ASPECT).ln());
        for _ in 0..10 {
            let target_area = rng.uniform_range(Self::MIN_AREA, Self::MAX_AREA) * area;
            let aspect = rng.uniform_range(log_aspect.0, log_aspect.1).exp();
            let eh = py_round((target_area * aspect).sqrt()).max(0) as usize;
            let ew = py_round((target_area / aspect).sqrt()).max(0) as usize;
            if ew < w && eh < h {
                let top = rng.below(h - eh + 1);
                let left = rng.below(w - ew + 1);
                // Filled channel by channel, row-major: the order of `normal_()` on (c, h, w).
                for ch in 0..c {
                    for y in top..top + eh {
                        let row = (ch * h + y) * w;
                        for v in &mut chw[row + left..row + left + ew] {
                            *v = rng.normal() as f32;
                        }
                    }
                }
                return Some((top, left, eh, ew));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn fused_normalisation_is_bit_identical_to_the_two_steps() {
        let img = RgbImage::from_fn(17, 5, |x, y| image::Rgb([(x * 15) as u8, (y * 51) as u8, (x * y * 3) as u8]));
        let (mean, std) = ([0.485f32, 0.456, 0.406], [0.229f32, 0.224, 0.225]);
        let mut two = to_chw_f32(&img);
        normalize_chw(&mut two, 3, &mean, &std);
        let fused = to_chw_normalized(&img, &mean, &std);
        let mut slot = vec![f32::NAN; fused.len()];
        to_chw_normalized_into(&img, &mean, &std, &mut slot).unwrap();
        assert_eq!(slot, fused);
        assert!(to_chw_normalized_into(&img, &mean, &std, &mut slot[1..]).is_err());
        assert_eq!(fused.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), two.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
        assert_eq!(to_chw_f32(&img)[17 * 5 + 3], 0.0, "plane G, pixel (3, 0)");
        assert_eq!(to_chw_f32(&img)[4 * 17 + 2], 30.0 / 255.0, "plane R, pixel (2, 4)");
    }
    use super::*;

    fn gradient(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x + y) % 256) as u8]))
    }

    #[test]
    fn py_round_is_half_to_even() {
        assert_eq!((py_round(0.5), py_round(1.5), py_round(2.5), py_round(-0.5)), (0, 2, 2, 0));
    }

    #[test]
    fn rrc_params_in_bounds_and_deterministic() {
        let t = RandomResizedCrop::new(32);
        for (w, h) in [(500u32, 375u32), (64, 64), (10, 300), (3, 2)] {
            let mut a = Rng::from_keys(&[1, 2, 3]);
            let mut b = Rng::from_keys(&[1, 2, 3]);
            for _ in 0..500 {
                let p = t.params(w, h, &mut a);
                assert_eq!(p, t.params(w, h, &mut b));
                let (top, left, ch, cw) = p;
                assert!(ch > 0 && cw > 0 && top + ch <= h && left + cw <= w, "{p:?} in {w}x{h}");
            }
        }
        let mut r = Rng::new(9);
        let areas: Vec<f64> = (0..2000)
            .map(|_| {
                let (_, _, ch, cw) = t.params(400, 400, &mut r);
                (ch * cw) as f64 / 160_000.0
            })
            .collect();
        let mean = areas.iter().sum::<f64>() / areas.len() as f64;
        // Mostly-accepted uniform(0.08, 1) area draws average a little under 0.54.
        assert!((0.45..0.6).contains(&mean), "mean area fraction {mean}");
    }

    #[test]
    fn rrc_fallback_is_centred_with_clamped_ratio() {
        // A 1000x10 strip cannot fit any 3/4..4/3 crop of >= 8% area: the fallback
        // takes h = 10, w = round(10 * 4/3) = 13, centred.
        let t = RandomResizedCrop::new(8);
        let mut r = Rng::new(0);
        assert_eq!(t.params(1000, 10, &mut r), (0, 493, 10, 13));
        let out = t.apply(&gradient(1000, 10), &mut r);
        assert_eq!(out.dimensions(), (8, 8));
    }

    #[test]
    fn flips() {
        for w in [1, 2, 5, 6] {
            let img = RgbImage::from_fn(w, 3, |x, y| image::Rgb([x as u8, y as u8, (x * 7 + y) as u8]));
            assert_eq!(hflip(&img), image::imageops::flip_horizontal(&img), "width {w}");
        }
        let img = gradient(5, 3);
        let f = hflip(&img);
        assert_eq!(f.get_pixel(0, 1), img.get_pixel(4, 1));
        assert_eq!(hflip(&f), img);
        let mut r = Rng::new(1);
        assert_eq!(random_hflip(img.clone(), 0.0, &mut r), img);
        assert_eq!(random_hflip(img.clone(), 1.0, &mut r), f);
    }

    #[test]
    fn resize_shorter_truncates_long_side() {
        let img = gradient(500, 375);
        assert_eq!(resize_shorter(&img, 256, Filter::Bilinear).dimensions(), (341, 256));
        let img = gradient(375, 500);
        assert_eq!(resize_shorter(&img, 256, Filter::Bilinear).dimensions(), (256, 341));
        let img = gradient(10, 10);
        assert_eq!(resize_shorter(&img, 10, Filter::Bicubic), img);
    }

    #[test]
    fn center_crop_geometry() {
        let img = gradient(9, 6);
        // top = round(2/2) = 1, left = round(5/2) = 2 (half to even).
        let c = center_crop(&img, 4);
        assert_eq!(c.dimensions(), (4, 4));
        assert_eq!(c.get_pixel(0, 0), img.get_pixel(2, 1));
        let img = gradient(8, 7);
        // Size 5: left = round(1.5) = 2, top = round(1.0) = 1.
        let c = center_crop(&img, 5);
        assert_eq!(c.get_pixel(0, 0), img.get_pixel(2, 1));
        // Padding: 3x2 image into 6x6: pad l=1, r=2, t=2, b=2.
        let img = RgbImage::from_pixel(3, 2, image::Rgb([9, 9, 9]));
        let c = center_crop(&img, 6);
        let filled: Vec<(u32, u32)> = c.enumerate_pixels().filter(|p| p.2 .0 == [9, 9, 9]).map(|p| (p.0, p.1)).collect();
        assert_eq!(filled, vec![(1, 2), (2, 2), (3, 2), (1, 3), (2, 3), (3, 3)]);
        // Padding in one dimension only, cropping in the other: 10x2 into 4x4.
        let img = gradient(10, 2);
        let c = center_crop(&img, 4);
        assert_eq!(c.get_pixel(0, 1), img.get_pixel(3, 0));
        assert_eq!(c.get_pixel(0, 0).0, [0, 0, 0]);
    }

    #[test]
    fn eval_transform_size() {
        let img = gradient(500, 375);
        let out = eval_transform(&img, 224, 0.875, Filter::Bicubic);
        assert_eq!(out.dimensions(), (224, 224));
        // Resize to 341x256, crop at left = round(117/2) = 58, top = 16.
        let resized = resize_shorter(&img, 256, Filter::Bicubic);
        assert_eq!(out.get_pixel(0, 0), resized.get_pixel(58, 16));
    }

    #[test]
    fn chw_and_normalize() {
        let img = RgbImage::from_fn(2, 1, |x, _| image::Rgb([255 * x as u8, 51, 0]));
        let mut t = to_chw_f32(&img);
        assert_eq!(t, vec![0.0, 1.0, 0.2, 0.2, 0.0, 0.0]);
        normalize_chw(&mut t, 3, &[0.5, 0.2, 0.0], &[0.5, 1.0, 2.0]);
        assert_eq!(t, vec![-1.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn erasing_replaces_a_plausible_region() {
        let (c, h, w) = (3, 40, 50);
        let e = RandomErasing { prob: 1.0 };
        let mut r = Rng::new(5);
        for _ in 0..50 {
            let mut t = vec![7.0f32; c * h * w];
            let (top, left, eh, ew) = e.apply(&mut t, c, h, w, &mut r).expect("p = 1 always erases here");
            let changed = t.iter().filter(|&&v| v != 7.0).count();
            assert_eq!(changed, c * eh * ew);
            let frac = (eh * ew) as f64 / (h * w) as f64;
            assert!((0.01..0.4).contains(&frac), "area fraction {frac}");
            assert!(top + eh <= h && left + ew <= w);
            for ch in 0..c {
                assert_ne!(t[(ch * h + top) * w + left], 7.0);
            }
        }
        let mut t = vec![7.0f32; c * h * w];
        assert_eq!(RandomErasing { prob: 0.0 }.apply(&mut t, c, h, w, &mut r), None);
        assert!(t.iter().all(|&v| v == 7.0));
    }
}
