//! The host step: each parameter updated where it is stored (a contiguous f32 CPU tensor),
//! with its moments, in one parallel pass of the shared rules.

use super::grads::{host, sum_sq};
use super::{rules, Moment, Optimizer, OptimizerKind};
use candle_core::{CpuStorage, DType, InplaceOp1, Layout, Result, Tensor, Var};
use rayon::prelude::*;
use std::cell::RefCell;

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

pub(super) fn step(opt: &mut Optimizer, grads: &[Vec<f32>], lr: f64, weight_decay: f64) -> Result<()> {
    // timm Lamb: max_grad_norm = 1.0 pre-normalisation of all gradients.
    let grad_div = match opt.cfg.kind {
        OptimizerKind::Lamb => rules::lamb_grad_div(grads.iter().map(|g| sum_sq(g)).sum::<f64>().sqrt()) as f32,
        OptimizerKind::AdamW => 1.0,
    };
    let kind = opt.cfg.kind;
    let consts: Vec<_> = opt.params.iter().map(|p| opt.consts(p, lr, weight_decay)).collect();
    for ((p, g), k) in opt.params.iter_mut().zip(grads).zip(consts) {
        let (Moment::Host(m), Moment::Host(v)) = (&mut p.m, &mut p.v) else { candle_core::bail!("optimizer: device moments in a host step") };
        let (decays, lr) = (p.decays && weight_decay != 0.0, lr * p.lr_scale);
        update_values(&p.var, |w| match kind {
            OptimizerKind::AdamW => {
                w.par_iter_mut().zip(m.par_iter_mut()).zip(v.par_iter_mut()).zip(g.par_iter()).for_each(|(((w, m), v), g)| {
                    [*w, *m, *v] = host(rules::adamw(&*w, &*m, &*v, g, &k));
                });
            }
            OptimizerKind::Lamb => {
                let mut update = vec![0f32; w.len()];
                update.par_iter_mut().zip(m.par_iter_mut()).zip(v.par_iter_mut()).zip(g.par_iter().zip(w.par_iter())).for_each(|(((u, m), v), (g, w))| {
                    [*u, *m, *v] = host(rules::lamb_direction(w, &*m, &*v, g, &grad_div, &k));
                });
                let trust = if decays { rules::trust_ratio(sum_sq(w).sqrt(), sum_sq(&update).sqrt()) } else { 1.0 };
                let s = (lr * trust) as f32;
                w.par_iter_mut().zip(update.par_iter()).for_each(|(w, u)| *w = host(rules::lamb_apply(&*w, u, &s)));
            }
        })?;
    }
    Ok(())
}
