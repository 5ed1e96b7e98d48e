//! The update rules, written once: AdamW, LAMB's moments and direction, gradient
//! accumulation, clipping and the EMA, as expressions over [`Arith`]. The host path
//! evaluates them per element on `f32` (inside its parallel loops), the device path on whole
//! tensors with candle's element-wise ops; both perform the same f32 operations in the same
//! order, so on the CPU the two agree bit for bit (the reductions apart: see `Norms`).

use candle_core::{DType, Tensor};
use std::convert::Infallible;

/// Element-wise f32 arithmetic: one value (`f32`) or every element of a tensor at once.
/// Each operation rounds once, as written (no fused multiply-add).
pub trait Arith: Sized {
    type Error;
    /// A value computed on the same side (a host number, or a 0-d device tensor).
    type Scalar;
    /// self · c + add
    fn affine(&self, mul: f32, add: f32) -> Result<Self, Self::Error>;
    fn add(&self, o: &Self) -> Result<Self, Self::Error>;
    fn sub(&self, o: &Self) -> Result<Self, Self::Error>;
    fn mul(&self, o: &Self) -> Result<Self, Self::Error>;
    fn div(&self, o: &Self) -> Result<Self, Self::Error>;
    fn sqrt(&self) -> Result<Self, Self::Error>;
    /// self / c, a true division (not a multiplication by 1/c).
    fn div_c(&self, c: f32) -> Result<Self, Self::Error>;
    fn mul_s(&self, s: &Self::Scalar) -> Result<Self, Self::Error>;
    fn div_s(&self, s: &Self::Scalar) -> Result<Self, Self::Error>;

    /// self · c
    fn scale(&self, c: f32) -> Result<Self, Self::Error> {
        self.affine(c, 0.0)
    }
}

impl Arith for f32 {
    type Error = Infallible;
    type Scalar = f32;
    #[inline(always)]
    fn affine(&self, mul: f32, add: f32) -> Result<f32, Infallible> {
        Ok(self * mul + add)
    }
    #[inline(always)]
    fn scale(&self, c: f32) -> Result<f32, Infallible> {
        Ok(self * c)
    }
    #[inline(always)]
    fn add(&self, o: &f32) -> Result<f32, Infallible> {
        Ok(self + o)
    }
    #[inline(always)]
    fn sub(&self, o: &f32) -> Result<f32, Infallible> {
        Ok(self - o)
    }
    #[inline(always)]
    fn mul(&self, o: &f32) -> Result<f32, Infallible> {
        Ok(self * o)
    }
    #[inline(always)]
    fn div(&self, o: &f32) -> Result<f32, Infallible> {
        Ok(self / o)
    }
    #[inline(always)]
    fn sqrt(&self) -> Result<f32, Infallible> {
        Ok(f32::sqrt(*self))
    }
    #[inline(always)]
    fn div_c(&self, c: f32) -> Result<f32, Infallible> {
        Ok(self / c)
    }
    #[inline(always)]
    fn mul_s(&self, s: &f32) -> Result<f32, Infallible> {
        Ok(self * s)
    }
    #[inline(always)]
    fn div_s(&self, s: &f32) -> Result<f32, Infallible> {
        Ok(self / s)
    }
}

/// A 0-d tensor holding `v` on `like`'s device, made there (a fill, not a host-to-device
/// copy, which on CUDA would wait for the stream).
pub fn constant(v: f64, dtype: DType, like: &Tensor) -> candle_core::Result<Tensor> {
    match dtype {
        DType::F64 => Tensor::full(v, (), like.device()),
        _ => Tensor::full(v as f32, (), like.device())?.to_dtype(dtype),
    }
}

impl Arith for Tensor {
    type Error = candle_core::Error;
    type Scalar = Tensor;
    fn affine(&self, mul: f32, add: f32) -> candle_core::Result<Tensor> {
        // candle rounds f64 coefficients to the element type: exact for f32 values.
        Tensor::affine(self, mul as f64, add as f64)
    }
    fn add(&self, o: &Tensor) -> candle_core::Result<Tensor> {
        Tensor::add(self, o)
    }
    fn sub(&self, o: &Tensor) -> candle_core::Result<Tensor> {
        Tensor::sub(self, o)
    }
    fn mul(&self, o: &Tensor) -> candle_core::Result<Tensor> {
        Tensor::mul(self, o)
    }
    fn div(&self, o: &Tensor) -> candle_core::Result<Tensor> {
        Tensor::div(self, o)
    }
    fn sqrt(&self) -> candle_core::Result<Tensor> {
        Tensor::sqrt(self)
    }
    fn div_c(&self, c: f32) -> candle_core::Result<Tensor> {
        self.broadcast_div(&constant(c as f64, self.dtype(), self)?)
    }
    fn mul_s(&self, s: &Tensor) -> candle_core::Result<Tensor> {
        self.broadcast_mul(s)
    }
    fn div_s(&self, s: &Tensor) -> candle_core::Result<Tensor> {
        self.broadcast_div(s)
    }
}

/// The constants of one parameter's update at one step, from the f64 schedule values,
/// rounded to f32 once (as both paths use them).
#[derive(Clone, Copy, Debug)]
pub struct StepConsts {
    pub b1: f32,
    pub one_minus_b1: f32,
    pub b2: f32,
    pub one_minus_b2: f32,
    pub eps: f32,
    /// AdamW: 1 − lr·wd (decoupled decay), lr / (1 − β1^t), 1 / √(1 − β2^t).
    pub decay: f32,
    pub step_size: f32,
    pub inv_bc2_sqrt: f32,
    /// LAMB: 1 − β1^t, √(1 − β2^t), wd.
    pub bc1: f32,
    pub bc2_sqrt: f32,
    pub wd: f32,
}

impl StepConsts {
    /// For step `t` (1-based) with betas, eps, this parameter's learning rate and decay.
    pub fn new(beta1: f64, beta2: f64, eps: f64, t: u64, lr: f64, wd: f64) -> StepConsts {
        let (b1, b2) = (beta1 as f32, beta2 as f32);
        let bc1 = 1.0 - beta1.powi(t as i32);
        let bc2 = 1.0 - beta2.powi(t as i32);
        StepConsts {
            b1,
            one_minus_b1: 1.0 - b1,
            b2,
            one_minus_b2: 1.0 - b2,
            eps: eps as f32,
            decay: (1.0 - lr * wd) as f32,
            step_size: (lr / bc1) as f32,
            inv_bc2_sqrt: (1.0 / bc2.sqrt()) as f32,
            bc1: bc1 as f32,
            bc2_sqrt: bc2.sqrt() as f32,
            wd: wd as f32,
        }
    }
}

/// The moments' update shared by AdamW and LAMB: m ← β1·m + (1−β1)·g, v ← β2·v + (1−β2)·g·g.
#[inline(always)]
fn moments<N: Arith>(m: &N, v: &N, g: &N, k: &StepConsts) -> Result<(N, N), N::Error> {
    let m = m.scale(k.b1)?.add(&g.scale(k.one_minus_b1)?)?;
    let v = v.scale(k.b2)?.add(&g.scale(k.one_minus_b2)?.mul(g)?)?;
    Ok((m, v))
}

/// PyTorch AdamW: returns the new (w, m, v).
#[inline(always)]
pub fn adamw<N: Arith>(w: &N, m: &N, v: &N, g: &N, k: &StepConsts) -> Result<[N; 3], N::Error> {
    let (m, v) = moments(m, v, g, k)?;
    let w = w.scale(k.decay)?.sub(&m.scale(k.step_size)?.div(&v.sqrt()?.affine(k.inv_bc2_sqrt, k.eps)?)?)?;
    Ok([w, m, v])
}

/// timm Lamb before the trust ratio: the gradient divided by `grad_div` (its global norm,
/// at least 1), the new moments and the update direction u = m̂ / (√v̂ + eps) + wd·w.
/// Returns (u, m, v).
#[inline(always)]
pub fn lamb_direction<N: Arith>(w: &N, m: &N, v: &N, g: &N, grad_div: &N::Scalar, k: &StepConsts) -> Result<[N; 3], N::Error> {
    let g = g.div_s(grad_div)?;
    let (m, v) = moments(m, v, &g, k)?;
    let u = m.div_c(k.bc1)?.div(&v.sqrt()?.div_c(k.bc2_sqrt)?.affine(1.0, k.eps)?)?.add(&w.scale(k.wd)?)?;
    Ok([u, m, v])
}

/// LAMB's step along u, scaled by lr · trust (`s`): w − s·u.
#[inline(always)]
pub fn lamb_apply<N: Arith>(w: &N, u: &N, s: &N::Scalar) -> Result<N, N::Error> {
    w.sub(&u.mul_s(s)?)
}

/// timm Lamb's trust ratio ‖w‖/‖u‖ when both norms are positive, 1 otherwise (it applies
/// only where weight decay does: always_adapt=False).
pub fn trust_ratio(w_norm: f64, u_norm: f64) -> f64 {
    if w_norm > 0.0 && u_norm > 0.0 {
        w_norm / u_norm
    } else {
        1.0
    }
}

/// A micro-batch's gradient `g` times `scale` (1 / micro-batches), added to `acc`.
#[inline(always)]
pub fn accumulate<N: Arith>(acc: Option<&N>, g: &N, scale: f32) -> Result<N, N::Error> {
    let g = g.scale(scale)?;
    match acc {
        Some(a) => a.add(&g),
        None => Ok(g),
    }
}

/// timm / PyTorch `clip_grad_norm_`: the factor max_norm/(norm + 1e-6) that gradients are
/// multiplied by when it is below 1.
pub fn clip_coef(norm: f64, max_norm: f64) -> Option<f64> {
    let coef = max_norm / (norm + CLIP_EPS);
    (coef < 1.0).then_some(coef)
}

pub const CLIP_EPS: f64 = 1e-6;

/// timm Lamb's pre-division of all gradients: by their global norm, at least 1.
pub fn lamb_grad_div(norm: f64) -> f64 {
    norm.max(1.0)
}

/// timm `ModelEmaV2`: ema ← d·ema + (1 − d)·w.
#[inline(always)]
pub fn ema<N: Arith>(e: &N, w: &N, d: f32) -> Result<N, N::Error> {
    e.scale(d)?.add(&w.scale(1.0 - d)?)
}
