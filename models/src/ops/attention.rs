//! Scaled dot-product attention fused per (sequence, head): softmax(q·kᵀ·s + b)·v as two
//! GEMMs and a softmax on one L×L block, and a backward that recomputes the block (nothing
//! but the inputs is kept) and returns dq, dk, dv from four GEMMs — and, with a bias (Swin's
//! relative-position bias plus shift mask), the score gradient summed per bias block.
//! Through candle the same is two batched matmuls, a broadcast add, a softmax op, their
//! backward with transposed copies, and a zero-initialised gradient accumulation for every
//! one of those steps.

use super::kernel::{dispatch, gemm, Kernel, Mat};
use super::softmax::{softmax_grad_row, softmax_rows_in_place};
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Storage, Tensor, WithDType};
use rayon::prelude::*;

#[derive(Clone, Copy, Debug)]
struct Dims {
    /// sequences × heads
    bh: usize,
    lq: usize,
    lk: usize,
    d: usize,
}

impl Dims {
    fn scale<T: WithDType>(&self) -> T {
        T::from_f64(1.0 / (self.d as f64).sqrt())
    }
}

/// P = softmax(q·kᵀ·scale + bias) of one block; k rows are `k_rs` apart.
fn probabilities<T: WithDType>(q: &[T], k: &[T], k_rs: usize, bias: Option<&[T]>, dm: Dims, p: &mut Vec<T>) {
    p.clear();
    p.resize(dm.lq * dm.lk, T::zero());
    gemm(dm.lq, dm.lk, dm.d, p, Mat { data: q, rs: dm.d as isize, cs: 1 }, Mat { data: k, rs: 1, cs: k_rs as isize }, false);
    let scale = dm.scale::<T>();
    p.iter_mut().for_each(|v| *v *= scale);
    if let Some(b) = bias {
        p.iter_mut().zip(b).for_each(|(v, &b)| *v += b);
    }
    softmax_rows_in_place(p, dm.lk);
}

/// o = P·v of one block, P from `probabilities`; k and v rows are `kv_rs` apart.
#[allow(clippy::too_many_arguments)]
fn forward_block<T: WithDType>(q: &[T], k: &[T], v: &[T], kv_rs: usize, bias: Option<&[T]>, dm: Dims, p: &mut Vec<T>, o: &mut [T]) {
    probabilities(q, k, kv_rs, bias, dm, p);
    gemm(dm.lq, dm.d, dm.lk, o, Mat { data: p, rs: dm.lk as isize, cs: 1 }, Mat { data: v, rs: kv_rs as isize, cs: 1 }, false);
}

/// The gradients of one block: dq, dk, dv (contiguous), and in `dp` the score gradient
/// dS = P ⊙ (dP − Σ dP·P) before the scale, which is the bias gradient. k and v rows are
/// `kv_rs` apart.
#[allow(clippy::too_many_arguments)]
fn backward_block<T: WithDType>(q: &[T], k: &[T], v: &[T], kv_rs: usize, dout: &[T], bias: Option<&[T]>, dm: Dims, p: &mut Vec<T>, dp: &mut Vec<T>, dq: &mut [T], dk: &mut [T], dv: &mut [T]) {
    probabilities(q, k, kv_rs, bias, dm, p);
    let dom = Mat { data: dout, rs: dm.d as isize, cs: 1 };
    // dv = pᵀ·do, dp = do·vᵀ
    gemm(dm.lk, dm.d, dm.lq, dv, Mat { data: p, rs: 1, cs: dm.lk as isize }, dom, false);
    dp.clear();
    dp.resize(dm.lq * dm.lk, T::zero());
    gemm(dm.lq, dm.lk, dm.d, dp, dom, Mat { data: v, rs: 1, cs: kv_rs as isize }, false);
    for (dsr, pr) in dp.chunks_exact_mut(dm.lk).zip(p.chunks_exact(dm.lk)) {
        softmax_grad_row(pr, dsr);
    }
    // dq = dS·k·scale, dk = dSᵀ·q·scale: the scale goes into a copy of dS (p, no longer
    // needed), so that dp keeps the unscaled bias gradient.
    let scale = dm.scale::<T>();
    p.iter_mut().zip(dp.iter()).for_each(|(s, &d)| *s = d * scale);
    gemm(dm.lq, dm.d, dm.lk, dq, Mat { data: p, rs: dm.lk as isize, cs: 1 }, Mat { data: k, rs: kv_rs as isize, cs: 1 }, false);
    gemm(dm.lk, dm.d, dm.lq, dk, Mat { data: p, rs: 1, cs: dm.lk as isize }, Mat { data: q, rs: dm.d as isize, cs: 1 }, false);
}

/// (q, k, v) → o, all (bh, L, d) contiguous.
struct AttentionFwd {
    dm: Dims,
}

/// (q, [k | v] concatenated on the last axis, do) → [dq, dk, dv].
struct AttentionBwd {
    dm: Dims,
}

impl Kernel for AttentionFwd {
    const NAME: &'static str = "attention";
    fn run<T: WithDType>(&self, i: &[&[T]]) -> Vec<T> {
        let (q, k, v, dm) = (i[0], i[1], i[2], self.dm);
        let mut o = vec![T::zero(); dm.bh * dm.lq * dm.d];
        o.par_chunks_mut(dm.lq * dm.d).enumerate().for_each_init(Vec::new, |p, (h, o)| {
            let (qh, kh, vh) = (&q[h * dm.lq * dm.d..][..dm.lq * dm.d], &k[h * dm.lk * dm.d..][..dm.lk * dm.d], &v[h * dm.lk * dm.d..][..dm.lk * dm.d]);
            forward_block(qh, kh, vh, dm.d, None, dm, p, o);
        });
        o
    }
}

impl Kernel for AttentionBwd {
    const NAME: &'static str = "attention grad";
    fn run<T: WithDType>(&self, i: &[&[T]]) -> Vec<T> {
        let (q, kv, dout, dm) = (i[0], i[1], i[2], self.dm);
        let (nq, nk) = (dm.lq * dm.d, dm.lk * dm.d);
        let mut out = vec![T::zero(); dm.bh * (nq + 2 * nk)];
        let (dq, rest) = out.split_at_mut(dm.bh * nq);
        let (dk, dv) = rest.split_at_mut(dm.bh * nk);
        dq.par_chunks_mut(nq).zip(dk.par_chunks_mut(nk).zip(dv.par_chunks_mut(nk))).enumerate().for_each_init(
            || (Vec::new(), Vec::new()),
            |(p, dp), (h, (dq, (dk, dv)))| {
                let (qh, kvh, doh) = (&q[h * nq..][..nq], &kv[h * 2 * nk..][..2 * nk], &dout[h * nq..][..nq]);
                backward_block(qh, kvh, &kvh[dm.d..], 2 * dm.d, doh, None, dm, p, dp, dq, dk, dv);
            },
        );
        out
    }
}

impl CustomOp3 for AttentionFwd {
    fn name(&self) -> &'static str {
        "attention"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok((dispatch(self, &[(s1, l1), (s2, l2), (s3, l3)])?, l1.shape().clone()))
    }

    fn bwd(&self, q: &Tensor, k: &Tensor, v: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dm = self.dm;
        let kv = Tensor::cat(&[k, v], 3)?;
        let all = q.apply_op3_no_bwd(&kv, &grad.contiguous()?, &AttentionBwd { dm })?;
        let (nq, nk) = (dm.bh * dm.lq * dm.d, dm.bh * dm.lk * dm.d);
        let dq = all.narrow(0, 0, nq)?.reshape(q.shape())?;
        let dk = all.narrow(0, nq, nk)?.reshape(k.shape())?;
        let dv = all.narrow(0, nq + nk, nk)?.reshape(v.shape())?;
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

impl CustomOp3 for AttentionBwd {
    fn name(&self) -> &'static str {
        "attention-backward"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let dm = self.dm;
        Ok((dispatch(self, &[(s1, l1), (s2, l2), (s3, l3)])?, Shape::from(dm.bh * (dm.lq + 2 * dm.lk) * dm.d)))
    }
}

/// softmax(q·kᵀ/√d)·v for q (N, heads, Lq, d), k and v (N, heads, Lk, d) on the CPU.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    let (n, h, lq, d) = q.dims4()?;
    let (kn, kh, lk, kd) = k.dims4()?;
    if (kn, kh, kd) != (n, h, d) || k.dims() != v.dims() {
        candle_core::bail!("attention: q {:?}, k {:?} and v {:?} do not fit", q.dims(), k.dims(), v.dims())
    }
    let dm = Dims { bh: n * h, lq, lk, d };
    q.contiguous()?.apply_op3(&k.contiguous()?, &v.contiguous()?, AttentionFwd { dm })
}

/// Which bias block each (sequence, head) adds: sequence s uses block s mod g.
#[derive(Clone, Copy, Debug)]
struct BiasLayout {
    heads: usize,
    g: usize,
}

impl BiasLayout {
    fn block<'a, T>(&self, bias: &'a [T], bh: usize, dm: Dims) -> Option<&'a [T]> {
        let b = ((bh / self.heads) % self.g) * self.heads + bh % self.heads;
        Some(&bias[b * dm.lq * dm.lk..][..dm.lq * dm.lk])
    }
}

/// (q, [k | v] concatenated on the last axis, bias) → o.
struct BiasedFwd {
    dm: Dims,
    layout: BiasLayout,
}

/// (q, [k | v], do) → [dq, dk, dv, dS], with the bias held here: the op has no gradient
/// of its own, and candle's custom ops take at most three inputs.
struct BiasedBwd {
    dm: Dims,
    layout: BiasLayout,
    bias: Tensor,
}

impl Kernel for BiasedFwd {
    const NAME: &'static str = "biased attention";
    fn run<T: WithDType>(&self, i: &[&[T]]) -> Vec<T> {
        let (q, kv, bias, dm) = (i[0], i[1], i[2], self.dm);
        let (nq, nk) = (dm.lq * dm.d, dm.lk * dm.d);
        let mut o = vec![T::zero(); dm.bh * nq];
        o.par_chunks_mut(nq).enumerate().for_each_init(Vec::new, |p, (h, o)| {
            let kvh = &kv[h * 2 * nk..][..2 * nk];
            forward_block(&q[h * nq..][..nq], kvh, &kvh[dm.d..], 2 * dm.d, self.layout.block(bias, h, dm), dm, p, o);
        });
        o
    }
}

impl Kernel for BiasedBwd {
    const NAME: &'static str = "biased attention grad";
    fn run<T: WithDType>(&self, i: &[&[T]]) -> Vec<T> {
        let (q, kv, dout, bias, dm) = (i[0], i[1], i[2], i[3], self.dm);
        let (nq, nk, ns) = (dm.lq * dm.d, dm.lk * dm.d, dm.lq * dm.lk);
        let mut out = vec![T::zero(); dm.bh * (nq + 2 * nk + ns)];
        let (dq, rest) = out.split_at_mut(dm.bh * nq);
        let (dk, rest) = rest.split_at_mut(dm.bh * nk);
        let (dv, ds) = rest.split_at_mut(dm.bh * nk);
        let grads = dq.par_chunks_mut(nq).zip(dk.par_chunks_mut(nk)).zip(dv.par_chunks_mut(nk).zip(ds.par_chunks_mut(ns)));
        grads.enumerate().for_each_init(
            || (Vec::new(), Vec::new()),
            |(p, dp), (h, ((dq, dk), (dv, ds)))| {
                let (qh, kvh, doh) = (&q[h * nq..][..nq], &kv[h * 2 * nk..][..2 * nk], &dout[h * nq..][..nq]);
                backward_block(qh, kvh, &kvh[dm.d..], 2 * dm.d, doh, self.layout.block(bias, h, dm), dm, p, dp, dq, dk, dv);
                ds.copy_from_slice(dp);
            },
        );
        out
    }
}

impl CustomOp3 for BiasedFwd {
    fn name(&self) -> &'static str {
        "biased-attention"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let dm = self.dm;
        let (n, heads) = (dm.bh / self.layout.heads, self.layout.heads);
        Ok((dispatch(self, &[(s1, l1), (s2, l2), (s3, l3)])?, Shape::from((n, heads, dm.lq, dm.d))))
    }

    fn bwd(&self, q: &Tensor, kv: &Tensor, bias: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dm, layout) = (self.dm, self.layout);
        let op = BiasedBwd { dm, layout, bias: bias.contiguous()? };
        let all = q.apply_op3_no_bwd(kv, &grad.contiguous()?, &op)?;
        let (n, heads) = (dm.bh / layout.heads, layout.heads);
        let (nq, nk) = (dm.bh * dm.lq * dm.d, dm.bh * dm.lk * dm.d);
        let dq = all.narrow(0, 0, nq)?.reshape(q.shape())?;
        let dk = all.narrow(0, nq, nk)?.reshape((n, heads, dm.lk, dm.d))?;
        let dv = all.narrow(0, nq + nk, nk)?.reshape((n, heads, dm.lk, dm.d))?;
        let ds = all.narrow(0, nq + 2 * nk, dm.bh * dm.lq * dm.lk)?;
        // Sequences s and s + g share a bias block: its gradient is their sum.
        let dbias = ds.reshape((n / layout.g, layout.g, heads, dm.lq, dm.lk))?.sum(0)?;
        Ok((Some(dq), Some(Tensor::cat(&[dk, dv], 3)?), Some(dbias)))
    }
}

impl CustomOp3 for BiasedBwd {
    fn name(&self) -> &'static str {
        "biased-attention-backward"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let dm = self.dm;
        let (storage, layout) = self.bias.storage_and_layout();
        let Storage::Cpu(bias) = &*storage else { candle_core::bail!("biased attention: the bias is not on the CPU") };
        let out = dispatch(self, &[(s1, l1), (s2, l2), (s3, l3), (bias, layout)])?;
        Ok((out, Shape::from(dm.bh * (dm.lq * dm.d + 2 * dm.lk * dm.d + dm.lq * dm.lk))))
    }
}

/// softmax(q·kᵀ/√d + bias)·v on the CPU for q (N, heads, Lq, d), k and v (N, heads, Lk, d)
/// and bias (G, heads, Lq, Lk) with G dividing N: sequence s adds bias block s mod G (Swin:
/// G windows, each with its shift mask).
pub fn attention_biased(q: &Tensor, k: &Tensor, v: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let (n, h, lq, d) = q.dims4()?;
    let (kn, kh, lk, kd) = k.dims4()?;
    let g = bias.dim(0)?;
    if (kn, kh, kd) != (n, h, d) || k.dims() != v.dims() || bias.dims() != [g, h, lq, lk] || g == 0 || n % g != 0 {
        candle_core::bail!("attention: q {:?}, k {:?}, v {:?} and bias {:?} do not fit", q.dims(), k.dims(), v.dims(), bias.dims())
    }
    let dm = Dims { bh: n * h, lq, lk, d };
    let kv = Tensor::cat(&[k, v], 3)?;
    q.contiguous()?.apply_op3(&kv, &bias.contiguous()?, BiasedFwd { dm, layout: BiasLayout { heads: h, g } })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_util::{check_grads, seeded};
    use candle_core::{DType, Device, Var, D};

    #[test]
    fn matches_composition_with_correct_gradients() -> Result<()> {
        let dev = Device::Cpu;
        // Self-attention and PVT-style fewer keys than queries.
        for (lq, lk) in [(7, 7), (9, 4)] {
            let q = (seeded(&[2, 3, lq, 5], 1, &dev, DType::F32)? * 2.0)?;
            let k = (seeded(&[2, 3, lk, 5], 2, &dev, DType::F32)? * 2.0)?;
            let v = seeded(&[2, 3, lk, 5], 3, &dev, DType::F32)?;
            let p = candle_nn::ops::softmax(&(q.matmul(&k.t()?)? / 5f64.sqrt())?, D::Minus1)?;
            let d = (attention(&q, &k, &v)? - p.matmul(&v)?)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
            assert!(d < 1e-5, "{d}");
            let vars = [seeded(&[2, 2, lq, 3], 4, &dev, DType::F64)?, seeded(&[2, 2, lk, 3], 5, &dev, DType::F64)?, seeded(&[2, 2, lk, 3], 6, &dev, DType::F64)?];
            let vars = vars.iter().map(|t| Var::from_tensor(&(t * 1.5)?)).collect::<Result<Vec<_>>>()?;
            check_grads(&[&vars[0], &vars[1], &vars[2]], |v| attention(v[0], v[1], v[2]))?;
        }
        Ok(())
    }

    #[test]
    fn biased_matches_composition_with_correct_gradients() -> Result<()> {
        let dev = Device::Cpu;
        // One bias for all sequences (Swin without shift) and one per window pair.
        for (n, g) in [(2, 1), (4, 2)] {
            let (h, l, d) = (3, 7, 5);
            let q = (seeded(&[n, h, l, d], 1, &dev, DType::F32)? * 2.0)?;
            let k = (seeded(&[n, h, l, d], 2, &dev, DType::F32)? * 2.0)?;
            let v = seeded(&[n, h, l, d], 3, &dev, DType::F32)?;
            let b = (seeded(&[g, h, l, l], 4, &dev, DType::F32)? * 3.0)?;
            let scores = (q.matmul(&k.t()?)? / (d as f64).sqrt())?;
            let scores = scores.reshape((n / g, g, h, l, l))?.broadcast_add(&b)?.reshape((n, h, l, l))?;
            let want = candle_nn::ops::softmax(&scores, D::Minus1)?.matmul(&v)?;
            let diff = (attention_biased(&q, &k, &v, &b)? - want)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
            assert!(diff < 1e-5, "{diff}");
            let shapes: [&[usize]; 4] = [&[n, 2, 4, 3], &[n, 2, 4, 3], &[n, 2, 4, 3], &[g, 2, 4, 4]];
            let vars = shapes.iter().enumerate().map(|(i, s)| Var::from_tensor(&(seeded(s, 10 + i as u64, &dev, DType::F64)? * 1.5)?)).collect::<Result<Vec<_>>>()?;
            check_grads(&[&vars[0], &vars[1], &vars[2], &vars[3]], |v| attention_biased(v[0], v[1], v[2], v[3]))?;
        }
        Ok(())
    }
}
