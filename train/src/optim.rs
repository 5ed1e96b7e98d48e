//! AdamW and LAMB with timm's parameter groups: no weight decay on 1-D parameters (norms,
//! biases, layer scales) nor on position embeddings / class tokens; an optional per-parameter
//! learning-rate scale (layer-wise lr decay). Gradients arrive as plain `Vec<f32>` (see
//! [`Grads`]) so they can be accumulated over micro-batches and clipped by their global norm
//! before the step; the moments are `Vec<f32>` updated in one fused pass per parameter.

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, Device, InplaceOp1, Layout, Result, Storage, Tensor, Var};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
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

pub struct ParamState {
    pub name: String,
    pub var: Var,
    /// Whether the (scheduled) weight decay applies to this parameter.
    pub decays: bool,
    /// Multiplies the learning rate (layer-wise decay; 1 otherwise).
    pub lr_scale: f64,
    pub m: Vec<f32>,
    pub v: Vec<f32>,
}

pub struct Optimizer {
    pub cfg: OptimConfig,
    pub params: Vec<ParamState>,
    pub step: u64,
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

/// Gradients of the optimiser's parameters, in its order, as flat vectors.
pub struct Grads(pub Vec<Vec<f32>>);

impl Grads {
    /// Reads the gradients of `params` from a backward pass, times `scale` (1/accumulation
    /// steps), adding them to `acc` when given. Returns the names of parameters that got no
    /// gradient (a model bug: callers treat it as an error).
    pub fn accumulate(acc: Option<Grads>, params: &[ParamState], store: &GradStore, scale: f32) -> Result<(Grads, Vec<String>)> {
        let mut missing = Vec::new();
        let mut out = acc.map(|g| g.0).unwrap_or_else(|| vec![Vec::new(); params.len()]);
        for (p, acc) in params.iter().zip(out.iter_mut()) {
            let Some(g) = store.get(p.var.as_tensor()) else {
                missing.push(p.name.clone());
                if acc.is_empty() {
                    *acc = vec![0.0; p.m.len()];
                }
                continue;
            };
            // The first micro-batch's gradient is scaled into a new buffer in one pass,
            // rather than zeros, a copy and an add (three passes, 4 % of a Swin-T step).
            with_values(g, |g| {
                if acc.is_empty() {
                    *acc = g.par_iter().map(|&g| scale * g).collect();
                } else {
                    acc.par_iter_mut().zip(g.par_iter()).for_each(|(a, &g)| *a += scale * g);
                }
            })?;
        }
        Ok((Grads(out), missing))
    }

    /// Global L2 norm over all parameters (f64 sum, in a fixed order).
    pub fn global_norm(&self) -> f64 {
        self.0.iter().map(|g| g.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>()).sum::<f64>().sqrt()
    }

    /// timm / PyTorch `clip_grad_norm_`: scales all gradients by max_norm/(norm + 1e-6) when
    /// the global norm exceeds `max_norm`. Returns the norm before clipping.
    pub fn clip_norm(&mut self, max_norm: f64) -> f64 {
        let norm = self.global_norm();
        let coef = max_norm / (norm + 1e-6);
        if coef < 1.0 {
            let c = coef as f32;
            self.0.par_iter_mut().for_each(|g| g.iter_mut().for_each(|x| *x *= c));
        }
        norm
    }
}

fn norm(v: &[f32]) -> f64 {
    v.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>().sqrt()
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

/// An update applied to a contiguous f32 CPU parameter where it is stored.
struct InPlace<F>(RefCell<F>);

impl<F: FnMut(&mut [f32])> InplaceOp1 for InPlace<F> {
    fn name(&self) -> &'static str {
        "optimizer-update"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
        match (storage, layout.contiguous_offsets()) {
            (CpuStorage::F32(w), Some((a, b))) => {
                (self.0.borrow_mut())(&mut w[a..b]);
                Ok(())
            }
            _ => candle_core::bail!("optimizer: a parameter is not a contiguous f32 tensor"),
        }
    }
}

/// Applies `update` to the values of `var`: in place for a contiguous f32 parameter on the
/// CPU (copying the weights out and setting them back were two of the step's three passes
/// over them), through a host copy elsewhere.
fn update_values(var: &Var, update: impl FnMut(&mut [f32])) -> Result<()> {
    let t = var.as_tensor();
    if t.device().is_cpu() && t.dtype() == DType::F32 && t.is_contiguous() {
        return t.inplace_op1(&InPlace(RefCell::new(update)));
    }
    let mut update = update;
    let mut w: Vec<f32> = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
    update(&mut w);
    var.set(&Tensor::from_vec(w, t.shape(), t.device())?.to_dtype(t.dtype())?)
}

impl Optimizer {
    /// `lr_scale(name)` gives each parameter's learning-rate multiplier.
    pub fn new(params: Vec<(String, Var)>, cfg: OptimConfig, lr_scale: &dyn Fn(&str) -> f64) -> Self {
        let params = params
            .into_iter()
            .map(|(name, var)| {
                let n = var.elem_count();
                let decays = decays(&name, var.rank());
                let lr_scale = lr_scale(&name);
                ParamState { name, var, decays, lr_scale, m: vec![0.0; n], v: vec![0.0; n] }
            })
            .collect();
        Optimizer { cfg, params, step: 0 }
    }

    /// One update with learning rate `lr` and weight decay `weight_decay` (both from their
    /// schedules; the decay applies only to the parameters that decay).
    pub fn step(&mut self, grads: &Grads, lr: f64, weight_decay: f64) -> Result<()> {
        if grads.0.len() != self.params.len() {
            candle_core::bail!("{} gradients for {} parameters", grads.0.len(), self.params.len());
        }
        self.step += 1;
        let (b1, b2, eps) = (self.cfg.beta1 as f32, self.cfg.beta2 as f32, self.cfg.eps as f32);
        let bc1 = 1.0 - self.cfg.beta1.powi(self.step as i32);
        let bc2 = 1.0 - self.cfg.beta2.powi(self.step as i32);
        // timm Lamb: max_grad_norm = 1.0 pre-normalisation of all gradients.
        let grad_div = match self.cfg.kind {
            OptimizerKind::Lamb => grads.global_norm().max(1.0) as f32,
            OptimizerKind::AdamW => 1.0,
        };
        let kind = self.cfg.kind;
        for (p, g) in self.params.iter_mut().zip(&grads.0) {
            let lr = lr * p.lr_scale;
            let wd = if p.decays { weight_decay } else { 0.0 };
            let (m, v) = (&mut p.m, &mut p.v);
            update_values(&p.var, |w| match kind {
                OptimizerKind::AdamW => {
                    let decay = (1.0 - lr * wd) as f32;
                    let step_size = (lr / bc1) as f32;
                    let inv_bc2_sqrt = (1.0 / bc2.sqrt()) as f32;
                    w.par_iter_mut().zip(m.par_iter_mut()).zip(v.par_iter_mut()).zip(g.par_iter()).for_each(|(((w, m), v), &g)| {
                        *m = b1 * *m + (1.0 - b1) * g;
                        *v = b2 * *v + (1.0 - b2) * g * g;
                        *w = *w * decay - step_size * *m / ((*v).sqrt() * inv_bc2_sqrt + eps);
                    });
                }
                OptimizerKind::Lamb => {
                    let (bc1, bc2s, wdf) = (bc1 as f32, bc2.sqrt() as f32, wd as f32);
                    let mut update = vec![0f32; w.len()];
                    update.par_iter_mut().zip(m.par_iter_mut()).zip(v.par_iter_mut()).zip(g.par_iter().zip(w.par_iter())).for_each(|(((u, m), v), (&g, &w))| {
                        let g = g / grad_div;
                        *m = b1 * *m + (1.0 - b1) * g;
                        *v = b2 * *v + (1.0 - b2) * g * g;
                        *u = (*m / bc1) / ((*v).sqrt() / bc2s + eps) + wdf * w;
                    });
                    // timm (always_adapt=False): the trust ratio only where decay applies.
                    let trust = if wd != 0.0 {
                        let (wn, un) = (norm(w), norm(&update));
                        if wn > 0.0 && un > 0.0 { wn / un } else { 1.0 }
                    } else {
                        1.0
                    };
                    let s = (lr * trust) as f32;
                    w.par_iter_mut().zip(update.par_iter()).for_each(|(w, &u)| *w -= s * u);
                }
            })?;
        }
        Ok(())
    }

    /// The moments under PyTorch's names (`exp_avg.<param>`, `exp_avg_sq.<param>`), for
    /// checkpoints.
    pub fn state_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for p in &self.params {
            out.insert(format!("exp_avg.{}", p.name), Tensor::from_slice(&p.m, p.m.len(), &Device::Cpu)?);
            out.insert(format!("exp_avg_sq.{}", p.name), Tensor::from_slice(&p.v, p.v.len(), &Device::Cpu)?);
        }
        Ok(out)
    }

    /// Restores the moments written by `state_tensors` and the step count; every parameter
    /// must be present with its size.
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, step: u64) -> Result<()> {
        for p in &mut self.params {
            for (key, dst) in [(format!("exp_avg.{}", p.name), &mut p.m), (format!("exp_avg_sq.{}", p.name), &mut p.v)] {
                let t = tensors.get(&key).ok_or_else(|| candle_core::Error::Msg(format!("optimizer state lacks {key}")))?;
                let v: Vec<f32> = t.flatten_all()?.to_vec1()?;
                if v.len() != dst.len() {
                    candle_core::bail!("optimizer state {key} has {} values, the model {}", v.len(), dst.len());
                }
                *dst = v;
            }
        }
        self.step = step;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grads(opt: &Optimizer, loss: &Tensor) -> Result<Grads> {
        let (g, missing) = Grads::accumulate(None, &opt.params, &loss.backward()?, 1.0)?;
        assert!(missing.is_empty());
        Ok(g)
    }

    #[test]
    fn no_decay_names_as_timm() {
        assert!(decays("layers.0.blocks.0.attn.qkv.weight", 2));
        assert!(!decays("layers.0.blocks.0.attn.relative_position_bias_table", 2));
        assert!(!decays("pos_embed", 3));
        assert!(!decays("stages.0.blocks.0.mlp.act.scale", 1));
    }

    #[test]
    fn adamw_matches_the_reference_update_and_groups() -> Result<()> {
        let w = Var::new(&[[1.0f32, -2.0], [0.5, 3.0]], &Device::Cpu)?;
        let b = Var::new(&[0.1f32, 0.2], &Device::Cpu)?;
        let mut opt = Optimizer::new(vec![("fc.weight".into(), w.clone()), ("fc.bias".into(), b.clone())], OptimConfig::default(), &|_| 1.0);
        assert!(opt.params[0].decays);
        assert!(!opt.params[1].decays);
        // loss = sum(w^2) + sum(b): grad w = 2w, grad b = 1.
        for _ in 0..2 {
            let loss = (w.as_tensor().sqr()?.sum_all()? + b.as_tensor().sum_all()?)?;
            let g = grads(&opt, &loss)?;
            opt.step(&g, 0.1, 0.05)?;
        }
        // Reference (PyTorch AdamW semantics) computed by hand in f64.
        let reference = |mut x: f64, wd: f64, grad: &dyn Fn(f64) -> f64| {
            let (mut m, mut v) = (0.0, 0.0);
            for t in 1..=2 {
                let g = grad(x);
                x *= 1.0 - 0.1 * wd;
                m = 0.9 * m + 0.1 * g;
                v = 0.999 * v + 0.001 * g * g;
                let mh = m / (1.0 - 0.9f64.powi(t));
                let vh = v / (1.0 - 0.999f64.powi(t));
                x -= 0.1 * mh / (vh.sqrt() + 1e-8);
            }
            x
        };
        let got: Vec<f32> = w.as_tensor().flatten_all()?.to_vec1()?;
        for (g, x0) in got.iter().zip([1.0, -2.0, 0.5, 3.0]) {
            let want = reference(x0, 0.05, &|x| 2.0 * x);
            assert!((*g as f64 - want).abs() < 1e-5, "{g} vs {want}");
        }
        let got: Vec<f32> = b.as_tensor().to_vec1()?;
        assert!((got[0] as f64 - reference(0.1, 0.0, &|_| 1.0)).abs() < 1e-5);
        Ok(())
    }

    #[test]
    fn lamb_matches_the_reference_update() -> Result<()> {
        let w0 = [[1.0f32, -2.0], [0.5, 3.0]];
        let w = Var::new(&w0, &Device::Cpu)?;
        let cfg = OptimConfig { kind: OptimizerKind::Lamb, ..Default::default() };
        let mut opt = Optimizer::new(vec![("fc.weight".into(), w.clone())], cfg, &|_| 1.0);
        let (lr, wd) = (0.01, 0.1);
        for _ in 0..2 {
            let g = grads(&opt, &w.as_tensor().sqr()?.sum_all()?)?;
            opt.step(&g, lr, wd)?;
        }
        // timm Lamb by hand in f64 (grad = 2w, global-norm pre-division, trust ratio).
        let mut x: Vec<f64> = w0.iter().flatten().map(|&v| v as f64).collect();
        let (mut m, mut v) = (vec![0.0; 4], vec![0.0; 4]);
        for t in 1..=2 {
            let g: Vec<f64> = x.iter().map(|x| 2.0 * x).collect();
            let gn = g.iter().map(|g| g * g).sum::<f64>().sqrt().max(1.0);
            let mut u = vec![0.0; 4];
            for i in 0..4 {
                let gi = g[i] / gn;
                m[i] = 0.9 * m[i] + 0.1 * gi;
                v[i] = 0.999 * v[i] + 0.001 * gi * gi;
                u[i] = (m[i] / (1.0 - 0.9f64.powi(t))) / ((v[i] / (1.0 - 0.999f64.powi(t))).sqrt() + 1e-8) + wd * x[i];
            }
            let trust = x.iter().map(|a| a * a).sum::<f64>().sqrt() / u.iter().map(|a| a * a).sum::<f64>().sqrt();
            for i in 0..4 {
                x[i] -= lr * trust * u[i];
            }
        }
        let got: Vec<f32> = w.as_tensor().flatten_all()?.to_vec1()?;
        for (g, want) in got.iter().zip(&x) {
            assert!((*g as f64 - want).abs() < 1e-5, "{g} vs {want}");
        }
        Ok(())
    }

    #[test]
    fn clipping_accumulation_and_lr_scale() -> Result<()> {
        let w = Var::new(&[3.0f32, 4.0], &Device::Cpu)?;
        let opt = Optimizer::new(vec![("a".into(), w.clone())], OptimConfig::default(), &|n| if n == "a" { 0.5 } else { 1.0 });
        assert_eq!(opt.params[0].lr_scale, 0.5);
        // Two micro-batches of loss/2 accumulate to the full-batch gradient 2w = (6, 8).
        let loss = w.as_tensor().sqr()?.sum_all()?;
        let (g, _) = Grads::accumulate(None, &opt.params, &loss.backward()?, 0.5)?;
        let (mut g, _) = Grads::accumulate(Some(g), &opt.params, &loss.backward()?, 0.5)?;
        assert_eq!(g.0[0], vec![6.0, 8.0]);
        assert!((g.global_norm() - 10.0).abs() < 1e-9);
        assert!((g.clip_norm(20.0) - 10.0).abs() < 1e-9);
        assert_eq!(g.0[0], vec![6.0, 8.0], "under the limit: unchanged");
        g.clip_norm(5.0);
        assert!((g.global_norm() - 5.0).abs() < 1e-5);
        Ok(())
    }

    #[test]
    fn state_round_trips() -> Result<()> {
        let w = Var::new(&[1.0f32, 2.0], &Device::Cpu)?;
        let mut a = Optimizer::new(vec![("w".into(), w.clone())], OptimConfig::default(), &|_| 1.0);
        let g = grads(&a, &w.as_tensor().sqr()?.sum_all()?)?;
        a.step(&g, 0.1, 0.0)?;
        let mut b = Optimizer::new(vec![("w".into(), w.clone())], OptimConfig::default(), &|_| 1.0);
        b.load_state(&a.state_tensors()?, a.step)?;
        assert_eq!((a.params[0].m.clone(), a.params[0].v.clone(), a.step), (b.params[0].m.clone(), b.params[0].v.clone(), b.step));
        assert!(b.load_state(&HashMap::new(), 1).is_err());
        Ok(())
    }
}
