//! Batched transpose of the last two dimensions, (B, R, C) → (B, C, R): NCHW maps to
//! (N, H·W, C) tokens and back (PVT, CAFormer and every patch embedding), forward and
//! backward. candle copies such a layout one element at a time through a strided index
//! (20 % of a PVT-v2 step); here each task writes a band of output rows, reading the input
//! a cache line at a time.

use super::kernel::{dispatch, written, Kernel};
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

/// Output rows per task, and input rows per tile: a 64×64 tile of f32 is 16 KiB in and
/// 16 KiB out, within L1, so the strided side of the copy reads from cache.
const BAND: usize = 64;
const TILE: usize = 64;

#[derive(Clone, Copy, Debug)]
struct Transpose {
    b: usize,
    r: usize,
    c: usize,
}

impl Kernel for Transpose {
    const NAME: &'static str = "transpose";
    fn run<T: WithDType>(&self, i: &[&[T]]) -> Vec<T> {
        let (x, Transpose { b: _, r, c }) = (i[0], *self);
        if r == 0 || c == 0 {
            return Vec::new();
        }
        written(x.len(), |y| y.par_chunks_mut(r * c).zip(x.par_chunks(r * c)).for_each(|(y, x)| {
            y.par_chunks_mut(BAND * r).enumerate().for_each(|(band, y)| {
                let j0 = band * BAND;
                let rows = y.len() / r;
                for i0 in (0..r).step_by(TILE) {
                    let i1 = (i0 + TILE).min(r);
                    for (k, yrow) in y.chunks_exact_mut(r).enumerate().take(rows) {
                        for (t, yv) in yrow[i0..i1].iter_mut().enumerate() {
                            yv.write(x[(i0 + t) * c + j0 + k]);
                        }
                    }
                }
            });
        }))
    }
}

impl CustomOp1 for Transpose {
    fn name(&self) -> &'static str {
        "transpose"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok((dispatch(self, &[(s, l)])?, Shape::from((self.b, self.c, self.r))))
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let t = Transpose { b: self.b, r: self.c, c: self.r };
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&t)?))
    }
}

/// The (C, R) transpose of a row-major R×C matrix.
pub(crate) fn transposed<T: WithDType>(x: &[T], r: usize, c: usize) -> Vec<T> {
    Transpose { b: 1, r, c }.run(&[x])
}

/// The (B, C, R) transpose of B row-major R×C matrices.
pub(crate) fn transposed_batch<T: WithDType>(x: &[T], b: usize, r: usize, c: usize) -> Vec<T> {
    Transpose { b, r, c }.run(&[x])
}

/// (B, R, C) → (B, C, R), contiguous, on the CPU.
pub fn transpose_last2(x: &Tensor) -> Result<Tensor> {
    let (b, r, c) = x.dims3()?;
    super::tape::apply1(x, &x.contiguous()?, Transpose { b, r, c })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{check_grads, seeded};
    use candle_core::{DType, Device, Var};

    #[test]
    fn matches_candle_transpose_with_correct_gradients() -> Result<()> {
        let dev = Device::Cpu;
        // Bands of 16 output rows and a partial last band; a strided input.
        for (b, r, c) in [(2, 37, 40), (1, 5, 3), (3, 16, 16)] {
            let x = seeded(&[b, r, c], 1, &dev, DType::F32)?;
            let want: Vec<f32> = x.transpose(1, 2)?.flatten_all()?.to_vec1()?;
            assert_eq!(transpose_last2(&x)?.flatten_all()?.to_vec1::<f32>()?, want);
            assert_eq!(transpose_last2(&x.transpose(1, 2)?)?.dims(), &[b, r, c]);
        }
        let v = Var::from_tensor(&seeded(&[2, 3, 5], 2, &dev, DType::F64)?)?;
        check_grads(&[&v], |t| transpose_last2(t[0]))?;
        check_grads(&[&v], |t| transpose_last2(&t[0].transpose(1, 2)?))
    }
}
