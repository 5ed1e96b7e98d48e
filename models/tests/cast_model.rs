//! The mixed-precision model built once (`CastModel`) against the model built anew from
//! casts for every step: after the masters change and the casts are refreshed, every family
//! gives the same outputs and the same master gradients, bit for bit. (f16 on the CPU: the
//! code path is bf16's, see tests/portable.rs.)

use candle_core::{DType, Device, Result, Tensor};
use et_kernels::testing::seeded;
use et_kernels::CandleOps;
use et_models::registry::{model_config, Model, ModelOptions};
use et_models::testing::{fill_for_fixture, fixture_values, SMALL_FAMILIES};
use et_models::{CastModel, ParamStore};

fn m(e: et_models::ModelError) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

/// Output and master gradients of `model` on `x` in training mode (fixed drop-path seed).
fn run(model: &Model, ps: &ParamStore, x: &Tensor) -> Result<(Vec<f32>, Vec<Vec<f32>>)> {
    let y = model.forward(&CandleOps::train(5), x)?.to_dtype(DType::F32)?;
    let r = seeded(y.dims(), 9, &Device::Cpu, DType::F32)?;
    let g = (&y * &r)?.sum_all()?.backward()?;
    let grads = ps.trainable().iter().map(|(n, v)| g.get(v.as_tensor()).ok_or_else(|| candle_core::Error::Msg(format!("no gradient for {n}")))?.flatten_all()?.to_vec1()).collect::<Result<_>>()?;
    Ok((y.flatten_all()?.to_vec1()?, grads))
}

#[test]
fn a_refreshed_cast_model_equals_one_built_from_fresh_casts() -> Result<()> {
    let dev = Device::Cpu;
    for (name, size) in SMALL_FAMILIES {
        let cfg = model_config(name, &ModelOptions { num_classes: 10, img_size: Some(size), ..Default::default() }).map_err(m)?;
        let ps = ParamStore::new(7);
        let built = CastModel::new(&cfg, &ps, DType::F16, &dev).map_err(m)?;
        assert!(!built.is_empty(), "{name}: no casts recorded");
        let x = seeded(&[1, 3, size, size], 1, &dev, DType::F32)?.to_dtype(DType::F16)?;
        let eval = |model: &Model| -> Result<Vec<f32>> { model.forward(&CandleOps::eval(), &x)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1() };
        let before = eval(&built.model)?;
        // The masters change, as an optimiser step changes them. (Buffers, BatchNorm's running
        // statistics, are not cast: the model sees a change of theirs at once.)
        for (n, v) in ps.trainable() {
            v.set(&Tensor::from_vec(fixture_values(&n, v.dims()), v.shape(), v.device())?)?;
        }
        assert_eq!(before, eval(&built.model)?, "{name}: the casts changed before a refresh");
        // Buffers too, as loading a checkpoint changes them.
        fill_for_fixture(&ps)?;
        built.refresh()?;
        assert_ne!(before, eval(&built.model)?, "{name}: the refresh changed nothing");
        let fresh = Model::new(&cfg, ps.var_builder_cast(DType::F16, &dev)).map_err(m)?;
        let (want, got) = (run(&fresh, &ps, &x)?, run(&built.model, &ps, &x)?);
        assert_eq!(want.0, got.0, "{name}: outputs differ after the refresh");
        assert_eq!(want.1, got.1, "{name}: master gradients differ after the refresh");
    }
    Ok(())
}
