//! Convolution whose kernel equals its stride and has no padding (ConvNeXt's stem and
//! downsampling, ViT's patch embedding): non-overlapping patches, so it is an im2col copy
//! plus one GEMM per image, and its backward two GEMMs plus a scatter. candle's conv2d
//! backward goes through conv-transpose and costs ~4x its forward.

use super::kernel::{dispatch, gemm, Kernel, Mat};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

#[derive(Clone, Copy, Debug)]
struct Geom {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    o: usize,
    ho: usize,
    wo: usize,
}

impl Geom {
    fn ckk(&self) -> usize {
        self.c * self.k * self.k
    }

    /// Patch matrix (c·k·k rows × ho·wo columns) of one image.
    fn im2col<T: WithDType>(&self, x: &[T], cols: &mut Vec<T>) {
        let (k, l) = (self.k, self.ho * self.wo);
        cols.clear();
        cols.resize(self.ckk() * l, T::zero());
        for c in 0..self.c {
            for ky in 0..k {
                for kx in 0..k {
                    let row = &mut cols[((c * k + ky) * k + kx) * l..][..l];
                    for oy in 0..self.ho {
                        let src = &x[(c * self.h + oy * k + ky) * self.w..];
                        for ox in 0..self.wo {
                            row[oy * self.wo + ox] = src[ox * k + kx];
                        }
                    }
                }
            }
        }
    }
}

struct Patchify {
    g: Geom,
}
/// (dy, w) -> dx.
struct PatchifyGradInput {
    g: Geom,
}
/// (dy, x) -> [dw, db].
struct PatchifyGradWeight {
    g: Geom,
}

impl Kernel for Patchify {
    const NAME: &'static str = "patchify conv";
    fn run<T: WithDType>(&self, i: &[&[T]]) -> Vec<T> {
        let (x, w, b, g) = (i[0], i[1], i[2], self.g);
        let l = g.ho * g.wo;
        let mut y = vec![T::zero(); g.n * g.o * l];
        y.par_chunks_mut(g.o * l).zip(x.par_chunks(g.c * g.h * g.w)).for_each_init(Vec::new, |cols, (y, x)| {
            g.im2col(x, cols);
            for (o, row) in y.chunks_mut(l).enumerate() {
                row.fill(b[o]);
            }
            let wm = Mat { data: w, rs: g.ckk() as isize, cs: 1 };
            let pm = Mat { data: cols, rs: l as isize, cs: 1 };
            gemm(g.o, l, g.ckk(), y, wm, pm, true);
        });
        y
    }
}

impl Kernel for PatchifyGradInput {
    const NAME: &'static str = "patchify conv grad";
    fn run<T: WithDType>(&self, i: &[&[T]]) -> Vec<T> {
        let (dy, w, g) = (i[0], i[1], self.g);
        let (k, l) = (g.k, g.ho * g.wo);
        let mut dx = vec![T::zero(); g.n * g.c * g.h * g.w];
        dx.par_chunks_mut(g.c * g.h * g.w).zip(dy.par_chunks(g.o * l)).for_each_init(Vec::new, |dcols: &mut Vec<T>, (dx, dy)| {
            dcols.clear();
            dcols.resize(g.ckk() * l, T::zero());
            let wt = Mat { data: w, rs: 1, cs: g.ckk() as isize };
            let dym = Mat { data: dy, rs: l as isize, cs: 1 };
            gemm(g.ckk(), l, g.o, dcols, wt, dym, false);
            // col2im: patches do not overlap, so every input pixel gets at most one value.
            for c in 0..g.c {
                for ky in 0..k {
                    for kx in 0..k {
                        let row = &dcols[((c * k + ky) * k + kx) * l..][..l];
                        for oy in 0..g.ho {
                            let dst = &mut dx[(c * g.h + oy * k + ky) * g.w..];
                            for ox in 0..g.wo {
                                dst[ox * k + kx] = row[oy * g.wo + ox];
                            }
                        }
                    }
                }
            }
        });
        dx
    }
}

impl Kernel for PatchifyGradWeight {
    const NAME: &'static str = "patchify conv grad";
    fn run<T: WithDType>(&self, i: &[&[T]]) -> Vec<T> {
        let (dy, x, g) = (i[0], i[1], self.g);
        let l = g.ho * g.wo;
        let size = g.o * g.ckk() + g.o;
        let zero = || (vec![T::zero(); size], Vec::new());
        let (acc, _) = dy
            .par_chunks(g.o * l)
            .zip(x.par_chunks(g.c * g.h * g.w))
            .fold(zero, |(mut acc, mut cols), (dy, x)| {
                g.im2col(x, &mut cols);
                let (dw, db) = acc.split_at_mut(g.o * g.ckk());
                let dym = Mat { data: dy, rs: l as isize, cs: 1 };
                let pt = Mat { data: &cols, rs: 1, cs: l as isize };
                gemm(g.o, g.ckk(), l, dw, dym, pt, true);
                for (o, row) in dy.chunks(l).enumerate() {
                    let mut s = T::zero();
                    for &v in row {
                        s += v;
                    }
                    db[o] += s;
                }
                (acc, cols)
            })
            .reduce(zero, |(mut a, c), (b, _)| {
                a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
                (a, c)
            });
        acc
    }
}

impl CustomOp3 for Patchify {
    fn name(&self) -> &'static str {
        "patchify-conv"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.g;
        Ok((dispatch(self, &[(s1, l1), (s2, l2), (s3, l3)])?, Shape::from((g.n, g.o, g.ho, g.wo))))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _b: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = self.g;
        let grad = grad.contiguous()?;
        let dx = grad.apply_op2_no_bwd(w, &PatchifyGradInput { g })?;
        let all = grad.apply_op2_no_bwd(x, &PatchifyGradWeight { g })?;
        let dw = all.narrow(0, 0, g.o * g.ckk())?.reshape(w.shape())?;
        let db = all.narrow(0, g.o * g.ckk(), g.o)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

impl CustomOp2 for PatchifyGradInput {
    fn name(&self) -> &'static str {
        "patchify-conv-grad-input"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.g;
        Ok((dispatch(self, &[(s1, l1), (s2, l2)])?, Shape::from((g.n, g.c, g.h, g.w))))
    }
}

impl CustomOp2 for PatchifyGradWeight {
    fn name(&self) -> &'static str {
        "patchify-conv-grad-weight"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.g;
        Ok((dispatch(self, &[(s1, l1), (s2, l2)])?, Shape::from(g.o * g.ckk() + g.o)))
    }
}

/// Convolution of NCHW `x` with weight (O, C, k, k), stride k, no padding, and bias (O).
pub fn patchify_conv(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (n, c, h, wd) = x.dims4()?;
    let (o, wc, k, k2) = w.dims4()?;
    if wc != c || k != k2 || k == 0 || h < k || wd < k {
        candle_core::bail!("patchify conv: weight {:?} does not fit input {:?}", w.shape(), x.shape())
    }
    let g = Geom { n, c, h, w: wd, k, o, ho: h / k, wo: wd / k };
    x.contiguous()?.apply_op3(&w.contiguous()?, &b.contiguous()?, Patchify { g })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_util::{check_grads, seeded};
    use candle_core::{DType, Device, Var};

    #[test]
    fn forward_matches_conv2d() -> Result<()> {
        let dev = Device::Cpu;
        for (h, w, k) in [(8, 8, 2), (9, 7, 2), (12, 8, 4)] {
            let x = seeded(&[2, 3, h, w], 1, &dev, DType::F32)?;
            let wt = seeded(&[5, 3, k, k], 2, &dev, DType::F32)?;
            let b = seeded(&[5], 3, &dev, DType::F32)?;
            let refr = x.conv2d(&wt, 0, k, 1, 1)?.broadcast_add(&b.reshape((1, 5, 1, 1))?)?;
            let d = (patchify_conv(&x, &wt, &b)? - refr)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
            assert!(d < 1e-5, "{h}x{w} k{k}: {d}");
        }
        Ok(())
    }

    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        let dev = Device::Cpu;
        for (h, w, k) in [(4, 6, 2), (5, 5, 2), (6, 3, 3)] {
            let x = Var::from_tensor(&seeded(&[2, 2, h, w], 4, &dev, DType::F64)?)?;
            let wt = Var::from_tensor(&seeded(&[3, 2, k, k], 5, &dev, DType::F64)?)?;
            let b = Var::from_tensor(&seeded(&[3], 6, &dev, DType::F64)?)?;
            check_grads(&[&x, &wt, &b], |v| patchify_conv(v[0], v[1], v[2]))?;
        }
        Ok(())
    }
}
