//! a + b for two CPU tensors of one shape, in rayon's pool: the residual connections and the
//! tape's gradient sums at branch points. candle's own add runs in its barrier pool, whose
//! parked workers have to be woken for every op while rayon's are already busy with the
//! kernels around it; that hand-off costs the same at any resolution, so it weighs most in
//! ET++'s low-resolution steps (docs/performance.md).

use super::kernel::{dispatch, map2, Kernel};
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor, WithDType};

struct Add;

impl Kernel for Add {
    const NAME: &'static str = "add";
    fn run<T: WithDType>(&self, i: &[&[T]]) -> Vec<T> {
        map2(i[0], i[1], |a, b| a + b)
    }
}

impl CustomOp2 for Add {
    fn name(&self) -> &'static str {
        "add"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok((dispatch(self, &[(s1, l1), (s2, l2)])?, l1.shape().clone()))
    }

    fn bwd(&self, _a: &Tensor, _b: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(grad.clone()), Some(grad.clone())))
    }
}

/// Whether [`add`] computes `a + b` itself (else it is candle's, with broadcasting).
pub(crate) fn fits(a: &Tensor, b: &Tensor) -> bool {
    a.device().is_cpu() && a.shape() == b.shape() && a.dtype() == b.dtype() && matches!(a.dtype(), DType::F32 | DType::F64)
}

/// a + b, recorded on the tape as candle's add would be.
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if !fits(a, b) {
        candle_core::bail!("add: {:?} {:?} and {:?} {:?} need one shape and dtype on the CPU", a.shape(), a.dtype(), b.shape(), b.dtype())
    }
    super::tape::apply2([a, b], [&a.contiguous()?, &b.contiguous()?], Add)
}

/// a + b outside any tape (gradient sums), through candle where [`add`] does not fit.
pub(crate) fn sum(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if !fits(a, b) {
        return a + b;
    }
    a.contiguous()?.apply_op2_no_bwd(&b.contiguous()?, &Add)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{check_grads, seeded};
    use candle_core::{Device, Var};

    #[test]
    fn equals_candle_with_correct_gradients() -> Result<()> {
        let dev = Device::Cpu;
        // Larger than one parallel chunk, and a transposed (non-contiguous) operand.
        let (a, b) = (seeded(&[3, 101, 113], 1, &dev, DType::F32)?, seeded(&[3, 113, 101], 2, &dev, DType::F32)?.transpose(1, 2)?);
        let want = (&a + &b)?;
        for got in [add(&a, &b)?, sum(&a, &b)?] {
            assert_eq!((got - &want)?.abs()?.max_all()?.to_scalar::<f32>()?, 0.0);
        }
        assert!(add(&a, &b.narrow(2, 0, 100)?).is_err());
        let a = Var::from_tensor(&seeded(&[2, 3, 4], 5, &dev, DType::F64)?)?;
        let b = Var::from_tensor(&seeded(&[2, 3, 4], 6, &dev, DType::F64)?)?;
        check_grads(&[&a, &b], |t| add(t[0], t[1]))
    }
}
