//! Fused LayerNorm with affine, forward and backward, over one axis of a contiguous tensor
//! viewed as (outer, C, inner): inner = H·W for ConvNeXt's channels-first norm, inner = 1
//! for the usual last-axis norm. candle's own fused layer norm has no gradient and the
//! composed one costs ~10 strided passes each way (docs/kernels.md). With the `cuda`
//! feature the same ops run `cuda/layer_norm.cu` on CUDA tensors (f32 or bf16).

use super::kernel::{add_in_order, dispatch, lane_sum, split, written, Kernel};
use super::simd::simd;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;
use std::mem::MaybeUninit;

#[derive(Clone, Copy, Debug)]
struct Dims {
    c: usize,
    inner: usize,
}

fn dims(shape: &Shape, axis: usize) -> Dims {
    let d = shape.dims();
    Dims { c: d[axis], inner: d[axis + 1..].iter().product() }
}

/// Mean and 1/σ of every column i of a (C, inner) slice (two passes: stable).
fn stats<T: WithDType>(x: &[T], d: Dims, eps: f64, mean: &mut [f64], rstd: &mut [f64]) {
    mean.fill(0.0);
    rstd.fill(0.0);
    for c in 0..d.c {
        for (m, &v) in mean.iter_mut().zip(&x[c * d.inner..(c + 1) * d.inner]) {
            *m += v.to_f64();
        }
    }
    mean.iter_mut().for_each(|m| *m /= d.c as f64);
    for c in 0..d.c {
        for ((s, &v), &m) in rstd.iter_mut().zip(&x[c * d.inner..(c + 1) * d.inner]).zip(mean.iter()) {
            let t = v.to_f64() - m;
            *s += t * t;
        }
    }
    rstd.iter_mut().for_each(|s| *s = 1.0 / (*s / d.c as f64 + eps).sqrt());
}

fn forward<T: WithDType>(x: &[T], w: &[T], b: &[T], d: Dims, eps: f64) -> Vec<T> {
    if d.inner == 1 {
        return forward_rows(x, w, b, eps);
    }
    let slice = d.c * d.inner;
    written(x.len(), |y| {
        y.par_chunks_mut(slice).zip(x.par_chunks(slice)).for_each(|(y, x)| {
            simd!(<T: WithDType> image_forward(x: &[T] = x, w: &[T] = w, b: &[T] = b, y: &mut [MaybeUninit<T>] = y, d: Dims = d, eps: f64 = eps))
        })
    })
}

/// The channel norm of one image, (C, inner).
#[inline(always)]
fn image_forward<T: WithDType>(x: &[T], w: &[T], b: &[T], y: &mut [MaybeUninit<T>], d: Dims, eps: f64) {
    let (mut mean, mut rstd) = (vec![0.0; d.inner], vec![0.0; d.inner]);
    stats(x, d, eps, &mut mean, &mut rstd);
    for c in 0..d.c {
        let (wc, bc) = (w[c].to_f64(), b[c].to_f64());
        let r = c * d.inner..(c + 1) * d.inner;
        for (((o, &v), &m), &s) in y[r.clone()].iter_mut().zip(&x[r]).zip(&mean).zip(&rstd) {
            o.write(T::from_f64((v.to_f64() - m) * s * wc + bc));
        }
    }
}

/// Returns dx (same size as x) followed by dw (C) and db (C) in one buffer.
fn backward<T: WithDType>(x: &[T], w: &[T], dy: &[T], d: Dims, eps: f64) -> Vec<T> {
    if d.inner == 1 {
        return backward_rows(x, w, dy, eps);
    }
    let slice = d.c * d.inner;
    // One buffer from the start: appending dw and db to a full-size dx would reallocate,
    // and so copy, the whole gradient.
    written(x.len() + 2 * d.c, |out| {
        let (dx, params) = out.split_at_mut(x.len());
        let partial: Vec<(Vec<f64>, Vec<f64>)> = dx
            .par_chunks_mut(slice)
            .zip(x.par_chunks(slice).zip(dy.par_chunks(slice)))
            .map(|(dx, (x, dy))| {
                simd!(<T: WithDType> image_backward(x: &[T] = x, w: &[T] = w, dy: &[T] = dy, dx: &mut [MaybeUninit<T>] = dx, d: Dims = d, eps: f64 = eps) -> (Vec<f64>, Vec<f64>))
            })
            .collect();
        let (mut dw, mut db) = (vec![0.0; d.c], vec![0.0; d.c]);
        for (pw, pb) in partial {
            dw.iter_mut().zip(pw).for_each(|(s, v)| *s += v);
            db.iter_mut().zip(pb).for_each(|(s, v)| *s += v);
        }
        for (p, v) in params.iter_mut().zip(dw.into_iter().chain(db)) {
            p.write(T::from_f64(v));
        }
    })
}

/// dx of one image, (C, inner), and its (dw, db). The per-channel sums over positions take
/// 8 partial sums (`lane_sum`): a single running sum is a chain of dependent adds that
/// cannot vectorise.
#[inline(always)]
fn image_backward<T: WithDType>(x: &[T], w: &[T], dy: &[T], dx: &mut [MaybeUninit<T>], d: Dims, eps: f64) -> (Vec<f64>, Vec<f64>) {
    let (mut mean, mut rstd) = (vec![0.0; d.inner], vec![0.0; d.inner]);
    stats(x, d, eps, &mut mean, &mut rstd);
    let n = d.inner;
    let (mut a, mut bsum) = (vec![0.0; n], vec![0.0; n]);
    let (mut dw, mut db) = (vec![0.0; d.c], vec![0.0; d.c]);
    for c in 0..d.c {
        let wc = w[c].to_f64();
        let (xc, gc) = (&x[c * n..(c + 1) * n], &dy[c * n..(c + 1) * n]);
        (dw[c], db[c]) = channel_sums(xc, gc, wc, &mean, &rstd, &mut a, &mut bsum);
    }
    let inv_c = 1.0 / d.c as f64;
    for c in 0..d.c {
        let wc = w[c].to_f64();
        let (xc, gc, dxc) = (&x[c * n..(c + 1) * n], &dy[c * n..(c + 1) * n], &mut dx[c * n..(c + 1) * n]);
        for (((o, (&xv, &gv)), (&m, &s)), (&ai, &bi)) in dxc.iter_mut().zip(xc.iter().zip(gc)).zip(mean.iter().zip(&rstd)).zip(a.iter().zip(&bsum)) {
            let xh = (xv.to_f64() - m) * s;
            let g = gv.to_f64() * wc;
            o.write(T::from_f64(s * (g - ai * inv_c - xh * bi * inv_c)));
        }
    }
    (dw, db)
}

/// One channel's part of the backward, in one pass over its positions: adds g·w and
/// g·w·x̂ to the per-position sums `a` and `bsum`, and returns (Σ g·x̂, Σ g) — each reduction
/// over 8 partial sums, in [`lane_sum`]'s order. Zipped slices, not indices, so that the
/// loop has no bounds checks and vectorises.
#[inline(always)]
fn channel_sums<T: WithDType>(xc: &[T], gc: &[T], wc: f64, mean: &[f64], rstd: &[f64], a: &mut [f64], bsum: &mut [f64]) -> (f64, f64) {
    let (mut lw, mut lb) = ([0.0f64; 8], [0.0f64; 8]);
    let split = xc.len() / 8 * 8;
    let step = |(((ai, bi), (&xv, &gv)), (&m, &s)): (((&mut f64, &mut f64), (&T, &T)), (&f64, &f64))| {
        let (g, xh) = (gv.to_f64(), (xv.to_f64() - m) * s);
        *ai += g * wc;
        *bi += g * wc * xh;
        (g * xh, g)
    };
    let chunks = a[..split].chunks_exact_mut(8).zip(bsum[..split].chunks_exact_mut(8)).zip(xc[..split].chunks_exact(8).zip(gc[..split].chunks_exact(8))).zip(mean[..split].chunks_exact(8).zip(rstd[..split].chunks_exact(8)));
    for (((ac, bc), (xs, gs)), (ms, ss)) in chunks {
        for (j, e) in ac.iter_mut().zip(bc.iter_mut()).zip(xs.iter().zip(gs)).zip(ms.iter().zip(ss)).enumerate() {
            let (w, b) = step(e);
            lw[j] += w;
            lb[j] += b;
        }
    }
    let tail = a[split..].iter_mut().zip(bsum[split..].iter_mut()).zip(xc[split..].iter().zip(&gc[split..])).zip(mean[split..].iter().zip(&rstd[split..]));
    let (tw, tb) = tail.map(step).fold((0.0, 0.0), |(sw, sb), (w, b)| (sw + w, sb + b));
    (lw.iter().fold(tw, |s, &v| s + v), lb.iter().fold(tb, |s, &v| s + v))
}

// The last-axis norm (inner = 1, every transformer here) has contiguous rows: the column
// formulation above would loop over 1-element columns and allocate per row. Rows are
// normalised in the data type with 8 partial sums per reduction so the loops vectorise.

/// (mean, 1/σ) of one row, two passes.
#[inline(always)]
fn row_stats<T: WithDType>(x: &[T], eps: f64) -> (T, T) {
    let c = T::from_f64(x.len() as f64);
    let mean = lane_sum(x.len(), |i| x[i]) / c;
    let var = lane_sum(x.len(), |i| (x[i] - mean) * (x[i] - mean)) / c;
    (mean, T::from_f64(1.0 / (var.to_f64() + eps).sqrt()))
}

#[inline(always)]
fn rows_forward<T: WithDType>(x: &[T], w: &[T], b: &[T], y: &mut [MaybeUninit<T>], eps: f64) {
    for (y, x) in y.chunks_exact_mut(w.len()).zip(x.chunks_exact(w.len())) {
        let (mean, rstd) = row_stats(x, eps);
        for i in 0..x.len() {
            y[i].write((x[i] - mean) * rstd * w[i] + b[i]);
        }
    }
}

/// dx of a block of rows; adds the block's dw and db to `acc` ([dw, db]).
#[inline(always)]
fn rows_backward<T: WithDType>(x: &[T], w: &[T], dy: &[T], dx: &mut [MaybeUninit<T>], acc: &mut [T], eps: f64) {
    let c = w.len();
    let inv_c = T::from_f64(1.0 / c as f64);
    let (dw, db) = acc.split_at_mut(c);
    for ((dx, x), dy) in dx.chunks_exact_mut(c).zip(x.chunks_exact(c)).zip(dy.chunks_exact(c)) {
        let (mean, rstd) = row_stats(x, eps);
        let a = lane_sum(c, |i| dy[i] * w[i]) * inv_c;
        let bsum = lane_sum(c, |i| dy[i] * w[i] * (x[i] - mean) * rstd) * inv_c;
        for i in 0..c {
            let xh = (x[i] - mean) * rstd;
            dx[i].write(rstd * (dy[i] * w[i] - a - xh * bsum));
            dw[i] += dy[i] * xh;
            db[i] += dy[i];
        }
    }
}

fn rows_per_task(c: usize) -> usize {
    (16384 / c.max(1)).max(1)
}

fn forward_rows<T: WithDType>(x: &[T], w: &[T], b: &[T], eps: f64) -> Vec<T> {
    let block = rows_per_task(w.len()) * w.len();
    written(x.len(), |y| {
        y.par_chunks_mut(block).zip(x.par_chunks(block)).for_each(|(y, x)| {
            simd!(<T: WithDType> rows_forward(x: &[T] = x, w: &[T] = w, b: &[T] = b, y: &mut [MaybeUninit<T>] = y, eps: f64 = eps))
        });
    })
}

fn backward_rows<T: WithDType>(x: &[T], w: &[T], dy: &[T], eps: f64) -> Vec<T> {
    let c = w.len();
    let block = rows_per_task(c) * c;
    written(x.len() + 2 * c, |out| {
        let (dx, params) = out.split_at_mut(x.len());
        let partial: Vec<Vec<T>> = dx
            .par_chunks_mut(block)
            .zip(x.par_chunks(block).zip(dy.par_chunks(block)))
            .map(|(dx, (x, dy))| {
                let mut acc = vec![T::zero(); 2 * c];
                simd!(<T: WithDType> rows_backward(x: &[T] = x, w: &[T] = w, dy: &[T] = dy, dx: &mut [MaybeUninit<T>] = dx, acc: &mut [T] = &mut acc, eps: f64 = eps));
                acc
            })
            .collect();
        params.iter_mut().zip(add_in_order(partial, 2 * c)).for_each(|(d, v)| {
            d.write(v);
        });
    })
}

struct LayerNormFwd {
    d: Dims,
    eps: f64,
}

/// (x, w, dy) -> [dx, dw, db] flattened.
struct LayerNormBwd {
    d: Dims,
    eps: f64,
}

impl Kernel for LayerNormFwd {
    const NAME: &'static str = "layer norm";
    fn run<T: WithDType>(&self, i: &[&[T]]) -> Vec<T> {
        forward(i[0], i[1], i[2], self.d, self.eps)
    }
}

impl Kernel for LayerNormBwd {
    const NAME: &'static str = "layer norm grad";
    fn run<T: WithDType>(&self, i: &[&[T]]) -> Vec<T> {
        backward(i[0], i[1], i[2], self.d, self.eps)
    }
}

impl CustomOp3 for LayerNormFwd {
    fn name(&self) -> &'static str {
        "layer-norm"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok((dispatch(self, &[(s1, l1), (s2, l2), (s3, l3)])?, l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s1: &candle_core::CudaStorage, l1: &Layout, s2: &candle_core::CudaStorage, l2: &Layout, s3: &candle_core::CudaStorage, l3: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        let axis = super::layer_norm_cuda::Axis { c: self.d.c, inner: self.d.inner };
        Ok((super::layer_norm_cuda::forward(axis, self.eps, (s1, l1), (s2, l2), (s3, l3))?, l1.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, b: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let all = x.apply_op3_no_bwd(w, &grad, &LayerNormBwd { d: self.d, eps: self.eps })?;
        let [dx, dw, db] = split(&all, [x.shape(), w.shape(), b.shape()])?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

impl CustomOp3 for LayerNormBwd {
    fn name(&self) -> &'static str {
        "layer-norm-backward"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = dispatch(self, &[(s1, l1), (s2, l2), (s3, l3)])?;
        Ok((out, Shape::from(l1.shape().elem_count() + 2 * l2.shape().elem_count())))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s1: &candle_core::CudaStorage, l1: &Layout, s2: &candle_core::CudaStorage, l2: &Layout, s3: &candle_core::CudaStorage, l3: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        let axis = super::layer_norm_cuda::Axis { c: self.d.c, inner: self.d.inner };
        let out = super::layer_norm_cuda::backward(axis, self.eps, (s1, l1), (s2, l2), (s3, l3))?;
        Ok((out, Shape::from(l1.shape().elem_count() + 2 * l2.shape().elem_count())))
    }
}

/// LayerNorm of `x` over `axis` with weight and bias of size `x.dim(axis)`.
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, axis: usize, eps: f64) -> Result<Tensor> {
    if w.elem_count() != x.dim(axis)? || b.elem_count() != x.dim(axis)? {
        candle_core::bail!("layer norm: weight {:?} / bias {:?} do not fit axis {axis} of {:?}", w.shape(), b.shape(), x.shape())
    }
    let d = dims(x.shape(), axis);
    let args = [&x.contiguous()?, &w.flatten_all()?.contiguous()?, &b.flatten_all()?.contiguous()?];
    super::tape::apply3([x, w, b], args, LayerNormFwd { d, eps })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{check_grads, seeded};
    use candle_core::{DType, Device, Var};

    fn composed(x: &Tensor, w: &Tensor, b: &Tensor, axis: usize, eps: f64) -> Result<Tensor> {
        let mean = x.mean_keepdim(axis)?;
        let xc = x.broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim(axis)?;
        let mut shape = vec![1usize; x.rank()];
        shape[axis] = x.dim(axis)?;
        xc.broadcast_div(&(var + eps)?.sqrt()?)?.broadcast_mul(&w.reshape(shape.as_slice())?)?.broadcast_add(&b.reshape(shape.as_slice())?)
    }

    #[test]
    fn forward_matches_composition() -> Result<()> {
        let dev = Device::Cpu;
        for (shape, axis) in [(vec![2, 5, 3, 4], 1), (vec![3, 4, 7], 2), (vec![1, 6, 1, 1], 1), (vec![2, 3, 20], 2)] {
            let x = (seeded(&shape, 1, &dev, DType::F32)? * 3.0)?;
            let w = seeded(&[shape[axis]], 2, &dev, DType::F32)?;
            let b = seeded(&[shape[axis]], 3, &dev, DType::F32)?;
            let d = (layer_norm(&x, &w, &b, axis, 1e-6)? - composed(&x, &w, &b, axis, 1e-6)?)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
            assert!(d < 1e-5, "{shape:?}: {d}");
        }
        Ok(())
    }

    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        let dev = Device::Cpu;
        for (shape, axis) in [(vec![2, 5, 3, 2], 1), (vec![3, 2, 7], 2), (vec![2, 3, 1, 1], 1), (vec![2, 3, 20], 2)] {
            let x = Var::from_tensor(&seeded(&shape, 4, &dev, DType::F64)?)?;
            let w = Var::from_tensor(&seeded(&[shape[axis]], 5, &dev, DType::F64)?)?;
            let b = Var::from_tensor(&seeded(&[shape[axis]], 6, &dev, DType::F64)?)?;
            check_grads(&[&x, &w, &b], |v| layer_norm(v[0], v[1], v[2], axis, 1e-5))?;
        }
        Ok(())
    }
}
