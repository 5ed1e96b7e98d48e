//! Pillow-faithful image resampling (`Image.resize`).
//!
//! Models are trained on PIL-resized images in the reference implementation, and a
//! network is sensitive to the exact anti-aliasing of its inputs, so this module
//! reproduces Pillow's `ImagingResample` (libImaging/Resample.c) rather than using
//! `image::imageops`: two separable passes, filter support widened by the
//! down-scaling factor, per-pixel normalised weights, and — for 8-bit images — the
//! same 22-bit fixed-point arithmetic with an 8-bit intermediate image, so outputs
//! match Pillow 13 bit for bit. `Nearest` follows Pillow's affine-scale path instead.
//! (Pillow before 13 always ran the horizontal pass first; see `vertical_first`.)

mod pass8;

use crate::DataError;
use image::RgbImage;
use pass8::{pass_h8, pass_v8};

pub use et_interp::Filter;
pub(crate) use et_interp::{taps, taps_box, Taps};

/// Parses timm / torchvision interpolation names.
pub fn parse_filter(name: &str) -> Result<Filter, DataError> {
    Filter::parse(name).map_err(DataError::Invalid)
}

/// Pillow 13's pass order (python-pillow/Pillow#9549): the vertical pass runs first
/// when the height shrinks by more than twice as many pixels as the width does
/// (checked against Pillow 13.0.0 on 400 random sizes). The order matters because
/// the intermediate image is rounded to 8 bits.
fn vertical_first(w: usize, h: usize, ow: usize, oh: usize) -> bool {
    oh < h && (h as i64 - oh as i64) > 2 * (w as i64 - ow as i64)
}

/// Resizes like Pillow's `Image.resize((width, height), filter)` on an RGB image.
pub fn resize(img: &RgbImage, width: u32, height: u32, filter: Filter) -> RgbImage {
    let (w, h) = (img.width() as f64, img.height() as f64);
    resize_box(img, [0.0, 0.0, w, h], width, height, filter)
}

/// Pillow's `Image.resize((width, height), filter, box=region)`: resamples the
/// (possibly fractional) `region = [x0, y0, x1, y1]` of `img`. Filter taps near the
/// region's edge read the pixels beyond it, as far as the image goes.
pub fn resize_box(img: &RgbImage, region: [f64; 4], width: u32, height: u32, filter: Filter) -> RgbImage {
    resize_window(img, (0, img.width()), region, width, height, filter)
}

/// `resize_box` on the image made of columns `columns.0..columns.0 + columns.1` of `img`,
/// read in place (for a decoder that returns more columns than the crop).
pub fn resize_window(img: &RgbImage, columns: (u32, u32), region: [f64; 4], width: u32, height: u32, filter: Filter) -> RgbImage {
    let (x0, w) = (columns.0.min(img.width()) as usize, columns.1 as usize);
    let w = w.min(img.width() as usize - x0);
    let h = img.height() as usize;
    let (ow, oh) = (width as usize, height as usize);
    let full_x = region[0] == 0.0 && region[2] == w as f64;
    let full_y = region[1] == 0.0 && region[3] == h as f64;
    let window = || {
        if (x0, w) == (0, img.width() as usize) {
            std::borrow::Cow::Borrowed(img)
        } else {
            std::borrow::Cow::Owned(crate::pixels::crop(img, 0, x0 as i64, h as u32, w as u32))
        }
    };
    if (ow, oh) == (w, h) && full_x && full_y {
        return window().into_owned();
    }
    if ow == 0 || oh == 0 || w == 0 || h == 0 {
        return RgbImage::new(width, height);
    }
    if filter == Filter::Nearest {
        let img = window();
        if full_x && full_y {
            return nearest(&img, width, height);
        }
        let (x0, y0) = (region[0].round() as i64, region[1].round() as i64);
        let (cw, ch) = (((region[2] - region[0]).round() as u32).max(1), ((region[3] - region[1]).round() as u32).max(1));
        return nearest(&crate::pixels::crop(&img, y0, x0, ch, cw), width, height);
    }
    let src = Plane { raw: img.as_raw(), stride: 3 * img.width() as usize, offset: 3 * x0, width: w };
    let tx = || taps_box(region[0], region[2], w, ow, filter);
    let ty = taps_box(region[1], region[3], h, oh, filter);
    let out = if ow == w && full_x {
        pass_v8(&src, 0, &ty)
    } else if oh == h && full_y {
        pass_h8(&src, 0, h, &tx())
    } else if vertical_first((region[2] - region[0]) as usize, (region[3] - region[1]) as usize, ow, oh) {
        let tmp = pass_v8(&src, 0, &ty);
        pass_h8(&Plane::packed(&tmp, w), 0, oh, &tx())
    } else {
        // Only the source rows that the vertical pass reads are resampled.
        let first = ty.start[0];
        let last = ty.start[oh - 1] + ty.weights[oh - 1].len();
        let tmp = pass_h8(&src, first, last - first, &tx());
        pass_v8(&Plane::packed(&tmp, ow), first, &ty)
    };
    RgbImage::from_raw(width, height, out).unwrap_or_else(|| RgbImage::new(width, height))
}

/// RGB rows in a buffer that may be wider: row `y` is `3 * width` bytes from
/// `raw[y * stride + offset]` (stride and offset in bytes).
pub(crate) struct Plane<'a> {
    raw: &'a [u8],
    stride: usize,
    offset: usize,
    width: usize,
}

impl<'a> Plane<'a> {
    /// Rows of `width` pixels one after another.
    fn packed(raw: &'a [u8], width: usize) -> Plane<'a> {
        Plane { raw, stride: 3 * width, offset: 0, width }
    }

    fn row(&self, y: usize) -> &'a [u8] {
        let start = y * self.stride + self.offset;
        &self.raw[start..start + 3 * self.width]
    }
}

/// Source index of each output coordinate for `Nearest`, as Pillow's
/// `ImagingScaleAffine`: the position is accumulated incrementally in f64 (so the
/// rounding matches Pillow's exactly) and truncated.
fn nearest_index(in_size: usize, out_size: usize) -> Vec<usize> {
    let a = in_size as f64 / out_size as f64;
    let mut pos = a * 0.5;
    (0..out_size)
        .map(|_| {
            let i = (pos.max(0.0) as usize).min(in_size - 1);
            pos += a;
            i
        })
        .collect()
}

fn nearest(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    let xs = nearest_index(img.width() as usize, width as usize);
    let ys = nearest_index(img.height() as usize, height as usize);
    RgbImage::from_fn(width, height, |x, y| *img.get_pixel(xs[x as usize] as u32, ys[y as usize] as u32))
}

/// The same resampling on a CHW float tensor, in double precision without
/// rounding or clipping (Pillow's mode "F" path); used to low-pass before
/// down-sampling in the frequency-domain curriculum.
///
/// Panics if `chw.len() != c * h * w` (a caller bug, not a data error).
pub fn resize_f32_planar(
    chw: &[f32],
    c: usize,
    h: usize,
    w: usize,
    out_h: usize,
    out_w: usize,
    filter: Filter,
) -> Vec<f32> {
    assert_eq!(chw.len(), c * h * w, "resize_f32_planar: buffer is not {c}x{h}x{w}");
    if (out_h, out_w) == (h, w) {
        return chw.to_vec();
    }
    if out_h == 0 || out_w == 0 || h == 0 || w == 0 {
        return vec![0.0; c * out_h * out_w];
    }
    if filter == Filter::Nearest {
        let xs = nearest_index(w, out_w);
        let ys = nearest_index(h, out_h);
        let mut out = Vec::with_capacity(c * out_h * out_w);
        for ch in 0..c {
            for &y in &ys {
                out.extend(xs.iter().map(|&x| chw[(ch * h + y) * w + x]));
            }
        }
        return out;
    }
    let (th, tv) = (taps(w, out_w, filter), taps(h, out_h, filter));
    let (mut cur, mut cw, mut ch) = (chw.to_vec(), w, h);
    let passes: [bool; 2] = if vertical_first(w, h, out_w, out_h) { [false, true] } else { [true, false] };
    for horizontal in passes {
        if horizontal && out_w != w {
            cur = pass_hf(&cur, cw, &th);
            cw = out_w;
        } else if !horizontal && out_h != h {
            cur = pass_vf(&cur, c, ch, cw, &tv);
            ch = out_h;
        }
    }
    cur
}

/// Horizontal float pass over all rows of all planes (`w` wide).
fn pass_hf(src: &[f32], w: usize, t: &Taps) -> Vec<f32> {
    let ow = t.start.len();
    let mut out = vec![0f32; src.len() / w * ow];
    for (row_in, row_out) in src.chunks_exact(w).zip(out.chunks_exact_mut(ow)) {
        for ((o, k), &s) in row_out.iter_mut().zip(&t.weights).zip(&t.start) {
            let mut a = 0f64;
            for (&p, &kw) in row_in[s..s + k.len()].iter().zip(k) {
                a += p as f64 * kw;
            }
            *o = a as f32;
        }
    }
    out
}

/// Vertical float pass of `c` planes of `h x w`.
fn pass_vf(src: &[f32], c: usize, h: usize, w: usize, t: &Taps) -> Vec<f32> {
    let oh = t.start.len();
    let mut out = vec![0f32; c * oh * w];
    // Whole rows at once: the same products summed in the same tap order as a per-pixel loop.
    let mut acc = vec![0f64; w];
    for (plane, out_plane) in src.chunks_exact(h * w).zip(out.chunks_exact_mut(oh * w)) {
        for ((out_row, k), &s) in out_plane.chunks_exact_mut(w).zip(&t.weights).zip(&t.start) {
            acc.fill(0.0);
            for (i, &kw) in k.iter().enumerate() {
                for (a, &p) in acc.iter_mut().zip(&plane[(s + i) * w..(s + i + 1) * w]) {
                    *a += p as f64 * kw;
                }
            }
            for (o, &a) in out_row.iter_mut().zip(&acc) {
                *o = a as f32;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic test pattern shared with the Pillow reference script.
    fn pattern(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([
                ((x * 37 + y * 11) % 256) as u8,
                ((x * x * 5 + y * 23 + 7) % 256) as u8,
                ((255 * ((x + y) % 2)) ^ (y * 40)) as u8,
            ])
        })
    }

    #[test]
    fn fractional_box_matches_pillow() {
        // Pillow 13: pattern(40, 30).resize((13, 9), BICUBIC, box=(3.5, 2.25, 31.5, 27.75)).
        let out = resize_box(&pattern(40, 30), [3.5, 2.25, 31.5, 27.75], 13, 9, Filter::Bicubic);
        let raw = out.as_raw();
        let sum: i64 = raw.iter().map(|&v| v as i64).sum();
        let weighted = raw.iter().enumerate().map(|(i, &v)| i as i64 * v as i64).sum::<i64>() % 1_000_003;
        assert_eq!((sum, weighted), (45029, 865385));
        assert_eq!((out.get_pixel(0, 0).0, out.get_pixel(12, 8).0), ([194, 168, 127], [108, 149, 128]));
        // The full box is plain resize.
        let img = pattern(31, 17);
        assert_eq!(resize_box(&img, [0.0, 0.0, 31.0, 17.0], 9, 5, Filter::Lanczos), resize(&img, 9, 5, Filter::Lanczos));
    }

    #[test]
    fn parse_names() {
        assert_eq!(parse_filter("bicubic").unwrap(), Filter::Bicubic);
        assert_eq!(parse_filter("BILINEAR").unwrap(), Filter::Bilinear);
        assert_eq!(parse_filter("box").unwrap(), Filter::Box);
        assert!(matches!(parse_filter("hamming2"), Err(DataError::Invalid(_))));
    }

    #[test]
    fn identity_when_size_unchanged() {
        let img = pattern(7, 5);
        for f in [Filter::Nearest, Filter::Box, Filter::Bilinear, Filter::Bicubic, Filter::Lanczos] {
            assert_eq!(resize(&img, 7, 5, f), img);
        }
        let chw: Vec<f32> = (0..3 * 5 * 7).map(|i| i as f32 * 0.37).collect();
        assert_eq!(resize_f32_planar(&chw, 3, 5, 7, 5, 7, Filter::Bicubic), chw);
    }

    #[test]
    fn constant_image_stays_constant() {
        let img = RgbImage::from_pixel(13, 9, image::Rgb([200, 17, 255]));
        for f in [Filter::Nearest, Filter::Box, Filter::Bilinear, Filter::Bicubic, Filter::Lanczos] {
            for (w, h) in [(5, 4), (29, 31), (13, 3), (1, 1)] {
                let out = resize(&img, w, h, f);
                assert_eq!(out.dimensions(), (w, h));
                assert!(out.pixels().all(|p| p.0 == [200, 17, 255]), "{f:?} {w}x{h}");
            }
        }
        let chw = vec![0.25f32; 2 * 9 * 13];
        let out = resize_f32_planar(&chw, 2, 9, 13, 4, 6, Filter::Lanczos);
        assert!(out.iter().all(|v| (v - 0.25).abs() < 1e-6));
    }

    #[test]
    fn box_halving_of_period_two_pattern_is_the_mean() {
        let img = RgbImage::from_fn(8, 6, |x, y| if (x + y) % 2 == 0 { image::Rgb([10, 0, 255]) } else { image::Rgb([30, 255, 0]) });
        let out = resize(&img, 4, 3, Filter::Box);
        // (10+30)/2 = 20 exactly; (0+255)/2 = 127.5 rounds half up in Pillow.
        assert!(out.pixels().all(|p| p.0 == [20, 128, 128]), "{:?}", out.as_raw());
        let chw: Vec<f32> = (0..6 * 8).map(|i| ((i % 8 + i / 8) % 2) as f32).collect();
        let out = resize_f32_planar(&chw, 1, 6, 8, 3, 4, Filter::Box);
        assert!(out.iter().all(|v| (v - 0.5).abs() < 1e-6));
    }

    /// Reference values from Pillow 13.0 `Image.fromarray(pattern).resize(...)`.
    #[test]
    fn matches_pillow() {
        let img = pattern(7, 5);
        for (w, h, f, expect) in PILLOW_CASES {
            let out = resize(&img, *w, *h, *f);
            assert_eq!(out.as_raw().as_slice(), *expect, "{f:?} {w}x{h}");
        }
    }

    /// Reference values from Pillow 13.0 on mode "F" (channel 0 of the pattern / 255).
    #[test]
    fn float_path_matches_pillow_mode_f() {
        let chw = crate::transform::to_chw_f32(&pattern(7, 5));
        for (w, h, f, expect) in PILLOW_F_CASES {
            let out = resize_f32_planar(&chw[..35], 1, 5, 7, *h, *w, *f);
            let max = out.iter().zip(*expect).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(max < 2e-6, "{f:?} {w}x{h}: max diff {max}");
        }
    }

    #[test]
    fn float_path_agrees_with_8bit_path() {
        let img = pattern(7, 5);
        let chw = crate::transform::to_chw_f32(&img);
        for f in [Filter::Bilinear, Filter::Bicubic, Filter::Lanczos, Filter::Nearest] {
            // Down-scaling only: one rounding of the 8-bit intermediate then differs by < 1.
            let out = resize_f32_planar(&chw, 3, 5, 7, 2, 3, f);
            let ref8 = crate::transform::to_chw_f32(&resize(&img, 3, 2, f));
            let max = out.iter().zip(&ref8).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(max * 255.0 <= 1.5, "{f:?}: max diff {}", max * 255.0);
        }
    }

    #[rustfmt::skip]
    const PILLOW_CASES: &[(u32, u32, Filter, &[u8])] = &[
        (3, 4, Filter::Bicubic, &[29, 13, 117, 113, 57, 129, 197, 150, 117, 42, 41, 133, 126, 85, 127, 210,
            184, 133, 56, 71, 124, 140, 120, 128, 227, 148, 124, 69, 99, 132, 160, 151, 127, 158, 133, 132]),
        (11, 9, Filter::Bicubic, &[0, 5, 0, 12, 6, 118, 39, 11, 255, 63, 20, 36, 86, 33, 70, 110, 50, 255,
            134, 71, 70, 157, 96, 36, 181, 125, 255, 208, 165, 118, 224, 189, 0, 2, 13, 68, 16, 14, 123, 43,
            19, 188, 67, 28, 87, 90, 41, 102, 114, 58, 191, 138, 79, 102, 161, 104, 87, 185, 133, 188, 212,
            173, 123, 228, 197, 68, 7, 27, 216, 23, 28, 132, 50, 33, 54, 74, 42, 176, 97, 55, 158, 121, 72,
            51, 145, 93, 158, 168, 118, 176, 192, 147, 54, 219, 187, 132, 235, 211, 216, 13, 40, 173, 29, 41,
            130, 56, 46, 88, 80, 55, 153, 103, 68, 144, 127, 85, 86, 151, 106, 144, 174, 131, 153, 198, 160,
            88, 225, 208, 130, 241, 238, 173, 19, 53, 73, 35, 54, 124, 62, 59, 173, 86, 68, 97, 109, 81, 109,
            133, 98, 175, 157, 119, 109, 180, 144, 97, 204, 173, 173, 231, 213, 124, 247, 237, 73, 25, 66,
            98, 41, 67, 126, 68, 72, 151, 92, 81, 111, 115, 94, 117, 139, 111, 153, 163, 132, 117, 186, 161,
            111, 209, 191, 151, 247, 140, 126, 255, 103, 98, 31, 79, 141, 47, 80, 128, 74, 85, 116, 98, 94,
            135, 121, 107, 132, 145, 124, 116, 169, 145, 132, 193, 177, 135, 217, 209, 116, 232, 82, 128,
            236, 0, 141, 38, 93, 159, 54, 94, 130, 81, 99, 102, 105, 108, 145, 128, 121, 138, 152, 138, 100,
            176, 159, 138, 204, 192, 145, 230, 224, 102, 142, 98, 130, 71, 0, 159, 42, 101, 167, 58, 102,
            130, 85, 107, 95, 109, 116, 149, 132, 129, 141, 156, 146, 93, 180, 167, 141, 210, 199, 149, 237,
            231, 95, 92, 111, 130, 0, 10, 167]),
        (4, 3, Filter::Bilinear, &[24, 20, 122, 82, 41, 126, 150, 96, 126, 208, 169, 122, 41, 56, 127, 99,
            77, 128, 167, 132, 128, 225, 175, 127, 58, 92, 131, 116, 113, 129, 184, 168, 129, 166, 107, 131]),
        (10, 3, Filter::Lanczos, &[2, 14, 85, 20, 16, 137, 52, 22, 152, 76, 33, 93, 103, 50, 143, 127, 70,
            143, 154, 95, 93, 179, 122, 152, 208, 177, 137, 223, 213, 85, 20, 53, 134, 38, 55, 126, 70, 61,
            124, 94, 72, 133, 121, 89, 125, 146, 108, 125, 171, 135, 133, 194, 170, 124, 234, 183, 126, 255,
            179, 134, 38, 92, 145, 56, 94, 124, 88, 100, 117, 112, 111, 142, 139, 128, 121, 161, 144, 121,
            191, 177, 142, 235, 239, 117, 172, 115, 124, 102, 0, 145]),
        (3, 2, Filter::Box, &[30, 33, 128, 122, 78, 118, 215, 183, 128, 58, 91, 128, 150, 136, 134, 179, 113,
            128]),
        (5, 8, Filter::Nearest, &[0, 7, 0, 74, 27, 0, 111, 52, 255, 148, 87, 0, 222, 187, 0, 0, 7, 0, 74, 27,
            0, 111, 52, 255, 148, 87, 0, 222, 187, 0, 11, 30, 215, 85, 50, 215, 122, 75, 40, 159, 110, 215,
            233, 210, 215, 22, 53, 80, 96, 73, 80, 133, 98, 175, 170, 133, 80, 244, 233, 80, 22, 53, 80, 96,
            73, 80, 133, 98, 175, 170, 133, 80, 244, 233, 80, 33, 76, 135, 107, 96, 135, 144, 121, 120, 181,
            156, 135, 255, 0, 135, 44, 99, 160, 118, 119, 160, 155, 144, 95, 192, 179, 160, 10, 23, 160, 44,
            99, 160, 118, 119, 160, 155, 144, 95, 192, 179, 160, 10, 23, 160]),
        (3, 3, Filter::Nearest, &[37, 12, 255, 111, 52, 255, 185, 132, 255, 59, 58, 175, 133, 98, 175, 207,
            178, 175, 81, 104, 95, 155, 144, 95, 229, 224, 95]),
        (7, 2, Filter::Lanczos, &[9, 25, 105, 46, 30, 150, 83, 45, 105, 120, 70, 150, 157, 105, 105, 194,
            150, 150, 246, 211, 105, 35, 81, 141, 72, 86, 114, 109, 101, 141, 146, 126, 114, 183, 161, 141,
            220, 206, 114, 167, 65, 141]),
        (2, 5, Filter::Bicubic, &[52, 21, 118, 170, 117, 118, 63, 44, 134, 181, 140, 134, 74, 67, 124, 192,
            163, 124, 85, 96, 128, 203, 127, 128, 102, 119, 130, 155, 150, 130]),
        (6, 2, Filter::Bicubic, &[12, 27, 114, 55, 35, 136, 98, 56, 124, 142, 91, 124, 185, 141, 136, 235,
            202, 114, 38, 79, 134, 81, 87, 123, 124, 108, 129, 168, 143, 129, 214, 198, 123, 176, 83, 134]),
        (12, 2, Filter::Bilinear, &[11, 30, 112, 25, 32, 124, 46, 35, 142, 68, 43, 126, 90, 53, 116, 111, 68,
            134, 133, 85, 134, 154, 106, 116, 176, 131, 126, 198, 157, 142, 219, 182, 124, 233, 198, 112, 33,
            76, 134, 47, 78, 129, 68, 81, 122, 90, 89, 128, 112, 99, 132, 133, 114, 125, 155, 131, 125, 176,
            152, 132, 198, 177, 128, 216, 196, 122, 191, 119, 129, 174, 70, 134]),
    ];

    #[rustfmt::skip]
    const PILLOW_F_CASES: &[(usize, usize, Filter, &[f32])] = &[
        (4, 3, Filter::Bicubic, &[0.073284, 0.317284, 0.583832, 0.827832, 0.144294, 0.388294, 0.653453,
            0.919439, 0.215305, 0.459305, 0.747691, 0.646261]),
        (10, 3, Filter::Lanczos, &[0.005511, 0.075915, 0.202419, 0.298066, 0.400565, 0.497527, 0.600462,
            0.698312, 0.813833, 0.873915, 0.077913, 0.148317, 0.274821, 0.370468, 0.472966, 0.571134,
            0.671897, 0.758786, 0.928957, 1.040397, 0.150314, 0.220719, 0.347223, 0.442869, 0.545368,
            0.634373, 0.751654, 0.921868, 0.676561, 0.397554]),
        (6, 2, Filter::Bilinear, &[0.070343, 0.233578, 0.396814, 0.560049, 0.723284, 0.88652, 0.156618,
            0.319853, 0.483088, 0.646324, 0.809559, 0.713258]),
    ];
}
