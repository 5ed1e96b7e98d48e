//! Linear layer on row-major tokens (M × K) · Wᵀ (K × O) + b with the bias fused, forward
//! and backward as GEMMs over row blocks. Through candle the bias gradient is a strided
//! reduction over all rows and each matmul backward allocates transposed copies; this is
//! the main op of every transformer block (qkv, projection, MLP).

use super::kernel::{dispatch, gemm, gemm_uninit, ordered_sum, written, Kernel, Mat};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

#[derive(Clone, Copy, Debug)]
struct Geom {
    m: usize,
    k: usize,
    o: usize,
}

/// Rows per task: blocks large enough for GEMM efficiency, enough blocks to spread over threads.
fn block_rows(m: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    m.div_ceil(threads * 4).clamp(64, 1024)
}

struct LinearFwd {
    g: Geom,
}
/// (dy, w) -> dx = dy · W.
struct LinearGradInput {
    g: Geom,
}
/// (dy, x) -> [dW = dyᵀ · x, db = Σ rows of dy].
struct LinearGradWeight {
    g: Geom,
}

impl Kernel for LinearFwd {
    const NAME: &'static str = "linear";
    fn run<T: WithDType>(&self, i: &[&[T]]) -> Vec<T> {
        let (x, w, b, g) = (i[0], i[1], i[2], self.g);
        let rows = block_rows(g.m);
        written(g.m * g.o, |y| {
            y.par_chunks_mut(rows * g.o).zip(x.par_chunks(rows * g.k)).for_each(|(y, x)| {
                let r = x.len() / g.k;
                for row in y.chunks_mut(g.o) {
                    row.iter_mut().zip(b).for_each(|(y, &b)| {
                        y.write(b);
                    });
                }
                // SAFETY: every element was just set to its bias.
                let y = unsafe { std::slice::from_raw_parts_mut(y.as_mut_ptr() as *mut T, y.len()) };
                let xm = Mat { data: x, rs: g.k as isize, cs: 1 };
                let wt = Mat { data: w, rs: 1, cs: g.k as isize };
                gemm(r, g.o, g.k, y, xm, wt, true);
            });
        })
    }
}

impl Kernel for LinearGradInput {
    const NAME: &'static str = "linear grad";
    fn run<T: WithDType>(&self, i: &[&[T]]) -> Vec<T> {
        let (dy, w, g) = (i[0], i[1], self.g);
        let rows = block_rows(g.m);
        written(g.m * g.k, |dx| {
            dx.par_chunks_mut(rows * g.k).zip(dy.par_chunks(rows * g.o)).for_each(|(dx, dy)| {
                let r = dy.len() / g.o;
                let dym = Mat { data: dy, rs: g.o as isize, cs: 1 };
                let wm = Mat { data: w, rs: g.k as isize, cs: 1 };
                gemm_uninit(r, g.k, g.o, dx, dym, wm);
            });
        })
    }
}

impl Kernel for LinearGradWeight {
    const NAME: &'static str = "linear grad";
    fn run<T: WithDType>(&self, i: &[&[T]]) -> Vec<T> {
        let (dy, x, g) = (i[0], i[1], self.g);
        let size = g.o * g.k + g.o;
        let rows = block_rows(g.m);
        ordered_sum(g.m.div_ceil(rows), size, || (), |acc: &mut [T], _, blocks| {
            let (dw, db) = acc.split_at_mut(g.o * g.k);
            for b in blocks {
                let r = rows.min(g.m - b * rows);
                let dy = &dy[b * rows * g.o..(b * rows + r) * g.o];
                let x = &x[b * rows * g.k..(b * rows + r) * g.k];
                let dyt = Mat { data: dy, rs: 1, cs: g.o as isize };
                let xm = Mat { data: x, rs: g.k as isize, cs: 1 };
                gemm(g.o, g.k, r, dw, dyt, xm, true);
                for row in dy.chunks(g.o) {
                    db.iter_mut().zip(row).for_each(|(a, &v)| *a += v);
                }
            }
        })
    }
}

impl CustomOp3 for LinearFwd {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok((dispatch(self, &[(s1, l1), (s2, l2), (s3, l3)])?, Shape::from((self.g.m, self.g.o))))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _b: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = self.g;
        let grad = grad.contiguous()?;
        let dx = grad.apply_op2_no_bwd(w, &LinearGradInput { g })?;
        let all = grad.apply_op2_no_bwd(x, &LinearGradWeight { g })?;
        let dw = all.narrow(0, 0, g.o * g.k)?.reshape(w.shape())?;
        let db = all.narrow(0, g.o * g.k, g.o)?;
        Ok((Some(dx), Some(dw), Some(db)))
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
        Ok((dispatch(self, &[(s1, l1), (s2, l2)])?, Shape::from(self.g.o * self.g.k + self.g.o)))
    }
}

/// `x @ wᵀ + b` over the last dimension of `x` (any rank ≥ 1); `w` is (out, in).
pub fn linear(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (o, k) = w.dims2()?;
    let dims = x.dims();
    if dims.last() != Some(&k) || b.elem_count() != o {
        candle_core::bail!("linear: weight {:?} / bias {:?} do not fit input {:?}", w.shape(), b.shape(), x.shape())
    }
    let m = x.elem_count() / k.max(1);
    let mut out = dims.to_vec();
    *out.last_mut().expect("rank ≥ 1") = o;
    let args = [&x.contiguous()?.reshape((m, k))?, &w.contiguous()?, &b.flatten_all()?.contiguous()?];
    super::tape::reshape(&super::tape::apply3([x, w, b], args, LinearFwd { g: Geom { m, k, o } })?, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_util::{check_grads, seeded};
    use candle_core::{DType, Device, Var};

    #[test]
    fn matches_matmul_with_correct_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let x = seeded(&[3, 70, 9], 1, &dev, DType::F32)?;
        let (w, b) = (seeded(&[5, 9], 2, &dev, DType::F32)?, seeded(&[5], 3, &dev, DType::F32)?);
        let refr = x.broadcast_matmul(&w.t()?)?.broadcast_add(&b)?;
        let d = (linear(&x, &w, &b)? - refr)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(d < 1e-5, "{d}");
        for shape in [vec![4, 3], vec![2, 3, 3], vec![1, 1, 3]] {
            let x = Var::from_tensor(&seeded(&shape, 4, &dev, DType::F64)?)?;
            let w = Var::from_tensor(&seeded(&[2, 3], 5, &dev, DType::F64)?)?;
            let b = Var::from_tensor(&seeded(&[2], 6, &dev, DType::F64)?)?;
            check_grads(&[&x, &w, &b], |v| linear(v[0], v[1], v[2]))?;
        }
        // Many rows (several row blocks per thread).
        let x = Var::from_tensor(&seeded(&[300, 2], 7, &dev, DType::F64)?)?;
        let w = Var::from_tensor(&seeded(&[3, 2], 8, &dev, DType::F64)?)?;
        let b = Var::from_tensor(&seeded(&[3], 9, &dev, DType::F64)?)?;
        check_grads(&[&x, &w, &b], |v| linear(v[0], v[1], v[2]))
    }
}
