//! RandAugment's geometric ops (rotate, shear, translate) on 8-bit RGB, reproducing PIL's
//! `Image.transform(AFFINE)` engine: inverse mapping of output pixel centres, PIL's bilinear
//! and a = -1 bicubic kernels with edge clamping, truncation, and the fill colour outside the
//! source. Outputs are bit-identical to Pillow 13 (unit tests against its outputs).
//!
//! Known difference from Pillow: `Nearest` uses PIL's float transform path, not its 16.16
//! fixed-point shortcut (the two can differ on exact pixel boundaries).

use crate::augment_ops::clip;
use image::{imageops, RgbImage};

/// Sampling filter of the geometric ops (what PIL's `Image.transform` supports).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Interp {
    Nearest,
    Bilinear,
    Bicubic,
}

fn cubic(v1: f64, v2: f64, v3: f64, v4: f64, d: f64) -> f64 {
    let p2 = -v1 + v3;
    let p3 = 2.0 * (v1 - v2) + v3 - v4;
    let p4 = -v1 + v2 - v3 + v4;
    v2 + d * (p2 + d * (p3 + d * p4))
}

/// `v.floor() as i64` without a libm call (the default x86-64 target has no SSE4.1 `roundsd`).
#[inline(always)]
fn floor_i64(v: f64) -> i64 {
    let t = v as i64;
    t - i64::from((t as f64) > v)
}

/// One source sample at continuous position (sx, sy), PIL conventions (pixel centres at +0.5);
/// `None` outside the source, where the fill colour shows. The neighbourhood is read once
/// for all three channels (clamped to the edge, as PIL's macros do); the arithmetic per
/// channel is PIL's, in the same order, so results are bit-identical.
#[inline(always)]
fn sample(src: &[u8], w: i64, h: i64, sx: f64, sy: f64, interp: Interp) -> Option<[u8; 3]> {
    if !(sx >= 0.0 && sx < w as f64 && sy >= 0.0 && sy < h as f64) {
        return None;
    }
    let col = |x: i64| 3 * x.clamp(0, w - 1) as usize;
    let row = |y: i64| 3 * (y.clamp(0, h - 1) * w) as usize;
    match interp {
        Interp::Nearest => {
            let o = row(sy as i64) + col(sx as i64);
            Some([src[o], src[o + 1], src[o + 2]])
        }
        Interp::Bilinear => {
            let (fx, fy) = (sx - 0.5, sy - 0.5);
            let (x, y) = (floor_i64(fx), floor_i64(fy));
            let (dx, dy) = (fx - x as f64, fy - y as f64);
            let (c0, c1, r0, r1) = (col(x), col(x + 1), row(y), row(y + 1));
            Some(std::array::from_fn(|c| {
                let lerp = |a: u8, b: u8, d: f64| a as f64 + (b as i64 - a as i64) as f64 * d;
                let v1 = lerp(src[r0 + c0 + c], src[r0 + c1 + c], dx);
                let v2 = lerp(src[r1 + c0 + c], src[r1 + c1 + c], dx);
                // v1 + (v2 - v1) dy, truncated like PIL (the value is never negative).
                (v1 + (v2 - v1) * dy) as u8
            }))
        }
        Interp::Bicubic => {
            let (fx, fy) = (sx - 0.5, sy - 0.5);
            let (x, y) = (floor_i64(fx) - 1, floor_i64(fy) - 1);
            let (dx, dy) = (fx - (x + 1) as f64, fy - (y + 1) as f64);
            let cols = [col(x), col(x + 1), col(x + 2), col(x + 3)];
            // Rows outside the image repeat the nearest row, as PIL's macro does.
            let mut r = [[0f64; 3]; 4];
            for (k, rk) in r.iter_mut().enumerate() {
                let base = row(y + k as i64);
                let p = |j: usize, c: usize| src[base + cols[j] + c] as f64;
                for (c, v) in rk.iter_mut().enumerate() {
                    *v = cubic(p(0, c), p(1, c), p(2, c), p(3, c), dx);
                }
            }
            Some(std::array::from_fn(|c| clip(cubic(r[0][c], r[1][c], r[2][c], r[3][c], dy))))
        }
    }
}

/// `img.transform(img.size, Image.AFFINE, m, resample, fillcolor=fill)`: output pixel (x, y)
/// takes the source at `(m0 x' + m1 y' + m2, m3 x' + m4 y' + m5)` with x' = x + 0.5, y' = y + 0.5.
pub fn affine(img: &RgbImage, m: [f64; 6], interp: Interp, fill: [u8; 3]) -> RgbImage {
    #[cfg(target_arch = "x86_64")]
    if interp == Interp::Bicubic && avx2::usable(img) {
        let (w, h) = (img.width(), img.height());
        let mut out = vec![0u8; img.as_raw().len()];
        // SAFETY: `usable` checked that the CPU supports AVX2.
        unsafe { avx2::affine_bicubic(img.as_raw(), w as usize, h as usize, m, fill, &mut out) };
        return RgbImage::from_raw(w, h, out).expect("same size as the input");
    }
    avx2_dispatch!(affine_impl(img: &RgbImage, m: [f64; 6], interp: Interp, fill: [u8; 3]) -> RgbImage)
}

#[inline(always)]
fn affine_impl(img: &RgbImage, m: [f64; 6], interp: Interp, fill: [u8; 3]) -> RgbImage {
    let (w, h) = (img.width() as i64, img.height() as i64);
    let src = img.as_raw();
    let mut out = vec![0u8; src.len()];
    for (y, out_row) in out.chunks_exact_mut(3 * w.max(1) as usize).enumerate() {
        let yi = y as f64 + 0.5;
        for (x, p) in out_row.chunks_exact_mut(3).enumerate() {
            let xi = x as f64 + 0.5;
            let sx = m[0] * xi + m[1] * yi + m[2];
            let sy = m[3] * xi + m[4] * yi + m[5];
            p.copy_from_slice(&sample(src, w, h, sx, sy, interp).unwrap_or(fill));
        }
    }
    RgbImage::from_raw(img.width(), img.height(), out).expect("same size as the input")
}

/// Python's `round(x, 15)`, which PIL applies to the rotation matrix so that multiples of 90°
/// give exact zeros.
fn round15(x: f64) -> f64 {
    (x * 1e15).round() / 1e15
}

/// `img.rotate(degrees, resample, fillcolor=fill)`: counter-clockwise about (w/2, h/2), same
/// size, including PIL's exact transposition shortcuts for 0/180 (and 90/270 when square).
pub fn rotate(img: &RgbImage, degrees: f64, interp: Interp, fill: [u8; 3]) -> RgbImage {
    let angle = degrees.rem_euclid(360.0);
    let (w, h) = (img.width() as f64, img.height() as f64);
    match angle {
        a if a == 0.0 => return img.clone(),
        a if a == 180.0 => return imageops::rotate180(img),
        a if a == 90.0 && w == h => return imageops::rotate270(img),
        a if a == 270.0 && w == h => return imageops::rotate90(img),
        _ => {}
    }
    let rad = -angle.to_radians();
    let (cx, cy) = (w / 2.0, h / 2.0);
    let (a, b, d, e) = (
        round15(rad.cos()),
        round15(rad.sin()),
        round15(-rad.sin()),
        round15(rad.cos()),
    );
    let c = a * -cx + b * -cy + cx;
    let f = d * -cx + e * -cy + cy;
    affine(img, [a, b, c, d, e, f], interp, fill)
}

/// timm `shear_x`: source x = x + factor · y.
pub fn shear_x(img: &RgbImage, factor: f64, interp: Interp, fill: [u8; 3]) -> RgbImage {
    affine(img, [1.0, factor, 0.0, 0.0, 1.0, 0.0], interp, fill)
}

/// timm `shear_y`: source y = y + factor · x.
pub fn shear_y(img: &RgbImage, factor: f64, interp: Interp, fill: [u8; 3]) -> RgbImage {
    affine(img, [1.0, 0.0, 0.0, factor, 1.0, 0.0], interp, fill)
}

/// timm `translate_x_abs`: source x = x + pixels (positive moves the content left).
pub fn translate_x(img: &RgbImage, pixels: f64, interp: Interp, fill: [u8; 3]) -> RgbImage {
    affine(img, [1.0, 0.0, pixels, 0.0, 1.0, 0.0], interp, fill)
}

/// timm `translate_y_abs`: source y = y + pixels (positive moves the content up).
pub fn translate_y(img: &RgbImage, pixels: f64, interp: Interp, fill: [u8; 3]) -> RgbImage {
    affine(img, [1.0, 0.0, 0.0, 0.0, 1.0, pixels], interp, fill)
}

#[cfg(target_arch = "x86_64")]
mod avx2;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::augment_ops::tests::{input, max_diff, pil::*};
    use image::Rgb;

    const FILL: [u8; 3] = [124, 116, 104];

    /// The fast bicubic path against the per-channel reference sampler, bit for bit, on
    /// the matrices RandAugment produces (including zero fractions and integer shifts) and
    /// on general ones.
    #[test]
    fn fast_bicubic_equals_reference() {
        let mut s: u64 = 12345;
        let mut next = || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (s >> 33) as u32
        };
        let (w, h) = (37i64, 29i64);
        let img = RgbImage::from_fn(w as u32, h as u32, |_, _| Rgb(std::array::from_fn(|_| next() as u8)));
        let (cx, cy) = (w as f64 / 2.0, h as f64 / 2.0);
        let rot = |deg: f64| {
            let r = -deg.to_radians();
            let (a, b) = (round15(r.cos()), round15(r.sin()));
            [a, b, a * -cx + b * -cy + cx, -b, a, -b * -cx + a * -cy + cy]
        };
        let mats = [
            [1.0, 0.3, 0.0, 0.0, 1.0, 0.0],
            [1.0, -0.27, 0.0, 0.0, 1.0, 0.0],
            [1.0, 0.0, 0.0, 0.21, 1.0, 0.0],
            [1.0, 0.0, 0.0, -0.3, 1.0, 0.0],
            [1.0, 0.0, 7.3, 0.0, 1.0, 0.0],
            [1.0, 0.0, -4.0, 0.0, 1.0, 0.0],
            [1.0, 0.0, 0.0, 0.0, 1.0, -11.7],
            [1.0, 0.0, 0.0, 0.0, 1.0, 3.0],
            // Both axes at once: runs of pixels with a fraction along y too.
            [1.0, 0.0, 7.3, 0.0, 1.0, -2.6],
            [1.0, 0.0, -3.5, 0.0, 1.0, 4.0],
            rot(17.5),
            rot(-29.9),
            rot(3.0),
            [0.7, 0.2, 3.1, -0.15, 1.3, -2.2],
        ];
        for m in mats {
            let got = affine(&img, m, Interp::Bicubic, FILL);
            for (i, p) in got.pixels().enumerate() {
                let (x, y) = ((i as i64 % w) as f64 + 0.5, (i as i64 / w) as f64 + 0.5);
                let (sx, sy) = (m[0] * x + m[1] * y + m[2], m[3] * x + m[4] * y + m[5]);
                let want = sample(img.as_raw(), w, h, sx, sy, Interp::Bicubic).unwrap_or(FILL);
                // `affine` takes the vectorised path on AVX2 machines; `sample` is the reference.
                assert_eq!(p.0, want, "matrix {m:?}, pixel {i}");
            }
        }
    }

    #[test]
    fn geometric_ops_match_pillow() {
        let img = input();
        let cases: [(RgbImage, &[u8]); 6] = [
            (
                rotate(&img, 17.5, Interp::Bicubic, FILL),
                &ROTATE_17_5_BICUBIC,
            ),
            (
                rotate(&img, -30.0, Interp::Bilinear, FILL),
                &ROTATE_M30_BILINEAR,
            ),
            (
                shear_x(&img, 0.3, Interp::Bicubic, FILL),
                &SHEARX_0_3_BICUBIC,
            ),
            (
                shear_y(&img, -0.2, Interp::Bilinear, FILL),
                &SHEARY_M0_2_BILINEAR,
            ),
            (
                translate_x(&img, 2.6, Interp::Bicubic, FILL),
                &TRANSLATEX_2_6_BICUBIC,
            ),
            (
                translate_y(&img, -1.4, Interp::Bicubic, FILL),
                &TRANSLATEY_M1_4_BICUBIC,
            ),
        ];
        for (i, (got, want)) in cases.iter().enumerate() {
            assert_eq!(max_diff(got, want), 0, "case {i}");
        }
    }

    #[test]
    fn rotate_shortcuts() {
        let img = input();
        assert_eq!(rotate(&img, 0.0, Interp::Bicubic, FILL), img);
        assert_eq!(rotate(&img, 360.0, Interp::Bicubic, FILL), img);
        assert_eq!(
            rotate(
                &rotate(&img, 180.0, Interp::Bicubic, FILL),
                -180.0,
                Interp::Bicubic,
                FILL
            ),
            img
        );
        let sq = RgbImage::from_fn(4, 4, |x, y| Rgb([x as u8, y as u8, 0]));
        // PIL's 90° is counter-clockwise: the top-right pixel moves to the top-left.
        assert_eq!(
            rotate(&sq, 90.0, Interp::Nearest, FILL).get_pixel(0, 0).0,
            [3, 0, 0]
        );
    }
}
