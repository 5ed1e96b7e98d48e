//! GELU (erf form, PyTorch's default) with a fused backward: dy·(Φ(x) + x·φ(x)) in one
//! pass instead of candle's chain of element-wise ops. With the `cuda` feature the same ops
//! run `cuda/gelu.cu` on CUDA tensors (f32 or bf16).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};
use super::kernel::written;
use super::simd::{exp_f32, simd};
use std::mem::MaybeUninit;
use rayon::prelude::*;

const CHUNK: usize = 4096;

/// erf in f32 by Abramowitz–Stegun 7.1.26 (max error 1.5e-7, plus f32 rounding): GELU's
/// output differs from the exact one by < 2e-6 for |x| < 8, far below the 1e-4 parity budget.
/// Branch-free with [`exp_f32`], so the loops below vectorise.
#[inline(always)]
fn erf_fast(x: f32) -> f32 {
    erf_with_gauss(x, exp_f32(-x * x))
}

/// erf(x) given e^(−x²), which GELU's gradient needs as well.
#[inline(always)]
fn erf_with_gauss(x: f32, gauss: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.327_591_1 * x.abs());
    let y = 1.0 - (((((1.061_405_4 * t - 1.453_152_1) * t) + 1.421_413_7) * t - 0.284_496_72) * t + 0.254_829_6) * t * gauss;
    y.copysign(x)
}

const FRAC_1_SQRT_2: f64 = std::f64::consts::FRAC_1_SQRT_2;
/// 1/√(2π)
const INV_SQRT_2PI: f64 = 0.398_942_280_401_432_7;

// Plain `for` loops: a `for_each` closure may be left out of line, i.e. compiled without
// the AVX2 of the caller.
#[inline(always)]
fn gelu_chunk(x: &[f32], y: &mut [MaybeUninit<f32>]) {
    for (y, &x) in y.iter_mut().zip(x) {
        y.write(gelu_fast(x));
    }
}

#[inline(always)]
fn dgelu_chunk(x: &[f32], g: &[f32], dx: &mut [MaybeUninit<f32>]) {
    for (d, (&x, &g)) in dx.iter_mut().zip(x.iter().zip(g)) {
        d.write(g * dgelu_fast(x));
    }
}

fn forward(s: &CpuStorage, l: &Layout) -> Result<CpuStorage> {
    let Some((a, b)) = l.contiguous_offsets() else { candle_core::bail!("gelu: input must be contiguous") };
    Ok(match s.dtype() {
        DType::F32 => {
            let x = &s.as_slice::<f32>()?[a..b];
            CpuStorage::F32(written(x.len(), |y| {
                y.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(y, x)| simd!(gelu_chunk(x: &[f32] = x, y: &mut [MaybeUninit<f32>] = y)));
            }))
        }
        DType::F64 => {
            let x = &s.as_slice::<f64>()?[a..b];
            CpuStorage::F64(x.par_iter().map(|&x| gelu_exact(x)).collect())
        }
        dt => candle_core::bail!("gelu: unsupported dtype {dt:?}"),
    })
}

#[inline(always)]
fn gelu_fast(x: f32) -> f32 {
    0.5 * x * (1.0 + erf_fast(x * std::f32::consts::FRAC_1_SQRT_2))
}

fn gelu_exact(x: f64) -> f64 {
    0.5 * x * (1.0 + libm::erf(x * FRAC_1_SQRT_2))
}

#[inline(always)]
fn dgelu_fast(x: f32) -> f32 {
    // e^(−x²/2) is both erf(x/√2)'s Gaussian factor and φ(x)·√(2π).
    let gauss = exp_f32(-0.5 * x * x);
    0.5 * (1.0 + erf_with_gauss(x * std::f32::consts::FRAC_1_SQRT_2, gauss)) + x * INV_SQRT_2PI as f32 * gauss
}

fn dgelu_exact(x: f64) -> f64 {
    0.5 * (1.0 + libm::erf(x * FRAC_1_SQRT_2)) + x * INV_SQRT_2PI * (-0.5 * x * x).exp()
}

struct Gelu;
/// (x, dy) -> dx.
struct GeluGrad;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "gelu-erf"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok((forward(s, l)?, l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &candle_core::CudaStorage, l: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        Ok((super::gelu_cuda::launch(false, &[(s, l)])?, l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(&grad.contiguous()?, &GeluGrad)?))
    }
}

impl CustomOp2 for GeluGrad {
    fn name(&self) -> &'static str {
        "gelu-erf-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (Some((a1, b1)), Some((a2, b2))) = (l1.contiguous_offsets(), l2.contiguous_offsets()) else {
            candle_core::bail!("gelu grad: inputs must be contiguous")
        };
        let out = match s1.dtype() {
            DType::F32 => {
                let (x, g) = (&s1.as_slice::<f32>()?[a1..b1], &s2.as_slice::<f32>()?[a2..b2]);
                CpuStorage::F32(written(x.len(), |dx| {
                    dx.par_chunks_mut(CHUNK)
                        .zip(x.par_chunks(CHUNK).zip(g.par_chunks(CHUNK)))
                        .for_each(|(d, (x, g))| simd!(dgelu_chunk(x: &[f32] = x, g: &[f32] = g, dx: &mut [MaybeUninit<f32>] = d)));
                }))
            }
            DType::F64 => {
                let (x, g) = (&s1.as_slice::<f64>()?[a1..b1], &s2.as_slice::<f64>()?[a2..b2]);
                CpuStorage::F64(x.par_iter().zip(g.par_iter()).map(|(&x, &g)| g * dgelu_exact(x)).collect())
            }
            dt => candle_core::bail!("gelu grad: unsupported dtype {dt:?}"),
        };
        Ok((out, l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s1: &candle_core::CudaStorage, l1: &Layout, s2: &candle_core::CudaStorage, l2: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        Ok((super::gelu_cuda::launch(true, &[(s1, l1), (s2, l2)])?, l1.shape().clone()))
    }
}

/// GELU with the exact (erf) definition; f32 uses a 1.5e-7-accurate erf.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    super::tape::apply1(x, &x.contiguous()?, Gelu)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{check_grads, seeded};
    use candle_core::{Device, Var};

    #[test]
    fn matches_candle_gelu_erf() -> Result<()> {
        let x = (seeded(&[4, 1000], 1, &Device::Cpu, DType::F32)? * 6.0)?;
        let d = (gelu(&x)? - x.gelu_erf()?)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
        assert!(d < 2e-6, "{d}");
        let grad_ours = {
            let v = Var::from_tensor(&x)?;
            gelu(v.as_tensor())?.sum_all()?.backward()?.get(v.as_tensor()).unwrap().clone()
        };
        let grad_candle = {
            let v = Var::from_tensor(&x)?;
            v.as_tensor().gelu_erf()?.sum_all()?.backward()?.get(v.as_tensor()).unwrap().clone()
        };
        let d = (grad_ours - grad_candle)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
        assert!(d < 1e-5, "{d}");
        Ok(())
    }

    #[test]
    fn gradient_matches_finite_differences() -> Result<()> {
        let x = Var::from_tensor(&(seeded(&[3, 7], 2, &Device::Cpu, DType::F64)? * 4.0)?)?;
        check_grads(&[&x], |v| gelu(v[0]))
    }
}
