//! Linear layer on row-major tokens (M × K) · Wᵀ (K × O) + b with the bias fused, forward
//! and backward as GEMMs over row blocks. Through candle the bias gradient is a strided
//! reduction over all rows and each matmul backward allocates transposed copies; this is
//! the main op of every transformer block (qkv, projection, MLP).

use super::transpose::transposed;
use super::kernel::{dispatch, gemm, gemm_parallel, gemm_uninit, gemm_uninit_parallel, Kernel, layer_grads, LayerGrads, Mat, ordered_sum, written};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;
use std::mem::MaybeUninit;

#[derive(Clone, Copy, Debug)]
struct Geom {
    m: usize,
    k: usize,
    o: usize,
    /// One GEMM over all rows, spread over threads by the GEMM, instead of one GEMM per
    /// row block ([`whole_gemm`]).
    whole: bool,
    /// Whether a bias is added (and its gradient computed).
    bias: bool,
}

/// Rows per block if the rows were cut into four blocks per thread.
fn even_rows(m: usize) -> usize {
    m.div_ceil(rayon::current_num_threads().max(1) * 4)
}

/// Rows per task: blocks large enough for GEMM efficiency, enough blocks to spread over threads.
fn block_rows(m: usize) -> usize {
    even_rows(m).clamp(64, 1024)
}

/// Whether blocks would be short: each block's GEMM packs the whole weight again (and the
/// weight gradient adds a full o×k product per block), which for short blocks of a wide
/// layer costs as much as the product. Swin's last stage (392 rows, 768 → 3072) ran at
/// 0.5–0.8x PyTorch's speed per layer that way, and at 0.9–1.2x as one GEMM; long
/// blocks are faster than the one GEMM (1.1–1.4x on its first stage, 25 088 rows).
fn whole_gemm(m: usize) -> bool {
    even_rows(m) < 256
}

/// Each row of `y` (rows of `b.len()`) set to the bias.
fn fill_bias<'a, T: WithDType>(y: &'a mut [MaybeUninit<T>], b: &[T]) -> &'a mut [T] {
    for row in y.chunks_mut(b.len()) {
        row.iter_mut().zip(b).for_each(|(y, &b)| {
            y.write(b);
        });
    }
    // SAFETY: every element was just written.
    unsafe { std::slice::from_raw_parts_mut(y.as_mut_ptr() as *mut T, y.len()) }
}

struct LinearFwd {
    g: Geom,
}
/// (dy, w) -> dx = dy · W.
struct LinearGradInput {
    g: Geom,
}
/// (dy, x) -> [dW = dyᵀ · x, db = Σ rows of dy (with a bias)].
struct LinearGradWeight {
    g: Geom,
}

impl Kernel for LinearFwd {
    const NAME: &'static str = "linear";
    fn run<T: WithDType>(&self, i: &[&[T]]) -> Vec<T> {
        let (x, w, g) = (i[0], i[1], self.g);
        // Without a bias the GEMM writes its output directly (no zero bias to add).
        let b = if g.bias { Some(i[2]) } else { None };
        let rows = block_rows(g.m);
        written(g.m * g.o, |y| {
            if g.whole {
                let (xm, wt) = (Mat { data: x, rs: g.k as isize, cs: 1 }, Mat { data: w, rs: 1, cs: g.k as isize });
                let Some(b) = b else { return gemm_uninit_parallel(g.m, g.o, g.k, y, xm, wt) };
                y.par_chunks_mut(rows * g.o).for_each(|y| {
                    fill_bias(y, b);
                });
                // SAFETY: every element was set to the bias just above.
                let y = unsafe { &mut *(y as *mut [MaybeUninit<T>] as *mut [T]) };
                gemm_parallel(g.m, g.o, g.k, y, xm, wt, true);
                return;
            }
            // Each block's GEMM packs the weight into panels along o; read from W (o×k)
            // that is a one-element-at-a-time gather k apart for every block (2.4 % of a
            // DeiT step), from Wᵀ a run of contiguous copies. One transpose serves all blocks.
            let w_t = transposed(w, g.o, g.k);
            let wt = Mat { data: &w_t[..], rs: g.o as isize, cs: 1 };
            y.par_chunks_mut(rows * g.o).zip(x.par_chunks(rows * g.k)).for_each(|(y, x)| {
                let r = x.len() / g.k;
                let xm = Mat { data: x, rs: g.k as isize, cs: 1 };
                match b {
                    Some(b) => gemm(r, g.o, g.k, fill_bias(y, b), xm, wt, true),
                    None => gemm_uninit(r, g.o, g.k, y, xm, wt),
                }
            });
        })
    }
}

impl Kernel for LinearGradInput {
    const NAME: &'static str = "linear grad";
    fn run<T: WithDType>(&self, i: &[&[T]]) -> Vec<T> {
        let (dy, w, g) = (i[0], i[1], self.g);
        let wm = Mat { data: w, rs: g.k as isize, cs: 1 };
        if g.whole {
            return written(g.m * g.k, |dx| gemm_uninit_parallel(g.m, g.k, g.o, dx, Mat { data: dy, rs: g.o as isize, cs: 1 }, wm));
        }
        let rows = block_rows(g.m);
        written(g.m * g.k, |dx| {
            dx.par_chunks_mut(rows * g.k).zip(dy.par_chunks(rows * g.o)).for_each(|(dx, dy)| {
                let r = dy.len() / g.o;
                gemm_uninit(r, g.k, g.o, dx, Mat { data: dy, rs: g.o as isize, cs: 1 }, wm);
            });
        })
    }
}

impl Kernel for LinearGradWeight {
    const NAME: &'static str = "linear grad";
    fn run<T: WithDType>(&self, i: &[&[T]]) -> Vec<T> {
        let (dy, x, g) = (i[0], i[1], self.g);
        let size = g.o * g.k + if g.bias { g.o } else { 0 };
        let rows = block_rows(g.m);
        let mut all = ordered_sum(g.m.div_ceil(rows), size, || (), |acc: &mut [T], _, blocks| {
            let (dw, db) = acc.split_at_mut(g.o * g.k);
            for b in blocks {
                let r = rows.min(g.m - b * rows);
                let dy = &dy[b * rows * g.o..(b * rows + r) * g.o];
                if !g.whole {
                    let x = &x[b * rows * g.k..(b * rows + r) * g.k];
                    gemm(g.o, g.k, r, dw, Mat { data: dy, rs: 1, cs: g.o as isize }, Mat { data: x, rs: g.k as isize, cs: 1 }, true);
                }
                if g.bias {
                    for row in dy.chunks(g.o) {
                        db.iter_mut().zip(row).for_each(|(a, &v)| *a += v);
                    }
                }
            }
        });
        if g.whole {
            let (dyt, xm) = (Mat { data: dy, rs: 1, cs: g.o as isize }, Mat { data: x, rs: g.k as isize, cs: 1 });
            gemm_parallel(g.o, g.k, g.m, &mut all[..g.o * g.k], dyt, xm, true);
        }
        all
    }
}

impl CustomOp3 for LinearFwd {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok((dispatch(self, &[(s1, l1), (s2, l2), (s3, l3)])?, Shape::from((self.g.m, self.g.o))))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, b: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<LayerGrads> {
        let g = self.g;
        layer_grads(x, w, b, grad, &LinearGradInput { g }, &LinearGradWeight { g })
    }
}

/// The layer without a bias: (x, w).
impl CustomOp2 for LinearFwd {
    fn name(&self) -> &'static str {
        "linear-no-bias"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok((dispatch(self, &[(s1, l1), (s2, l2)])?, Shape::from((self.g.m, self.g.o))))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = self.g;
        let grad = grad.contiguous()?;
        let dx = grad.apply_op2_no_bwd(w, &LinearGradInput { g })?;
        let dw = grad.apply_op2_no_bwd(x, &LinearGradWeight { g })?.reshape(w.shape())?;
        Ok((Some(dx), Some(dw)))
    }
}

impl CustomOp2 for LinearGradInput {
    fn name(&self) -> &'static str {
        "linear-grad-input"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok((dispatch(self, &[(s1, l1), (s2, l2)])?, Shape::from((self.g.m, self.g.k))))
    }
}

impl CustomOp2 for LinearGradWeight {
    fn name(&self) -> &'static str {
        "linear-grad-weight"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok((dispatch(self, &[(s1, l1), (s2, l2)])?, Shape::from(self.g.o * self.g.k + if self.g.bias { self.g.o } else { 0 })))
    }
}

/// `x @ wᵀ + b` over the last dimension of `x` (any rank ≥ 1); `w` is (out, in).
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    linear_with(x, w, b, None)
}

/// [`linear`], with the GEMM strategy forced (tests run both on any machine).
fn linear_with(x: &Tensor, w: &Tensor, b: Option<&Tensor>, whole: Option<bool>) -> Result<Tensor> {
    let (o, k) = w.dims2()?;
    let dims = x.dims();
    if dims.last() != Some(&k) || b.is_some_and(|b| b.elem_count() != o) {
        candle_core::bail!("linear: weight {:?} / bias {:?} do not fit input {:?}", w.shape(), b.map(|b| b.shape()), x.shape())
    }
    let m = x.elem_count() / k.max(1);
    let mut out = dims.to_vec();
    *out.last_mut().expect("rank ≥ 1") = o;
    let g = Geom { m, k, o, whole: whole.unwrap_or_else(|| whole_gemm(m)), bias: b.is_some() };
    let (x2, w2) = (x.contiguous()?.reshape((m, k))?, w.contiguous()?);
    let y = match b {
        Some(b) => super::tape::apply3([x, w, b], [&x2, &w2, &b.flatten_all()?.contiguous()?], LinearFwd { g })?,
        None => super::tape::apply2([x, w], [&x2, &w2], LinearFwd { g })?,
    };
    super::tape::reshape(&y, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{check_grads, seeded};
    use candle_core::{DType, Device, Var};

    #[test]
    fn matches_matmul_with_correct_gradients() -> Result<()> {
        let dev = Device::Cpu;
        for (whole, bias) in [(false, true), (true, true), (false, false), (true, false)] {
            // With `bias` off the layer takes (x, w) and never sees the last input.
            let lin = |v: &[&Tensor]| linear_with(v[0], v[1], bias.then_some(v[2]), Some(whole));
            let x = seeded(&[3, 70, 9], 1, &dev, DType::F32)?;
            let (w, b) = (seeded(&[5, 9], 2, &dev, DType::F32)?, seeded(&[5], 3, &dev, DType::F32)?);
            let refr = x.broadcast_matmul(&w.t()?)?;
            let refr = if bias { refr.broadcast_add(&b)? } else { refr };
            let d = (lin(&[&x, &w, &b])? - refr)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(d < 1e-5, "{d}");
            let grads = |x: &Var, w: &Var, b: &Var| if bias { check_grads(&[x, w, b], |v| lin(v)) } else { check_grads(&[x, w], |v| lin(&[v[0], v[1], b.as_tensor()])) };
            for shape in [vec![4, 3], vec![2, 3, 3], vec![1, 1, 3]] {
                let x = Var::from_tensor(&seeded(&shape, 4, &dev, DType::F64)?)?;
                let w = Var::from_tensor(&seeded(&[2, 3], 5, &dev, DType::F64)?)?;
                let b = Var::from_tensor(&seeded(&[2], 6, &dev, DType::F64)?)?;
                grads(&x, &w, &b)?;
            }
            // Many rows (several row blocks per thread).
            let x = Var::from_tensor(&seeded(&[300, 2], 7, &dev, DType::F64)?)?;
            let w = Var::from_tensor(&seeded(&[3, 2], 8, &dev, DType::F64)?)?;
            let b = Var::from_tensor(&seeded(&[3], 9, &dev, DType::F64)?)?;
            grads(&x, &w, &b)?;
        }
        Ok(())
    }
}
