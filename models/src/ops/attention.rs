//! Scaled dot-product attention without bias, fused per (sequence, head): softmax(q·kᵀ·s)·v
//! as two GEMMs and a softmax on one L×L block, and a backward that recomputes the block
//! (nothing but q, k, v is kept) and returns dq, dk, dv from four GEMMs. Through candle the
//! same is two batched matmuls, a softmax op, their backward with transposed copies, and a
//! zero-initialised gradient accumulation for every one of those steps.

use super::kernel::{dispatch, gemm, Kernel, Mat};
use super::softmax::{softmax_grad_row, softmax_rows_in_place};
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, WithDType};
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

/// P = softmax(q·kᵀ·scale) of one block; k rows are `k_rs` apart.
fn probabilities<T: WithDType>(q: &[T], k: &[T], k_rs: usize, dm: Dims, p: &mut Vec<T>) {
    p.clear();
    p.resize(dm.lq * dm.lk, T::zero());
    gemm(dm.lq, dm.lk, dm.d, p, Mat { data: q, rs: dm.d as isize, cs: 1 }, Mat { data: k, rs: 1, cs: k_rs as isize }, false);
    let scale = dm.scale::<T>();
    p.iter_mut().for_each(|v| *v *= scale);
    softmax_rows_in_place(p, dm.lk);
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
            probabilities(qh, kh, dm.d, dm, p);
            gemm(dm.lq, dm.d, dm.lk, o, Mat { data: p, rs: dm.lk as isize, cs: 1 }, Mat { data: vh, rs: dm.d as isize, cs: 1 }, false);
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
        let scale = dm.scale::<T>();
        dq.par_chunks_mut(nq).zip(dk.par_chunks_mut(nk).zip(dv.par_chunks_mut(nk))).enumerate().for_each_init(
            || (Vec::new(), Vec::new()),
            |(p, dp), (h, (dq, (dk, dv)))| {
                let (qh, kvh, doh) = (&q[h * nq..][..nq], &kv[h * 2 * nk..][..2 * nk], &dout[h * nq..][..nq]);
                let (kh, vh) = (kvh, &kvh[dm.d..]);
                let row = 2 * dm.d;
                probabilities(qh, kh, row, dm, p);
                let dom = Mat { data: doh, rs: dm.d as isize, cs: 1 };
                // dv = pᵀ·do, dp = do·vᵀ
                gemm(dm.lk, dm.d, dm.lq, dv, Mat { data: p, rs: 1, cs: dm.lk as isize }, dom, false);
                dp.clear();
                dp.resize(dm.lq * dm.lk, T::zero());
                gemm(dm.lq, dm.lk, dm.d, dp, dom, Mat { data: vh, rs: 1, cs: row as isize }, false);
                // ds = p ⊙ (dp − Σ dp·p) · scale, in place of dp
                for (dsr, pr) in dp.chunks_exact_mut(dm.lk).zip(p.chunks_exact(dm.lk)) {
                    softmax_grad_row(pr, dsr);
                    dsr.iter_mut().for_each(|v| *v *= scale);
                }
                // dq = ds·k, dk = dsᵀ·q
                gemm(dm.lq, dm.d, dm.lk, dq, Mat { data: dp, rs: dm.lk as isize, cs: 1 }, Mat { data: kh, rs: row as isize, cs: 1 }, false);
                gemm(dm.lk, dm.d, dm.lq, dk, Mat { data: dp, rs: 1, cs: dm.lk as isize }, Mat { data: qh, rs: dm.d as isize, cs: 1 }, false);
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
}
