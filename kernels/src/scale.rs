//! Per-channel scaling of NCHW tensors (ConvNeXt's layer scale γ), forward and backward in
//! one pass each: candle's broadcast multiply costs a strided reduction for dγ.

use super::kernel::{dispatch, ordered_sum, split, written, Kernel};
use super::simd::simd;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

#[derive(Clone, Copy, Debug)]
struct Dims {
    n: usize,
    c: usize,
    hw: usize,
}

struct Scale {
    d: Dims,
}

/// (x, γ, dy) -> [dx, dγ].
struct ScaleGrad {
    d: Dims,
}

impl Kernel for Scale {
    const NAME: &'static str = "channel scale";
    fn run<T: WithDType>(&self, i: &[&[T]]) -> Vec<T> {
        let (x, gamma, d) = (i[0], i[1], self.d);
        // One item (all channels of one image, or one token) per task unit.
        let item = (d.c * d.hw).max(1);
        written(x.len(), |y| {
            y.par_chunks_mut(item).zip(x.par_chunks(item)).with_min_len((4096 / item).max(1)).for_each(|(y, x)| {
                for ((y, x), &g) in y.chunks_mut(d.hw.max(1)).zip(x.chunks(d.hw.max(1))).zip(gamma) {
                    y.iter_mut().zip(x).for_each(|(y, &x)| {
                        y.write(x * g);
                    });
                }
            })
        })
    }
}

impl Kernel for ScaleGrad {
    const NAME: &'static str = "channel scale grad";
    fn run<T: WithDType>(&self, i: &[&[T]]) -> Vec<T> {
        let (x, gamma, dy, d) = (i[0], i[1], i[2], self.d);
        let mut out = vec![T::zero(); x.len() + d.c];
        let (dx, _) = out.split_at_mut(x.len());
        if d.hw == 1 {
            // Scaling over the last dimension (tokens): rows of C; dγ sums rows in fixed blocks.
            let rows = (4096 / d.c.max(1)).max(1);
            dx.par_chunks_mut(rows * d.c).zip(dy.par_chunks(rows * d.c)).for_each(|(dx, dy)| {
                for (dx, dy) in dx.chunks_mut(d.c).zip(dy.chunks(d.c)) {
                    dx.iter_mut().zip(dy).zip(gamma).for_each(|((dx, &dy), &g)| *dx = dy * g);
                }
            });
            let dg = ordered_sum(d.n.div_ceil(rows), d.c, || (), |acc: &mut [T], _, blocks| {
                for b in blocks {
                    let span = b * rows * d.c..((b + 1) * rows).min(d.n) * d.c;
                    for (x, dy) in x[span.clone()].chunks(d.c).zip(dy[span].chunks(d.c)) {
                        acc.iter_mut().zip(x).zip(dy).for_each(|((a, &x), &dy)| *a += dy * x);
                    }
                }
            });
            out[x.len()..].copy_from_slice(&dg);
            return out;
        }
        // dx per plane; dγ per plane as a side result, summed per channel below.
        let group = PLANES * d.hw;
        let partial: Vec<[T; PLANES]> = dx
            .par_chunks_mut(group)
            .zip(x.par_chunks(group).zip(dy.par_chunks(group)))
            .enumerate()
            .with_min_len((4096 / group.max(1)).max(1))
            .map(|(i, (dx, (x, dy)))| {
                let first = i * PLANES;
                simd!(<T: WithDType> planes_grad(x: &[T] = x, dy: &[T] = dy, dx: &mut [T] = dx, gamma: &[T] = gamma, first: usize = first, d: Dims = d) -> [T; PLANES])
            })
            .collect();
        for (p, v) in partial.iter().flatten().take(d.n * d.c).enumerate() {
            out[x.len() + p % d.c] += *v;
        }
        out
    }
}

/// Planes whose dγ sums run side by side: each plane's Σ dy·x is one chain of dependent adds
/// (its order fixes the bits), so a single plane runs at one add per add latency; eight
/// independent chains keep the adder busy.
const PLANES: usize = 8;

/// dx = dy·γ and Σ dy·x of up to [`PLANES`] consecutive planes (the first is plane `first` of
/// the batch), each sum in position order.
#[inline(always)]
fn planes_grad<T: WithDType>(x: &[T], dy: &[T], dx: &mut [T], gamma: &[T], first: usize, d: Dims) -> [T; PLANES] {
    let hw = d.hw;
    let m = x.len() / hw;
    for (j, (dx, dy)) in dx.chunks_exact_mut(hw).zip(dy.chunks_exact(hw)).enumerate() {
        let g = gamma[(first + j) % d.c];
        dx.iter_mut().zip(dy).for_each(|(dx, &dy)| *dx = dy * g);
    }
    let mut acc = [T::zero(); PLANES];
    if m == PLANES {
        let xs: [&[T]; PLANES] = std::array::from_fn(|j| &x[j * hw..(j + 1) * hw]);
        let gs: [&[T]; PLANES] = std::array::from_fn(|j| &dy[j * hw..(j + 1) * hw]);
        for i in 0..hw {
            for j in 0..PLANES {
                acc[j] += gs[j][i] * xs[j][i];
            }
        }
    } else {
        for (a, (x, dy)) in acc.iter_mut().zip(x.chunks_exact(hw).zip(dy.chunks_exact(hw))) {
            *a = x.iter().zip(dy).fold(T::zero(), |s, (&x, &dy)| s + dy * x);
        }
    }
    acc
}

impl CustomOp2 for Scale {
    fn name(&self) -> &'static str {
        "channel-scale"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok((dispatch(self, &[(s1, l1), (s2, l2)])?, l1.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, gamma: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let all = x.apply_op3_no_bwd(gamma, &grad.contiguous()?, &ScaleGrad { d: self.d })?;
        let [dx, dgamma] = split(&all, [x.shape(), gamma.shape()])?;
        Ok((Some(dx), Some(dgamma)))
    }
}

impl CustomOp3 for ScaleGrad {
    fn name(&self) -> &'static str {
        "channel-scale-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok((dispatch(self, &[(s1, l1), (s2, l2), (s3, l3)])?, Shape::from(self.d.n * self.d.c * self.d.hw + self.d.c)))
    }
}

/// `x · γ[c]` for NCHW `x` and γ of size C.
pub fn scale_channels(x: &Tensor, gamma: &Tensor) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    if gamma.elem_count() != c {
        candle_core::bail!("channel scale: γ {:?} does not fit {:?}", gamma.shape(), x.shape())
    }
    super::tape::apply2([x, gamma], [&x.contiguous()?, &gamma.contiguous()?], Scale { d: Dims { n, c, hw: h * w } })
}

/// `x · γ` over the last dimension of `x` (tokens: LayerScale, MetaFormer's res scale);
/// γ has as many elements as that dimension.
pub fn scale_last(x: &Tensor, gamma: &Tensor) -> Result<Tensor> {
    let c = x.dim(x.rank().saturating_sub(1))?;
    if gamma.elem_count() != c || c == 0 {
        candle_core::bail!("scale: γ {:?} does not fit the last dimension of {:?}", gamma.shape(), x.shape())
    }
    let args = [&x.contiguous()?, &gamma.flatten_all()?.contiguous()?];
    super::tape::apply2([x, gamma], args, Scale { d: Dims { n: x.elem_count() / c, c, hw: 1 } })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{check_grads, seeded};
    use candle_core::{DType, Device, Var};

    #[test]
    fn matches_broadcast_multiply_and_finite_differences() -> Result<()> {
        let dev = Device::Cpu;
        let x = seeded(&[2, 3, 4, 5], 1, &dev, DType::F32)?;
        let g = seeded(&[3], 2, &dev, DType::F32)?;
        let d = (scale_channels(&x, &g)? - x.broadcast_mul(&g.reshape((1, 3, 1, 1))?)?)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
        assert_eq!(d, 0.0);
        // 18 planes: two full groups of eight whose dγ sums run side by side, and two more.
        let x = Var::from_tensor(&seeded(&[2, 9, 2, 3], 3, &dev, DType::F64)?)?;
        let g = Var::from_tensor(&seeded(&[9], 4, &dev, DType::F64)?)?;
        check_grads(&[&x, &g], |v| scale_channels(v[0], v[1]))
    }

    #[test]
    fn last_dimension_matches_broadcast_multiply_and_finite_differences() -> Result<()> {
        let dev = Device::Cpu;
        // 2·700 rows of 7: more than one block of rows, so the ordered dγ sum is exercised.
        let x = seeded(&[2, 700, 7], 1, &dev, DType::F32)?;
        let g = seeded(&[7], 2, &dev, DType::F32)?;
        assert_eq!((scale_last(&x, &g)? - x.broadcast_mul(&g)?)?.abs()?.max_all()?.to_scalar::<f32>()?, 0.0);
        let x = Var::from_tensor(&seeded(&[2, 3, 4], 3, &dev, DType::F64)?)?;
        let g = Var::from_tensor(&seeded(&[4], 4, &dev, DType::F64)?)?;
        check_grads(&[&x, &g], |v| scale_last(v[0], v[1]))?;
        check_grads(&[&x, &g], |v| scale_last(&v[0].transpose(0, 1)?, v[1]))
    }
}
