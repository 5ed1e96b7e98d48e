//! The bicubic affine transform with four output pixels in the lanes of 4 × f64 vectors,
//! one vector per channel. Each lane performs `sample`'s scalar operations in the same
//! order (no fused multiply-add; `floor` and the clamps give the same integers), so the
//! results are bit-identical to it. The 4 × 4 neighbourhoods are gathered as 32-bit words
//! (RGB and one byte more) from a padded copy of the source; where the four lanes read
//! consecutive pixels of the same rows (shear and translate along x, translate along y),
//! each tap is one 16-byte load and a shuffle instead of a gather.
//!
//! Where the fraction along an axis is zero in all four lanes, the interpolation along it
//! is skipped: `cubic(v1, v2, v3, v4, 0.0)` is exactly `v2` (`v2 + 0 · finite`). Shear and
//! translate have a zero fraction along one axis at every pixel (their source rows or
//! columns are the output's), so they interpolate 3 instead of 15 times per pixel.

use super::{sample, Interp};
use image::RgbImage;
use std::arch::x86_64::*;

/// Whether the vector path can run: AVX2, and byte offsets that fit the i32 gather indices.
pub(super) fn usable(img: &RgbImage) -> bool {
    std::arch::is_x86_feature_detected!("avx2") && img.as_raw().len() < (i32::MAX as usize) / 2
}

/// `super::cubic` lane-wise, with the same operation order.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn cubic(v1: __m256d, v2: __m256d, v3: __m256d, v4: __m256d, d: __m256d) -> __m256d {
    let p2 = _mm256_sub_pd(v3, v1);
    let p3 = _mm256_sub_pd(_mm256_add_pd(_mm256_mul_pd(_mm256_set1_pd(2.0), _mm256_sub_pd(v1, v2)), v3), v4);
    // -v1 + v2 is v2 - v1 exactly (IEEE addition is commutative).
    let p4 = _mm256_add_pd(_mm256_sub_pd(_mm256_sub_pd(v2, v1), v3), v4);
    let t = _mm256_add_pd(p3, _mm256_mul_pd(d, p4));
    let t = _mm256_add_pd(p2, _mm256_mul_pd(d, t));
    _mm256_add_pd(v2, _mm256_mul_pd(d, t))
}

/// The channel at bit `SHIFT` of four gathered RGB words, as f64.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn channel<const SHIFT: i32>(words: __m128i) -> __m256d {
    _mm256_cvtepi32_pd(_mm_and_si128(_mm_srli_epi32::<SHIFT>(words), _mm_set1_epi32(0xFF)))
}

/// The three channels of the four lanes.
type Rgb = [__m256d; 3];

/// Four consecutive pixels from `p` as 32-bit words (RGB and a zero byte), the words `tap`
/// gathers when the lanes' taps are consecutive pixels of one row: one load and a shuffle
/// instead of a gather. Reads 16 bytes.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn run4(p: *const u8) -> __m128i {
    _mm_shuffle_epi8(_mm_loadu_si128(p as *const __m128i), _mm_setr_epi8(0, 1, 2, -1, 3, 4, 5, -1, 6, 7, 8, -1, 9, 10, 11, -1))
}

#[target_feature(enable = "avx2")]
#[inline]
unsafe fn channels(words: __m128i) -> Rgb {
    [channel::<0>(words), channel::<8>(words), channel::<16>(words)]
}

/// The source pixels at byte offsets `row + col` of the four lanes.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn tap(src: *const i32, row: __m128i, col: __m128i) -> Rgb {
    let words = _mm_i32gather_epi32::<1>(src, _mm_add_epi32(row, col));
    [channel::<0>(words), channel::<8>(words), channel::<16>(words)]
}

#[target_feature(enable = "avx2")]
#[inline]
unsafe fn cubic_rgb(a: Rgb, b: Rgb, c: Rgb, d: Rgb, t: __m256d) -> Rgb {
    [cubic(a[0], b[0], c[0], d[0], t), cubic(a[1], b[1], c[1], d[1], t), cubic(a[2], b[2], c[2], d[2], t)]
}

/// The four lanes' bicubic value from `at(k, j)`, the taps of rows `k` and columns `j` in
/// -1..=2 around them; an axis whose fraction is zero in every lane is not interpolated.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn bicubic(at: impl Fn(i32, i32) -> Rgb, dx: __m256d, dy: __m256d, dx_zero: bool, dy_zero: bool) -> Rgb {
    let line = |k: i32| if dx_zero { at(k, 0) } else { cubic_rgb(at(k, -1), at(k, 0), at(k, 1), at(k, 2), dx) };
    if dy_zero {
        line(0)
    } else {
        cubic_rgb(line(-1), line(0), line(1), line(2), dy)
    }
}

/// PIL's clip (<= 0 -> 0, >= 255 -> 255, else truncate) of each lane.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn clip(v: __m256d) -> __m128i {
    let v = _mm256_min_pd(_mm256_max_pd(v, _mm256_setzero_pd()), _mm256_set1_pd(255.0));
    _mm256_cvttpd_epi32(v)
}

/// The four clipped pixels as 12 bytes of RGB at `dst`. (Lane by lane, these stores were a
/// quarter of the op's instructions.)
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn store_rgb4(r: __m128i, g: __m128i, b: __m128i, dst: &mut [u8]) {
    assert!(dst.len() >= 12);
    let words = _mm_or_si128(_mm_or_si128(r, _mm_slli_epi32::<8>(g)), _mm_slli_epi32::<16>(b));
    let packed = _mm_shuffle_epi8(words, _mm_setr_epi8(0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, -1, -1, -1, -1));
    _mm_storel_epi64(dst.as_mut_ptr() as *mut __m128i, packed);
    let tail = (_mm_extract_epi32::<2>(packed) as u32).to_le_bytes();
    dst[8..12].copy_from_slice(&tail);
}

#[target_feature(enable = "avx2")]
pub(super) unsafe fn affine_bicubic(src: &[u8], w: usize, h: usize, m: [f64; 6], fill: [u8; 3], out: &mut [u8]) {
    if w == 0 || h == 0 {
        return;
    }
    // 16 bytes of padding: `run4` reads 16 bytes from a pixel that may be the last.
    let mut padded = Vec::with_capacity(src.len() + 16);
    padded.extend_from_slice(src);
    padded.extend_from_slice(&[0; 16]);
    let base = padded.as_ptr() as *const i32;
    let base_u8 = padded.as_ptr();
    let md = m.map(|v| _mm256_set1_pd(v));
    let (wf, hf) = (_mm256_set1_pd(w as f64), _mm256_set1_pd(h as f64));
    let (half, zero) = (_mm256_set1_pd(0.5), _mm256_setzero_pd());
    let (wmax, hmax) = (_mm_set1_epi32(w as i32 - 1), _mm_set1_epi32(h as i32 - 1));
    let (three, row_bytes) = (_mm_set1_epi32(3), _mm_set1_epi32(3 * w as i32));
    let lanes = _mm256_setr_pd(0.0, 1.0, 2.0, 3.0);
    let quads = w / 4;
    for (y, out_row) in out.chunks_exact_mut(3 * w).enumerate() {
        let yi = _mm256_set1_pd(y as f64 + 0.5);
        for q in 0..quads {
            let x = 4 * q;
            let xi = _mm256_add_pd(_mm256_add_pd(_mm256_set1_pd(x as f64), lanes), half);
            let sx = _mm256_add_pd(_mm256_add_pd(_mm256_mul_pd(md[0], xi), _mm256_mul_pd(md[1], yi)), md[2]);
            let sy = _mm256_add_pd(_mm256_add_pd(_mm256_mul_pd(md[3], xi), _mm256_mul_pd(md[4], yi)), md[5]);
            // sx >= 0 && sx < w && sy >= 0 && sy < h, false for NaN as in `sample`.
            let inside = _mm256_and_pd(
                _mm256_and_pd(_mm256_cmp_pd::<_CMP_GE_OQ>(sx, zero), _mm256_cmp_pd::<_CMP_LT_OQ>(sx, wf)),
                _mm256_and_pd(_mm256_cmp_pd::<_CMP_GE_OQ>(sy, zero), _mm256_cmp_pd::<_CMP_LT_OQ>(sy, hf)),
            );
            let inside = _mm256_movemask_pd(inside);
            let mut px = [fill; 4];
            if inside != 0 {
                let (fx, fy) = (_mm256_sub_pd(sx, half), _mm256_sub_pd(sy, half));
                let (flx, fly) = (_mm256_floor_pd(fx), _mm256_floor_pd(fy));
                let (dx, dy) = (_mm256_sub_pd(fx, flx), _mm256_sub_pd(fy, fly));
                // Lanes outside the image may hold any value; they are clamped like the
                // rest and their result is replaced by the fill colour.
                let (cx, cy) = (_mm256_cvttpd_epi32(flx), _mm256_cvttpd_epi32(fly));
                let col = |j: i32| {
                    let c = _mm_min_epi32(_mm_max_epi32(_mm_add_epi32(cx, _mm_set1_epi32(j)), _mm_setzero_si128()), wmax);
                    _mm_mullo_epi32(c, three)
                };
                let row = |k: i32| {
                    let r = _mm_min_epi32(_mm_max_epi32(_mm_add_epi32(cy, _mm_set1_epi32(k)), _mm_setzero_si128()), hmax);
                    _mm_mullo_epi32(r, row_bytes)
                };
                let dx_zero = _mm256_movemask_pd(_mm256_cmp_pd::<_CMP_EQ_OQ>(dx, zero)) == 0xF;
                let dy_zero = _mm256_movemask_pd(_mm256_cmp_pd::<_CMP_EQ_OQ>(dy, zero)) == 0xF;
                // Shear and translate along x, translate along y: the lanes read consecutive
                // pixels of the same rows. Where none of their taps is clamped, each tap is a
                // run of four pixels (the same words as the gathers).
                let (c0, y0) = (_mm_cvtsi128_si32(cx), _mm_cvtsi128_si32(cy));
                let runs = _mm_movemask_epi8(_mm_and_si128(
                    _mm_cmpeq_epi32(cx, _mm_add_epi32(_mm_set1_epi32(c0), _mm_setr_epi32(0, 1, 2, 3))),
                    _mm_cmpeq_epi32(cy, _mm_set1_epi32(y0)),
                )) == 0xFFFF
                    && if dx_zero { c0 >= 0 && c0 + 3 < w as i32 } else { c0 >= 1 && c0 + 5 < w as i32 }
                    && if dy_zero { y0 >= 0 && y0 < h as i32 } else { y0 >= 1 && y0 + 2 < h as i32 };
                let v = if runs {
                    bicubic(|k, j| channels(run4(base_u8.add(((y0 + k) as usize * w + (c0 + j) as usize) * 3))), dx, dy, dx_zero, dy_zero)
                } else {
                    // Each offset once (the multiplies are not merged across taps); along a
                    // skipped axis only the middle one is read.
                    let offsets = |f: &dyn Fn(i32) -> __m128i, skip: bool| if skip { [f(0); 4] } else { [f(-1), f(0), f(1), f(2)] };
                    let (rows, cols) = (offsets(&row, dy_zero), offsets(&col, dx_zero));
                    bicubic(|k, j| tap(base, rows[(k + 1) as usize], cols[(j + 1) as usize]), dx, dy, dx_zero, dy_zero)
                };
                let [r, g, b] = [clip(v[0]), clip(v[1]), clip(v[2])];
                if inside == 0xF {
                    store_rgb4(r, g, b, &mut out_row[3 * x..3 * x + 12]);
                    continue;
                }
                let [r, g, b] = [r, g, b].map(|c| std::mem::transmute::<__m128i, [i32; 4]>(c));
                for (i, p) in px.iter_mut().enumerate() {
                    if inside & (1 << i) != 0 {
                        *p = [r[i] as u8, g[i] as u8, b[i] as u8];
                    }
                }
            }
            for (i, p) in px.iter().enumerate() {
                let o = 3 * (x + i);
                (out_row[o], out_row[o + 1], out_row[o + 2]) = (p[0], p[1], p[2]);
            }
        }
        // The last (w mod 4) pixels of the row, one at a time.
        for x in 4 * quads..w {
            let (xi, yi) = (x as f64 + 0.5, y as f64 + 0.5);
            let sx = m[0] * xi + m[1] * yi + m[2];
            let sy = m[3] * xi + m[4] * yi + m[5];
            let p = sample(src, w as i64, h as i64, sx, sy, Interp::Bicubic).unwrap_or(fill);
            out_row[3 * x..3 * x + 3].copy_from_slice(&p);
        }
    }
}
