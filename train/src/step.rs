//! One optimiser step of compute, apart from where the batches come from: micro-batches run
//! forward and backward and accumulate their gradients, then the update clips them, steps
//! the optimiser and the EMA. `et-train` and `et-bench train-step` both run this.
//!
//! Nothing here waits for the device unless asked (`sync_phases`): a micro-batch's loss
//! stays a device scalar until the caller reads it, and the gradients, the optimiser state
//! and the EMA live where the parameters do (`optim`).

use crate::ema::Ema;
use crate::loss::soft_cross_entropy;
use crate::optim::{Grads, Norm, Optimizer};
use crate::TrainError;
use candle_core::{DType, Device, Tensor};
use et_kernels::device::Precision;
use et_kernels::CandleOps;
use et_models::{CastModel, Model, ParamStore};
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
    /// In half precision: the model computing from casts of the f32 masters, built at the
    /// first micro-batch and its casts rewritten after each update (`stale`).
    cast: Option<CastModel>,
    stale: bool,
}

/// What one micro-batch did. The loss is a 0-d f32 tensor on the device: reading it waits
/// for the device.
#[derive(Clone, Debug)]
pub struct MicroBatch {
    pub loss: Tensor,
    pub forward_s: f64,
    pub backward_s: f64,
}

impl Learner {
    pub fn new(params: Arc<ParamStore>, model: Model, config: ModelConfig, opt: Optimizer, ema: Option<EmaNet>, device: Device, precision: Precision) -> Self {
        Learner { params, model, config, opt, ema, device, precision, sync_phases: false, grads: None, cast: None, stale: false }
    }

    /// Forward and backward of a micro-batch `x` (NCHW f32) against soft `targets`; its
    /// gradients, times `scale` (1 / accumulation), add to the step's. `seed` drives drop
    /// path. The loss is computed in f32 whatever the compute precision; a non-finite loss
    /// is the caller's to notice (its gradients are accumulated all the same).
    pub fn micro_batch(&mut self, x: &Tensor, targets: &Tensor, seed: u64, scale: f32) -> Result<MicroBatch, TrainError> {
        let t0 = Instant::now();
        let x = x.to_dtype(self.precision.dtype())?;
        let ops = CandleOps::training(seed, &self.device, x.dtype());
        self.prepare_casts()?;
        let model = self.cast.as_ref().map_or(&self.model, |c| &c.model);
        let logits = ops.loss_input(&model.forward(&ops, &x)?)?;
        let loss = soft_cross_entropy(&logits.to_dtype(DType::F32)?, targets)?;
        self.sync()?;
        let forward_s = t0.elapsed().as_secs_f64();
        let store = ops.backward(&loss)?;
        let (g, missing) = self.opt.accumulate(self.grads.take(), &store, scale)?;
        if !missing.is_empty() {
            return Err(TrainError::Internal(format!("no gradient reached {}", missing.join(", "))));
        }
        self.grads = Some(g);
        self.params.apply_buffer_updates(ops.take_buffer_updates())?;
        self.sync()?;
        Ok(MicroBatch { loss: loss.detach(), forward_s, backward_s: t0.elapsed().as_secs_f64() - forward_s })
    }

    /// In half precision, the model of casts: built once, its casts rewritten when an
    /// update changed the masters (once per optimiser step, whatever the accumulation).
    fn prepare_casts(&mut self) -> Result<(), TrainError> {
        if self.precision == Precision::F32 {
            return Ok(());
        }
        match &self.cast {
            None => self.cast = Some(CastModel::new(&self.config, &self.params, self.precision.dtype(), &self.device)?),
            Some(c) if self.stale => c.refresh()?,
            Some(_) => {}
        }
        self.stale = false;
        Ok(())
    }

    /// The accumulated gradients of the step in progress (for a collective to reduce).
    pub fn grads_mut(&mut self) -> Option<&mut Grads> {
        self.grads.as_mut()
    }

    /// Clips the accumulated gradients to `clip` (global norm), updates the weights with
    /// `lr` and `weight_decay`, then the EMA. Returns the gradients' norm when clipping (on
    /// a device, not read back until asked).
    pub fn update(&mut self, lr: f64, weight_decay: f64, clip: Option<f64>) -> Result<Option<Norm>, TrainError> {
        let mut grads = self.grads.take().ok_or_else(|| TrainError::Internal("an optimiser step without a micro-batch".into()))?;
        let norm = clip.map(|max| grads.clip_norm(max)).transpose()?;
        self.opt.step(&grads, lr, weight_decay)?;
        self.stale = true;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ema::Ema;
    use crate::optim::{OptimConfig, OptimizerKind, Residence};
    use et_kernels::testing::seeded;
    use et_models::registry::{model_config, ModelOptions};

    fn learner(kind: OptimizerKind, residence: Residence) -> Result<Learner, TrainError> {
        let dev = Device::Cpu;
        let cfg = model_config("resnet18", &ModelOptions { num_classes: 4, ..Default::default() })?;
        let net = |seed| -> Result<(Arc<ParamStore>, Model), TrainError> {
            let ps = ParamStore::new(seed);
            let model = Model::new(&cfg, ps.var_builder(DType::F32, &dev))?;
            Ok((ps, model))
        };
        let (ps, model) = net(3)?;
        let lr_scale = |n: &str| if n.starts_with("layer1") { 0.5 } else { 1.0 };
        let mut opt = Optimizer::new(ps.trainable(), OptimConfig { kind, ..Default::default() }, &lr_scale)?;
        opt.set_residence(residence)?;
        let (twin, twin_model) = net(3)?;
        let mut ema = Ema::new(&ps, twin, 0.8)?;
        ema.set_residence(residence);
        Ok(Learner::new(ps, model, cfg, opt, Some(EmaNet { ema, model: twin_model }), dev, Precision::F32))
    }

    /// A learner whose optimiser and EMA run the device path (forced onto the CPU) trains a
    /// ResNet-18 exactly as the host path does: three steps of two micro-batches, clipped
    /// (the norm exceeds 0.5), with an lr scale and weight decay, then the EMA. AdamW is
    /// bit-identical (the same f32 operations); LAMB to a few f32 roundings (`optim` tests).
    #[test]
    fn a_device_resident_optimizer_trains_as_the_host_one() -> Result<(), TrainError> {
        for kind in [OptimizerKind::AdamW, OptimizerKind::Lamb] {
            let mut runs = Vec::new();
            for residence in [Residence::Host, Residence::Device] {
                let mut l = learner(kind, residence)?;
                let mut norms = Vec::new();
                for step in 0..3u64 {
                    for k in 0..2u64 {
                        let x = seeded(&[2, 3, 32, 32], 10 * step + k, &Device::Cpu, DType::F32)?;
                        let t = crate::loss::smoothed_targets(&[(step + k) as usize % 4, 1], 4, 0.1, &Device::Cpu)?;
                        let mb = l.micro_batch(&x, &t, step * 2 + k, 0.5)?;
                        assert!(mb.loss.to_scalar::<f32>()?.is_finite());
                    }
                    let norm = l.update(1e-2, 0.05, Some(0.5))?.ok_or_else(|| TrainError::Internal("no norm".into()))?;
                    norms.push(norm.value()?);
                }
                assert!(norms.iter().all(|&n| n > 0.5), "{kind}: clipping must act: {norms:?}");
                let values = |ps: &ParamStore| -> Result<Vec<Vec<f32>>, TrainError> { Ok(ps.all().iter().map(|(_, v)| v.as_tensor().flatten_all()?.to_vec1()).collect::<candle_core::Result<_>>()?) };
                let ema = l.ema.as_ref().map(|e| values(&e.ema.store)).transpose()?;
                runs.push((values(&l.params)?, ema, norms));
            }
            let (host, device) = (&runs[0], &runs[1]);
            let worst = host.0.iter().flatten().zip(device.0.iter().flatten()).map(|(a, b)| ((a - b).abs() / a.abs().max(1e-30)) as f64).fold(0.0, f64::max);
            match kind {
                OptimizerKind::AdamW => assert!(host == device, "AdamW: the device path differs (worst relative {worst:.1e})"),
                OptimizerKind::Lamb => assert!(worst <= 4.0 * f32::EPSILON as f64, "LAMB: the device path differs by {worst:.1e}"),
            }
        }
        Ok(())
    }
}
