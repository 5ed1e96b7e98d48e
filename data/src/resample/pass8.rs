//! Pillow's 8-bit resampling passes (`ImagingResampleHorizontal_8bpc` / `Vertical_8bpc`):
//! 22-bit fixed-point weights, sums in 32-bit integers, rounded and clipped to 8 bits.
//! Integer sums do not depend on their order, so the vectorised loops below give Pillow's
//! results exactly.

use super::{Plane, Taps};

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Pillow's `normalize_coeffs_8bpc`: round half away from zero to 22-bit fixed point
/// (`INT32`, as Pillow: a sum of 8-bit samples times weights stays far below 2^31).
fn fixed_point(t: &Taps) -> Vec<Vec<i32>> {
    let one = (1u64 << PRECISION_BITS) as f64;
    t.weights
        .iter()
        .map(|k| {
            k.iter()
                .map(|&w| if w < 0.0 { (-0.5 + w * one) as i32 } else { (0.5 + w * one) as i32 })
                .collect()
        })
        .collect()
}

#[inline(always)]
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

pub(super) fn pass_h8(src: &Plane, first: usize, rows: usize, t: &Taps) -> Vec<u8> {
    avx2_dispatch!(pass_h8_impl(src: &Plane, first: usize, rows: usize, t: &Taps) -> Vec<u8>)
}

pub(super) fn pass_v8(src: &Plane, first: usize, t: &Taps) -> Vec<u8> {
    avx2_dispatch!(pass_v8_impl(src: &Plane, first: usize, t: &Taps) -> Vec<u8>)
}

/// Rows resampled together by the horizontal pass.
const STRIP: usize = 8;
/// Samples per source column of a strip: `STRIP` rows × RGB (stored 32 bytes apart, so
/// that pixels can be copied in as 4-byte words and columns loaded as one vector).
const LANES: usize = 3 * STRIP;
type Column = [u8; 32];

/// One horizontal 8-bit pass over rows `first..first + rows` of `src`.
///
/// A per-pixel loop spends its time on 3-sample dot products with a different window per
/// output pixel. Instead, strips of `STRIP` rows are transposed so that each source column
/// holds the `LANES` samples of all rows of the strip contiguously; every output column is
/// then a weighted sum of whole source columns, with the same weights for all lanes —
/// the vertical pass's wide loop.
fn pass_h8_impl(src: &Plane, first: usize, rows: usize, t: &Taps) -> Vec<u8> {
    let ow = t.start.len();
    let k = fixed_point(t);
    let mut out = vec![0u8; rows * ow * 3];
    let w = src.width;
    let strips = rows / STRIP;
    let mut cols = vec![[0u8; 32]; w];
    #[cfg(target_arch = "x86_64")]
    let avx2 = std::arch::is_x86_feature_detected!("avx2");
    for strip in 0..strips {
        let y0 = strip * STRIP;
        transpose(std::array::from_fn(|r| src.row(first + y0 + r)), &mut cols);
        let out_rows = &mut out[y0 * ow * 3..(y0 + STRIP) * ow * 3];
        for (ox, (kx, &start)) in k.iter().zip(&t.start).enumerate() {
            let taps = &cols[start..start + kx.len()];
            let mut px = [0u8; 32];
            #[cfg(target_arch = "x86_64")]
            if avx2 {
                // SAFETY: the CPU supports AVX2 (checked above).
                unsafe { avx2::column(taps, kx, &mut px) };
            } else {
                column(taps, kx, &mut px);
            }
            #[cfg(not(target_arch = "x86_64"))]
            column(taps, kx, &mut px);
            scatter(&px, out_rows, ow, ox);
        }
    }
    // The rows after the last whole strip, pixel by pixel.
    for y in strips * STRIP..rows {
        row_h8(src.row(first + y), &mut out[y * ow * 3..(y + 1) * ow * 3], &k, &t.start);
    }
    out
}

/// Copies `STRIP` rows of RGB pixels into columns. Pixels go as 4-byte words where the
/// row has a byte after them: the extra byte lands in the next row's slot, written
/// afterwards, or in the column's padding. (Bounds-checked byte copies made this loop
/// the costliest part of the pass.)
#[inline(always)]
fn transpose(rows: [&[u8]; STRIP], cols: &mut [Column]) {
    let w = cols.len();
    for (r, row) in rows.iter().enumerate() {
        assert!(row.len() >= 3 * w && w > 0, "row of {} bytes for {w} columns", row.len());
        let src = row.as_ptr();
        let dst = cols.as_mut_ptr() as *mut u8;
        for x in 0..w - 1 {
            // SAFETY: 3x + 4 <= 3w (x < w - 1) bytes of `row`; the word goes to bytes
            // 3r..3r + 4 <= 28 of column x's 32.
            unsafe { std::ptr::copy_nonoverlapping(src.add(3 * x), dst.add(32 * x + 3 * r), 4) };
        }
        let (o, c) = (3 * (w - 1), &mut cols[w - 1][3 * r..3 * r + 3]);
        (c[0], c[1], c[2]) = (row[o], row[o + 1], row[o + 2]);
    }
}

/// Writes output pixel `ox` of each of the strip's rows (`px[3 r..3 r + 3]` for row `r`) as
/// 4-byte words: the extra byte lands on pixel `ox + 1`, written afterwards. The last
/// pixel of a row goes byte by byte.
#[inline(always)]
fn scatter(px: &Column, out_rows: &mut [u8], ow: usize, ox: usize) {
    assert!(out_rows.len() >= STRIP * ow * 3 && ox < ow);
    if ox + 1 < ow {
        let dst = out_rows.as_mut_ptr();
        for r in 0..STRIP {
            // SAFETY: bytes (r ow + ox) 3 .. + 4 lie inside row r (ox + 1 < ow), and
            // px[3r..3r + 4] inside its 32 bytes.
            unsafe { std::ptr::copy_nonoverlapping(px.as_ptr().add(3 * r), dst.add((r * ow + ox) * 3), 4) };
        }
    } else {
        for r in 0..STRIP {
            let o = &mut out_rows[(r * ow + ox) * 3..(r * ow + ox) * 3 + 3];
            (o[0], o[1], o[2]) = (px[3 * r], px[3 * r + 1], px[3 * r + 2]);
        }
    }
}

/// The weighted sum of source columns, clipped to 8 bits: output pixel `ox` of every row
/// of the strip (`px[3 r..3 r + 3]` for row `r`).
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
fn column(taps: &[Column], kx: &[i32], px: &mut Column) {
    let mut acc = [1i32 << (PRECISION_BITS - 1); LANES];
    for (col, &kw) in taps.iter().zip(kx) {
        for (a, &p) in acc.iter_mut().zip(col) {
            *a += p as i32 * kw;
        }
    }
    for (o, &a) in px.iter_mut().zip(&acc) {
        *o = clip8(a);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Column, PRECISION_BITS};
    use std::arch::x86_64::*;

    /// `super::column` on three 8-lane vectors.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn column(taps: &[Column], kx: &[i32], px: &mut Column) {
        let round = _mm256_set1_epi32(1 << (PRECISION_BITS - 1));
        let (mut a0, mut a1, mut a2) = (round, round, round);
        for (col, &kw) in taps.iter().zip(kx) {
            let v = _mm256_loadu_si256(col.as_ptr() as *const __m256i);
            let lo = _mm256_castsi256_si128(v);
            let k = _mm256_set1_epi32(kw);
            a0 = _mm256_add_epi32(a0, _mm256_mullo_epi32(_mm256_cvtepu8_epi32(lo), k));
            a1 = _mm256_add_epi32(a1, _mm256_mullo_epi32(_mm256_cvtepu8_epi32(_mm_srli_si128::<8>(lo)), k));
            a2 = _mm256_add_epi32(a2, _mm256_mullo_epi32(_mm256_cvtepu8_epi32(_mm256_extracti128_si256::<1>(v)), k));
        }
        // clip8 on all lanes: arithmetic shift, saturate to i16, then to u8 (0..=255).
        let s0 = _mm256_srai_epi32::<{ PRECISION_BITS as i32 }>(a0);
        let s1 = _mm256_srai_epi32::<{ PRECISION_BITS as i32 }>(a1);
        let s2 = _mm256_srai_epi32::<{ PRECISION_BITS as i32 }>(a2);
        // packs works within 128-bit halves; the permutes restore lane order.
        let p01 = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(s0, s1));
        let p22 = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(s2, s2));
        // Quadwords now: [s0, s2 | s1, s2] -> [s0, s1, s2, s2].
        let b = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packus_epi16(p01, p22));
        _mm256_storeu_si256(px.as_mut_ptr() as *mut __m256i, b);
    }
}

/// Pillow's per-pixel horizontal loop over one row.
#[inline(always)]
fn row_h8(row: &[u8], out_row: &mut [u8], k: &[Vec<i32>], starts: &[usize]) {
    for ((o, kx), &start) in out_row.chunks_exact_mut(3).zip(k).zip(starts) {
        let mut acc = [1i32 << (PRECISION_BITS - 1); 3];
        for (p, &kw) in row[start * 3..(start + kx.len()) * 3].chunks_exact(3).zip(kx) {
            acc[0] += p[0] as i32 * kw;
            acc[1] += p[1] as i32 * kw;
            acc[2] += p[2] as i32 * kw;
        }
        o[0] = clip8(acc[0]);
        o[1] = clip8(acc[1]);
        o[2] = clip8(acc[2]);
    }
}

/// One vertical 8-bit pass of `src`, whose row 0 is source row `first` (the horizontal
/// pass may have skipped unused leading rows). Runs of `CHUNK` samples are accumulated over
/// all taps in registers, then clipped: accumulating whole rows tap by tap loaded and stored
/// the accumulator row once per tap. (Integer sums: Pillow's results in any order.)
#[inline(always)]
fn pass_v8_impl(src: &Plane, first: usize, t: &Taps) -> Vec<u8> {
    const CHUNK: usize = 32;
    let oh = t.start.len();
    let k = fixed_point(t);
    let rw = src.width * 3;
    let mut out = vec![0u8; oh * rw];
    let mut rows: Vec<&[u8]> = Vec::new();
    for ((out_row, ky), &start) in out.chunks_exact_mut(rw).zip(&k).zip(&t.start) {
        rows.clear();
        rows.extend((0..ky.len()).map(|i| src.row(start - first + i)));
        let mut chunks = out_row.chunks_exact_mut(CHUNK);
        for (c, o) in chunks.by_ref().enumerate() {
            sum_taps::<CHUNK>(&rows, ky, c * CHUNK, o);
        }
        let rest = chunks.into_remainder();
        sum_taps::<CHUNK>(&rows, ky, rw - rest.len(), rest);
    }
    out
}

/// Output samples `at..at + out.len()` (at most `N`) of one row: the taps' weighted sum of
/// `rows`, accumulated in `N` registers, then clipped.
#[inline(always)]
fn sum_taps<const N: usize>(rows: &[&[u8]], ky: &[i32], at: usize, out: &mut [u8]) {
    let mut acc = [1i32 << (PRECISION_BITS - 1); N];
    for (row, &kw) in rows.iter().zip(ky) {
        for (a, &v) in acc.iter_mut().zip(&row[at..at + out.len()]) {
            *a += v as i32 * kw;
        }
    }
    for (o, &a) in out.iter_mut().zip(&acc) {
        *o = clip8(a);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resample::{taps_box, Filter};

    /// The strip-transposed pass against Pillow's per-pixel loop, for heights with and
    /// without leftover rows, up- and down-scaling, and windows clamped at both edges.
    #[test]
    fn strips_equal_the_per_pixel_loop() {
        let mut s: u32 = 99;
        for (w, h, first, rows, ow, filter) in [
            (50, 19, 0, 19, 17, Filter::Bicubic),
            (50, 40, 3, 33, 23, Filter::Lanczos),
            (9, 16, 0, 16, 31, Filter::Bicubic),
            (64, 8, 0, 8, 64, Filter::Bilinear),
            (7, 25, 1, 24, 3, Filter::Box),
        ] {
            let src: Vec<u8> = (0..w * h * 3)
                .map(|_| {
                    s = s.wrapping_mul(1664525).wrapping_add(1013904223);
                    (s >> 24) as u8
                })
                .collect();
            let t = taps_box(0.6, w as f64 - 1.3, w, ow, filter);
            let got = pass_h8(&Plane::packed(&src, w), first, rows, &t);
            let k = fixed_point(&t);
            let mut want = vec![0u8; rows * ow * 3];
            for (y, out_row) in want.chunks_exact_mut(ow * 3).enumerate() {
                row_h8(&src[(first + y) * w * 3..(first + y + 1) * w * 3], out_row, &k, &t.start);
            }
            assert_eq!(got, want, "{w}x{h} rows {first}..{} -> {ow} {filter:?}", first + rows);
        }
    }

    /// The chunked vertical pass against Pillow's per-pixel loop (a sum over taps per output
    /// sample), for row widths with and without a partial chunk, up- and down-scaling,
    /// windows clamped at both edges, and a source whose row 0 is not the image's.
    #[test]
    fn chunks_equal_the_per_pixel_vertical_loop() {
        let mut s: u32 = 7;
        for (w, h, first, oh, filter) in [(11, 40, 0, 17, Filter::Bicubic), (32, 9, 0, 31, Filter::Lanczos), (5, 30, 2, 7, Filter::Box), (43, 25, 0, 25, Filter::Bilinear)] {
            let src: Vec<u8> = (0..w * h * 3)
                .map(|_| {
                    s = s.wrapping_mul(1664525).wrapping_add(1013904223);
                    (s >> 24) as u8
                })
                .collect();
            let t = taps_box(first as f64 + 0.4, h as f64 - 0.9, h, oh, filter);
            let plane = Plane::packed(&src[first * w * 3..], w);
            let got = pass_v8(&plane, first, &t);
            let k = fixed_point(&t);
            let mut want = vec![0u8; oh * w * 3];
            for (y, (ky, &start)) in k.iter().zip(&t.start).enumerate() {
                for i in 0..w * 3 {
                    let mut acc = 1i32 << (PRECISION_BITS - 1);
                    for (j, &kw) in ky.iter().enumerate() {
                        acc += src[(start + j) * w * 3 + i] as i32 * kw;
                    }
                    want[y * w * 3 + i] = clip8(acc);
                }
            }
            assert_eq!(got, want, "{w}x{h} from row {first} -> {oh} {filter:?}");
        }
    }
}
