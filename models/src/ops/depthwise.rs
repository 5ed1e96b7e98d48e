//! Depthwise k×k convolution (one filter per channel) with a direct CPU kernel.
//!
//! candle runs `conv2d(groups = C)` as C separate convolutions plus a concat, forward and
//! backward (NOTES.md); ConvNeXt's 7×7 depthwise conv is then most of a training step.
//! Here each (image, channel) plane is one rayon task and the inner loops run over
//! contiguous rows, so stride 1 vectorises.

use super::kernel::{dispatch, Kernel, WindowGeom as Geom};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

fn forward<T: WithDType>(x: &[T], wt: &[T], b: &[T], g: Geom) -> Vec<T> {
    let (k, plane_in, plane_out) = (g.k, g.h * g.w, g.ho * g.wo);
    let mut out = vec![T::zero(); g.n * g.c * plane_out];
    out.par_chunks_mut(plane_out).enumerate().for_each(|(p, o)| {
        let ch = p % g.c;
        let xp = &x[p * plane_in..(p + 1) * plane_in];
        let wk = &wt[ch * k * k..(ch + 1) * k * k];
        o.fill(b[ch]);
        for oy in 0..g.ho {
            let orow = &mut o[oy * g.wo..(oy + 1) * g.wo];
            for ky in 0..k {
                let Some(iy) = g.input_row(oy, ky) else { continue };
                let xrow = &xp[iy * g.w..(iy + 1) * g.w];
                for kx in 0..k {
                    let wv = wk[ky * k + kx];
                    let (lo, hi) = g.valid_cols(kx);
                    if lo >= hi {
                        continue;
                    }
                    if g.stride == 1 {
                        let xs = &xrow[lo + kx - g.pad..hi + kx - g.pad];
                        for (ov, &xv) in orow[lo..hi].iter_mut().zip(xs) {
                            *ov += wv * xv;
                        }
                    } else {
                        for ox in lo..hi {
                            orow[ox] += wv * xrow[ox * g.stride + kx - g.pad];
                        }
                    }
                }
            }
        }
    });
    out
}

fn grad_input<T: WithDType>(go: &[T], wt: &[T], g: Geom) -> Vec<T> {
    let (k, plane_in, plane_out) = (g.k, g.h * g.w, g.ho * g.wo);
    let mut gx = vec![T::zero(); g.n * g.c * plane_in];
    gx.par_chunks_mut(plane_in).enumerate().for_each(|(p, gxp)| {
        let ch = p % g.c;
        let gop = &go[p * plane_out..(p + 1) * plane_out];
        let wk = &wt[ch * k * k..(ch + 1) * k * k];
        for oy in 0..g.ho {
            let gorow = &gop[oy * g.wo..(oy + 1) * g.wo];
            for ky in 0..k {
                let Some(iy) = g.input_row(oy, ky) else { continue };
                let gxrow = &mut gxp[iy * g.w..(iy + 1) * g.w];
                for kx in 0..k {
                    let wv = wk[ky * k + kx];
                    let (lo, hi) = g.valid_cols(kx);
                    if lo >= hi {
                        continue;
                    }
                    if g.stride == 1 {
                        let dst = &mut gxrow[lo + kx - g.pad..hi + kx - g.pad];
                        for (d, &gv) in dst.iter_mut().zip(&gorow[lo..hi]) {
                            *d += wv * gv;
                        }
                    } else {
                        for ox in lo..hi {
                            gxrow[ox * g.stride + kx - g.pad] += wv * gorow[ox];
                        }
                    }
                }
            }
        }
    });
    gx
}

fn grad_weight<T: WithDType>(go: &[T], x: &[T], g: Geom) -> Vec<T> {
    let (k, plane_in, plane_out) = (g.k, g.h * g.w, g.ho * g.wo);
    let mut gw = vec![T::zero(); g.c * k * k];
    gw.par_chunks_mut(k * k).enumerate().for_each(|(ch, gwk)| {
        for img in 0..g.n {
            let p = img * g.c + ch;
            let gop = &go[p * plane_out..(p + 1) * plane_out];
            let xp = &x[p * plane_in..(p + 1) * plane_in];
            for oy in 0..g.ho {
                let gorow = &gop[oy * g.wo..(oy + 1) * g.wo];
                for ky in 0..k {
                    let Some(iy) = g.input_row(oy, ky) else { continue };
                    let xrow = &xp[iy * g.w..(iy + 1) * g.w];
                    for kx in 0..k {
                        let (lo, hi) = g.valid_cols(kx);
                        let mut acc = T::zero();
                        if g.stride == 1 {
                            if lo < hi {
                                let xs = &xrow[lo + kx - g.pad..hi + kx - g.pad];
                                for (&gv, &xv) in gorow[lo..hi].iter().zip(xs) {
                                    acc += gv * xv;
                                }
                            }
                        } else {
                            for ox in lo..hi {
                                acc += gorow[ox] * xrow[ox * g.stride + kx - g.pad];
                            }
                        }
                        gwk[ky * k + kx] += acc;
                    }
                }
            }
        }
    });
    gw
}

/// Forward op: (x, weight, bias) -> y.
struct DepthwiseFwd {
    g: Geom,
}

/// Gradient w.r.t. the input: (grad_out, weight) -> grad_x.
struct DepthwiseGradInput {
    g: Geom,
}

/// Gradient w.r.t. the weight: (grad_out, x) -> grad_w.
struct DepthwiseGradWeight {
    g: Geom,
}

fn geom(x: &Tensor, w: &Tensor, stride: usize, pad: usize) -> Result<Geom> {
    let (n, c, h, wd) = x.dims4()?;
    let (wc, one, k, k2) = w.dims4()?;
    if wc != c || one != 1 || k != k2 {
        candle_core::bail!("depthwise conv: weight {:?} does not fit input {:?}", w.dims(), x.dims())
    }
    if h + 2 * pad < k || wd + 2 * pad < k {
        candle_core::bail!("depthwise conv: input {h}x{wd} smaller than kernel {k} with padding {pad}")
    }
    let ho = (h + 2 * pad - k) / stride + 1;
    let wo = (wd + 2 * pad - k) / stride + 1;
    Ok(Geom { n, c, h, w: wd, k, stride, pad, ho, wo })
}

impl Kernel for DepthwiseFwd {
    const NAME: &'static str = "depthwise conv";
    fn run<T: WithDType>(&self, i: &[&[T]]) -> Vec<T> {
        forward(i[0], i[1], i[2], self.g)
    }
}

impl Kernel for DepthwiseGradInput {
    const NAME: &'static str = "depthwise conv grad";
    fn run<T: WithDType>(&self, i: &[&[T]]) -> Vec<T> {
        grad_input(i[0], i[1], self.g)
    }
}

impl Kernel for DepthwiseGradWeight {
    const NAME: &'static str = "depthwise conv grad";
    fn run<T: WithDType>(&self, i: &[&[T]]) -> Vec<T> {
        grad_weight(i[0], i[1], self.g)
    }
}

impl CustomOp3 for DepthwiseFwd {
    fn name(&self) -> &'static str {
        "depthwise-conv2d"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.g;
        Ok((dispatch(self, &[(s1, l1), (s2, l2), (s3, l3)])?, Shape::from((g.n, g.c, g.ho, g.wo))))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _b: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = self.g;
        let grad = grad.contiguous()?;
        let gx = grad.apply_op2_no_bwd(w, &DepthwiseGradInput { g })?;
        let gw = grad.apply_op2_no_bwd(x, &DepthwiseGradWeight { g })?;
        let gb = grad.sum((0, 2, 3))?;
        Ok((Some(gx), Some(gw), Some(gb)))
    }
}

impl CustomOp2 for DepthwiseGradInput {
    fn name(&self) -> &'static str {
        "depthwise-conv2d-grad-input"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.g;
        Ok((dispatch(self, &[(s1, l1), (s2, l2)])?, Shape::from((g.n, g.c, g.h, g.w))))
    }
}

impl CustomOp2 for DepthwiseGradWeight {
    fn name(&self) -> &'static str {
        "depthwise-conv2d-grad-weight"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.g;
        Ok((dispatch(self, &[(s1, l1), (s2, l2)])?, Shape::from((g.c, 1, g.k, g.k))))
    }
}

/// Depthwise convolution of NCHW `x` with weight (C, 1, k, k) and bias (C).
pub fn depthwise_conv2d(x: &Tensor, w: &Tensor, b: &Tensor, stride: usize, pad: usize) -> Result<Tensor> {
    if stride == 0 {
        candle_core::bail!("depthwise conv: stride must be positive")
    }
    let x = x.contiguous()?;
    let w = w.contiguous()?;
    let b = b.contiguous()?;
    let g = geom(&x, &w, stride, pad)?;
    x.apply_op3(&w, &b, DepthwiseFwd { g })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_util::{check_grads, seeded};
    use candle_core::{DType, Device, Var};

    fn reference(x: &Tensor, w: &Tensor, b: &Tensor, stride: usize, pad: usize) -> Result<Tensor> {
        let c = x.dim(1)?;
        x.conv2d(w, pad, stride, 1, c)?.broadcast_add(&b.reshape((1, c, 1, 1))?)
    }

    #[test]
    fn forward_matches_grouped_conv() -> Result<()> {
        let dev = Device::Cpu;
        for &(n, c, h, w, k, s, p) in &[(2, 3, 9, 7, 7, 1, 3), (1, 4, 8, 8, 3, 2, 1), (2, 2, 5, 6, 3, 1, 0), (1, 3, 7, 5, 3, 2, 0)] {
            let x = seeded(&[n, c, h, w], 1, &dev, DType::F32)?;
            let wt = seeded(&[c, 1, k, k], 2, &dev, DType::F32)?;
            let b = seeded(&[c], 3, &dev, DType::F32)?;
            let ours = depthwise_conv2d(&x, &wt, &b, s, p)?;
            let refr = reference(&x, &wt, &b, s, p)?;
            assert_eq!(ours.dims(), refr.dims());
            let diff = (ours - refr)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
            assert!(diff < 1e-5, "diff {diff} for {:?}", (n, c, h, w, k, s, p));
        }
        Ok(())
    }

    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        let dev = Device::Cpu;
        for &(n, c, h, w, k, s, p) in &[(2, 2, 6, 5, 3, 1, 1), (1, 3, 7, 7, 3, 2, 1), (1, 2, 9, 8, 7, 1, 3), (2, 1, 5, 5, 3, 2, 0)] {
            let x = Var::from_tensor(&seeded(&[n, c, h, w], 4, &dev, DType::F64)?)?;
            let wt = Var::from_tensor(&seeded(&[c, 1, k, k], 5, &dev, DType::F64)?)?;
            let b = Var::from_tensor(&seeded(&[c], 6, &dev, DType::F64)?)?;
            check_grads(&[&x, &wt, &b], |v| depthwise_conv2d(v[0], v[1], v[2], s, p))?;
        }
        Ok(())
    }
}
