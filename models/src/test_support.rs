//! What every family's tests check of a small instance (unit tests only).

use crate::registry::{Model, ModelConfig};
use crate::ParamStore;
use candle_core::{DType, Device, Result, Tensor};
use et_kernels::testing::{assert_every_parameter_learns, assert_tape_matches_graph, seeded};
use et_kernels::CandleOps;
use std::sync::Arc;

/// Builds `cfg`'s model (3 classes, drop path on), runs it in training mode on seeded images
/// of `shape` and checks: one row of logits per image, a gradient reaching every parameter,
/// and the taped backward equal to candle's graph. Returns the model for further checks.
pub fn assert_trains(cfg: ModelConfig, shape: &[usize]) -> Result<(Arc<ParamStore>, Model, Tensor)> {
    let ps = ParamStore::new(1);
    let model = Model::new(&cfg, ps.var_builder(DType::F32, &Device::Cpu)).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    let x = seeded(shape, 2, &Device::Cpu, DType::F32)?;
    let y = model.forward(&CandleOps::train(3), &x)?;
    assert_eq!(y.dims(), &[shape[0], cfg.num_classes()]);
    assert_every_parameter_learns(&ps.trainable(), &y)?;
    assert_tape_matches_graph(&ps.trainable(), 3, |o| model.forward(o, &x))?;
    Ok((ps, model, x))
}
