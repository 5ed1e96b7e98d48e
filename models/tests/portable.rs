//! Every model family through the portable ops (the CUDA / bf16 path) on the CPU: the same
//! outputs as the hand-written kernels in f32, and in half-precision mixed precision (f32
//! masters, per-step cast) close outputs and a gradient on every trainable f32 parameter.
//! candle's CPU matmul has no bf16, so the CPU runs the same code path in f16 (the half
//! type only changes the casts); bf16 itself is checked on the GPU (scripts/device-check.sh).

use candle_core::{DType, Device, Result, Tensor};
use et_kernels::testing::{assert_every_parameter_learns, seeded};
use et_models::testing::{fill_for_fixture, SMALL_FAMILIES};
use et_models::registry::{model_config, Model, ModelOptions};
use et_kernels::CandleOps;
use et_models::ParamStore;

fn max_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
    (a.to_dtype(DType::F64)? - b.to_dtype(DType::F64)?)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()
}

#[test]
fn every_family_runs_the_portable_path_like_the_kernels_and_learns_in_half_precision() -> Result<()> {
    let dev = Device::Cpu;
    for (name, size) in SMALL_FAMILIES {
        let opts = ModelOptions { num_classes: 10, img_size: Some(size), ..Default::default() };
        let cfg = model_config(name, &opts).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let ps = ParamStore::new(7);
        let model = Model::new(&cfg, ps.var_builder(DType::F32, &dev)).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        // Non-degenerate values everywhere: zero-initialised last norms and head would
        // block gradients legitimately.
        fill_for_fixture(&ps)?;
        let x = seeded(&[2, 3, size, size], 1, &dev, DType::F32)?;
        let kern = model.forward(&CandleOps::eval(), &x)?;
        let port = model.forward(&CandleOps::eval().portable(), &x)?;
        let scale = kern.abs()?.max_all()?.to_scalar::<f32>()? as f64;
        let d = max_diff(&kern, &port)?;
        assert!(d <= 1e-4 * scale.max(1.0), "{name}: portable f32 differs by {d} (output scale {scale})");

        // Half-precision compute from f32 masters: built per step from the casting builder.
        let half = Model::new(&cfg, ps.var_builder_cast(DType::F16, &dev)).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let y = half.forward(&CandleOps::train(3), &x.to_dtype(DType::F16)?)?;
        assert_eq!(y.dtype(), DType::F16, "{name}");
        let eval16 = half.forward(&CandleOps::eval(), &x.to_dtype(DType::F16)?)?;
        let d16 = max_diff(&kern, &eval16)?;
        assert!(d16 <= 0.1 * scale.max(1.0), "{name}: f16 differs by {d16} (output scale {scale})");
        // f16 needs its loss scaled into range (underflow below ~6e-8 after ConvNeXt's 1e-6
        // layer scale, overflow above 65504); bf16 has f32's range and does not.
        let y = y.to_dtype(DType::F32)?;
        let peak = y.abs()?.max_all()?.to_scalar::<f32>()? as f64;
        assert!(peak.is_finite() && peak > 0.0, "{name}: f16 output peak {peak}");
        assert_every_parameter_learns(&ps.trainable(), &(y * (16.0 / peak))?).map_err(|e| candle_core::Error::Msg(format!("{name}: {e}")))?;
        for (n, v) in ps.all() {
            assert_eq!(v.dtype(), DType::F32, "{name}: master {n} is not f32");
        }
    }
    Ok(())
}
