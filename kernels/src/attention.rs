//! Scaled dot-product attention fused per (sequence, head): softmax(q·kᵀ·s + b)·v as two
//! GEMMs and a softmax on one L×L block, and a backward that recomputes the block (nothing
//! but the inputs is kept) and returns dq, dk, dv from four GEMMs — and, with a bias (Swin's
//! relative-position bias plus shift mask), the score gradient summed per bias block.
//! Through candle the same is two batched matmuls, a broadcast add, a softmax op, their
//! backward with transposed copies, and a zero-initialised gradient accumulation for every
//! one of those steps.

use super::kernel::{dispatch, gemm, gemm_scaled, gemm_strided, Kernel, Mat};
use super::softmax::{softmax_grad_row, softmax_rows_in_place};
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Storage, Tensor, WithDType};
use rayon::prelude::*;

#[derive(Clone, Copy, Debug)]
pub(super) struct Dims {
    /// sequences × heads
    pub bh: usize,
    pub lq: usize,
    pub lk: usize,
    pub d: usize,
}

impl Dims {
    fn scale<T: WithDType>(&self) -> T {
        T::from_f64(1.0 / (self.d as f64).sqrt())
    }
}

/// Row strides (in elements) of one block's operands: q, k and v, the output o and its
/// gradient; the gradients dq, dk and dv are contiguous (L, d) blocks.
#[derive(Clone, Copy, Debug)]
pub(super) struct Strides {
    pub q: usize,
    pub kv: usize,
    pub o: usize,
}

impl Strides {
    /// Contiguous (L, d) blocks, k and v rows `kv` apart.
    fn blocks(d: usize, kv: usize) -> Strides {
        Strides { q: d, kv, o: d }
    }
}

/// A block's score scratch of `dm.lq × dm.lk`, reused across blocks: the GEMM overwrites
/// it, so it is only sized, not zeroed.
pub(super) fn scores<T: WithDType>(p: &mut Vec<T>, dm: Dims) -> &mut [T] {
    p.resize(dm.lq * dm.lk, T::zero());
    p
}

/// P = softmax(q·kᵀ·scale + bias) of one block, into `p` (lq × lk), which is only written.
pub(super) fn probabilities<T: WithDType>(q: &[T], k: &[T], st: Strides, bias: Option<&[T]>, dm: Dims, p: &mut [T]) {
    gemm_scaled(dm.lq, dm.lk, dm.d, p, Mat { data: q, rs: st.q as isize, cs: 1 }, Mat { data: k, rs: 1, cs: st.kv as isize }, false, dm.scale::<T>());
    if let Some(b) = bias {
        p.iter_mut().zip(b).for_each(|(v, &b)| *v += b);
    }
    softmax_rows_in_place(p, dm.lk);
}

/// o = P·v of one block, leaving P (from `probabilities`) in `p`.
#[allow(clippy::too_many_arguments)]
pub(super) fn forward_block<T: WithDType>(q: &[T], k: &[T], v: &[T], st: Strides, bias: Option<&[T]>, dm: Dims, p: &mut [T], o: &mut [T]) {
    probabilities(q, k, st, bias, dm, p);
    gemm_strided(dm.lq, dm.d, dm.lk, o, st.o, Mat { data: p, rs: dm.lk as isize, cs: 1 }, Mat { data: v, rs: st.kv as isize, cs: 1 }, false, T::one());
}

/// The gradients of one block given its probabilities `p` (kept from the forward or
/// recomputed): dq, dk, dv (contiguous), and in `dp` the score gradient
/// dS = P ⊙ (dP − Σ dP·P) before the scale, which is the bias gradient.
#[allow(clippy::too_many_arguments)]
pub(super) fn backward_block<T: WithDType>(q: &[T], k: &[T], v: &[T], dout: &[T], st: Strides, p: &[T], dm: Dims, dp: &mut Vec<T>, dq: &mut [T], dk: &mut [T], dv: &mut [T]) {
    let dom = Mat { data: dout, rs: st.o as isize, cs: 1 };
    // dv = pᵀ·do, dp = do·vᵀ
    gemm(dm.lk, dm.d, dm.lq, dv, Mat { data: p, rs: 1, cs: dm.lk as isize }, dom, false);
    dp.resize(dm.lq * dm.lk, T::zero());
    gemm(dm.lq, dm.lk, dm.d, dp, dom, Mat { data: v, rs: 1, cs: st.kv as isize }, false);
    for (dsr, pr) in dp.chunks_exact_mut(dm.lk).zip(p.chunks_exact(dm.lk)) {
        softmax_grad_row(pr, dsr);
    }
    // dq = dS·k·scale, dk = dSᵀ·q·scale, the scale applied by the GEMMs so that dp keeps
    // the unscaled bias gradient.
    let scale = dm.scale::<T>();
    gemm_scaled(dm.lq, dm.d, dm.lk, dq, Mat { data: dp, rs: dm.lk as isize, cs: 1 }, Mat { data: k, rs: st.kv as isize, cs: 1 }, false, scale);
    gemm_scaled(dm.lk, dm.d, dm.lq, dk, Mat { data: dp, rs: 1, cs: dm.lk as isize }, Mat { data: q, rs: st.q as isize, cs: 1 }, false, scale);
}

/// Which bias block each (sequence, head) adds: sequence s uses block s mod g.
#[derive(Clone, Copy, Debug)]
pub(super) struct BiasLayout {
    pub heads: usize,
    pub g: usize,
}

impl BiasLayout {
    pub(super) fn block<'a, T>(&self, bias: &'a [T], bh: usize, dm: Dims) -> &'a [T] {
        let b = ((bh / self.heads) % self.g) * self.heads + bh % self.heads;
        &bias[b * dm.lq * dm.lk..][..dm.lq * dm.lk]
    }
}

/// Without a bias (q, k, v) → o, all (bh, L, d) contiguous; with one (q, [k | v]
/// concatenated on the last axis, bias) → o, because candle's custom ops take at most three
/// inputs.
struct AttentionFwd {
    dm: Dims,
    bias: Option<BiasLayout>,
}

/// (q, [k | v], do) → [dq, dk, dv], and with a bias also dS. The bias is held here, not
/// passed as an input: this op has no gradient of its own, and inputs are at most three.
struct AttentionBwd {
    dm: Dims,
    bias: Option<(BiasLayout, Tensor)>,
}

impl Kernel for AttentionFwd {
    const NAME: &'static str = "attention";
    fn run<T: WithDType>(&self, i: &[&[T]]) -> Vec<T> {
        let dm = self.dm;
        // k and v rows are `rs` apart: separate tensors, or interleaved in [k | v].
        let (k, v, rs) = match self.bias {
            None => (i[1], i[2], dm.d),
            Some(_) => (i[1], &i[1][dm.d..], 2 * dm.d),
        };
        let (nq, span) = (dm.lq * dm.d, (dm.lk - 1) * rs + dm.d);
        let mut o = vec![T::zero(); dm.bh * nq];
        o.par_chunks_mut(nq).enumerate().for_each_init(Vec::new, |p, (h, o)| {
            let bias = self.bias.map(|l| l.block(i[2], h, dm));
            forward_block(&i[0][h * nq..][..nq], &k[h * dm.lk * rs..][..span], &v[h * dm.lk * rs..][..span], Strides::blocks(dm.d, rs), bias, dm, scores(p, dm), o);
        });
        o
    }
}

impl Kernel for AttentionBwd {
    const NAME: &'static str = "attention grad";
    fn run<T: WithDType>(&self, i: &[&[T]]) -> Vec<T> {
        let (q, kv, dout, dm) = (i[0], i[1], i[2], self.dm);
        let layout = self.bias.as_ref().map(|(l, _)| *l);
        let (nq, nk) = (dm.lq * dm.d, dm.lk * dm.d);
        let ns = if layout.is_some() { dm.lq * dm.lk } else { 0 };
        let mut out = vec![T::zero(); dm.bh * (nq + 2 * nk + ns)];
        let (dq, rest) = out.split_at_mut(dm.bh * nq);
        let (dk, rest) = rest.split_at_mut(dm.bh * nk);
        let (dv, ds) = rest.split_at_mut(dm.bh * nk);
        // One block's gradients; leaves its score gradient in `dp`.
        let block = |h: usize, (p, dp): &mut (Vec<T>, Vec<T>), dq: &mut [T], dk: &mut [T], dv: &mut [T]| {
            let (qh, kvh, doh) = (&q[h * nq..][..nq], &kv[h * 2 * nk..][..2 * nk], &dout[h * nq..][..nq]);
            let bias = layout.map(|l| l.block(i[3], h, dm));
            let st = Strides::blocks(dm.d, 2 * dm.d);
            probabilities(qh, kvh, st, bias, dm, scores(p, dm));
            backward_block(qh, kvh, &kvh[dm.d..], doh, st, p, dm, dp, dq, dk, dv);
        };
        let grads = dq.par_chunks_mut(nq).zip(dk.par_chunks_mut(nk)).zip(dv.par_chunks_mut(nk)).enumerate();
        let scratch = || (Vec::new(), Vec::new());
        if ns == 0 {
            grads.for_each_init(scratch, |s, (h, ((dq, dk), dv))| block(h, s, dq, dk, dv));
        } else {
            grads.zip(ds.par_chunks_mut(ns)).for_each_init(scratch, |s, ((h, ((dq, dk), dv)), ds)| {
                block(h, s, dq, dk, dv);
                ds.copy_from_slice(&s.1);
            });
        }
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

    /// Without a bias the inputs are (q, k, v); with one, (q, [k | v], bias).
    fn bwd(&self, q: &Tensor, a2: &Tensor, a3: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dm = self.dm;
        let (kv, bias) = match self.bias {
            None => (Tensor::cat(&[a2, a3], 3)?, None),
            Some(l) => (a2.clone(), Some((l, a3.contiguous()?))),
        };
        let all = q.apply_op3_no_bwd(&kv, &grad.contiguous()?, &AttentionBwd { dm, bias })?;
        let (n, heads) = (q.dim(0)?, q.dim(1)?);
        let (nq, nk) = (dm.bh * dm.lq * dm.d, dm.bh * dm.lk * dm.d);
        let dq = all.narrow(0, 0, nq)?.reshape(q.shape())?;
        let dk = all.narrow(0, nq, nk)?.reshape((n, heads, dm.lk, dm.d))?;
        let dv = all.narrow(0, nq + nk, nk)?.reshape((n, heads, dm.lk, dm.d))?;
        let Some(l) = self.bias else { return Ok((Some(dq), Some(dk), Some(dv))) };
        // Sequences s and s + g share a bias block: its gradient is their sum.
        let ds = all.narrow(0, nq + 2 * nk, dm.bh * dm.lq * dm.lk)?;
        let dbias = ds.reshape((n / l.g, l.g, heads, dm.lq, dm.lk))?.sum(0)?;
        Ok((Some(dq), Some(Tensor::cat(&[dk, dv], 3)?), Some(dbias)))
    }
}

impl CustomOp3 for AttentionBwd {
    fn name(&self) -> &'static str {
        "attention-backward"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let dm = self.dm;
        let scores = if self.bias.is_some() { dm.lq * dm.lk } else { 0 };
        let shape = Shape::from(dm.bh * (dm.lq * dm.d + 2 * dm.lk * dm.d + scores));
        let Some((_, bias)) = &self.bias else { return Ok((dispatch(self, &[(s1, l1), (s2, l2), (s3, l3)])?, shape)) };
        let (storage, layout) = bias.storage_and_layout();
        let Storage::Cpu(b) = &*storage else { candle_core::bail!("attention: the bias is not on the CPU") };
        Ok((dispatch(self, &[(s1, l1), (s2, l2), (s3, l3), (b, layout)])?, shape))
    }
}

/// softmax(q·kᵀ/√d)·v for q (N, heads, Lq, d), k and v (N, heads, Lk, d) on the CPU.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    let dm = dims(q, k, v)?;
    super::tape::apply3([q, k, v], [&q.contiguous()?, &k.contiguous()?, &v.contiguous()?], AttentionFwd { dm, bias: None })
}

/// softmax(q·kᵀ/√d + bias)·v on the CPU for q (N, heads, Lq, d), k and v (N, heads, Lk, d)
/// and bias (G, heads, Lq, Lk) with G dividing N: sequence s adds bias block s mod G (Swin:
/// G windows, each with its shift mask).
pub fn attention_biased(q: &Tensor, k: &Tensor, v: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let dm = dims(q, k, v)?;
    let (n, h) = (q.dim(0)?, q.dim(1)?);
    let g = bias.dim(0)?;
    if bias.dims() != [g, h, dm.lq, dm.lk] || g == 0 || n % g != 0 {
        candle_core::bail!("attention: bias {:?} does not fit q {:?} and k {:?}", bias.dims(), q.dims(), k.dims())
    }
    let kv = super::tape::cat(&[k, v], 3)?;
    super::tape::apply3([q, &kv, bias], [&q.contiguous()?, &kv, &bias.contiguous()?], AttentionFwd { dm, bias: Some(BiasLayout { heads: h, g }) })
}

fn dims(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Dims> {
    let (n, h, lq, d) = q.dims4()?;
    let (kn, kh, lk, kd) = k.dims4()?;
    if (kn, kh, kd) != (n, h, d) || k.dims() != v.dims() || lk == 0 {
        candle_core::bail!("attention: q {:?}, k {:?} and v {:?} do not fit", q.dims(), k.dims(), v.dims())
    }
    Ok(Dims { bh: n * h, lq, lk, d })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{check_grads, seeded};
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
