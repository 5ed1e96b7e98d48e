//! 1×1 convolution on NCHW tensors as one small GEMM per image (Y_n = W·X_n + b), with a
//! backward that is two more GEMMs per image. Through candle (`broadcast_matmul` on a
//! broadcast weight) the backward was ~7x the forward; here it is ~2x.

use super::kernel::{dispatch, gemm, Kernel, Mat};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

#[derive(Clone, Copy, Debug)]
struct Geom {
    n: usize,
    c_in: usize,
    c_out: usize,
    hw: usize,
}

fn geom(x: &Shape, w: &Shape) -> Result<Geom> {
    let (n, c_in, h, wd) = x.dims4()?;
    let (c_out, wc) = w.dims2()?;
    if wc != c_in {
        candle_core::bail!("pointwise conv: weight {w:?} does not fit input {x:?}")
    }
    Ok(Geom { n, c_in, c_out, hw: h * wd })
}

fn forward<T: WithDType>(x: &[T], w: &[T], b: &[T], g: Geom) -> Vec<T> {
    let mut y = vec![T::zero(); g.n * g.c_out * g.hw];
    y.par_chunks_mut(g.c_out * g.hw).zip(x.par_chunks(g.c_in * g.hw)).for_each(|(y, x)| {
        for (o, row) in y.chunks_mut(g.hw).enumerate() {
            row.fill(b[o]);
        }
        let wm = Mat { data: w, rs: g.c_in as isize, cs: 1 };
        let xm = Mat { data: x, rs: g.hw as isize, cs: 1 };
        gemm(g.c_out, g.hw, g.c_in, y, wm, xm, true);
    });
    y
}

/// dX_n = Wᵀ · dY_n.
fn grad_input<T: WithDType>(dy: &[T], w: &[T], g: Geom) -> Vec<T> {
    let mut dx = vec![T::zero(); g.n * g.c_in * g.hw];
    dx.par_chunks_mut(g.c_in * g.hw).zip(dy.par_chunks(g.c_out * g.hw)).for_each(|(dx, dy)| {
        let wt = Mat { data: w, rs: 1, cs: g.c_in as isize };
        let dym = Mat { data: dy, rs: g.hw as isize, cs: 1 };
        gemm(g.c_in, g.hw, g.c_out, dx, wt, dym, false);
    });
    dx
}

/// [dW (c_out × c_in) = Σ_n dY_n · X_nᵀ, db = Σ dY] in one buffer.
fn grad_weight<T: WithDType>(dy: &[T], x: &[T], g: Geom) -> Vec<T> {
    let size = g.c_out * g.c_in + g.c_out;
    let zero = || vec![T::zero(); size];
    let acc = dy
        .par_chunks(g.c_out * g.hw)
        .zip(x.par_chunks(g.c_in * g.hw))
        .fold(zero, |mut acc, (dy, x)| {
            let (dw, db) = acc.split_at_mut(g.c_out * g.c_in);
            let dym = Mat { data: dy, rs: g.hw as isize, cs: 1 };
            let xt = Mat { data: x, rs: 1, cs: g.hw as isize };
            gemm(g.c_out, g.c_in, g.hw, dw, dym, xt, true);
            for (o, row) in dy.chunks(g.hw).enumerate() {
                let mut s = T::zero();
                for &v in row {
                    s += v;
                }
                db[o] += s;
            }
            acc
        })
        .reduce(zero, |mut a, b| {
            a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
            a
        });
    acc
}

struct PointwiseFwd {
    g: Geom,
    hw: (usize, usize),
}
struct PointwiseGradInput {
    g: Geom,
    hw: (usize, usize),
}
struct PointwiseGradWeight {
    g: Geom,
}

impl Kernel for PointwiseFwd {
    const NAME: &'static str = "pointwise conv";
    fn run<T: WithDType>(&self, i: &[&[T]]) -> Vec<T> {
        forward(i[0], i[1], i[2], self.g)
    }
}

impl Kernel for PointwiseGradInput {
    const NAME: &'static str = "pointwise conv grad";
    fn run<T: WithDType>(&self, i: &[&[T]]) -> Vec<T> {
        grad_input(i[0], i[1], self.g)
    }
}

impl Kernel for PointwiseGradWeight {
    const NAME: &'static str = "pointwise conv grad";
    fn run<T: WithDType>(&self, i: &[&[T]]) -> Vec<T> {
        grad_weight(i[0], i[1], self.g)
    }
}

impl CustomOp3 for PointwiseFwd {
    fn name(&self) -> &'static str {
        "pointwise-conv"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.g;
        Ok((dispatch(self, &[(s1, l1), (s2, l2), (s3, l3)])?, Shape::from((g.n, g.c_out, self.hw.0, self.hw.1))))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _b: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = self.g;
        let grad = grad.contiguous()?;
        let dx = grad.apply_op2_no_bwd(w, &PointwiseGradInput { g, hw: self.hw })?;
        let all = grad.apply_op2_no_bwd(x, &PointwiseGradWeight { g })?;
        let dw = all.narrow(0, 0, g.c_out * g.c_in)?.reshape((g.c_out, g.c_in))?;
        let db = all.narrow(0, g.c_out * g.c_in, g.c_out)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

impl CustomOp2 for PointwiseGradInput {
    fn name(&self) -> &'static str {
        "pointwise-conv-grad-input"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.g;
        Ok((dispatch(self, &[(s1, l1), (s2, l2)])?, Shape::from((g.n, g.c_in, self.hw.0, self.hw.1))))
    }
}

impl CustomOp2 for PointwiseGradWeight {
    fn name(&self) -> &'static str {
        "pointwise-conv-grad-weight"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.g;
        Ok((dispatch(self, &[(s1, l1), (s2, l2)])?, Shape::from(g.c_out * g.c_in + g.c_out)))
    }
}

/// 1×1 convolution of NCHW `x` with weight (out, in) (or (out, in, 1, 1)) and bias (out).
pub fn pointwise_conv(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    let c_out = w.dim(0)?;
    let w = w.reshape((c_out, w.elem_count() / c_out))?.contiguous()?;
    let (_, _, h, wd) = x.dims4()?;
    let g = geom(x.shape(), w.shape())?;
    x.contiguous()?.apply_op3(&w, &b.contiguous()?, PointwiseFwd { g, hw: (h, wd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_util::{check_grads, seeded};
    use candle_core::{DType, Device, Var};

    #[test]
    fn forward_matches_conv2d() -> Result<()> {
        let dev = Device::Cpu;
        let x = seeded(&[3, 5, 4, 6], 1, &dev, DType::F32)?;
        let w = seeded(&[7, 5, 1, 1], 2, &dev, DType::F32)?;
        let b = seeded(&[7], 3, &dev, DType::F32)?;
        let refr = x.conv2d(&w, 0, 1, 1, 1)?.broadcast_add(&b.reshape((1, 7, 1, 1))?)?;
        let d = (pointwise_conv(&x, &w, &b)? - refr)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
        assert!(d < 1e-5, "{d}");
        Ok(())
    }

    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&seeded(&[3, 4, 3, 2], 4, &dev, DType::F64)?)?;
        let w = Var::from_tensor(&seeded(&[5, 4], 5, &dev, DType::F64)?)?;
        let b = Var::from_tensor(&seeded(&[5], 6, &dev, DType::F64)?)?;
        check_grads(&[&x, &w, &b], |v| pointwise_conv(v[0], v[1], v[2]))
    }
}
