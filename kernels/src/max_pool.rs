//! 2-D max pooling with padding and any kernel / stride (ResNet's stem pool is 3×3, stride
//! 2, padding 1). candle's max-pool has no padding, scales its gradient by 1/(k·k) and
//! refuses kernel ≠ stride in backward (docs/kernels.md). The gradient goes to the first maximum
//! of each window, as in PyTorch.

use super::kernel::{dispatch, written, Kernel, WindowGeom as Geom};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;
use std::sync::{Arc, OnceLock};

impl Geom {
    /// Flat index (within the plane) of the first maximum of window (oy, ox); padding never wins.
    #[inline(always)]
    fn argmax<T: WithDType>(&self, plane: &[T], oy: usize, ox: usize) -> usize {
        let (ys, xs) = (oy * self.stride, ox * self.stride);
        if ys >= self.pad && xs >= self.pad && ys + self.k <= self.h + self.pad && xs + self.k <= self.w + self.pad {
            // Inside the image: no bounds to test, the same first-maximum scan.
            let base = (ys - self.pad) * self.w + xs - self.pad;
            let (mut bi, mut bv) = (base, plane[base]);
            for row in (0..self.k).map(|dy| base + dy * self.w) {
                for (i, &v) in plane[row..row + self.k].iter().enumerate() {
                    if v > bv {
                        (bi, bv) = (row + i, v);
                    }
                }
            }
            return bi;
        }
        let y0 = ys as isize - self.pad as isize;
        let x0 = xs as isize - self.pad as isize;
        let mut best: Option<(usize, T)> = None;
        for dy in 0..self.k as isize {
            let y = y0 + dy;
            if y < 0 || y >= self.h as isize {
                continue;
            }
            for dx in 0..self.k as isize {
                let x = x0 + dx;
                if x < 0 || x >= self.w as isize {
                    continue;
                }
                let i = y as usize * self.w + x as usize;
                let v = plane[i];
                if best.is_none_or(|(_, b)| v > b) {
                    best = Some((i, v));
                }
            }
        }
        // Every window overlaps the image when padding < kernel (checked in `max_pool2d`).
        best.map_or(0, |(i, _)| i)
    }
}

/// Where each output's maximum is (its index within the input plane), found by the forward
/// pass and read by the backward, which otherwise searched every window again.
type Argmax = Arc<OnceLock<Vec<u32>>>;

struct MaxPool {
    g: Geom,
    argmax: Argmax,
}

/// (x, grad_out) -> grad_x.
struct MaxPoolGrad {
    g: Geom,
    argmax: Argmax,
}

impl Kernel for MaxPool {
    const NAME: &'static str = "max pool";
    fn run<T: WithDType>(&self, i: &[&[T]]) -> Vec<T> {
        let g = self.g;
        let (pin, pout) = (g.h * g.w, g.ho * g.wo);
        let mut idx = vec![0u32; g.n * g.c * pout];
        let y = written(g.n * g.c * pout, |y| {
            y.par_chunks_mut(pout).zip(idx.par_chunks_mut(pout)).zip(i[0].par_chunks(pin)).for_each(|((y, idx), x)| {
                for oy in 0..g.ho {
                    for ox in 0..g.wo {
                        let a = g.argmax(x, oy, ox);
                        idx[oy * g.wo + ox] = a as u32;
                        y[oy * g.wo + ox].write(x[a]);
                    }
                }
            })
        });
        // Each op runs forward once; a second run would only find the same indices again.
        let _ = self.argmax.set(idx);
        y
    }
}

impl Kernel for MaxPoolGrad {
    const NAME: &'static str = "max pool grad";
    fn run<T: WithDType>(&self, i: &[&[T]]) -> Vec<T> {
        let g = self.g;
        let (pin, pout) = (g.h * g.w, g.ho * g.wo);
        let idx = self.argmax.get_or_init(|| {
            i[0].par_chunks(pin).flat_map_iter(|x| (0..pout).map(move |o| g.argmax(x, o / g.wo, o % g.wo) as u32)).collect()
        });
        let mut dx = vec![T::zero(); g.n * g.c * pin];
        dx.par_chunks_mut(pin).zip(idx.par_chunks(pout).zip(i[1].par_chunks(pout))).for_each(|(dx, (idx, dy))| {
            for (&a, &d) in idx.iter().zip(dy) {
                dx[a as usize] += d;
            }
        });
        dx
    }
}

impl CustomOp1 for MaxPool {
    fn name(&self) -> &'static str {
        "max-pool2d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.g;
        Ok((dispatch(self, &[(s, l)])?, Shape::from((g.n, g.c, g.ho, g.wo))))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(&grad.contiguous()?, &MaxPoolGrad { g: self.g, argmax: self.argmax.clone() })?))
    }
}

impl CustomOp2 for MaxPoolGrad {
    fn name(&self) -> &'static str {
        "max-pool2d-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok((dispatch(self, &[(s1, l1), (s2, l2)])?, l1.shape().clone()))
    }
}

/// Output size of max pooling an h×w input (PyTorch's floor rule), or why the geometry is
/// invalid. Shared by this kernel and the portable composition.
pub fn output_size(h: usize, w: usize, kernel: usize, stride: usize, padding: usize) -> Result<(usize, usize)> {
    if kernel == 0 || stride == 0 || 2 * padding > kernel {
        candle_core::bail!("max pool: kernel {kernel}, stride {stride}, padding {padding} is not valid (padding ≤ kernel/2)")
    }
    if h + 2 * padding < kernel || w + 2 * padding < kernel {
        candle_core::bail!("max pool: input {h}x{w} is smaller than the {kernel}x{kernel} window")
    }
    Ok(((h + 2 * padding - kernel) / stride + 1, (w + 2 * padding - kernel) / stride + 1))
}

/// Max pooling of NCHW `x` (PyTorch semantics: floor output size, padding never selected).
pub fn max_pool2d(x: &Tensor, kernel: usize, stride: usize, padding: usize) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let (ho, wo) = output_size(h, w, kernel, stride, padding)?;
    let g = Geom { n, c, h, w, k: kernel, stride, pad: padding, ho, wo };
    if (h * w) as u64 > u32::MAX as u64 {
        candle_core::bail!("max pool: a {h}x{w} plane is too large")
    }
    super::tape::apply1(x, &x.contiguous()?, MaxPool { g, argmax: Argmax::default() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{check_grads, seeded};
    use candle_core::{DType, Device, Var};

    #[test]
    fn forward_matches_a_padded_reference() -> Result<()> {
        let dev = Device::Cpu;
        let x = seeded(&[2, 3, 7, 6], 1, &dev, DType::F32)?;
        let y = max_pool2d(&x, 3, 2, 1)?;
        assert_eq!(y.dims(), &[2, 3, 4, 3]);
        // Reference: pad with -inf, then candle's own (unpadded) max-pool over each window.
        let big = Tensor::full(f32::NEG_INFINITY, (2, 3, 9, 8), &dev)?;
        let xp = big.slice_assign(&[0..2, 0..3, 1..8, 1..7], &x)?;
        for oy in 0..4 {
            for ox in 0..3 {
                let win = xp.narrow(2, oy * 2, 3)?.narrow(3, ox * 2, 3)?.flatten_from(2)?.max(2)?;
                let got = y.narrow(2, oy, 1)?.narrow(3, ox, 1)?.flatten_from(2)?.squeeze(2)?;
                let d = (win - got)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
                assert_eq!(d, 0.0);
            }
        }
        Ok(())
    }

    #[test]
    fn gradient_goes_to_the_maximum_once() -> Result<()> {
        // docs/kernels.md: candle's max_pool2d(2) on a 4×4 arange gives 0.25 per max instead of 1.
        let x = Var::from_tensor(&Tensor::arange(0f32, 16.0, &Device::Cpu)?.reshape((1, 1, 4, 4))?)?;
        let g = max_pool2d(x.as_tensor(), 2, 2, 0)?.sum_all()?.backward()?;
        let gx: Vec<f32> = g.get(x.as_tensor()).unwrap().flatten_all()?.to_vec1()?;
        let mut want = vec![0f32; 16];
        for i in [5, 7, 13, 15] {
            want[i] = 1.0;
        }
        assert_eq!(gx, want);
        Ok(())
    }

    #[test]
    fn ties_send_the_gradient_to_the_first_maximum() -> Result<()> {
        // PyTorch's rule; a border window (padding) and interior ones, overlapping.
        let x = Var::from_tensor(&Tensor::ones((1, 1, 5, 5), DType::F32, &Device::Cpu)?)?;
        let g = max_pool2d(x.as_tensor(), 3, 2, 1)?.sum_all()?.backward()?;
        let gx: Vec<f32> = g.get(x.as_tensor()).unwrap().flatten_all()?.to_vec1()?;
        // Windows start at rows / columns −1, 1, 3: first in-image element 0, 1, 3.
        let mut want = vec![0f32; 25];
        for r in [0, 1, 3] {
            for c in [0, 1, 3] {
                want[r * 5 + c] = 1.0;
            }
        }
        assert_eq!(gx, want);
        Ok(())
    }

    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        let dev = Device::Cpu;
        for &(h, w, k, s, p) in &[(7, 6, 3, 2, 1), (5, 5, 2, 2, 0), (6, 7, 3, 1, 1)] {
            let x = Var::from_tensor(&seeded(&[2, 2, h, w], 7, &dev, DType::F64)?)?;
            check_grads(&[&x], |v| max_pool2d(v[0], k, s, p))?;
        }
        Ok(())
    }
}
