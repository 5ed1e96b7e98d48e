//! ReLU with a one-pass backward (dy where y > 0). candle's backward builds a comparison
//! mask, converts it and multiplies: three passes and three buffers per ReLU, which ResNet
//! has after every BatchNorm.

use super::kernel::{dispatch, map2 as map, Kernel};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor, WithDType};

struct Relu;
/// (y, dy) -> dx.
struct ReluGrad;
struct AddRelu;

fn relu_of<T: WithDType>(v: T) -> T {
    if v > T::zero() {
        v
    } else {
        T::zero()
    }
}

impl Kernel for Relu {
    const NAME: &'static str = "relu";
    fn run<T: WithDType>(&self, i: &[&[T]]) -> Vec<T> {
        map(i[0], i[0], |x, _| relu_of(x))
    }
}

impl Kernel for ReluGrad {
    const NAME: &'static str = "relu grad";
    fn run<T: WithDType>(&self, i: &[&[T]]) -> Vec<T> {
        map(i[0], i[1], |y, g| if y > T::zero() { g } else { T::zero() })
    }
}

impl Kernel for AddRelu {
    const NAME: &'static str = "add relu";
    fn run<T: WithDType>(&self, i: &[&[T]]) -> Vec<T> {
        map(i[0], i[1], |a, b| relu_of(a + b))
    }
}

impl CustomOp2 for AddRelu {
    fn name(&self) -> &'static str {
        "add-relu"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok((dispatch(self, &[(s1, l1), (s2, l2)])?, l1.shape().clone()))
    }

    fn bwd(&self, _a: &Tensor, _b: &Tensor, res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = relu_grad(res, grad)?;
        Ok((Some(g.clone()), Some(g)))
    }
}

impl CustomOp1 for Relu {
    fn name(&self) -> &'static str {
        "relu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok((dispatch(self, &[(s, l)])?, l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(relu_grad(res, grad)?))
    }
}

impl CustomOp2 for ReluGrad {
    fn name(&self) -> &'static str {
        "relu-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok((dispatch(self, &[(s1, l1), (s2, l2)])?, l1.shape().clone()))
    }
}

/// The gradient through a ReLU whose output was `y`: `dy` where y > 0.
pub(crate) fn relu_grad(y: &Tensor, dy: &Tensor) -> Result<Tensor> {
    y.contiguous()?.apply_op2_no_bwd(&dy.contiguous()?, &ReluGrad)
}

/// max(x, 0).
pub fn relu(x: &Tensor) -> Result<Tensor> {
    super::tape::apply1(x, &x.contiguous()?, Relu)
}

/// max(a + b, 0) for `a` and `b` of one shape, in one pass: a residual connection and the
/// ReLU after it (the end of every ResNet block), without the sum as a tensor of its own.
pub fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.shape() != b.shape() {
        candle_core::bail!("add_relu: shapes {:?} and {:?} differ", a.shape(), b.shape())
    }
    super::tape::apply2([a, b], [&a.contiguous()?, &b.contiguous()?], AddRelu)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{check_grads, seeded};
    use candle_core::{DType, Device, Var};

    #[test]
    fn matches_candle_relu_with_correct_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let x = seeded(&[3, 5, 7], 1, &dev, DType::F32)?;
        assert_eq!((relu(&x)? - x.relu()?)?.abs()?.max_all()?.to_scalar::<f32>()?, 0.0);
        // Away from the kink, where the finite difference is defined.
        let v = Var::from_tensor(&seeded(&[2, 3, 4], 2, &dev, DType::F64)?.affine(1.0, 0.013)?)?;
        check_grads(&[&v], |t| relu(t[0]))?;
        check_grads(&[&v], |t| relu(&t[0].t()?))
    }

    #[test]
    fn add_relu_matches_the_composition_with_correct_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let (a, b) = (seeded(&[3, 5, 7], 3, &dev, DType::F32)?, seeded(&[3, 5, 7], 4, &dev, DType::F32)?);
        assert_eq!((add_relu(&a, &b)? - (&a + &b)?.relu()?)?.abs()?.max_all()?.to_scalar::<f32>()?, 0.0);
        assert!(add_relu(&a, &b.narrow(2, 0, 6)?).is_err());
        let a = Var::from_tensor(&seeded(&[2, 3, 4], 5, &dev, DType::F64)?.affine(1.0, 0.013)?)?;
        let b = Var::from_tensor(&seeded(&[2, 3, 4], 6, &dev, DType::F64)?)?;
        check_grads(&[&a, &b], |t| add_relu(t[0], t[1]))?;
        check_grads(&[&a, &b], |t| add_relu(&t[0].t()?, &t[1].t()?))
    }
}
