//! StarReLU, s·relu(x)² + b with learned scalars s and b (MetaFormer / CAFormer's MLP
//! activation), forward and backward in one pass each. As candle ops it is a ReLU, a
//! square, a broadcast multiply and add, and a backward with two full reductions for ds
//! and db that candle runs on one thread: 12 % of a CAFormer-S18 step.

use super::kernel::{dispatch, split, written, Kernel};
use std::mem::MaybeUninit;
use super::simd::simd;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

const CHUNK: usize = 16384;

struct StarRelu;
/// (x, [s, b], dy) -> [dx, ds, db].
struct StarReluGrad;

impl Kernel for StarRelu {
    const NAME: &'static str = "star relu";
    fn run<T: WithDType>(&self, i: &[&[T]]) -> Vec<T> {
        let (x, s, b) = (i[0], i[1][0], i[2][0]);
        written(x.len(), |y| {
            y.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(y, x)| simd!(<T: WithDType> forward_chunk(x: &[T] = x, y: &mut [MaybeUninit<T>] = y, s: T = s, b: T = b)));
        })
    }
}

#[inline(always)]
fn forward_chunk<T: WithDType>(x: &[T], y: &mut [MaybeUninit<T>], s: T, b: T) {
    for (y, &x) in y.iter_mut().zip(x) {
        let r = if x > T::zero() { x } else { T::zero() };
        y.write(s * (r * r) + b);
    }
}

impl Kernel for StarReluGrad {
    const NAME: &'static str = "star relu grad";
    fn run<T: WithDType>(&self, i: &[&[T]]) -> Vec<T> {
        let (x, s, dy) = (i[0], i[1][0], i[2]);
        let n = x.len();
        let mut out = vec![T::zero(); n + 2];
        let two_s = s + s;
        // dx per chunk, with the chunk's partial ds and db; chunks are summed in order, so
        // the result does not depend on the thread count.
        let partial: Vec<[T; 2]> = out[..n]
            .par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK).zip(dy.par_chunks(CHUNK)))
            .map(|(dx, (x, dy))| simd!(<T: WithDType> grad_chunk(x: &[T] = x, dy: &[T] = dy, dx: &mut [T] = dx, two_s: T = two_s) -> [T; 2]))
            .collect();
        for p in partial {
            out[n] += p[0];
            out[n + 1] += p[1];
        }
        out
    }
}

/// dx = dy·2s·relu(x) and [Σ dy·relu(x)², Σ dy] over one chunk, in 8 lanes of partial sums
/// (one running sum is a chain of dependent adds).
#[inline(always)]
fn grad_chunk<T: WithDType>(x: &[T], dy: &[T], dx: &mut [T], two_s: T) -> [T; 2] {
    const L: usize = 8;
    let (mut ds, mut db) = ([T::zero(); L], [T::zero(); L]);
    let step = |x: T, g: T, dx: &mut T, ds: &mut T, db: &mut T| {
        let r = if x > T::zero() { x } else { T::zero() };
        *dx = if x > T::zero() { g * two_s * x } else { T::zero() };
        *ds += g * (r * r);
        *db += g;
    };
    let whole = x.len() / L * L;
    for ((x, g), d) in x[..whole].chunks_exact(L).zip(dy[..whole].chunks_exact(L)).zip(dx[..whole].chunks_exact_mut(L)) {
        for l in 0..L {
            step(x[l], g[l], &mut d[l], &mut ds[l], &mut db[l]);
        }
    }
    for (j, ((&x, &g), d)) in x[whole..].iter().zip(&dy[whole..]).zip(&mut dx[whole..]).enumerate() {
        step(x, g, d, &mut ds[j], &mut db[j]);
    }
    let sum = |v: [T; L]| v.into_iter().fold(T::zero(), |a, b| a + b);
    [sum(ds), sum(db)]
}

impl CustomOp3 for StarRelu {
    fn name(&self) -> &'static str {
        "star-relu"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok((dispatch(self, &[(s1, l1), (s2, l2), (s3, l3)])?, l1.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, s: &Tensor, b: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let all = x.apply_op3_no_bwd(s, &grad.contiguous()?, &StarReluGrad)?;
        let [dx, ds, db] = split(&all, [x.shape(), s.shape(), b.shape()])?;
        Ok((Some(dx), Some(ds), Some(db)))
    }
}

impl CustomOp3 for StarReluGrad {
    fn name(&self) -> &'static str {
        "star-relu-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok((dispatch(self, &[(s1, l1), (s2, l2), (s3, l3)])?, Shape::from(l1.shape().elem_count() + 2)))
    }
}

/// s·relu(x)² + b for scalars s and b (one element each).
pub fn star_relu(x: &Tensor, s: &Tensor, b: &Tensor) -> Result<Tensor> {
    if s.elem_count() != 1 || b.elem_count() != 1 {
        candle_core::bail!("star relu: scale {:?} and bias {:?} must be scalars", s.shape(), b.shape())
    }
    let args = [&x.contiguous()?, &s.flatten_all()?.contiguous()?, &b.flatten_all()?.contiguous()?];
    super::tape::apply3([x, s, b], args, StarRelu)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{check_grads, seeded};
    use candle_core::{DType, Device, Var};

    #[test]
    fn matches_the_composition_with_correct_gradients() -> Result<()> {
        let dev = Device::Cpu;
        // Over one chunk, so the ordered partial sums are exercised.
        let x = seeded(&[3, 70, 100], 1, &dev, DType::F32)?;
        let (s, b) = (Tensor::new(&[0.7f32], &dev)?, Tensor::new(&[-0.2f32], &dev)?);
        let want = x.relu()?.sqr()?.broadcast_mul(&s)?.broadcast_add(&b)?;
        assert!((star_relu(&x, &s, &b)? - want)?.abs()?.max_all()?.to_scalar::<f32>()? < 1e-6);
        // Away from the kink, where the finite difference is defined.
        let x = Var::from_tensor(&seeded(&[2, 3, 4], 2, &dev, DType::F64)?.affine(1.0, 0.013)?)?;
        let s = Var::from_tensor(&Tensor::new(&[1.3f64], &dev)?)?;
        let b = Var::from_tensor(&Tensor::new(&[0.4f64], &dev)?)?;
        check_grads(&[&x, &s, &b], |t| star_relu(t[0], t[1], t[2]))?;
        check_grads(&[&x, &s, &b], |t| star_relu(&t[0].t()?, t[1], t[2]))
    }
}
