//! One optimiser step of compute, apart from where the batches come from: micro-batches run
//! forward and backward and accumulate their gradients, then the update clips them, steps
//! the optimiser and the EMA. `et-train` and `et-bench train-step` both run this.

use crate::ema::Ema;
use crate::loss::soft_cross_entropy;
use crate::optim::{Grads, Optimizer};
use crate::TrainError;
use candle_core::{DType, Device, Tensor};
use et_kernels::device::Precision;
use et_kernels::CandleOps;
use et_models::{Model, ParamStore};
use et_models::registry::ModelConfig;
use std::sync::Arc;
use std::time::Instant;

/// An EMA of the weights with the model that evaluates it.
pub struct EmaNet {
    pub ema: Ema,
    pub model: Model,
}

/// The model being trained, its optimiser and the gradients of the step in progress.
pub struct Learner {
    pub params: Arc<ParamStore>,
    pub model: Model,
    pub config: ModelConfig,
    pub opt: Optimizer,
    pub ema: Option<EmaNet>,
    pub device: Device,
    pub precision: Precision,
    /// Wait for the device after each phase, so that a benchmark times work, not queueing.
    pub sync_phases: bool,
    grads: Option<Grads>,
}

/// What one micro-batch did.
#[derive(Clone, Copy, Debug)]
pub struct MicroBatch {
    pub loss: f64,
    pub forward_s: f64,
    pub backward_s: f64,
}

impl Learner {
    pub fn new(params: Arc<ParamStore>, model: Model, config: ModelConfig, opt: Optimizer, ema: Option<EmaNet>, device: Device, precision: Precision) -> Self {
        Learner { params, model, config, opt, ema, device, precision, sync_phases: false, grads: None }
    }

    /// Forward and backward of a micro-batch `x` (NCHW f32) against soft `targets`; its
    /// gradients, times `scale` (1 / accumulation), add to the step's. `seed` drives drop
    /// path. The loss is computed in f32 whatever the compute precision.
    pub fn micro_batch(&mut self, x: &Tensor, targets: &Tensor, seed: u64, scale: f32) -> Result<MicroBatch, TrainError> {
        let t0 = Instant::now();
        let x = x.to_dtype(self.precision.dtype())?;
        let ops = CandleOps::training(seed, &self.device, x.dtype());
        // In bf16 the step runs a model built from casts of the f32 masters: the casts carry
        // the gradients back to them.
        let cast = match self.precision {
            Precision::F32 => None,
            p => Some(Model::new(&self.config, self.params.var_builder_cast(p.dtype(), &self.device))?),
        };
        let logits = ops.loss_input(&cast.as_ref().unwrap_or(&self.model).forward(&ops, &x)?)?;
        let loss = soft_cross_entropy(&logits.to_dtype(DType::F32)?, targets)?;
        let loss_v = loss.to_scalar::<f32>()? as f64;
        self.sync()?;
        let forward_s = t0.elapsed().as_secs_f64();
        if !loss_v.is_finite() {
            // The caller stops the run; nothing is accumulated.
            return Ok(MicroBatch { loss: loss_v, forward_s, backward_s: 0.0 });
        }
        let store = ops.backward(&loss)?;
        let (g, missing) = Grads::accumulate(self.grads.take(), &self.opt.params, &store, scale)?;
        if !missing.is_empty() {
            return Err(TrainError::Internal(format!("no gradient reached {}", missing.join(", "))));
        }
        self.grads = Some(g);
        self.params.apply_buffer_updates(ops.take_buffer_updates())?;
        self.sync()?;
        Ok(MicroBatch { loss: loss_v, forward_s, backward_s: t0.elapsed().as_secs_f64() - forward_s })
    }

    /// The accumulated gradients of the step in progress (for a collective to reduce).
    pub fn grads_mut(&mut self) -> Option<&mut Grads> {
        self.grads.as_mut()
    }

    /// Clips the accumulated gradients to `clip` (global norm), updates the weights with
    /// `lr` and `weight_decay`, then the EMA. Returns the gradients' norm when clipping.
    pub fn update(&mut self, lr: f64, weight_decay: f64, clip: Option<f64>) -> Result<Option<f64>, TrainError> {
        let mut grads = self.grads.take().ok_or_else(|| TrainError::Internal("an optimiser step without a micro-batch".into()))?;
        let norm = clip.map(|max| grads.clip_norm(max));
        self.opt.step(&grads, lr, weight_decay)?;
        if let Some(e) = &self.ema {
            e.ema.update()?;
        }
        self.sync()?;
        Ok(norm)
    }

    fn sync(&self) -> Result<(), TrainError> {
        if self.sync_phases {
            self.device.synchronize()?;
        }
        Ok(())
    }
}
