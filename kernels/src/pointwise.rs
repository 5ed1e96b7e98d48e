//! 1×1 convolution on NCHW tensors as one small GEMM per image (Y_n = W·X_n + b), with a
//! backward that is two more GEMMs per image. Through candle (`broadcast_matmul` on a
//! broadcast weight) the backward was ~7x the forward; here it is ~2x.

use super::kernel::{dispatch, fill_rows, gather, gemm, gemm_uninit, group_size, Kernel, layer_grads, LayerGrads, Mat, ordered_sum, rewrite, scatter, sum, written};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;
use std::mem::MaybeUninit;

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

/// Runs `f(input matrix, output matrix, columns)` on groups of images and writes the
/// outputs back; `f` must write its whole output matrix.
fn per_group<T: WithDType>(x: &[T], c_in: usize, c_out: usize, g: Geom, f: impl Fn(&[T], &mut [MaybeUninit<T>], usize) + Sync) -> Vec<T> {
    let gs = group_size(g.n, g.hw);
    written(g.n * c_out * g.hw, |y| {
        y.par_chunks_mut(gs * c_out * g.hw).zip(x.par_chunks(gs * c_in * g.hw)).for_each_init(
            || (Vec::new(), Vec::new()),
            |(xbuf, ybuf): &mut (Vec<T>, Vec<T>), (y, x)| {
                let xm = gather(x, c_in, g.hw, xbuf);
                let cols = xm.len() / c_in.max(1);
                if cols == g.hw {
                    f(xm, y, cols);
                } else {
                    rewrite(ybuf, c_out * cols, |m| f(xm, m, cols));
                    scatter(ybuf, c_out, g.hw, y);
                }
            },
        );
    })
}

/// Y = W·X + b, on groups of images.
fn forward<T: WithDType>(x: &[T], w: &[T], b: &[T], g: Geom) -> Vec<T> {
    per_group(x, g.c_in, g.c_out, g, |xm, ym, cols| {
        let wm = Mat { data: w, rs: g.c_in as isize, cs: 1 };
        gemm(g.c_out, cols, g.c_in, fill_rows(ym, b, cols), wm, Mat { data: xm, rs: cols as isize, cs: 1 }, true);
    })
}

/// dX = Wᵀ · dY.
fn grad_input<T: WithDType>(dy: &[T], w: &[T], g: Geom) -> Vec<T> {
    per_group(dy, g.c_out, g.c_in, g, |dym, dxm, cols| {
        let wt = Mat { data: w, rs: 1, cs: g.c_in as isize };
        gemm_uninit(g.c_in, cols, g.c_out, dxm, wt, Mat { data: dym, rs: cols as isize, cs: 1 });
    })
}

/// [dW (c_out × c_in) = Σ dY · Xᵀ, db = Σ dY] in one buffer.
fn grad_weight<T: WithDType>(dy: &[T], x: &[T], g: Geom) -> Vec<T> {
    let size = g.c_out * g.c_in + g.c_out;
    let gs = group_size(g.n, g.hw);
    let (out_len, in_len) = (g.c_out * g.hw, g.c_in * g.hw);
    ordered_sum(g.n.div_ceil(gs), size, || (Vec::new(), Vec::new()), |acc: &mut [T], (dybuf, xbuf): &mut (Vec<T>, Vec<T>), groups| {
        let (dw, db) = acc.split_at_mut(g.c_out * g.c_in);
        for grp in groups {
            let imgs = grp * gs..((grp + 1) * gs).min(g.n);
            let dym = gather(&dy[imgs.start * out_len..imgs.end * out_len], g.c_out, g.hw, dybuf);
            let xm = gather(&x[imgs.start * in_len..imgs.end * in_len], g.c_in, g.hw, xbuf);
            let cols = xm.len() / g.c_in.max(1);
            gemm(g.c_out, g.c_in, cols, dw, Mat { data: dym, rs: cols as isize, cs: 1 }, Mat { data: xm, rs: 1, cs: cols as isize }, true);
            for (o, row) in dym.chunks(cols).enumerate() {
                db[o] += sum(row);
            }
        }
    })
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

    fn bwd(&self, x: &Tensor, w: &Tensor, b: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<LayerGrads> {
        let g = self.g;
        layer_grads(x, w, b, grad, &PointwiseGradInput { g, hw: self.hw }, &PointwiseGradWeight { g })
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
    let w2 = w.reshape((c_out, w.elem_count() / c_out))?.contiguous()?;
    let (_, _, h, wd) = x.dims4()?;
    let g = geom(x.shape(), w2.shape())?;
    super::tape::apply3([x, w, b], [&x.contiguous()?, &w2, &b.contiguous()?], PointwiseFwd { g, hw: (h, wd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{check_grads, seeded};
    use candle_core::{DType, Device, Var};

    // (n, c_in, c_out, h, w): maps small enough that images are grouped into one GEMM
    // (7 images of 2×2 make groups of ≥ 2 on up to 4 threads, with a shorter last group).
    const SHAPES: [(usize, usize, usize, usize, usize); 3] = [(3, 5, 7, 4, 6), (7, 4, 5, 2, 2), (1, 3, 2, 3, 1)];

    #[test]
    fn forward_matches_conv2d() -> Result<()> {
        let dev = Device::Cpu;
        for (n, ci, co, h, w) in SHAPES {
            let x = seeded(&[n, ci, h, w], 1, &dev, DType::F32)?;
            let wt = seeded(&[co, ci, 1, 1], 2, &dev, DType::F32)?;
            let b = seeded(&[co], 3, &dev, DType::F32)?;
            let refr = x.conv2d(&wt, 0, 1, 1, 1)?.broadcast_add(&b.reshape((1, co, 1, 1))?)?;
            let d = (pointwise_conv(&x, &wt, &b)? - refr)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
            assert!(d < 1e-5, "{d} for {:?}", (n, ci, co, h, w));
        }
        Ok(())
    }

    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        let dev = Device::Cpu;
        for (n, ci, co, h, w) in SHAPES {
            let x = Var::from_tensor(&seeded(&[n, ci, h, w], 4, &dev, DType::F64)?)?;
            let wt = Var::from_tensor(&seeded(&[co, ci], 5, &dev, DType::F64)?)?;
            let b = Var::from_tensor(&seeded(&[co], 6, &dev, DType::F64)?)?;
            check_grads(&[&x, &wt, &b], |v| pointwise_conv(v[0], v[1], v[2]))?;
        }
        Ok(())
    }

    /// Weight gradients are sums over images done in parallel: the same bits on every run.
    #[test]
    fn weight_gradient_is_the_same_every_run() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&seeded(&[33, 8, 16, 16], 7, &dev, DType::F32)?)?;
        let w = Var::from_tensor(&seeded(&[12, 8], 8, &dev, DType::F32)?)?;
        let b = Var::from_tensor(&seeded(&[12], 9, &dev, DType::F32)?)?;
        let bits = || -> Result<Vec<u32>> {
            let g = pointwise_conv(x.as_tensor(), w.as_tensor(), b.as_tensor())?.sqr()?.sum_all()?.backward()?;
            Ok(g.get(w.as_tensor()).expect("weight gradient").flatten_all()?.to_vec1::<f32>()?.iter().map(|v| v.to_bits()).collect())
        };
        let first = bits()?;
        for _ in 0..20 {
            assert_eq!(bits()?, first);
        }
        Ok(())
    }
}
