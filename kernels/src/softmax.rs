//! Softmax over the last dimension, forward and backward one pass per row each. candle's
//! `ops::softmax` (the variant with a gradient, docs/kernels.md) is five ops forward and more
//! backward, each a full pass over the attention scores. With the `cuda` feature the same ops
//! run `cuda/softmax.cu` on CUDA tensors (f32 or bf16).

use super::kernel::{contiguous, dispatch, Kernel};
use super::simd::{exp_f32, simd};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

struct Softmax {
    cols: usize,
}
/// (y, dy) -> dx = y · (dy − Σ dy·y).
struct SoftmaxGrad {
    cols: usize,
}

fn rows_per_task(cols: usize) -> usize {
    (8192 / cols.max(1)).max(1)
}

/// One row in f32: lane-wise max and sum (so the loops vectorise) around [`exp_f32`].
#[inline(always)]
fn softmax_row_f32(x: &[f32], y: &mut [f32]) {
    y.copy_from_slice(x);
    softmax_in_place_f32(y);
}

/// [`softmax_row_f32`] on a row in place.
#[inline(always)]
fn softmax_in_place_f32(y: &mut [f32]) {
    let split = y.len() / 8 * 8;
    let mut lanes = [f32::NEG_INFINITY; 8];
    for c in y[..split].chunks_exact(8) {
        for j in 0..8 {
            lanes[j] = lanes[j].max(c[j]);
        }
    }
    let max = y[split..].iter().chain(&lanes).fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut sums = [0f32; 8];
    for c in y[..split].chunks_exact_mut(8) {
        for j in 0..8 {
            c[j] = exp_f32(c[j] - max);
            sums[j] += c[j];
        }
    }
    let mut sum = sums.iter().fold(0.0, |s, &v| s + v);
    for v in y[split..].iter_mut() {
        *v = exp_f32(*v - max);
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in y.iter_mut() {
        *v *= inv;
    }
}

fn softmax_f32(x: &[f32], cols: usize) -> Vec<f32> {
    let mut y = vec![0f32; x.len()];
    y.par_chunks_mut(cols).zip(x.par_chunks(cols)).with_min_len(rows_per_task(cols)).for_each(|(y, x)| {
        simd!(softmax_row_f32(x: &[f32] = x, y: &mut [f32] = y))
    });
    y
}

impl Kernel for Softmax {
    const NAME: &'static str = "softmax";
    fn run<T: WithDType>(&self, i: &[&[T]]) -> Vec<T> {
        // f32 goes through `softmax_f32` (see `cpu_fwd`); this is the f64 path.
        let x = i[0];
        let mut y = x.to_vec();
        y.par_chunks_mut(self.cols).with_min_len(rows_per_task(self.cols)).for_each(softmax_in_place_exact);
        y
    }
}

/// Softmax of one row in place in f64 arithmetic: the path for f64 data.
fn softmax_in_place_exact<T: WithDType>(row: &mut [T]) {
    let max = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v.to_f64()));
    let mut sum = 0.0;
    for v in row.iter_mut() {
        let e = (v.to_f64() - max).exp();
        sum += e;
        *v = T::from_f64(e);
    }
    let inv = T::from_f64(1.0 / sum);
    row.iter_mut().for_each(|v| *v *= inv);
}

/// Softmax of every `cols`-long row of `s` in place, single-threaded (callers parallelise):
/// f32 on the vectorised rows, f64 exactly.
pub(crate) fn softmax_rows_in_place<T: WithDType>(s: &mut [T], cols: usize) {
    if let Some(s) = super::simd::as_f32_mut(s) {
        for row in s.chunks_exact_mut(cols) {
            simd!(softmax_in_place_f32(row: &mut [f32] = row));
        }
        return;
    }
    s.chunks_exact_mut(cols).for_each(softmax_in_place_exact);
}

/// The softmax backward of one row in place: g ← y · (g − Σ g·y).
pub(crate) fn softmax_grad_row<T: WithDType>(y: &[T], g: &mut [T]) {
    let dot = T::from_f64(y.iter().zip(g.iter()).map(|(&a, &b)| (a * b).to_f64()).sum::<f64>());
    for (g, &y) in g.iter_mut().zip(y) {
        *g = y * (*g - dot);
    }
}

impl Kernel for SoftmaxGrad {
    const NAME: &'static str = "softmax grad";
    fn run<T: WithDType>(&self, i: &[&[T]]) -> Vec<T> {
        let (y, dy) = (i[0], i[1]);
        let mut dx = dy.to_vec();
        dx.par_chunks_mut(self.cols).zip(y.par_chunks(self.cols)).with_min_len(rows_per_task(self.cols)).for_each(|(dx, y)| softmax_grad_row(y, dx));
        dx
    }
}

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "softmax-last-dim"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let y = match s {
            CpuStorage::F32(_) => CpuStorage::F32(softmax_f32(contiguous::<f32>(s, l, "softmax")?, self.cols)),
            _ => dispatch(self, &[(s, l)])?,
        };
        Ok((y, l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &candle_core::CudaStorage, l: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        Ok((super::softmax_cuda::launch(false, self.cols, &[(s, l)])?, l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(res.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxGrad { cols: self.cols })?))
    }
}

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "softmax-last-dim-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok((dispatch(self, &[(s1, l1), (s2, l2)])?, l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s1: &candle_core::CudaStorage, l1: &Layout, s2: &candle_core::CudaStorage, l2: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        Ok((super::softmax_cuda::launch(true, self.cols, &[(s1, l1), (s2, l2)])?, l1.shape().clone()))
    }
}

/// Softmax of `x` over its last dimension.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let cols = x.dim(x.rank() - 1)?;
    super::tape::apply1(x, &x.contiguous()?, Softmax { cols })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{check_grads, seeded};
    use candle_core::{DType, Device, Var, D};

    #[test]
    fn matches_candle_softmax_with_correct_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let x = (seeded(&[3, 4, 17], 1, &dev, DType::F32)? * 20.0)?;
        let d = (softmax_last_dim(&x)? - candle_nn::ops::softmax(&x, D::Minus1)?)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(d < 1e-6, "{d}");
        let v = Var::from_tensor(&(seeded(&[2, 3, 5], 2, &dev, DType::F64)? * 3.0)?)?;
        check_grads(&[&v], |t| softmax_last_dim(t[0]))?;
        // The result is used by the backward: a transposed input still works.
        let t = Var::from_tensor(&seeded(&[4, 3], 3, &dev, DType::F64)?)?;
        check_grads(&[&t], |v| softmax_last_dim(&v[0].t()?))
    }
}
