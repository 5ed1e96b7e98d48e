//! Resampling kernels and the taps they give, defined once for the image pipeline
//! (et-data's Pillow-exact resize) and the models (a ViT's position embedding resampled to
//! another grid, as timm's `resample_abs_pos_embed`): Pillow's `precompute_coeffs`, which
//! PyTorch's `antialias=True` interpolation follows too — the kernel's support widened by
//! the down-scaling factor, half-pixel centres, weights normalised per output sample.

/// Resampling filters with Pillow's kernels and supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Filter {
    Nearest,
    Box,
    Bilinear,
    Bicubic,
    Lanczos,
}

impl Filter {
    /// Parses timm / torchvision interpolation names.
    pub fn parse(name: &str) -> Result<Filter, String> {
        match name.to_ascii_lowercase().as_str() {
            "nearest" => Ok(Filter::Nearest),
            "box" => Ok(Filter::Box),
            "bilinear" => Ok(Filter::Bilinear),
            "bicubic" => Ok(Filter::Bicubic),
            "lanczos" => Ok(Filter::Lanczos),
            _ => Err(format!("unknown interpolation '{name}': expected bicubic, bilinear, nearest, lanczos or box")),
        }
    }

    /// Kernel radius at scale 1 (Pillow's `filter.support`).
    pub fn support(self) -> f64 {
        match self {
            Filter::Nearest | Filter::Box => 0.5,
            Filter::Bilinear => 1.0,
            Filter::Bicubic => 2.0,
            Filter::Lanczos => 3.0,
        }
    }

    /// The kernels, including Pillow's half-open interval conventions, which decide which
    /// tap a sample exactly on the support boundary belongs to.
    pub fn kernel(self, x: f64) -> f64 {
        match self {
            Filter::Nearest | Filter::Box => {
                if x > -0.5 && x <= 0.5 {
                    1.0
                } else {
                    0.0
                }
            }
            Filter::Bilinear => (1.0 - x.abs()).max(0.0),
            Filter::Bicubic => {
                // Keys' cubic with a = -0.5, as Pillow and PyTorch (not -0.75 as OpenCV).
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            Filter::Lanczos => {
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let x = x * std::f64::consts::PI;
        x.sin() / x
    }
}

/// Per-output-sample taps: the first input index and the normalised weights.
#[derive(Clone, Debug, PartialEq)]
pub struct Taps {
    pub start: Vec<usize>,
    pub weights: Vec<Vec<f64>>,
}

/// Pillow's `precompute_coeffs` for the whole axis.
pub fn taps(in_size: usize, out_size: usize, filter: Filter) -> Taps {
    taps_box(0.0, in_size as f64, in_size, out_size, filter)
}

/// Pillow's `precompute_coeffs` for the source interval `[in0, in1)` of an axis `in_size`
/// long (its `box` argument): taps may reach outside the interval, as far as the axis goes.
pub fn taps_box(in0: f64, in1: f64, in_size: usize, out_size: usize, filter: Filter) -> Taps {
    let scale = (in1 - in0) / out_size as f64;
    // Down-scaling widens the kernel so that it also low-passes (anti-aliasing).
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ss = 1.0 / filterscale;
    let mut start = Vec::with_capacity(out_size);
    let mut weights = Vec::with_capacity(out_size);
    for xx in 0..out_size {
        let center = in0 + (xx as f64 + 0.5) * scale;
        // C's `(int)` truncates toward zero; both bounds are then clamped to the axis.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64).max(xmin as i64) as usize;
        let mut k: Vec<f64> = (xmin..xmax).map(|x| filter.kernel((x as f64 - center + 0.5) * ss)).collect();
        let ww: f64 = k.iter().sum();
        if ww != 0.0 {
            k.iter_mut().for_each(|w| *w /= ww);
        }
        start.push(xmin);
        weights.push(k);
    }
    Taps { start, weights }
}

/// The taps of the whole axis as a dense, row-stochastic (out × in) matrix.
pub fn matrix(in_size: usize, out_size: usize, filter: Filter) -> Vec<f32> {
    let t = taps(in_size, out_size, filter);
    let mut m = vec![0f32; out_size * in_size];
    for (i, (s, w)) in t.start.iter().zip(&t.weights).enumerate() {
        for (j, &wj) in w.iter().enumerate() {
            m[i * in_size + s + j] = wj as f32;
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_sum_to_one_and_identity_at_scale_one() {
        for (i, o) in [(14, 10), (14, 6), (7, 14), (14, 14)] {
            let m = matrix(i, o, Filter::Bicubic);
            for r in m.chunks(i) {
                assert!((r.iter().sum::<f32>() - 1.0).abs() < 1e-6);
            }
        }
        let m = matrix(5, 5, Filter::Bicubic);
        for r in 0..5 {
            for c in 0..5 {
                assert_eq!(m[r * 5 + c], if r == c { 1.0 } else { 0.0 });
            }
        }
        assert_eq!(Filter::parse("BICUBIC"), Ok(Filter::Bicubic));
        assert!(Filter::parse("hamming2").is_err());
    }
}
