//! Swin's shifted-window partition as one gather, and its inverse as one scatter. Through
//! candle the partition is two rolls (each a pair of narrows and a concatenation), a pad and
//! a permuted copy, and the reverse the same backwards: five copies of the block's
//! activations forward and five in the backward, 1.5 % of a Swin-T training step. Both are
//! the same permutation of pixels, so each is the other's backward.

use super::kernel::{dispatch, written, Kernel};
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;
use std::sync::Arc;

/// Where each pixel of the windows comes from.
#[derive(Clone, Debug)]
struct WindowMap {
    /// Source pixel (row-major in h × w) of every window position — windows row-major,
    /// then rows and columns inside the window — or `None` for the zero padding.
    src: Arc<Vec<Option<u32>>>,
    /// Pixels per image (h·w) and channels.
    pixels: usize,
    c: usize,
}

impl WindowMap {
    /// Rolled by −shift on both axes (`torch.roll(x, (-shift, -shift), (1, 2))`), padded at
    /// the end to multiples of ws, cut into ws × ws windows.
    fn new(h: usize, w: usize, c: usize, ws: usize, shift: usize) -> WindowMap {
        let (hp, wp) = (h.div_ceil(ws) * ws, w.div_ceil(ws) * ws);
        let mut src = Vec::with_capacity(hp * wp);
        for wi in 0..hp / ws {
            for wj in 0..wp / ws {
                for a in 0..ws {
                    for b in 0..ws {
                        let (r, col) = (wi * ws + a, wj * ws + b);
                        src.push((r < h && col < w).then(|| (((r + shift) % h) * w + (col + shift) % w) as u32));
                    }
                }
            }
        }
        WindowMap { src: Arc::new(src), pixels: h * w, c }
    }

    fn positions(&self) -> usize {
        self.src.len()
    }
}

/// (N, h, w, C) → (N·windows, ws², C).
#[derive(Clone)]
struct Gather(WindowMap);
/// (N·windows, ws², C) → (N, h, w, C).
#[derive(Clone)]
struct Scatter(WindowMap);

impl Kernel for Gather {
    const NAME: &'static str = "window partition";
    fn run<T: WithDType>(&self, i: &[&[T]]) -> Vec<T> {
        let (m, x) = (&self.0, i[0]);
        let (c, n) = (m.c, x.len() / (m.pixels * m.c).max(1));
        written(n * m.positions() * c, |out| {
            out.par_chunks_mut(m.positions() * c).zip(x.par_chunks(m.pixels * c)).for_each(|(out, x)| {
                for (o, s) in out.chunks_exact_mut(c).zip(m.src.iter()) {
                    match s {
                        Some(p) => o.iter_mut().zip(&x[*p as usize * c..][..c]).for_each(|(o, &v)| {
                            o.write(v);
                        }),
                        None => o.iter_mut().for_each(|o| {
                            o.write(T::zero());
                        }),
                    }
                }
            })
        })
    }
}

impl Kernel for Scatter {
    const NAME: &'static str = "window reverse";
    fn run<T: WithDType>(&self, i: &[&[T]]) -> Vec<T> {
        let (m, y) = (&self.0, i[0]);
        let (c, n) = (m.c, y.len() / (m.positions() * m.c).max(1));
        // Every pixel is the source of exactly one window position, so all are written.
        written(n * m.pixels * c, |out| {
            out.par_chunks_mut(m.pixels * c).zip(y.par_chunks(m.positions() * c)).for_each(|(out, y)| {
                for (v, s) in y.chunks_exact(c).zip(m.src.iter()) {
                    if let Some(p) = s {
                        out[*p as usize * c..][..c].iter_mut().zip(v).for_each(|(o, &v)| {
                            o.write(v);
                        });
                    }
                }
            })
        })
    }
}

impl CustomOp1 for Gather {
    fn name(&self) -> &'static str {
        "window-partition"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let m = &self.0;
        let n = l.shape().elem_count() / (m.pixels * m.c).max(1);
        Ok((dispatch(self, &[(s, l)])?, Shape::from((n, m.positions(), m.c))))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1(Scatter(self.0.clone()))?.reshape(x.shape())?))
    }
}

impl CustomOp1 for Scatter {
    fn name(&self) -> &'static str {
        "window-reverse"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let m = &self.0;
        let n = l.shape().elem_count() / (m.positions() * m.c).max(1);
        Ok((dispatch(self, &[(s, l)])?, Shape::from((n, m.pixels, m.c))))
    }

    fn bwd(&self, y: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1(Gather(self.0.clone()))?.reshape(y.shape())?))
    }
}

/// [`super::Ops::window_partition`] on the CPU: x (N, h, w, C) → (N·windows, ws², C).
pub fn window_partition(x: &Tensor, ws: usize, shift: usize) -> Result<Tensor> {
    let (n, h, w, c) = x.dims4()?;
    if ws == 0 {
        candle_core::bail!("window partition: a window of 0 pixels")
    }
    let m = WindowMap::new(h, w, c, ws, shift);
    let windows = m.positions() / (ws * ws);
    let y = super::tape::apply1(x, &x.contiguous()?, Gather(m))?;
    super::tape::reshape(&y, (n * windows, ws * ws, c))
}

/// [`super::Ops::window_reverse`] on the CPU: y (N·windows, ws², C) → (N, h, w, C).
pub fn window_reverse(y: &Tensor, ws: usize, shift: usize, h: usize, w: usize) -> Result<Tensor> {
    let (nw, l, c) = y.dims3()?;
    let per_image = if ws == 0 { 0 } else { h.div_ceil(ws) * w.div_ceil(ws) };
    if per_image == 0 || l != ws * ws || nw % per_image != 0 {
        candle_core::bail!("window reverse: {:?} is not windows of {ws}x{ws} over {h}x{w} (shift {shift})", y.dims())
    }
    let n = nw / per_image;
    let m = WindowMap::new(h, w, c, ws, shift);
    let x = super::tape::apply1(y, &y.contiguous()?, Scatter(m))?;
    super::tape::reshape(&x, (n, h, w, c))
}

#[cfg(test)]
mod tests {
    use crate::testing::{check_grads, seeded};
    use crate::{CandleOps, Ops};
    use candle_core::{DType, Device, Result, Tensor, Var};

    fn max_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
        (a - b)?.abs()?.flatten_all()?.max(0)?.to_dtype(DType::F64)?.to_scalar::<f64>()
    }

    #[test]
    fn gather_equals_the_rolls_pad_and_permute_with_correct_gradients() -> Result<()> {
        let (kernels, composed) = (CandleOps::eval(), CandleOps::eval().portable());
        // Shifted and not, with and without padding (5 × 6 in windows of 3 and 4).
        for (h, w, ws, shift) in [(6, 6, 3, 1), (6, 6, 3, 0), (5, 6, 3, 1), (5, 6, 4, 2), (7, 7, 7, 0)] {
            let c = 2;
            let x = seeded(&[2, h, w, c], 1, &Device::Cpu, DType::F32)?;
            let ours = kernels.window_partition(&x, ws, shift, (h, w, c))?;
            let want = composed.window_partition(&x, ws, shift, (h, w, c))?;
            assert_eq!(ours.dims(), want.dims());
            assert_eq!(max_diff(&ours, &want)?, 0.0, "{h}x{w} ws {ws} shift {shift}");
            let back = kernels.window_reverse(&ours, ws, shift, (h, w, c))?;
            assert_eq!(max_diff(&back, &composed.window_reverse(&want, ws, shift, (h, w, c))?)?, 0.0);
            assert_eq!(max_diff(&back, &x)?, 0.0, "the reverse undoes the partition");
            let v = Var::from_tensor(&seeded(&[2, h, w, c], 2, &Device::Cpu, DType::F64)?)?;
            check_grads(&[&v], |t| kernels.window_partition(t[0], ws, shift, (h, w, c)))?;
            let windows = ours.dim(0)?;
            let y = Var::from_tensor(&seeded(&[windows, ws * ws, c], 3, &Device::Cpu, DType::F64)?)?;
            check_grads(&[&y], |t| kernels.window_reverse(t[0], ws, shift, (h, w, c)))?;
        }
        Ok(())
    }
}
