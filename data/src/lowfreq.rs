//! EfficientTrain's low-frequency crop (docs/algorithm.md): keep only the `bh × bw` lowest spatial
//! frequencies of each channel and return them as a `bh × bw` image.
//!
//! Convention (identical to `ifft2(ifftshift(centre_crop(fftshift(fft2(x))))).real` and, for
//! even sizes, to the official `utils.freq_crop`, which copies the four corners of the
//! unshifted spectrum): along an axis of output length `b` the kept frequencies are
//! `-floor(b/2) ..= ceil(b/2) - 1`. For odd `b` that is symmetric; for even `b` the Nyquist
//! bin `-b/2` comes from one side only, so the inverse has a small imaginary part, which is
//! dropped exactly as the reference does. The result is scaled by `(bh·bw)/(h·w)` so that
//! the mean (the DC term) is preserved.
//!
//! The official code only handles even, square crops (odd `B` silently yields `B-1` pixels);
//! here odd and non-square sizes follow the centre-crop convention above.

use std::cell::RefCell;

use rustfft::num_complex::Complex;
use rustfft::FftPlanner;

use crate::error::DataError;

thread_local! {
    // FftPlanner caches plans per length; keeping one per thread makes repeated calls at the
    // same resolution (the common case in a loader) skip planning altogether.
    static PLANNER: RefCell<FftPlanner<f64>> = RefCell::new(FftPlanner::new());
}

/// Frequency kept at output index `i` of an axis of output length `b`, as an index into the
/// input spectrum of length `n` (negative frequencies wrap around to the end).
fn source_index(i: usize, b: usize, n: usize) -> usize {
    let positive = b.div_ceil(2);
    if i < positive {
        i
    } else {
        n - (b - i)
    }
}

/// Low-frequency crop of a CHW image: `c × h × w` → `c × bh × bw`.
///
/// Errors if the buffer length does not match `c·h·w`, or if a crop size is zero or larger
/// than the image.
pub fn lowfreq_crop(
    chw: &[f32],
    c: usize,
    h: usize,
    w: usize,
    bh: usize,
    bw: usize,
) -> Result<Vec<f32>, DataError> {
    if chw.len() != c * h * w {
        return Err(DataError::Invalid(format!(
            "lowfreq_crop: buffer has {} values but c·h·w = {c}·{h}·{w} = {}",
            chw.len(),
            c * h * w
        )));
    }
    if bh == 0 || bw == 0 || bh > h || bw > w {
        return Err(DataError::Invalid(format!(
            "lowfreq_crop: crop {bh}×{bw} must be non-empty and fit in the {h}×{w} image"
        )));
    }
    if bh == h && bw == w {
        // Keeping every frequency is the identity; skip the round trip and its rounding.
        return Ok(chw.to_vec());
    }

    let (fwd_w, fwd_h, inv_bh, inv_bw) = PLANNER.with(|p| {
        let mut p = p.borrow_mut();
        (
            p.plan_fft_forward(w),
            p.plan_fft_forward(h),
            p.plan_fft_inverse(bh),
            p.plan_fft_inverse(bw),
        )
    });
    let scratch_len = [&fwd_w, &fwd_h, &inv_bh, &inv_bw]
        .iter()
        .map(|f| f.get_inplace_scratch_len())
        .max()
        .unwrap_or(0);
    let mut scratch = vec![Complex::new(0.0f64, 0.0); scratch_len];

    // rustfft's inverse is unnormalised (factor bh·bw), which cancels the (bh·bw) of the
    // reference scaling and leaves 1/(h·w).
    let scale = 1.0 / (h * w) as f64;
    let mut out = Vec::with_capacity(c * bh * bw);
    let mut rows = vec![Complex::new(0.0f64, 0.0); h * w];
    let mut cols = vec![Complex::new(0.0f64, 0.0); bw * h];
    let mut crop_cols = vec![Complex::new(0.0f64, 0.0); bw * bh];
    let mut crop_rows = vec![Complex::new(0.0f64, 0.0); bh * bw];

    for plane in chw.chunks_exact(h * w) {
        for (z, &v) in rows.iter_mut().zip(plane) {
            *z = Complex::new(v as f64, 0.0);
        }
        // Row transforms over the full width, then column transforms only for the bw kept
        // columns: the discarded columns are never needed.
        fwd_w.process_with_scratch(&mut rows, &mut scratch);
        for j in 0..bw {
            let src = source_index(j, bw, w);
            for i in 0..h {
                cols[j * h + i] = rows[i * w + src];
            }
        }
        fwd_h.process_with_scratch(&mut cols, &mut scratch);
        for j in 0..bw {
            for i in 0..bh {
                crop_cols[j * bh + i] = cols[j * h + source_index(i, bh, h)];
            }
        }
        inv_bh.process_with_scratch(&mut crop_cols, &mut scratch);
        for j in 0..bw {
            for i in 0..bh {
                crop_rows[i * bw + j] = crop_cols[j * bh + i];
            }
        }
        inv_bw.process_with_scratch(&mut crop_rows, &mut scratch);
        out.extend(crop_rows.iter().map(|z| (z.re * scale) as f32));
    }
    Ok(out)
}

/// Square low-frequency crop `c × h × w` → `c × b × b` (the EfficientTrain case).
pub fn lowfreq_crop_square(
    chw: &[f32],
    c: usize,
    h: usize,
    w: usize,
    b: usize,
) -> Result<Vec<f32>, DataError> {
    lowfreq_crop(chw, c, h, w, b, b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f64::consts::PI;

    fn input(c: usize, h: usize, w: usize) -> Vec<f32> {
        let mut v = Vec::with_capacity(c * h * w);
        for k in 0..c {
            for i in 0..h {
                for j in 0..w {
                    let (k, i, j) = (k as f64, i as f64, j as f64);
                    v.push(((0.7 * k + 1.3 * i + 0.37 * j * j).sin() + 0.1 * k) as f32);
                }
            }
        }
        v
    }

    fn assert_close(got: &[f32], want: &[f32], tol: f32) {
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() <= tol, "index {i}: got {g}, want {w}");
        }
    }

    // Expected values from numpy: ifft2(ifftshift(centre_crop(fftshift(fft2(x))))).real
    // · bh·bw/(h·w) on the `input` above (for even B also equal to the official freq_crop).
    const REF_8_TO_4: [f32; 48] = [
        0.3644978, 0.2468969, -0.2019853, 0.2421218, 0.4657463, -0.3811842, 0.0949096, -0.0803506,
        -0.8205016, 0.2384418, 0.0142241, -0.0615330, 0.7794019, -0.0057520, -0.0805140, 0.1357091,
        0.6202011, 0.1275887, -0.0328433, 0.2732852, 0.0514670, -0.3069255, 0.2679918, -0.0915634,
        -0.3017654, 0.5168152, 0.0100177, 0.1809388, 0.7593952, -0.1261267, 0.0831650, 0.1537407,
        0.6312457, -0.0046949, 0.1987769, 0.2229498, -0.3399866, -0.0412834, 0.3620648, -0.0126810,
        0.4059274, 0.5991539, 0.0481315, 0.3853438, 0.4292647, -0.1401505, 0.2547617, 0.1464972,
    ];
    const REF_8_TO_6: [f32; 108] = [
        -0.1379263, 0.6253824, 0.1678647, -0.3290828, 0.3746641, -0.0330805, 0.9382587, 0.6770140,
        -0.6255022, 0.2599162, -0.3490952, 0.8731125, -0.0223411, -1.0185349, -0.1101850,
        0.4174571, -0.4621101, -0.1339797, -0.9734424, -0.2946663, 0.7151317, -0.4582807,
        0.5712563, -0.8739292, 0.3785233, 1.1368824, -0.1655018, -0.2378846, 0.2402619, 0.4690890,
        0.7785795, -0.1815687, -0.6034675, 0.5209631, -0.6288761, 0.6328879, 0.4327300, 0.8897908,
        -0.0759905, -0.0158943, 0.2077987, 0.4927034, 0.9590789, 0.0809608, -0.5407116, 0.5955109,
        -0.5058854, 0.8164637, -0.5739748, -0.9914985, 0.4715318, 0.1714787, 0.0641292, -0.5934204,
        -0.5111811, 0.5667100, 0.6330092, -0.4660327, 0.7676274, -0.3775933, 0.9901445, 1.0293903,
        -0.4835212, 0.2528683, -0.1264932, 0.9846731, 0.3360322, -0.7240343, -0.1602785, 0.5630904,
        -0.4299534, 0.1878504, 0.8468982, 0.7827482, -0.2370746, 0.3518011, -0.0097660, 0.8337927,
        0.5758609, -0.5061380, -0.1545843, 0.6980591, -0.3777182, 0.4228508, -0.8086277,
        -0.4511133, 0.8785113, -0.1081173, 0.6072392, -0.7267347, 0.2385282, 1.2085852, 0.3002041,
        -0.2075707, 0.6500030, 0.3433622, 1.1831168, 0.4847914, -0.5271015, 0.6717249, -0.3867250,
        1.0841817, -0.2175248, -0.8789436, 0.4053235, 0.3874191, 0.0182146, -0.2985044,
    ];
    const REF_8_TO_5: [f32; 75] = [
        -0.0545333, 0.5524137, -0.1848965, 0.0836892, 0.1346773, 1.2286138, -0.1169909, -0.1457994,
        -0.0680066, 0.2937769, -0.9028772, -0.7815386, 0.4105208, -0.0779113, -0.4500656,
        -0.3422931, 1.0464635, -0.3139392, 0.1684102, 0.1918376, 1.1454670, -0.3881234, -0.0383462,
        -0.1045414, 0.1985687, 0.5383968, 0.5252331, -0.1153308, 0.1445751, 0.3308822, 0.9893609,
        -0.5709391, 0.1994773, -0.0356528, 0.1544042, -1.3111418, -0.0338571, 0.3612618, 0.1385680,
        -0.3098273, 0.7376058, 1.0196038, -0.3184902, 0.2092243, 0.5170866, 0.6854871, -0.7271903,
        0.3002993, -0.0461327, 0.0317549, 0.9251420, 0.2980587, 0.0555084, 0.1844966, 0.4184997,
        0.3318277, -0.7093342, 0.4979682, 0.0605006, -0.0105556, -1.0557243, 0.7767794, 0.1891273,
        0.3369081, 0.0231592, 1.5176286, 0.5602401, -0.1262188, 0.1986686, 0.6461733, -0.0498565,
        -0.6772167, 0.5447409, 0.0810045, -0.1029621,
    ];
    const REF_8X6_TO_5X4: [f32; 40] = [
        0.1090801, 0.4794780, -0.0493673, -0.0924017, 0.4853613, 0.2682504, -0.3511264, -0.0132488,
        -0.5637577, -0.9761249, 0.3610033, 0.1571534, 0.1067918, 0.8356834, -0.0225172, -0.1685968,
        0.3859042, -0.0004802, -0.2942420, 0.0350671, 0.3846569, 0.6150471, -0.0807177, 0.0159185,
        0.3113998, -0.2322541, -0.0845858, 0.1900320, -0.5214956, -0.4489624, 0.5351286, 0.1607974,
        0.5858898, 1.1195020, -0.1985807, -0.0734620, 0.1471505, -0.4648915, 0.0242392, 0.2247778,
    ];
    const REF_7X9_TO_4X3: [f32; 12] = [
        0.3613352, 0.1637141, -0.0271207, 0.4817092, -0.2660980, 0.2611976, -0.6259148, 0.0615037,
        -0.1648809, 0.1957384, 0.1995306, -0.0827417,
    ];

    #[test]
    fn matches_numpy_reference() {
        let x = input(3, 8, 8);
        assert_close(
            &lowfreq_crop_square(&x, 3, 8, 8, 4).unwrap(),
            &REF_8_TO_4,
            1e-5,
        );
        assert_close(
            &lowfreq_crop_square(&x, 3, 8, 8, 6).unwrap(),
            &REF_8_TO_6,
            1e-5,
        );
        assert_close(
            &lowfreq_crop_square(&x, 3, 8, 8, 5).unwrap(),
            &REF_8_TO_5,
            1e-5,
        );
        let y = input(2, 8, 6);
        assert_close(
            &lowfreq_crop(&y, 2, 8, 6, 5, 4).unwrap(),
            &REF_8X6_TO_5X4,
            1e-5,
        );
        let z = input(1, 7, 9);
        assert_close(
            &lowfreq_crop(&z, 1, 7, 9, 4, 3).unwrap(),
            &REF_7X9_TO_4X3,
            1e-5,
        );
    }

    #[test]
    fn constant_stays_constant() {
        let x = vec![0.75f32; 2 * 12 * 10];
        let out = lowfreq_crop(&x, 2, 12, 10, 6, 5).unwrap();
        assert_eq!(out.len(), 2 * 6 * 5);
        assert_close(&out, &vec![0.75; 60], 1e-6);
    }

    #[test]
    fn full_size_is_identity() {
        let x = input(3, 8, 8);
        assert_close(&lowfreq_crop_square(&x, 3, 8, 8, 8).unwrap(), &x, 1e-5);
    }

    #[test]
    fn band_limited_signal_is_resampled_exactly() {
        // A signal made of frequencies strictly below B/2 on each axis is preserved by the
        // crop: the output is the same continuous signal sampled on the coarse B-grid.
        let (h, w, bh, bw) = (16usize, 12usize, 8usize, 6usize);
        let f = |u: f64, v: f64| {
            // u, v in [0, 1): normalised positions.
            0.3 + (2.0 * PI * 3.0 * u).cos() + 0.5 * (2.0 * PI * (2.0 * u + 1.0 * v) + 0.4).sin()
                - 0.25 * (2.0 * PI * 2.0 * v).cos()
        };
        let x: Vec<f32> = (0..h * w)
            .map(|k| f((k / w) as f64 / h as f64, (k % w) as f64 / w as f64) as f32)
            .collect();
        let out = lowfreq_crop(&x, 1, h, w, bh, bw).unwrap();
        let want: Vec<f32> = (0..bh * bw)
            .map(|k| f((k / bw) as f64 / bh as f64, (k % bw) as f64 / bw as f64) as f32)
            .collect();
        assert_close(&out, &want, 1e-5);
    }

    #[test]
    fn mean_is_preserved() {
        let x = input(2, 10, 14);
        for (bh, bw) in [(4, 4), (5, 7), (9, 13), (1, 1)] {
            let out = lowfreq_crop(&x, 2, 10, 14, bh, bw).unwrap();
            for ch in 0..2 {
                let m_in: f64 = x[ch * 140..(ch + 1) * 140]
                    .iter()
                    .map(|&v| v as f64)
                    .sum::<f64>()
                    / 140.0;
                let n = bh * bw;
                let m_out: f64 = out[ch * n..(ch + 1) * n]
                    .iter()
                    .map(|&v| v as f64)
                    .sum::<f64>()
                    / n as f64;
                assert!(
                    (m_in - m_out).abs() < 1e-5,
                    "{bh}x{bw} ch{ch}: {m_in} vs {m_out}"
                );
            }
        }
    }

    #[test]
    fn rejects_bad_sizes() {
        let x = input(1, 4, 4);
        assert!(lowfreq_crop(&x, 1, 4, 4, 5, 4).is_err());
        assert!(lowfreq_crop(&x, 1, 4, 4, 0, 4).is_err());
        assert!(lowfreq_crop(&x, 1, 4, 4, 2, 0).is_err());
        assert!(lowfreq_crop(&x, 2, 4, 4, 2, 2).is_err());
    }
}
