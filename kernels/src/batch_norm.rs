//! BatchNorm in training mode (batch statistics) as fused passes over NCHW planes, forward
//! and backward. As a composition of candle ops it took ~20 passes over the activation per
//! layer (strided reductions over N, H, W, broadcasts, fresh buffers): most of a ResNet step.
//! Statistics accumulate in f64. A ReLU after the norm (ResNet's conv → BN → ReLU) can be
//! fused in: the forward writes max(y, 0) in the same pass, so the ReLU's forward pass and
//! the pre-ReLU tensor do not exist.

use super::kernel::{dispatch, written, Kernel};
use super::simd::simd;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;
use std::sync::{Arc, OnceLock};

#[derive(Clone, Copy, Debug)]
struct Dims {
    n: usize,
    c: usize,
    hw: usize,
}

impl Dims {
    fn count(&self) -> f64 {
        (self.n * self.hw) as f64
    }

    fn min_planes(&self) -> usize {
        (4096 / self.hw.max(1)).max(1)
    }
}

/// (Σx, Σx²) of a plane in f64, over eight independent partial sums so that the loop
/// vectorises: one running sum is a chain of dependent adds, and these folds were 9 % of
/// a ResNet-50 step that way.
#[inline(always)]
fn plane_sums<T: WithDType>(p: &[T]) -> (f64, f64) {
    let (mut s, mut q) = ([0f64; 8], [0f64; 8]);
    let blocks = p.chunks_exact(8);
    let tail = blocks.remainder();
    for b in blocks {
        for j in 0..8 {
            let v = b[j].to_f64();
            s[j] += v;
            q[j] += v * v;
        }
    }
    let fold = |a: [f64; 8]| a.iter().fold(0.0, |t, &v| t + v);
    tail.iter().fold((fold(s), fold(q)), |(s, q), &v| {
        let v = v.to_f64();
        (s + v, q + v * v)
    })
}

/// (Σdy, Σdy·x̂) of a plane, x̂ = (x − μ)·inv, as [`plane_sums`].
#[inline(always)]
fn plane_grad_sums<T: WithDType>(dy: &[T], x: &[T], mu: f64, inv: f64) -> (f64, f64) {
    let (mut s, mut t) = ([0f64; 8], [0f64; 8]);
    let (gb, xb) = (dy.chunks_exact(8), x.chunks_exact(8));
    let (gt, xt) = (gb.remainder(), xb.remainder());
    for (g, x) in gb.zip(xb) {
        for j in 0..8 {
            let g = g[j].to_f64();
            s[j] += g;
            t[j] += g * (x[j].to_f64() - mu) * inv;
        }
    }
    let fold = |a: [f64; 8]| a.iter().fold(0.0, |t, &v| t + v);
    gt.iter().zip(xt).fold((fold(s), fold(t)), |(s, t), (&g, &x)| {
        let g = g.to_f64();
        (s + g, t + g * (x.to_f64() - mu) * inv)
    })
}

/// [`plane_grad_sums`] of f32 planes with explicit AVX2: the generic loop compiled to scalar
/// f64 arithmetic (2.4 % of a ResNet-50 step). Sixteen values per iteration, widened to f64
/// in four-lane halves with their own sums; Σdy·(x − μ) is scaled by `inv` once at the end.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn plane_grad_sums_f32(dy: &[f32], x: &[f32], mu: f64, inv: f64) -> (f64, f64) {
    use std::arch::x86_64::*;
    let n = dy.len().min(x.len());
    let m = _mm256_set1_pd(mu);
    let (mut s, mut t) = ([_mm256_setzero_pd(); 4], [_mm256_setzero_pd(); 4]);
    let mut i = 0;
    while i + 16 <= n {
        for h in 0..2 {
            // SAFETY: i + 16 ≤ n bounds both 8-value loads.
            let (g, xv) = (_mm256_loadu_ps(dy.as_ptr().add(i + 8 * h)), _mm256_loadu_ps(x.as_ptr().add(i + 8 * h)));
            let g = [_mm256_cvtps_pd(_mm256_castps256_ps128(g)), _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(g))];
            let xv = [_mm256_cvtps_pd(_mm256_castps256_ps128(xv)), _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(xv))];
            for q in 0..2 {
                s[2 * h + q] = _mm256_add_pd(s[2 * h + q], g[q]);
                t[2 * h + q] = _mm256_add_pd(t[2 * h + q], _mm256_mul_pd(g[q], _mm256_sub_pd(xv[q], m)));
            }
        }
        i += 16;
    }
    let lanes = |v: [__m256d; 4]| {
        let mut out = [0f64; 4];
        _mm256_storeu_pd(out.as_mut_ptr(), _mm256_add_pd(_mm256_add_pd(v[0], v[1]), _mm256_add_pd(v[2], v[3])));
        out.iter().sum::<f64>()
    };
    let (mut ss, mut ts) = (lanes(s), lanes(t));
    for (&g, &xv) in dy[i..n].iter().zip(&x[i..n]) {
        ss += g as f64;
        ts += g as f64 * (xv as f64 - mu);
    }
    (ss, ts * inv)
}

/// (Σdy, Σdy·x̂) of a plane: the AVX2 kernel for f32 where the CPU has it.
fn grad_sums<T: WithDType>(dy: &[T], x: &[T], mu: f64, inv: f64) -> (f64, f64) {
    #[cfg(target_arch = "x86_64")]
    if let (Some(dy), Some(x)) = (super::simd::as_f32(dy), super::simd::as_f32(x)) {
        if super::simd::has_avx2() {
            // SAFETY: the CPU supports AVX2 (checked just above).
            return unsafe { plane_grad_sums_f32(dy, x, mu, inv) };
        }
    }
    simd!(<T: WithDType> plane_grad_sums(dy: &[T] = dy, x: &[T] = x, mu: f64 = mu, inv: f64 = inv) -> (f64, f64))
}

/// Per-channel (mean, biased variance) of NCHW `x`.
fn channel_stats<T: WithDType>(x: &[T], d: Dims) -> (Vec<f64>, Vec<f64>) {
    let sums: Vec<(f64, f64)> = x.par_chunks(d.hw).with_min_len(d.min_planes()).map(|p| simd!(<T: WithDType> plane_sums(p: &[T] = p) -> (f64, f64))).collect();
    let (mut mean, mut var) = (vec![0.0; d.c], vec![0.0; d.c]);
    for (p, (s, q)) in sums.into_iter().enumerate() {
        mean[p % d.c] += s;
        var[p % d.c] += q;
    }
    let m = d.count();
    for (mu, v) in mean.iter_mut().zip(var.iter_mut()) {
        *mu /= m;
        *v = (*v / m - *mu * *mu).max(0.0);
    }
    (mean, var)
}

/// The batch's (μ, σ²) per channel, computed once by the forward pass and read by the
/// running-statistics update and the backward pass (each of which took another pass over
/// the activation to compute them again).
type Stats = Arc<OnceLock<(Vec<f64>, Vec<f64>)>>;

/// (x, w, b) -> y = (x − μ) / √(σ² + ε) · w + b with the batch's μ, σ² (then max(y, 0)
/// with `relu`).
struct BnFwd {
    d: Dims,
    eps: f64,
    stats: Stats,
    relu: bool,
}
/// (dy, x) -> [μ, 1/σ, Σdy, Σdy·x̂] per channel, given the forward's μ and σ².
struct BnGradStats {
    d: Dims,
    eps: f64,
    stats: Stats,
}
/// (dy, x, [w, μ, 1/σ, Σdy, Σdy·x̂]) -> dx.
struct BnGradInput {
    d: Dims,
}

impl Kernel for BnFwd {
    const NAME: &'static str = "batch norm";
    fn run<T: WithDType>(&self, i: &[&[T]]) -> Vec<T> {
        let (x, w, b, d) = (i[0], i[1], i[2], self.d);
        let (mean, var) = self.stats.get_or_init(|| channel_stats(x, d));
        // y = x·a + c per channel.
        let a: Vec<f64> = (0..d.c).map(|c| w[c].to_f64() / (var[c] + self.eps).sqrt()).collect();
        let sh: Vec<f64> = (0..d.c).map(|c| b[c].to_f64() - mean[c] * a[c]).collect();
        let relu = self.relu;
        written(x.len(), |y| {
            y.par_chunks_mut(d.hw).zip(x.par_chunks(d.hw)).enumerate().with_min_len(d.min_planes()).for_each(|(p, (y, x))| {
                let (a, c) = (T::from_f64(a[p % d.c]), T::from_f64(sh[p % d.c]));
                if relu {
                    y.iter_mut().zip(x).for_each(|(y, &x)| {
                        let v = x * a + c;
                        y.write(if v > T::zero() { v } else { T::zero() });
                    });
                } else {
                    y.iter_mut().zip(x).for_each(|(y, &x)| {
                        y.write(x * a + c);
                    });
                }
            })
        })
    }
}

impl Kernel for BnGradStats {
    const NAME: &'static str = "batch norm grad";
    fn run<T: WithDType>(&self, i: &[&[T]]) -> Vec<T> {
        let (dy, x, d) = (i[0], i[1], self.d);
        let (mean, var) = self.stats.get_or_init(|| channel_stats(x, d));
        let inv: Vec<f64> = var.iter().map(|v| 1.0 / (v + self.eps).sqrt()).collect();
        let sums: Vec<(f64, f64)> = dy
            .par_chunks(d.hw)
            .zip(x.par_chunks(d.hw))
            .enumerate()
            .with_min_len(d.min_planes())
            .map(|(p, (dy, x))| {
                grad_sums(dy, x, mean[p % d.c], inv[p % d.c])
            })
            .collect();
        let (mut sdy, mut sdyx) = (vec![0.0; d.c], vec![0.0; d.c]);
        for (p, (s, t)) in sums.into_iter().enumerate() {
            sdy[p % d.c] += s;
            sdyx[p % d.c] += t;
        }
        mean.iter().copied().chain(inv).chain(sdy).chain(sdyx).map(T::from_f64).collect()
    }
}

impl Kernel for BnGradInput {
    const NAME: &'static str = "batch norm grad";
    fn run<T: WithDType>(&self, i: &[&[T]]) -> Vec<T> {
        let (dy, x, s, d) = (i[0], i[1], i[2], self.d);
        let c = d.c;
        let m = d.count();
        written(x.len(), |dx| dx.par_chunks_mut(d.hw).zip(dy.par_chunks(d.hw).zip(x.par_chunks(d.hw))).enumerate().with_min_len(d.min_planes()).for_each(|(p, (dx, (dy, x)))| {
            let ch = p % c;
            let (w, mu, inv, sdy, sdyx) = (s[ch].to_f64(), s[c + ch].to_f64(), s[2 * c + ch].to_f64(), s[3 * c + ch].to_f64(), s[4 * c + ch].to_f64());
            // dx = w/σ · (dy − Σdy/M − x̂ · Σdy·x̂/M), x̂ = (x − μ)/σ, as dy·k + x·q + r.
            let k = w * inv;
            let q = -k * inv * sdyx / m;
            let r = -k * sdy / m - q * mu;
            let (k, q, r) = (T::from_f64(k), T::from_f64(q), T::from_f64(r));
            for ((dx, &g), &x) in dx.iter_mut().zip(dy).zip(x) {
                dx.write(g * k + x * q + r);
            }
        }))
    }
}

impl CustomOp3 for BnFwd {
    fn name(&self) -> &'static str {
        "batch-norm-train"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok((dispatch(self, &[(s1, l1), (s2, l2), (s3, l3)])?, l1.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _b: &Tensor, res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (d, c) = (self.d, self.d.c);
        // The fused ReLU's gradient first, from its output: gating inside the passes below
        // compiled to scalar branches, slower than this one vectorised pass.
        let grad = if self.relu { super::relu::relu_grad(res, grad)? } else { grad.contiguous()? };
        let stats = grad.apply_op2_no_bwd(x, &BnGradStats { d, eps: self.eps, stats: self.stats.clone() })?;
        let packed = Tensor::cat(&[&w.detach().flatten_all()?, &stats.narrow(0, 0, 4 * c)?], 0)?;
        let dx = grad.apply_op3_no_bwd(x, &packed, &BnGradInput { d })?;
        let dw = stats.narrow(0, 3 * c, c)?.reshape(w.shape())?;
        let db = stats.narrow(0, 2 * c, c)?.reshape(w.shape())?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

impl CustomOp2 for BnGradStats {
    fn name(&self) -> &'static str {
        "batch-norm-grad-stats"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok((dispatch(self, &[(s1, l1), (s2, l2)])?, Shape::from(4 * self.d.c)))
    }
}

impl CustomOp3 for BnGradInput {
    fn name(&self) -> &'static str {
        "batch-norm-grad-input"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok((dispatch(self, &[(s1, l1), (s2, l2), (s3, l3)])?, l1.shape().clone()))
    }
}

fn dims(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Dims> {
    let (n, c, h, wd) = x.dims4()?;
    if w.elem_count() != c || b.elem_count() != c {
        candle_core::bail!("batch norm: weight {:?} / bias {:?} do not fit {c} channels", w.shape(), b.shape())
    }
    Ok(Dims { n, c, hw: h * wd })
}

/// Training-mode BatchNorm of NCHW `x`: the normalised output (with gradients) and the
/// batch's per-channel mean and biased variance (detached), for the running statistics.
pub fn batch_norm_train(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<(Tensor, Tensor, Tensor)> {
    batch_norm_train_with(x, w, b, eps, false)
}

/// [`batch_norm_train`] followed by a ReLU, in the same forward pass.
pub fn batch_norm_relu_train(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<(Tensor, Tensor, Tensor)> {
    batch_norm_train_with(x, w, b, eps, true)
}

fn batch_norm_train_with(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64, relu: bool) -> Result<(Tensor, Tensor, Tensor)> {
    let d = dims(x, w, b)?;
    let stats = Stats::default();
    let args = [&x.contiguous()?, &w.flatten_all()?.contiguous()?, &b.flatten_all()?.contiguous()?];
    let y = super::tape::apply3([x, w, b], args, BnFwd { d, eps, stats: stats.clone(), relu })?;
    let Some((mean, var)) = stats.get() else { candle_core::bail!("batch norm: the forward pass left no statistics") };
    let stat = |v: &[f64]| Tensor::from_iter(v.iter().copied(), x.device())?.to_dtype(x.dtype());
    Ok((y, stat(mean)?, stat(var)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{check_grads, seeded};
    use candle_core::{DType, Device, Var};

    fn reference(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
        let c = w.elem_count();
        let mean_c = |t: &Tensor| t.mean_keepdim(0)?.mean_keepdim(2)?.mean_keepdim(3);
        let xc = x.broadcast_sub(&mean_c(x)?)?;
        let var = mean_c(&xc.sqr()?)?;
        xc.broadcast_div(&(var + eps)?.sqrt()?)?.broadcast_mul(&w.reshape((1, c, 1, 1))?)?.broadcast_add(&b.reshape((1, c, 1, 1))?)
    }

    #[test]
    fn f32_gradient_sums_match_f64() {
        // Plane lengths around the 16-value blocks, including none at all.
        for n in [0, 1, 15, 16, 17, 49, 3137] {
            let dy: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.03).collect();
            let x: Vec<f32> = (0..n).map(|i| ((i * 53 % 97) as f32) * 0.05 + 1.0).collect();
            let (mu, inv) = (2.5, 0.7);
            let (s, t) = grad_sums(&dy, &x, mu, inv);
            let want_s: f64 = dy.iter().map(|&g| g as f64).sum();
            let want_t: f64 = dy.iter().zip(&x).map(|(&g, &x)| g as f64 * (x as f64 - mu) * inv).sum();
            assert!((s - want_s).abs() < 1e-9 && (t - want_t).abs() < 1e-9, "{n}: ({s}, {t}) vs ({want_s}, {want_t})");
        }
    }

    #[test]
    fn forward_and_statistics_match_the_composition() -> Result<()> {
        let dev = Device::Cpu;
        for shape in [[4, 3, 5, 7], [2, 70, 1, 1], [1, 2, 9, 2]] {
            let x = seeded(&shape, 1, &dev, DType::F32)?.affine(3.0, 0.5)?;
            let (w, b) = (seeded(&[shape[1]], 2, &dev, DType::F32)?, seeded(&[shape[1]], 3, &dev, DType::F32)?);
            let (y, mean, var) = batch_norm_train(&x, &w, &b, 1e-5)?;
            let d = (y - reference(&x, &w, &b, 1e-5)?)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(d < 1e-4, "{shape:?}: {d}");
            let m = x.mean_keepdim(0)?.mean_keepdim(2)?.mean_keepdim(3)?;
            let v = x.broadcast_sub(&m)?.sqr()?.mean_keepdim(0)?.mean_keepdim(2)?.mean_keepdim(3)?;
            assert!((mean - m.flatten_all()?)?.abs()?.max_all()?.to_scalar::<f32>()? < 1e-5);
            assert!((var - v.flatten_all()?)?.abs()?.max_all()?.to_scalar::<f32>()? < 1e-4);
        }
        Ok(())
    }

    /// (x, w, b) in f64 for the finite-difference checks.
    fn grad_inputs(shape: [usize; 4]) -> Result<(Var, Var, Var)> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&(seeded(&shape, 4, &dev, DType::F64)? * 2.0)?)?;
        let w = Var::from_tensor(&seeded(&[shape[1]], 5, &dev, DType::F64)?)?;
        let b = Var::from_tensor(&seeded(&[shape[1]], 6, &dev, DType::F64)?)?;
        Ok((x, w, b))
    }

    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        for shape in [[3, 2, 4, 3], [2, 3, 1, 1], [1, 2, 5, 1]] {
            let (x, w, b) = grad_inputs(shape)?;
            check_grads(&[&x, &w, &b], |v| Ok(batch_norm_train(v[0], v[1], v[2], 1e-5)?.0))?;
        }
        Ok(())
    }

    #[test]
    fn fused_relu_equals_relu_after_the_norm() -> Result<()> {
        let dev = Device::Cpu;
        for shape in [[4, 3, 5, 7], [2, 9, 3, 3]] {
            let x = seeded(&shape, 7, &dev, DType::F32)?.affine(3.0, 0.5)?;
            let (w, b) = (seeded(&[shape[1]], 8, &dev, DType::F32)?, seeded(&[shape[1]], 9, &dev, DType::F32)?);
            let (y, mean, var) = batch_norm_relu_train(&x, &w, &b, 1e-5)?;
            let (plain, m, v) = batch_norm_train(&x, &w, &b, 1e-5)?;
            let want = plain.relu()?;
            assert!(want.flatten_all()?.to_vec1::<f32>()?.iter().any(|&v| v == 0.0), "the test should clip something");
            assert_eq!(y.flatten_all()?.to_vec1::<f32>()?, want.flatten_all()?.to_vec1::<f32>()?);
            assert_eq!((mean.to_vec1::<f32>()?, var.to_vec1::<f32>()?), (m.to_vec1::<f32>()?, v.to_vec1::<f32>()?));
        }
        Ok(())
    }

    #[test]
    fn fused_relu_gradients_match_finite_differences() -> Result<()> {
        // Shapes with planes under and over the 8-lane blocks; the seeded inputs keep every
        // output well away from the ReLU's kink at the finite-difference step.
        for shape in [[3, 2, 4, 3], [2, 3, 1, 1], [2, 2, 11, 1]] {
            let (x, w, b) = grad_inputs(shape)?;
            let y = batch_norm_relu_train(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-5)?.0;
            let clipped = y.flatten_all()?.to_vec1::<f64>()?.iter().filter(|&&v| v == 0.0).count();
            assert!(clipped > 0 && clipped < y.elem_count(), "{shape:?}: {clipped} of {} clipped", y.elem_count());
            check_grads(&[&x, &w, &b], |v| Ok(batch_norm_relu_train(v[0], v[1], v[2], 1e-5)?.0))?;
        }
        Ok(())
    }
}
