//! AdamW and LAMB with timm's parameter groups: no weight decay on 1-D parameters (norms,
//! biases, layer scales) nor on position embeddings / class tokens; an optional per-parameter
//! learning-rate scale (layer-wise lr decay). Gradients are accumulated over micro-batches and
//! clipped by their global norm before the step ([`Grads`]).
//!
//! Two residences, one set of update rules (`rules.rs`): on the host, gradients and moments
//! are `Vec<f32>` and each parameter is updated in place in one fused pass (the CPU); on the
//! device, they are tensors on the parameters' device and the rules run as candle ops there,
//! so a step copies nothing to the host (a GPU). Checkpoints hold the same tensors either way.

mod device;
mod grads;
mod host;
pub mod rules;
#[cfg(test)]
mod tests;

pub use grads::{Grads, Norm};

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Result, Tensor, Var};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// PyTorch AdamW: decoupled weight decay `w ← w·(1 − lr·wd)`.
    AdamW,
    /// timm's Lamb (You et al. 2019): Adam direction plus decay, scaled per parameter by the
    /// trust ratio ‖w‖/‖update‖; gradients pre-divided by max(global norm, 1).
    Lamb,
}

impl std::fmt::Display for OptimizerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OptimizerKind::AdamW => "adamw",
            OptimizerKind::Lamb => "lamb",
        })
    }
}

impl std::str::FromStr for OptimizerKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "adamw" => Ok(OptimizerKind::AdamW),
            "lamb" => Ok(OptimizerKind::Lamb),
            _ => Err(format!("unknown optimizer '{s}': use adamw or lamb")),
        }
    }
}

#[derive(Clone, Debug)]
pub struct OptimConfig {
    pub kind: OptimizerKind,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig { kind: OptimizerKind::AdamW, beta1: 0.9, beta2: 0.999, eps: 1e-8 }
    }
}

/// Where the optimiser's state lives and its arithmetic runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Residence {
    /// Host vectors, parameters updated in place (CPU parameters).
    Host,
    /// Tensors on the parameters' device, candle ops (GPU parameters; on the CPU for tests).
    Device,
}

/// One moment of one parameter: flat on the host, or shaped as the parameter on its device.
pub enum Moment {
    Host(Vec<f32>),
    Device(Tensor),
}

impl Moment {
    fn zeros(var: &Var, residence: Residence) -> Result<Moment> {
        Ok(match residence {
            Residence::Host => Moment::Host(vec![0.0; var.elem_count()]),
            Residence::Device => Moment::Device(Tensor::zeros(var.shape(), DType::F32, var.device())?),
        })
    }

    /// The values, flat, on the host.
    pub fn to_vec(&self) -> Result<Vec<f32>> {
        match self {
            Moment::Host(v) => Ok(v.clone()),
            Moment::Device(t) => t.flatten_all()?.to_vec1(),
        }
    }

    /// Replaces the values with `v` (flat), where they live.
    pub fn set(&mut self, v: Vec<f32>) -> Result<()> {
        match self {
            Moment::Host(h) => *h = v,
            Moment::Device(t) => *t = Tensor::from_vec(v, t.shape(), t.device())?,
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        match self {
            Moment::Host(v) => v.len(),
            Moment::Device(t) => t.elem_count(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub struct ParamState {
    pub name: String,
    pub var: Var,
    /// Whether the (scheduled) weight decay applies to this parameter.
    pub decays: bool,
    /// Multiplies the learning rate (layer-wise decay; 1 otherwise).
    pub lr_scale: f64,
    pub m: Moment,
    pub v: Moment,
}

pub struct Optimizer {
    pub cfg: OptimConfig,
    pub params: Vec<ParamState>,
    pub step: u64,
    residence: Residence,
}

/// timm's `param_groups_weight_decay`: 1-D tensors, embeddings and the models'
/// `no_weight_decay()` names (Swin's relative position bias tables) get no decay.
pub fn decays(name: &str, rank: usize) -> bool {
    rank > 1
        && !name.ends_with("pos_embed")
        && !name.ends_with("cls_token")
        && !name.ends_with("dist_token")
        && !name.ends_with("relative_position_bias_table")
}

impl Optimizer {
    /// `lr_scale(name)` gives each parameter's learning-rate multiplier. The state lives on
    /// the host for CPU parameters and on the device otherwise.
    pub fn new(params: Vec<(String, Var)>, cfg: OptimConfig, lr_scale: &dyn Fn(&str) -> f64) -> Result<Self> {
        let on_cpu = params.first().is_none_or(|(_, v)| v.device().is_cpu());
        let residence = if on_cpu { Residence::Host } else { Residence::Device };
        let params = params
            .into_iter()
            .map(|(name, var)| {
                let decays = decays(&name, var.rank());
                let lr_scale = lr_scale(&name);
                let (m, v) = (Moment::zeros(&var, residence)?, Moment::zeros(&var, residence)?);
                Ok(ParamState { name, var, decays, lr_scale, m, v })
            })
            .collect::<Result<_>>()?;
        Ok(Optimizer { cfg, params, step: 0, residence })
    }

    pub fn residence(&self) -> Residence {
        self.residence
    }

    /// Moves the state (its values kept) to `residence`: the device path on CPU tensors is
    /// how tests compare the two.
    pub fn set_residence(&mut self, residence: Residence) -> Result<()> {
        for p in &mut self.params {
            for m in [&mut p.m, &mut p.v] {
                let values = m.to_vec()?;
                *m = Moment::zeros(&p.var, residence)?;
                m.set(values)?;
            }
        }
        self.residence = residence;
        Ok(())
    }

    /// Reads a backward pass's gradients into `acc` (see [`Grads::accumulate`]), where the
    /// state lives.
    pub fn accumulate(&self, acc: Option<Grads>, store: &GradStore, scale: f32) -> Result<(Grads, Vec<String>)> {
        Grads::accumulate(acc, &self.params, store, scale, self.residence == Residence::Device)
    }

    /// One update with learning rate `lr` and weight decay `weight_decay` (both from their
    /// schedules; the decay applies only to the parameters that decay).
    pub fn step(&mut self, grads: &Grads, lr: f64, weight_decay: f64) -> Result<()> {
        if grads.len() != self.params.len() {
            candle_core::bail!("{} gradients for {} parameters", grads.len(), self.params.len());
        }
        self.step += 1;
        match grads {
            Grads::Host(g) => host::step(self, g, lr, weight_decay),
            Grads::Device(g) => device::step(self, g, lr, weight_decay),
        }
    }

    /// The constants of parameter `p`'s update at the current step.
    fn consts(&self, p: &ParamState, lr: f64, weight_decay: f64) -> rules::StepConsts {
        let wd = if p.decays { weight_decay } else { 0.0 };
        rules::StepConsts::new(self.cfg.beta1, self.cfg.beta2, self.cfg.eps, self.step, lr * p.lr_scale, wd)
    }

    /// The moments under PyTorch's names (`exp_avg.<param>`, `exp_avg_sq.<param>`), flat f32
    /// tensors on the CPU wherever they live, for checkpoints.
    pub fn state_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for p in &self.params {
            for (key, m) in [(format!("exp_avg.{}", p.name), &p.m), (format!("exp_avg_sq.{}", p.name), &p.v)] {
                let t = match m {
                    Moment::Host(v) => Tensor::from_slice(v, v.len(), &Device::Cpu)?,
                    Moment::Device(t) => t.flatten_all()?.to_device(&Device::Cpu)?,
                };
                out.insert(key, t);
            }
        }
        Ok(out)
    }

    /// Restores the moments written by `state_tensors` and the step count; every parameter
    /// must be present with its size.
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, step: u64) -> Result<()> {
        for p in &mut self.params {
            for (key, dst) in [(format!("exp_avg.{}", p.name), &mut p.m), (format!("exp_avg_sq.{}", p.name), &mut p.v)] {
                let t = tensors.get(&key).ok_or_else(|| candle_core::Error::Msg(format!("optimizer state lacks {key}")))?;
                let v: Vec<f32> = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
                if v.len() != dst.len() {
                    candle_core::bail!("optimizer state {key} has {} values, the model {}", v.len(), dst.len());
                }
                dst.set(v)?;
            }
        }
        self.step = step;
        Ok(())
    }
}
