//! Dense 2-D convolution (groups 1, dilation 1, any stride and padding) as im2col + one GEMM
//! per image (per group of images on small maps, `kernel::group_size`), with a backward of
//! two GEMMs plus a col2im scatter. candle's conv2d backward
//! goes through conv-transpose (several times its forward); ResNet's 3×3 convs, ConvNeXt's
//! and ViT's patchify stems (kernel = stride) and every strided or padded stem/downsampling
//! conv take this path.

use super::kernel::{dispatch, fill_rows, gather, gemm, gemm_uninit, group_size, Kernel, layer_grads, LayerGrads, Mat, ordered_sum, rewrite, scatter, sum, written};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;
use std::mem::MaybeUninit;

#[derive(Clone, Copy, Debug)]
struct Geom {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    stride: usize,
    pad: usize,
    o: usize,
    ho: usize,
    wo: usize,
    /// Images per GEMM ([`group_size`]).
    gs: usize,
}

impl Geom {
    fn ckk(&self) -> usize {
        self.c * self.k * self.k
    }

    fn l(&self) -> usize {
        self.ho * self.wo
    }

    /// Output columns `ox` whose input column `ox·stride + kx − pad` lies in [0, w).
    fn cols_in_range(&self, kx: usize) -> std::ops::Range<usize> {
        let lo = self.pad.saturating_sub(kx).div_ceil(self.stride);
        // ox·s + kx − p ≤ w − 1  ⇔  ox ≤ (w − 1 + p − kx) / s
        let hi = match (self.w + self.pad).checked_sub(kx + 1) {
            Some(v) => (v / self.stride + 1).min(self.wo),
            None => 0,
        };
        lo..hi.max(lo)
    }

    /// Input row of output row `oy` at kernel row `ky`, if inside the image.
    fn in_row(&self, oy: usize, ky: usize) -> Option<usize> {
        (oy * self.stride + ky).checked_sub(self.pad).filter(|&r| r < self.h)
    }

    /// Patch matrix (c·k·k rows × imgs·ho·wo columns) of consecutive images, each image's
    /// columns after the previous one's; padding reads as zero.
    fn im2col<T: WithDType>(&self, x: &[T], cols: &mut Vec<T>) {
        let (img, l) = (self.c * self.h * self.w, self.l());
        let imgs = x.len() / img;
        rewrite(cols, self.ckk() * imgs * l, |cols| {
            for (i, x) in x.chunks_exact(img).enumerate() {
                self.im2col_at(x, cols, imgs * l, i * l);
            }
        });
    }

    /// One image's patches into columns `off..off + ho·wo` of a patch matrix whose rows are
    /// `rs` apart, every element written once (padding as zero: zeroing the whole matrix
    /// first was a second pass over it).
    fn im2col_at<T: WithDType>(&self, x: &[T], cols: &mut [MaybeUninit<T>], rs: usize, off: usize) {
        let (k, l, s) = (self.k, self.l(), self.stride);
        let zero = |d: &mut [MaybeUninit<T>]| {
            d.iter_mut().for_each(|d| {
                d.write(T::zero());
            })
        };
        for c in 0..self.c {
            for ky in 0..k {
                for kx in 0..k {
                    let row = &mut cols[((c * k + ky) * k + kx) * rs + off..][..l];
                    let r = self.cols_in_range(kx);
                    for oy in 0..self.ho {
                        let dst = &mut row[oy * self.wo..][..self.wo];
                        let Some(iy) = self.in_row(oy, ky) else {
                            zero(dst);
                            continue;
                        };
                        zero(&mut dst[..r.start]);
                        zero(&mut dst[r.end..]);
                        let src = &x[(c * self.h + iy) * self.w..][..self.w];
                        let first = r.start * s + kx - self.pad;
                        if s == 1 {
                            dst[r.clone()].iter_mut().zip(&src[first..first + r.len()]).for_each(|(d, &v)| {
                                d.write(v);
                            });
                        } else {
                            for (i, ox) in r.clone().enumerate() {
                                dst[ox].write(src[first + i * s]);
                            }
                        }
                    }
                }
            }
        }
    }

    /// One image's gradient from its patch-matrix gradient (columns `off..off + ho·wo` of
    /// rows `rs` apart): overlapping patches add up.
    fn col2im<T: WithDType>(&self, dcols: &[T], rs: usize, off: usize, dx: &mut [MaybeUninit<T>]) {
        let (k, l, s) = (self.k, self.l(), self.stride);
        // Patchify (kernel = stride, no padding, exact tiling): every pixel is written once.
        let tiles = s == k && self.pad == 0 && self.ho * k == self.h && self.wo * k == self.w;
        if tiles {
            for c in 0..self.c {
                for ky in 0..k {
                    for kx in 0..k {
                        let row = &dcols[((c * k + ky) * k + kx) * rs + off..][..l];
                        for oy in 0..self.ho {
                            let dst = &mut dx[(c * self.h + oy * k + ky) * self.w..][..self.w];
                            for (ox, &v) in row[oy * self.wo..][..self.wo].iter().enumerate() {
                                dst[ox * k + kx].write(v);
                            }
                        }
                    }
                }
            }
            return;
        }
        dx.iter_mut().for_each(|d| {
            d.write(T::zero());
        });
        // SAFETY: every element was just written.
        let dx = unsafe { &mut *(dx as *mut [MaybeUninit<T>] as *mut [T]) };
        for c in 0..self.c {
            for ky in 0..k {
                for kx in 0..k {
                    let row = &dcols[((c * k + ky) * k + kx) * rs + off..][..l];
                    let r = self.cols_in_range(kx);
                    for oy in 0..self.ho {
                        let Some(iy) = self.in_row(oy, ky) else { continue };
                        let dst = &mut dx[(c * self.h + iy) * self.w..][..self.w];
                        let src = &row[oy * self.wo..][..self.wo];
                        let first = r.start * s + kx - self.pad;
                        if s == 1 {
                            for (d, &v) in dst[first..first + r.len()].iter_mut().zip(&src[r.clone()]) {
                                *d += v;
                            }
                        } else {
                            for (i, ox) in r.clone().enumerate() {
                                dst[first + i * s] += src[ox];
                            }
                        }
                    }
                }
            }
        }
    }
}

struct ConvFwd {
    g: Geom,
}
/// (dy, w) -> dx.
struct ConvGradInput {
    g: Geom,
}
/// (dy, x) -> [dw, db].
struct ConvGradWeight {
    g: Geom,
}

impl Kernel for ConvFwd {
    const NAME: &'static str = "conv2d";
    fn run<T: WithDType>(&self, i: &[&[T]]) -> Vec<T> {
        let (x, w, b, g) = (i[0], i[1], i[2], self.g);
        let (l, gs) = (g.l(), g.gs);
        let wm = Mat { data: w, rs: g.ckk() as isize, cs: 1 };
        written(g.n * g.o * l, |y| {
            y.par_chunks_mut(gs * g.o * l).zip(x.par_chunks(gs * g.c * g.h * g.w)).for_each_init(
                || (Vec::new(), Vec::new()),
                |(cols, ybuf): &mut (Vec<T>, Vec<T>), (y, x)| {
                    g.im2col(x, cols);
                    let n = cols.len() / g.ckk().max(1);
                    let patches = Mat { data: &cols[..], rs: n as isize, cs: 1 };
                    // One image writes its output directly; a group into a (o, gs·l) matrix.
                    if n == l {
                        gemm(g.o, n, g.ckk(), fill_rows(y, b, n), wm, patches, true);
                    } else {
                        rewrite(ybuf, g.o * n, |m| {
                            fill_rows(m, b, n);
                        });
                        gemm(g.o, n, g.ckk(), ybuf, wm, patches, true);
                        scatter(ybuf, g.o, l, y);
                    }
                },
            );
        })
    }
}

impl Kernel for ConvGradInput {
    const NAME: &'static str = "conv2d grad";
    fn run<T: WithDType>(&self, i: &[&[T]]) -> Vec<T> {
        let (dy, w, g) = (i[0], i[1], self.g);
        let (l, img) = (g.l(), g.c * g.h * g.w);
        let wt = Mat { data: w, rs: 1, cs: g.ckk() as isize };
        written(g.n * img, |dx| {
            dx.par_chunks_mut(g.gs * img).zip(dy.par_chunks(g.gs * g.o * l)).for_each_init(
                || (Vec::new(), Vec::new()),
                |(dcols, dybuf): &mut (Vec<T>, Vec<T>), (dx, dy)| {
                    let dym = gather(dy, g.o, l, dybuf);
                    let n = dym.len() / g.o.max(1);
                    rewrite(dcols, g.ckk() * n, |d| gemm_uninit(g.ckk(), n, g.o, d, wt, Mat { data: dym, rs: n as isize, cs: 1 }));
                    for (i, dx) in dx.chunks_exact_mut(img).enumerate() {
                        g.col2im(dcols, n, i * l, dx);
                    }
                },
            );
        })
    }
}

impl Kernel for ConvGradWeight {
    const NAME: &'static str = "conv2d grad";
    fn run<T: WithDType>(&self, i: &[&[T]]) -> Vec<T> {
        let (dy, x, g) = (i[0], i[1], self.g);
        let (l, gs) = (g.l(), g.gs);
        let size = g.o * g.ckk() + g.o;
        let (img_out, img_in) = (g.o * l, g.c * g.h * g.w);
        ordered_sum(g.n.div_ceil(gs), size, || (Vec::new(), Vec::new()), |acc: &mut [T], (cols, dybuf): &mut (Vec<T>, Vec<T>), groups| {
            let (dw, db) = acc.split_at_mut(g.o * g.ckk());
            for grp in groups {
                let imgs = grp * gs..((grp + 1) * gs).min(g.n);
                let dym = gather(&dy[imgs.start * img_out..imgs.end * img_out], g.o, l, dybuf);
                g.im2col(&x[imgs.start * img_in..imgs.end * img_in], cols);
                let n = dym.len() / g.o.max(1);
                let pt = Mat { data: cols, rs: 1, cs: n as isize };
                gemm(g.o, g.ckk(), n, dw, Mat { data: dym, rs: n as isize, cs: 1 }, pt, true);
                for (o, row) in dym.chunks(n).enumerate() {
                    db[o] += sum(row);
                }
            }
        })
    }
}

impl CustomOp3 for ConvFwd {
    fn name(&self) -> &'static str {
        "conv2d-im2col"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.g;
        Ok((dispatch(self, &[(s1, l1), (s2, l2), (s3, l3)])?, Shape::from((g.n, g.o, g.ho, g.wo))))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, b: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<LayerGrads> {
        let g = self.g;
        layer_grads(x, w, b, grad, &ConvGradInput { g }, &ConvGradWeight { g })
    }
}

impl CustomOp2 for ConvGradInput {
    fn name(&self) -> &'static str {
        "conv2d-im2col-grad-input"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.g;
        Ok((dispatch(self, &[(s1, l1), (s2, l2)])?, Shape::from((g.n, g.c, g.h, g.w))))
    }
}

impl CustomOp2 for ConvGradWeight {
    fn name(&self) -> &'static str {
        "conv2d-im2col-grad-weight"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.g;
        Ok((dispatch(self, &[(s1, l1), (s2, l2)])?, Shape::from(g.o * g.ckk() + g.o)))
    }
}

/// Convolution of NCHW `x` with weight (O, C, k, k), bias (O), stride and symmetric padding
/// (PyTorch's floor output size).
pub fn conv2d(x: &Tensor, w: &Tensor, b: &Tensor, stride: usize, pad: usize) -> Result<Tensor> {
    conv2d_grouped(x, w, b, stride, pad, None)
}

/// [`conv2d`] with the images per GEMM forced (tests run groups on any machine).
fn conv2d_grouped(x: &Tensor, w: &Tensor, b: &Tensor, stride: usize, pad: usize, gs: Option<usize>) -> Result<Tensor> {
    let (n, c, h, wd) = x.dims4()?;
    let (o, wc, k, k2) = w.dims4()?;
    if wc != c || k != k2 || k == 0 || stride == 0 || h + 2 * pad < k || wd + 2 * pad < k {
        candle_core::bail!("conv2d: weight {:?}, stride {stride}, padding {pad} do not fit input {:?}", w.shape(), x.shape())
    }
    let (ho, wo) = ((h + 2 * pad - k) / stride + 1, (wd + 2 * pad - k) / stride + 1);
    let gs = gs.unwrap_or_else(|| group_size(n, ho * wo)).clamp(1, n.max(1));
    let g = Geom { n, c, h, w: wd, k, stride, pad, o, ho, wo, gs };
    super::tape::apply3([x, w, b], [&x.contiguous()?, &w.contiguous()?, &b.contiguous()?], ConvFwd { g })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{check_grads, seeded};
    use candle_core::{DType, Device, Var};

    const CASES: [(usize, usize, usize, usize, usize); 11] = [
        // (h, w, k, stride, pad)
        (6, 5, 3, 1, 1),
        (7, 6, 3, 2, 1),
        (9, 9, 7, 2, 3),
        (5, 7, 1, 2, 0),
        (4, 4, 3, 1, 0),
        (8, 5, 3, 3, 2),
        (3, 3, 5, 1, 2),
        (10, 7, 4, 2, 1),
        // Patchify stems and downsampling (kernel = stride), odd sizes leaving a remainder.
        (8, 8, 2, 2, 0),
        (9, 7, 2, 2, 0),
        (12, 9, 4, 4, 0),
    ];

    #[test]
    fn forward_matches_candle_conv2d() -> Result<()> {
        let dev = Device::Cpu;
        for (h, w, k, s, p) in CASES {
            let x = seeded(&[2, 3, h, w], 1, &dev, DType::F32)?;
            let wt = seeded(&[5, 3, k, k], 2, &dev, DType::F32)?;
            let b = seeded(&[5], 3, &dev, DType::F32)?;
            let refr = x.conv2d(&wt, p, s, 1, 1)?.broadcast_add(&b.reshape((1, 5, 1, 1))?)?;
            for gs in [1, 2] {
                let ours = conv2d_grouped(&x, &wt, &b, s, p, Some(gs))?;
                assert_eq!(ours.dims(), refr.dims(), "{h}x{w} k{k} s{s} p{p}");
                let d = (ours - &refr)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
                assert!(d < 1e-5, "{h}x{w} k{k} s{s} p{p} groups of {gs}: {d}");
            }
        }
        Ok(())
    }

    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        let dev = Device::Cpu;
        // One image per GEMM, and groups of two over three images (a partial last group).
        for gs in [1, 2] {
            for (h, w, k, s, p) in CASES {
                let x = Var::from_tensor(&seeded(&[3, 2, h, w], 4, &dev, DType::F64)?)?;
                let wt = Var::from_tensor(&seeded(&[3, 2, k, k], 5, &dev, DType::F64)?)?;
                let b = Var::from_tensor(&seeded(&[3], 6, &dev, DType::F64)?)?;
                check_grads(&[&x, &wt, &b], |v| conv2d_grouped(v[0], v[1], v[2], s, p, Some(gs))).map_err(|e| candle_core::Error::Msg(format!("{h}x{w} k{k} s{s} p{p} groups of {gs}: {e}")))?;
            }
        }
        Ok(())
    }
}
