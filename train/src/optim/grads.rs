//! The step's gradients, accumulated over micro-batches and clipped by their global norm:
//! flat host vectors for the in-place CPU optimiser, or f32 tensors of the parameters' shapes
//! on their device (no copy to the host), reduced there to a device scalar norm.

use super::rules::{self, constant};
use super::ParamState;
use candle_core::backprop::GradStore;
use candle_core::{DType, Result, Storage, Tensor};
use rayon::prelude::*;

/// Gradients of the optimiser's parameters, in its order.
pub enum Grads {
    /// Flat vectors on the host.
    Host(Vec<Vec<f32>>),
    /// f32 tensors shaped as the parameters, on their device.
    Device(Vec<Tensor>),
}

/// A global gradient norm: a host number, or a 0-d f64 tensor on the device, read (a host
/// synchronisation) only when a value is wanted.
#[derive(Clone, Debug)]
pub enum Norm {
    Host(f64),
    Device(Tensor),
}

impl Norm {
    pub fn value(&self) -> Result<f64> {
        match self {
            Norm::Host(v) => Ok(*v),
            Norm::Device(t) => t.to_scalar::<f64>(),
        }
    }
}

/// `f` of a tensor's values as f32: read in place from a contiguous f32 tensor on the CPU,
/// copied out otherwise.
fn with_values<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    if t.dtype() == DType::F32 {
        let (storage, layout) = t.storage_and_layout();
        if let (Storage::Cpu(s), Some((a, b))) = (&*storage, layout.contiguous_offsets()) {
            return Ok(f(&s.as_slice::<f32>()?[a..b]));
        }
    }
    Ok(f(&t.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?))
}

/// Σ x² over f32 values, in f64 (exact squares), in a fixed order.
pub(crate) fn sum_sq(v: &[f32]) -> f64 {
    v.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>()
}

/// Σ x² of a device tensor as a 0-d f64 tensor (squares exact in f64, as [`sum_sq`]; only
/// the order of the sum differs).
pub(crate) fn sum_sq_device(t: &Tensor) -> Result<Tensor> {
    t.to_dtype(DType::F64)?.sqr()?.sum_all()
}

/// The global L2 norm of device tensors as a 0-d f64 tensor.
pub(crate) fn global_norm_device(g: &[Tensor]) -> Result<Tensor> {
    let sums = g.iter().map(sum_sq_device).collect::<Result<Vec<_>>>()?;
    Tensor::stack(&sums, 0)?.sum_all()?.sqrt()
}

impl Grads {
    pub fn len(&self) -> usize {
        match self {
            Grads::Host(g) => g.len(),
            Grads::Device(g) => g.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads the gradients of `params` from a backward pass, times `scale` (1/accumulation
    /// steps), adding them to `acc` when given (host vectors unless `on_device`). Returns the
    /// names of parameters that got no gradient (a model bug: callers treat it as an error).
    pub fn accumulate(acc: Option<Grads>, params: &[ParamState], store: &GradStore, scale: f32, on_device: bool) -> Result<(Grads, Vec<String>)> {
        let mut missing = Vec::new();
        if on_device {
            let mut out = match acc {
                Some(Grads::Device(g)) => g.into_iter().map(Some).collect(),
                Some(Grads::Host(_)) => candle_core::bail!("host gradients accumulated on the device"),
                None => vec![None; params.len()],
            };
            for (p, acc) in params.iter().zip(out.iter_mut()) {
                let Some(g) = store.get(p.var.as_tensor()) else {
                    missing.push(p.name.clone());
                    if acc.is_none() {
                        *acc = Some(Tensor::zeros(p.var.shape(), DType::F32, p.var.device())?);
                    }
                    continue;
                };
                *acc = Some(rules::accumulate(acc.as_ref(), &g.detach().to_dtype(DType::F32)?, scale)?);
            }
            return Ok((Grads::Device(out.into_iter().flatten().collect()), missing));
        }
        let mut out = match acc {
            Some(Grads::Host(g)) => g,
            Some(Grads::Device(_)) => candle_core::bail!("device gradients accumulated on the host"),
            None => vec![Vec::new(); params.len()],
        };
        for (p, acc) in params.iter().zip(out.iter_mut()) {
            let Some(g) = store.get(p.var.as_tensor()) else {
                missing.push(p.name.clone());
                if acc.is_empty() {
                    *acc = vec![0.0; p.var.elem_count()];
                }
                continue;
            };
            // The first micro-batch's gradient is scaled into a new buffer in one pass,
            // rather than zeros, a copy and an add (three passes, 4 % of a Swin-T step).
            with_values(g, |g| {
                if acc.is_empty() {
                    *acc = g.par_iter().map(|g| host(rules::accumulate(None, g, scale))).collect();
                } else {
                    acc.par_iter_mut().zip(g.par_iter()).for_each(|(a, g)| *a = host(rules::accumulate(Some(&*a), g, scale)));
                }
            })?;
        }
        Ok((Grads::Host(out), missing))
    }

    /// Global L2 norm over all parameters (f64 sums of f32 squares).
    pub fn global_norm(&self) -> Result<Norm> {
        match self {
            Grads::Host(g) => Ok(Norm::Host(g.iter().map(|g| sum_sq(g)).sum::<f64>().sqrt())),
            Grads::Device(g) => Ok(Norm::Device(global_norm_device(g)?)),
        }
    }

    /// Scales all gradients as `clip_grad_norm_(max_norm)` (see [`rules::clip_coef`]).
    /// Returns the norm before clipping; on the device neither is read back.
    pub fn clip_norm(&mut self, max_norm: f64) -> Result<Norm> {
        let norm = self.global_norm()?;
        match (&mut *self, &norm) {
            (Grads::Host(g), Norm::Host(n)) => {
                if let Some(coef) = rules::clip_coef(*n, max_norm) {
                    let c = coef as f32;
                    g.par_iter_mut().for_each(|g| g.iter_mut().for_each(|x| *x = host(rules::Arith::scale(x, c))));
                }
            }
            (Grads::Device(g), Norm::Device(n)) => {
                // min(1, max_norm / (norm + eps)) on the device: a factor of exactly 1 leaves
                // every gradient unchanged, as the host's skipped multiplication does.
                let coef = constant(max_norm, DType::F64, n)?.div(&n.affine(1.0, rules::CLIP_EPS)?)?;
                let c = coef.minimum(&constant(1.0, DType::F64, n)?)?.to_dtype(DType::F32)?;
                for t in g.iter_mut() {
                    *t = rules::Arith::mul_s(t, &c)?;
                }
            }
            _ => unreachable!("a norm is computed where its gradients are"),
        }
        Ok(norm)
    }

    /// Runs `f` on the gradients as host vectors: in place on the host, through a copy (and
    /// back) on a device. For collectives that exchange host buffers.
    pub fn with_host<R, E: From<candle_core::Error>>(&mut self, f: impl FnOnce(&mut [Vec<f32>]) -> std::result::Result<R, E>) -> std::result::Result<R, E> {
        match self {
            Grads::Host(g) => f(g),
            Grads::Device(g) => {
                let mut host: Vec<Vec<f32>> = g.iter().map(|t| t.flatten_all()?.to_vec1::<f32>()).collect::<Result<_>>()?;
                let r = f(&mut host)?;
                for (t, v) in g.iter_mut().zip(host) {
                    *t = Tensor::from_vec(v, t.shape(), t.device())?;
                }
                Ok(r)
            }
        }
    }
}

/// The value of a host evaluation of a rule (f32 arithmetic cannot fail).
#[inline(always)]
pub(crate) fn host<T>(r: std::result::Result<T, std::convert::Infallible>) -> T {
    let Ok(v) = r;
    v
}
