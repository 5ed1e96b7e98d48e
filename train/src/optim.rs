//! AdamW (decoupled weight decay) with timm's parameter groups: no weight decay on 1-D
//! parameters (norms, biases, layer scales) nor on position embeddings / class tokens.
//! The moments are plain `Vec<f32>` updated in one fused pass per parameter.

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};
use rayon::prelude::*;

pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.05 }
    }
}

pub struct ParamState {
    pub name: String,
    pub var: Var,
    pub weight_decay: f64,
    pub m: Vec<f32>,
    pub v: Vec<f32>,
}

pub struct AdamW {
    pub cfg: AdamWConfig,
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

impl AdamW {
    pub fn new(params: Vec<(String, Var)>, cfg: AdamWConfig) -> Self {
        let params = params
            .into_iter()
            .map(|(name, var)| {
                let n = var.elem_count();
                let wd = if decays(&name, var.rank()) { cfg.weight_decay } else { 0.0 };
                ParamState { name, var, weight_decay: wd, m: vec![0.0; n], v: vec![0.0; n] }
            })
            .collect();
        AdamW { cfg, params, step: 0 }
    }

    /// One update with learning rate `lr`. Returns the names of parameters that got no
    /// gradient (a model bug if it happens: callers treat it as an error).
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<Vec<String>> {
        self.step += 1;
        let (b1, b2, eps) = (self.cfg.beta1 as f32, self.cfg.beta2 as f32, self.cfg.eps as f32);
        let bc1 = 1.0 - self.cfg.beta1.powi(self.step as i32);
        let bc2 = 1.0 - self.cfg.beta2.powi(self.step as i32);
        let mut missing = Vec::new();
        for p in &mut self.params {
            let Some(g) = grads.get(p.var.as_tensor()) else {
                missing.push(p.name.clone());
                continue;
            };
            let g: Vec<f32> = g.flatten_all()?.to_vec1()?;
            let mut w: Vec<f32> = p.var.as_tensor().flatten_all()?.to_vec1()?;
            let decay = (1.0 - lr * p.weight_decay) as f32;
            let step_size = (lr / bc1) as f32;
            let inv_bc2_sqrt = (1.0 / bc2.sqrt()) as f32;
            w.par_iter_mut().zip(p.m.par_iter_mut()).zip(p.v.par_iter_mut()).zip(g.par_iter()).for_each(|(((w, m), v), &g)| {
                *m = b1 * *m + (1.0 - b1) * g;
                *v = b2 * *v + (1.0 - b2) * g * g;
                *w = *w * decay - step_size * *m / ((*v).sqrt() * inv_bc2_sqrt + eps);
            });
            p.var.set(&Tensor::from_vec(w, p.var.shape(), p.var.device())?)?;
        }
        Ok(missing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn no_decay_names_as_timm() {
        assert!(decays("layers.0.blocks.0.attn.qkv.weight", 2));
        assert!(!decays("layers.0.blocks.0.attn.relative_position_bias_table", 2));
        assert!(!decays("pos_embed", 3));
        assert!(!decays("stages.0.blocks.0.mlp.act.scale", 1));
    }

    #[test]
    fn matches_the_reference_update_and_groups() -> Result<()> {
        let w = Var::new(&[[1.0f32, -2.0], [0.5, 3.0]], &Device::Cpu)?;
        let b = Var::new(&[0.1f32, 0.2], &Device::Cpu)?;
        let mut opt = AdamW::new(vec![("fc.weight".into(), w.clone()), ("fc.bias".into(), b.clone())], AdamWConfig::default());
        assert_eq!(opt.params[0].weight_decay, 0.05);
        assert_eq!(opt.params[1].weight_decay, 0.0);
        // loss = sum(w^2) + sum(b): grad w = 2w, grad b = 1.
        for _ in 0..2 {
            let loss = (w.as_tensor().sqr()?.sum_all()? + b.as_tensor().sum_all()?)?;
            opt.step(&loss.backward()?, 0.1)?;
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
}
