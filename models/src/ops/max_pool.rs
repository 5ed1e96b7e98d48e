//! 2-D max pooling with padding and any kernel / stride (ResNet's stem pool is 3×3, stride
//! 2, padding 1). candle's max-pool has no padding, scales its gradient by 1/(k·k) and
//! refuses kernel ≠ stride in backward (NOTES.md). The gradient goes to the first maximum
//! of each window, as in PyTorch.

use super::kernel::{dispatch, Kernel, WindowGeom as Geom};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

impl Geom {
    /// Flat index (within the plane) of the first maximum of window (oy, ox); padding never wins.
    fn argmax<T: WithDType>(&self, plane: &[T], oy: usize, ox: usize) -> usize {
        let y0 = (oy * self.stride) as isize - self.pad as isize;
        let x0 = (ox * self.stride) as isize - self.pad as isize;
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

struct MaxPool {
    g: Geom,
}

/// (x, grad_out) -> grad_x.
struct MaxPoolGrad {
    g: Geom,
}

impl Kernel for MaxPool {
    const NAME: &'static str = "max pool";
    fn run<T: WithDType>(&self, i: &[&[T]]) -> Vec<T> {
        let g = self.g;
        let (pin, pout) = (g.h * g.w, g.ho * g.wo);
        let mut y = vec![T::zero(); g.n * g.c * pout];
        y.par_chunks_mut(pout).zip(i[0].par_chunks(pin)).for_each(|(y, x)| {
            for oy in 0..g.ho {
                for ox in 0..g.wo {
                    y[oy * g.wo + ox] = x[g.argmax(x, oy, ox)];
                }
            }
        });
        y
    }
}

impl Kernel for MaxPoolGrad {
    const NAME: &'static str = "max pool grad";
    fn run<T: WithDType>(&self, i: &[&[T]]) -> Vec<T> {
        let g = self.g;
        let (pin, pout) = (g.h * g.w, g.ho * g.wo);
        let mut dx = vec![T::zero(); g.n * g.c * pin];
        dx.par_chunks_mut(pin).zip(i[0].par_chunks(pin).zip(i[1].par_chunks(pout))).for_each(|(dx, (x, dy))| {
            for oy in 0..g.ho {
                for ox in 0..g.wo {
                    dx[g.argmax(x, oy, ox)] += dy[oy * g.wo + ox];
                }
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
        Ok(Some(x.apply_op2_no_bwd(&grad.contiguous()?, &MaxPoolGrad { g: self.g })?))
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
    super::tape::apply1(x, &x.contiguous()?, MaxPool { g })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_util::{check_grads, seeded};
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
        // NOTES.md: candle's max_pool2d(2) on a 4×4 arange gives 0.25 per max instead of 1.
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
    fn gradients_match_finite_differences() -> Result<()> {
        let dev = Device::Cpu;
        for &(h, w, k, s, p) in &[(7, 6, 3, 2, 1), (5, 5, 2, 2, 0), (6, 7, 3, 1, 1)] {
            let x = Var::from_tensor(&seeded(&[2, 2, h, w], 7, &dev, DType::F64)?)?;
            check_grads(&[&x], |v| max_pool2d(v[0], k, s, p))?;
        }
        Ok(())
    }
}
