//! Self-attention on the packed projection: qkv (N, L, 3·H·d) as the qkv linear layer
//! writes it → o (N, L, H·d) as the output projection reads it, and the backward's dqkv in
//! the same packed layout. The block kernels of [`super::attention`] read q, k and v with
//! the packed row stride, so heads are never split out into copies nor merged back: that
//! was four full copies of qkv or o per block (forward and backward), 11 % of the
//! attention's time in DeiT.

use super::attention::{backward_block, forward_block, probabilities, scores, BiasLayout, Dims, Strides};
use super::kernel::{add_in_order, dispatch, split, written, Kernel};
use super::tape;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Storage, Tensor, WithDType};
use rayon::prelude::*;
use std::mem::MaybeUninit;

#[derive(Clone, Copy, Debug)]
struct Packed {
    n: usize,
    l: usize,
    heads: usize,
    d: usize,
    bias: Option<BiasLayout>,
}

impl Packed {
    fn dims(&self) -> Dims {
        Dims { bh: self.n * self.heads, lq: self.l, lk: self.l, d: self.d }
    }

    /// Elements per token of o (H·d) and of qkv (3·H·d).
    fn widths(&self) -> (usize, usize) {
        (self.heads * self.d, 3 * self.heads * self.d)
    }

    fn strides(&self) -> Strides {
        let (hd, row) = self.widths();
        Strides { q: row, kv: row, o: hd }
    }

    fn bias_block<'a, T>(&self, bias: &'a [T], s: usize, h: usize) -> Option<&'a [T]> {
        self.bias.map(|b| b.block(bias, s * self.heads + h, self.dims()))
    }

    /// Elements of P: one L×L block per sequence and head.
    fn probs(&self) -> usize {
        self.n * self.heads * self.l * self.l
    }
}

/// (qkv, bias or an empty tensor) → o; when `keep`, the probabilities P of every (sequence,
/// head) block follow o in the same buffer, for the backward to reuse.
struct PackedFwd {
    pk: Packed,
    keep: bool,
}
/// (qkv, do, bias or an empty tensor) → [dqkv, and with a bias its gradient (G, heads, L, L)].
/// With the forward's P, held here because inputs are at most three, P is not recomputed.
struct PackedBwd {
    pk: Packed,
    p: Option<Tensor>,
}

impl Kernel for PackedFwd {
    const NAME: &'static str = "attention";
    fn run<T: WithDType>(&self, i: &[&[T]]) -> Vec<T> {
        let (pk, qkv) = (self.pk, i[0]);
        let ((hd, row), st, dm, ls) = (pk.widths(), pk.strides(), pk.dims(), pk.l * pk.l);
        let no = pk.n * pk.l * hd;
        written(no + if self.keep { pk.probs() } else { 0 }, |all| {
            // SAFETY: MaybeUninit<T> has T's layout, and nothing reads an element before it is
            // written: each head's GEMM writes its d columns of every row of o, and the
            // score GEMM every element of a kept P block before the softmax reads it.
            let all = unsafe { &mut *(all as *mut [MaybeUninit<T>] as *mut [T]) };
            let (o, kept) = all.split_at_mut(no);
            let seq = |p: &mut Vec<T>, s: usize, o: &mut [T], kept: &mut [T]| {
                let x = &qkv[s * pk.l * row..][..pk.l * row];
                for h in 0..pk.heads {
                    let (q, k, v) = (&x[h * pk.d..], &x[hd + h * pk.d..], &x[2 * hd + h * pk.d..]);
                    let p = if kept.is_empty() { scores(p, dm) } else { &mut kept[h * ls..][..ls] };
                    forward_block(q, k, v, st, pk.bias_block(i[1], s, h), dm, p, &mut o[h * pk.d..]);
                }
            };
            // One task per sequence: its rows of o, and its heads' P blocks, are contiguous.
            let os = o.par_chunks_mut(pk.l * hd).enumerate();
            if self.keep {
                os.zip(kept.par_chunks_mut(pk.heads * ls)).for_each_init(Vec::new, |p, ((s, o), kept)| seq(p, s, o, kept));
            } else {
                os.for_each_init(Vec::new, |p, (s, o)| seq(p, s, o, &mut []));
            }
        })
    }
}

impl Kernel for PackedBwd {
    const NAME: &'static str = "attention grad";
    fn run<T: WithDType>(&self, i: &[&[T]]) -> Vec<T> {
        let (pk, qkv, dout, kept) = (self.pk, i[0], i[1], i.get(3));
        let ((hd, row), st, dm, d) = (pk.widths(), pk.strides(), pk.dims(), pk.d);
        let ls = pk.l * pk.l;
        // The bias gradient, (G, heads, L, L): block j sums dS of the sequences s ≡ j mod G.
        let nb = pk.bias.map_or(0, |b| b.g * pk.heads * ls);
        written(pk.n * pk.l * row + nb, |out| {
            let (dqkv, dbias) = out.split_at_mut(pk.n * pk.l * row);
            let seq = |s: usize, (p, dp, g): &mut (Vec<T>, Vec<T>, Vec<T>), dx: &mut [MaybeUninit<T>], db: &mut [T]| {
                let x = &qkv[s * pk.l * row..][..pk.l * row];
                let dy = &dout[s * pk.l * hd..][..pk.l * hd];
                for h in 0..pk.heads {
                    let (q, k, v) = (&x[h * d..], &x[hd + h * d..], &x[2 * hd + h * d..]);
                    let p: &[T] = match kept {
                        Some(kept) => &kept[(s * pk.heads + h) * ls..][..ls],
                        None => {
                            let p = scores(p, dm);
                            probabilities(q, k, st, pk.bias_block(i[2], s, h), dm, p);
                            p
                        }
                    };
                    let (dq, rest) = g.split_at_mut(pk.l * d);
                    let (dk, dv) = rest.split_at_mut(pk.l * d);
                    backward_block(q, k, v, &dy[h * d..], st, p, dm, dp, dq, dk, dv);
                    // The block's gradients are cache-resident: scatter them into the packed rows,
                    // which the heads' q, k and v parts cover whole.
                    for (t, xr) in dx.chunks_exact_mut(row).enumerate() {
                        for (part, src) in [(0, &*dq), (1, &*dk), (2, &*dv)] {
                            xr[part * hd + h * d..][..d].iter_mut().zip(&src[t * d..][..d]).for_each(|(x, &v)| {
                                x.write(v);
                            });
                        }
                    }
                    if let Some(b) = pk.bias {
                        let blk = &mut db[((s % b.g) * pk.heads + h) * ls..][..ls];
                        blk.iter_mut().zip(dp.iter()).for_each(|(a, &v)| *a += v);
                    }
                }
            };
            // One contiguous run of sequences per thread, each summing its bias gradient in
            // sequence order into its own buffer; the buffers are added in run order, so the
            // sum depends on the thread count only (as `kernel::ordered_sum`).
            let per = pk.n.div_ceil(rayon::current_num_threads().max(1)).max(1);
            let partial: Vec<Vec<T>> = dqkv
                .par_chunks_mut(per * pk.l * row)
                .enumerate()
                .map(|(r, dx)| {
                    let mut sc = (Vec::new(), Vec::new(), vec![T::zero(); 3 * pk.l * d]);
                    let mut db = vec![T::zero(); nb];
                    for (j, dx) in dx.chunks_mut(pk.l * row).enumerate() {
                        seq(r * per + j, &mut sc, dx, &mut db);
                    }
                    db
                })
                .collect();
            dbias.iter_mut().zip(add_in_order(partial, nb)).for_each(|(d, v)| {
                d.write(v);
            });
        })
    }
}

/// dqkv and, with a bias, its gradient from the gradient of o; `p` is the forward's P if
/// it was kept.
fn backward(pk: Packed, qkv: &Tensor, bias: &Tensor, grad: &Tensor, p: Option<Tensor>) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let all = qkv.apply_op3_no_bwd(&grad.contiguous()?, bias, &PackedBwd { pk, p })?;
    let Some(l) = pk.bias else { return Ok((Some(all.reshape(qkv.shape())?), None)) };
    let [dqkv, dbias] = split(&all, [qkv.shape(), &Shape::from((l.g, pk.heads, pk.l, pk.l))])?;
    Ok((Some(dqkv), Some(dbias)))
}

impl CustomOp2 for PackedFwd {
    fn name(&self) -> &'static str {
        "attention-packed"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (pk, kept) = (self.pk, if self.keep { self.pk.probs() } else { 0 });
        let shape = if kept == 0 { Shape::from((pk.n, pk.l, pk.widths().0)) } else { Shape::from(pk.n * pk.l * pk.widths().0 + kept) };
        Ok((dispatch(self, &[(s1, l1), (s2, l2)])?, shape))
    }

    fn bwd(&self, qkv: &Tensor, bias: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        backward(self.pk, qkv, bias, grad, None)
    }
}

impl CustomOp3 for PackedBwd {
    fn name(&self) -> &'static str {
        "attention-packed-backward"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let pk = self.pk;
        let dbias = pk.bias.map_or(0, |b| b.g * pk.heads * pk.l * pk.l);
        let shape = Shape::from(l1.shape().elem_count() + dbias);
        let Some(p) = &self.p else { return Ok((dispatch(self, &[(s1, l1), (s2, l2), (s3, l3)])?, shape)) };
        let (storage, layout) = p.storage_and_layout();
        let Storage::Cpu(ps) = &*storage else { candle_core::bail!("attention: the kept probabilities are not on the CPU") };
        if layout.shape().elem_count() != pk.probs() {
            candle_core::bail!("attention: {} kept probabilities for {} blocks of {}x{}", layout.shape().elem_count(), pk.n * pk.heads, pk.l, pk.l)
        }
        Ok((dispatch(self, &[(s1, l1), (s2, l2), (s3, l3), (ps, layout)])?, shape))
    }
}

/// softmax(q·kᵀ/√d + bias)·v per head on the CPU, from qkv (N, L, 3·heads·d) packed as
/// timm's qkv layer writes it (q, k, v, each heads × d) to (N, L, heads·d). `bias` is
/// (G, heads, L, L) with G dividing N; sequence s adds block s mod G (Swin's windows).
///
/// Under a gradient tape the probabilities are kept for the backward (N·heads·L² values
/// per layer, 7 MB for DeiT-tiny at batch 16): recomputing them there was one of the
/// backward's five GEMMs and a second softmax. Only while L ≤ 8·d, i.e. P is at most 8/3
/// the size of qkv, which the backward keeps anyway: at high resolution (DeiT at 384 px,
/// L = 577) P would outgrow the activations, and is recomputed instead.
pub fn attention_packed(qkv: &Tensor, heads: usize, d: usize, bias: Option<&Tensor>) -> Result<Tensor> {
    let (n, l, c) = qkv.dims3()?;
    if heads == 0 || d == 0 || l == 0 || c != 3 * heads * d {
        candle_core::bail!("attention: qkv {:?} does not hold {heads} heads of {d}", qkv.dims())
    }
    let layout = match bias {
        None => None,
        Some(b) => {
            let g = b.dim(0)?;
            if b.dims() != [g, heads, l, l] || g == 0 || n % g != 0 {
                candle_core::bail!("attention: bias {:?} does not fit {n} sequences of {heads} heads over {l} tokens", b.dims())
            }
            Some(BiasLayout { heads, g })
        }
    };
    let empty = Tensor::zeros(0, qkv.dtype(), qkv.device())?;
    let b = bias.unwrap_or(&empty);
    let pk = Packed { n, l, heads, d, bias: layout };
    if !tape::recording() || l > 8 * d {
        return tape::apply2([qkv, b], [&qkv.contiguous()?, &b.contiguous()?], PackedFwd { pk, keep: false });
    }
    let no = n * l * heads * d;
    tape::op_keeping(
        [qkv, b],
        |[qkv, b]| {
            let (qkv, b) = (qkv.contiguous()?, b.contiguous()?);
            let all = qkv.apply_op2_no_bwd(&b, &PackedFwd { pk, keep: true })?;
            let o = all.narrow(0, 0, no)?.reshape((n, l, heads * d))?;
            Ok((o, (qkv, b, all.narrow(0, no, pk.probs())?)))
        },
        move |g, (qkv, b, p)| {
            let (dqkv, dbias) = backward(pk, &qkv, &b, g, Some(p))?;
            Ok([dqkv, dbias])
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{check_grads, seeded};
    use candle_core::{DType, Device, Var, D};

    /// The same attention from separate heads, in plain candle ops.
    fn reference(qkv: &Tensor, heads: usize, d: usize, bias: Option<&Tensor>) -> Result<Tensor> {
        let (n, l, _) = qkv.dims3()?;
        let x = qkv.reshape((n, l, 3, heads, d))?.permute((2, 0, 3, 1, 4))?;
        let (q, k, v) = (x.get(0)?.contiguous()?, x.get(1)?.contiguous()?, x.get(2)?.contiguous()?);
        let mut s = (q.matmul(&k.t()?)? / (d as f64).sqrt())?;
        if let Some(b) = bias {
            let g = b.dim(0)?;
            s = s.reshape((n / g, g, heads, l, l))?.broadcast_add(b)?.reshape((n, heads, l, l))?;
        }
        candle_nn::ops::softmax(&s, D::Minus1)?.matmul(&v)?.transpose(1, 2)?.reshape((n, l, heads * d))
    }

    #[test]
    fn matches_separate_heads_with_correct_gradients() -> Result<()> {
        let dev = Device::Cpu;
        for g in [None, Some(1), Some(2)] {
            let (n, l, heads, d) = (4, 7, 3, 5);
            let qkv = (seeded(&[n, l, 3 * heads * d], 1, &dev, DType::F32)? * 2.0)?;
            let b = g.map(|g| seeded(&[g, heads, l, l], 2, &dev, DType::F32)).transpose()?;
            let diff = (attention_packed(&qkv, heads, d, b.as_ref())? - reference(&qkv, heads, d, b.as_ref())?)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(diff < 1e-5, "{diff}");
            // Four sequences: with G = 2 each bias block sums two, across per-thread runs.
            let (n, l, heads, d) = (4, 4, 2, 3);
            let x = Var::from_tensor(&(seeded(&[n, l, 3 * heads * d], 3, &dev, DType::F64)? * 1.5)?)?;
            match g {
                None => check_grads(&[&x], |t| attention_packed(t[0], heads, d, None))?,
                Some(g) => {
                    let b = Var::from_tensor(&seeded(&[g, heads, l, l], 4, &dev, DType::F64)?)?;
                    check_grads(&[&x, &b], |t| attention_packed(t[0], heads, d, Some(t[1])))?
                }
            }
        }
        Ok(())
    }

    /// Under a tape the backward reuses the forward's probabilities instead of recomputing
    /// them (the path checked against finite differences above): the same gradients. With
    /// L > 8·d the taped path recomputes them too.
    #[test]
    fn taped_backward_with_kept_probabilities_matches_the_graph() -> Result<()> {
        use crate::{CandleOps, Ops};
        let dev = Device::Cpu;
        for (dt, d) in [(DType::F64, 5), (DType::F32, 5), (DType::F32, 1)] {
            let (n, l, heads, g) = (4, 9, 2, 2);
            let x = Var::from_tensor(&(seeded(&[n, l, 3 * heads * d], 5, &dev, dt)? * 1.5)?)?;
            let b = Var::from_tensor(&seeded(&[g, heads, l, l], 6, &dev, dt)?)?;
            let r = seeded(&[n, l, heads * d], 7, &dev, dt)?;
            let grads = |ops: CandleOps| -> Result<(Tensor, Tensor, Tensor)> {
                let y = ops.attention(x.as_tensor(), heads, d, Some(b.as_tensor()))?;
                let gs = ops.backward(&(ops.loss_input(&y)? * &r)?.sum_all()?)?;
                Ok((y, gs.get(x.as_tensor()).unwrap().clone(), gs.get(b.as_tensor()).unwrap().clone()))
            };
            let (graph, taped) = (grads(CandleOps::train(0))?, grads(CandleOps::train(0).taped())?);
            for (a, t) in [(&graph.0, &taped.0), (&graph.1, &taped.1), (&graph.2, &taped.2)] {
                assert_eq!(a.dims(), t.dims());
                let diff = (a - t)?.abs()?.flatten_all()?.max(0)?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
                assert_eq!(diff, 0.0, "{dt:?}");
            }
        }
        Ok(())
    }
}
