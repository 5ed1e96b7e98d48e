//! The device step: the shared rules as candle ops on the parameters' device, moments kept
//! there, norms and trust ratios as device scalars. Nothing is read back to the host; the
//! parameters are overwritten in place (the models hold their tensors).

use super::grads::{global_norm_device, sum_sq_device};
use super::rules::{self, constant};
use super::{Moment, Optimizer, OptimizerKind};
use candle_core::{DType, Result, Tensor};

pub(super) fn step(opt: &mut Optimizer, grads: &[Tensor], lr: f64, weight_decay: f64) -> Result<()> {
    let kind = opt.cfg.kind;
    // timm Lamb: max_grad_norm = 1.0 pre-normalisation of all gradients, as a device scalar.
    let grad_div = match (kind, grads.first()) {
        (OptimizerKind::Lamb, Some(g0)) => {
            let norm = global_norm_device(grads)?;
            Some(norm.maximum(&constant(1.0, DType::F64, g0)?)?.to_dtype(DType::F32)?)
        }
        _ => None,
    };
    let consts: Vec<_> = opt.params.iter().map(|p| opt.consts(p, lr, weight_decay)).collect();
    for ((p, g), k) in opt.params.iter_mut().zip(grads).zip(consts) {
        let (Moment::Device(m), Moment::Device(v)) = (&mut p.m, &mut p.v) else { candle_core::bail!("optimizer: host moments in a device step") };
        let w = p.var.as_tensor().detach();
        let (decays, lr) = (p.decays && weight_decay != 0.0, lr * p.lr_scale);
        let [w_new, m_new, v_new] = match &grad_div {
            None => rules::adamw(&w, m, v, g, &k)?,
            Some(div) => {
                let [u, m_new, v_new] = rules::lamb_direction(&w, m, v, g, div, &k)?;
                let s = if decays { trust_ratio(&w, &u)?.affine(lr, 0.0)? } else { constant(lr, DType::F64, &w)? };
                [rules::lamb_apply(&w, &u, &s.to_dtype(DType::F32)?)?, m_new, v_new]
            }
        };
        p.var.set(&w_new)?;
        (*m, *v) = (m_new, v_new);
    }
    Ok(())
}

/// [`rules::trust_ratio`] of a parameter and its LAMB direction, as a 0-d f64 device tensor.
fn trust_ratio(w: &Tensor, u: &Tensor) -> Result<Tensor> {
    let (wn, un) = (sum_sq_device(w)?.sqrt()?, sum_sq_device(u)?.sqrt()?);
    let (zero, one) = (constant(0.0, DType::F64, w)?, constant(1.0, DType::F64, w)?);
    let ratio = un.gt(&zero)?.where_cond(&(&wn / &un)?, &one)?;
    wn.gt(&zero)?.where_cond(&ratio, &one)
}
