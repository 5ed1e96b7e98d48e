//! `et-bench casts`: what mixed-precision training spends per micro-batch (before) or per
//! optimiser step (now) on the model it computes with.

use anyhow::{bail, Result};
use candle_core::Device;
use et_kernels::device::Precision;
use et_models::registry::{create_model, Model, ModelOptions};
use et_models::{CastModel, ParamStore};
use std::time::Instant;

/// Median milliseconds of `reps` calls of `f`, each waited for on `dev`.
fn time(dev: &Device, reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    dev.synchronize()?;
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        f()?;
        dev.synchronize()?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(super::median(times))
}

pub fn casts(model: &str, classes: usize, dev: &Device, precision: Precision, reps: usize) -> Result<()> {
    if precision == Precision::F32 {
        bail!("--precision f32 casts nothing: use --precision bf16");
    }
    let dt = precision.dtype();
    let ps = ParamStore::new(0);
    let opts = ModelOptions { num_classes: classes, ..Default::default() };
    let (cfg, _) = create_model(model, &opts, ps.var_builder(candle_core::DType::F32, dev))?;
    let params = ps.trainable();
    let built = CastModel::new(&cfg, &ps, dt, dev)?;
    println!("{model}: {} parameter tensors ({:.2} M values), {} casts, {dev:?} {precision}", params.len(), ps.num_trainable() as f64 / 1e6, built.len());
    let rebuild = time(dev, reps, || {
        Model::new(&cfg, ps.var_builder_cast(dt, dev))?;
        Ok(())
    })?;
    let casts = time(dev, reps, || {
        for (_, v) in &params {
            v.as_tensor().to_dtype(dt)?;
        }
        Ok(())
    })?;
    let refresh = time(dev, reps, || Ok(built.refresh()?))?;
    println!("rebuild from casts (before, per micro-batch): {rebuild:.3} ms");
    println!("casts alone: {casts:.3} ms");
    println!("refresh of the model built once (now, per optimiser step): {refresh:.3} ms");
    Ok(())
}
