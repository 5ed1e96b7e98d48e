//! The same ops as the CPU kernels of this module, composed from candle primitives that have
//! gradients on every backend. They run wherever the hand-written kernels do not: on CUDA
//! (candle's kernels, cuDNN for convolutions, cuBLAS for matmuls) and in bf16. Reductions
//! (norm statistics, softmax) are computed in f32 when activations are half precision, as
//! PyTorch's autocast does.

use candle_core::{DType, Result, Tensor, D};

/// The dtype that statistics are accumulated in for activations of `dtype`.
pub fn stat_dtype(dtype: DType) -> DType {
    match dtype {
        DType::BF16 | DType::F16 => DType::F32,
        d => d,
    }
}

fn per_axis(p: &Tensor, rank: usize, axis: usize) -> Result<Tensor> {
    let mut shape = vec![1usize; rank];
    shape[axis] = p.elem_count();
    p.reshape(shape)
}

/// LayerNorm over `axis` (the last dimension or the channels of NCHW).
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, axis: usize, eps: f64) -> Result<Tensor> {
    let dt = x.dtype();
    let xf = x.to_dtype(stat_dtype(dt))?;
    let mean = xf.mean_keepdim(axis)?;
    let xc = xf.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(axis)?;
    let xn = xc.broadcast_div(&(var + eps)?.sqrt()?)?.to_dtype(dt)?;
    let rank = x.rank();
    xn.broadcast_mul(&per_axis(w, rank, axis)?)?.broadcast_add(&per_axis(b, rank, axis)?)
}

/// Softmax over the last dimension (`ops::softmax`, which has a gradient; docs/kernels.md).
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    let dt = x.dtype();
    candle_nn::ops::softmax(&x.to_dtype(stat_dtype(dt))?, D::Minus1)?.to_dtype(dt)
}

/// Multiplies NCHW `x` by a per-channel `gamma`.
pub fn scale_channels(x: &Tensor, gamma: &Tensor) -> Result<Tensor> {
    x.broadcast_mul(&per_axis(gamma, x.rank(), 1)?)
}

/// Appends `before` / `after` copies of `value` around dimension `dim`.
fn pad_const(x: &Tensor, dim: usize, before: usize, after: usize, value: f64) -> Result<Tensor> {
    let mut parts = Vec::with_capacity(3);
    let block = |n: usize| -> Result<Tensor> {
        let mut shape = x.dims().to_vec();
        shape[dim] = n;
        Tensor::full(value, shape, x.device())?.to_dtype(x.dtype())
    };
    if before > 0 {
        parts.push(block(before)?);
    }
    parts.push(x.clone());
    if after > 0 {
        parts.push(block(after)?);
    }
    if parts.len() == 1 {
        return Ok(x.clone());
    }
    Tensor::cat(&parts, dim)
}

/// Every `stride`-th of `count` elements of `dim`, starting at `start`, as a reshape of a
/// contiguous range (candle has no strided slicing). `x.dim(dim)` must be ≥ start + stride·count.
fn strided(x: &Tensor, dim: usize, start: usize, stride: usize, count: usize) -> Result<Tensor> {
    let y = x.narrow(dim, start, stride * count)?;
    if stride == 1 {
        return Ok(y);
    }
    let mut shape = y.dims().to_vec();
    shape[dim] = count;
    shape.insert(dim + 1, stride);
    y.reshape(shape.as_slice())?.narrow(dim + 1, 0, 1)?.squeeze(dim + 1)
}

/// Max pooling of NCHW `x` with PyTorch's semantics (floor size, padding never selected):
/// the k² shifted, strided views of the −∞-padded input and their maximum. A tie sends the
/// gradient to every tied input (PyTorch picks one); after a ReLU ties are zeros, whose
/// gradient the ReLU drops either way.
pub fn max_pool2d(x: &Tensor, kernel: usize, stride: usize, padding: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let (ho, wo) = super::max_pool::output_size(h, w, kernel, stride, padding)?;
    // Rows and columns the views read: kernel − 1 + stride·out (may exceed the padded size).
    let (hn, wn) = (kernel - 1 + stride * ho, kernel - 1 + stride * wo);
    let xp = pad_const(x, 2, padding, hn.saturating_sub(h + padding), f64::NEG_INFINITY)?;
    let xp = pad_const(&xp, 3, padding, wn.saturating_sub(w + padding), f64::NEG_INFINITY)?;
    let mut views = Vec::with_capacity(kernel * kernel);
    for i in 0..kernel {
        let rows = strided(&xp, 2, i, stride, ho)?;
        for j in 0..kernel {
            views.push(strided(&rows, 3, j, stride, wo)?);
        }
    }
    Tensor::stack(&views, 4)?.max(4)
}

/// Grouped / strided / padded convolution through candle (cuDNN on CUDA) with the bias.
pub fn conv2d(x: &Tensor, w: &Tensor, b: Option<&Tensor>, stride: usize, padding: usize, groups: usize) -> Result<Tensor> {
    let y = x.conv2d(w, padding, stride, 1, groups)?;
    match b {
        Some(b) => y.broadcast_add(&per_axis(b, 4, 1)?),
        None => Ok(y),
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::{check_grads, seeded};
    use crate::{CandleOps, ConvGeom, Ops};
    use candle_core::{DType, Device, Result, Tensor, Var};

    fn var(shape: &[usize], seed: u64) -> Result<Var> {
        Var::from_tensor(&seeded(shape, seed, &Device::Cpu, DType::F64)?)
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
        (a.to_dtype(DType::F64)? - b.to_dtype(DType::F64)?)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()
    }

    /// The portable compositions (what CUDA and bf16 run) give the kernels' values and
    /// correct gradients, op by op, at odd sizes, strides and paddings.
    #[test]
    fn portable_ops_match_the_kernels_with_correct_gradients() -> Result<()> {
        let (k, p) = (CandleOps::eval(), CandleOps::eval().portable());
        let same = |a: Tensor, b: Tensor| -> Result<()> {
            let d = max_diff(&a, &b)?;
            assert!(d < 1e-10, "portable differs by {d}");
            Ok(())
        };
        let x = var(&[2, 4, 7, 5], 1)?;
        for (w_shape, g) in [
            ([4, 1, 3, 3], ConvGeom { stride: 1, padding: 1, groups: 4 }),
            ([4, 1, 3, 3], ConvGeom { stride: 2, padding: 1, groups: 4 }),
            ([3, 4, 1, 1], ConvGeom { stride: 1, padding: 0, groups: 1 }),
            ([3, 4, 2, 2], ConvGeom { stride: 2, padding: 0, groups: 1 }),
            ([3, 4, 3, 3], ConvGeom { stride: 2, padding: 1, groups: 1 }),
        ] {
            let (w, b) = (var(&w_shape, 2)?, var(&[w_shape[0]], 3)?);
            same(k.conv2d(&x, &w, Some(&b), g)?, p.conv2d(&x, &w, Some(&b), g)?)?;
            check_grads(&[&x, &w, &b], |v| p.conv2d(v[0], v[1], Some(v[2]), g))?;
        }
        let (w, b) = (var(&[4], 4)?, var(&[4], 5)?);
        same(k.layer_norm_channels(&x, &w, &b, 1e-6)?, p.layer_norm_channels(&x, &w, &b, 1e-6)?)?;
        check_grads(&[&x, &w, &b], |v| p.layer_norm_channels(v[0], v[1], v[2], 1e-6))?;
        let (w5, b5) = (var(&[5], 6)?, var(&[5], 7)?);
        same(k.layer_norm(&x, &w5, &b5, 1e-5)?, p.layer_norm(&x, &w5, &b5, 1e-5)?)?;
        check_grads(&[&x, &w5, &b5], |v| p.layer_norm(v[0], v[1], v[2], 1e-5))?;
        same(k.gelu(&x)?, p.gelu(&x)?)?;
        check_grads(&[&x], |v| p.gelu(v[0]))?;
        same(k.scale_channels(&x, &w)?, p.scale_channels(&x, &w)?)?;
        check_grads(&[&x, &w], |v| p.scale_channels(v[0], v[1]))?;
        for (kernel, stride, pad) in [(3, 2, 1), (2, 2, 0), (3, 1, 1), (3, 3, 0)] {
            same(k.max_pool2d(&x, kernel, stride, pad)?, p.max_pool2d(&x, kernel, stride, pad)?)?;
            check_grads(&[&x], |v| p.max_pool2d(v[0], kernel, stride, pad))?;
        }
        assert!(p.max_pool2d(&x, 3, 2, 2).is_err());
        Ok(())
    }

    /// Batch norm and attention already were compositions; in half precision their
    /// statistics and softmax run in f32 and stay close to the f32 results. (f16 here:
    /// candle's CPU matmul has no bf16; the code path is the same.)
    #[test]
    fn half_precision_ops_stay_close_to_f32() -> Result<()> {
        let ops = CandleOps::train(0);
        let dev = Device::Cpu;
        let x = (seeded(&[4, 6, 5, 5], 1, &dev, DType::F32)? * 3.0)?;
        let (w, b) = (seeded(&[6], 2, &dev, DType::F32)?, seeded(&[6], 3, &dev, DType::F32)?);
        let (rm, rv) = (Tensor::zeros(6, DType::F32, &dev)?, Tensor::ones(6, DType::F32, &dev)?);
        let bf = |t: &Tensor| t.to_dtype(DType::F16);
        let y32 = ops.batch_norm(&x, &w, &b, &rm, &rv, 1e-5, 0.1)?;
        let y16 = ops.batch_norm(&bf(&x)?, &bf(&w)?, &bf(&b)?, &rm, &rv, 1e-5, 0.1)?;
        assert_eq!(y16.dtype(), DType::F16);
        assert!(max_diff(&y32, &y16)? < 0.05);
        // The running statistics stay f32 and agree.
        let u = ops.take_buffer_updates();
        assert!(u.iter().all(|(_, t)| t.dtype() == DType::F32));
        assert!(max_diff(&u[0].1, &u[2].1)? < 0.02 && max_diff(&u[1].1, &u[3].1)? < 0.05);
        let qkv = seeded(&[2, 7, 24], 4, &dev, DType::F32)?;
        let a32 = ops.attention(&qkv, 2, 4, None)?;
        let a16 = ops.attention(&bf(&qkv)?, 2, 4, None)?;
        assert!(max_diff(&a32, &a16)? < 0.03);
        let ln32 = ops.layer_norm_channels(&x, &w, &b, 1e-6)?;
        let ln16 = ops.layer_norm_channels(&bf(&x)?, &bf(&w)?, &bf(&b)?, 1e-6)?;
        assert!(max_diff(&ln32, &ln16)? < 0.05);
        Ok(())
    }
}
