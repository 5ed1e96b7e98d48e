//! The ops and models on the training device against the CPU kernels. On a CUDA build with a
//! GPU (`scripts/device-check.sh` sets ET_REQUIRE_CUDA=1 so that a missing GPU fails instead
//! of passing on the CPU) this checks our CUDA kernels (kernels/cuda) and candle's
//! CUDA/cuDNN/cuBLAS kernels under our portable compositions, forward and backward, in f32 and
//! bf16; elsewhere the device is the CPU and it checks the portable path in f32.

use candle_core::{DType, Device, Result, Tensor, Var};
use et_kernels::testing::{assert_every_parameter_learns, seeded};
use et_models::testing::fill_for_fixture;
use et_kernels::{CandleOps, ConvGeom, Ops};
use et_models::registry::{model_config, Model, ModelOptions};
use et_models::ParamStore;

fn device() -> Device {
    let dev = Device::cuda_if_available(0).expect("CUDA device");
    if std::env::var("ET_REQUIRE_CUDA").is_ok_and(|v| v == "1") {
        assert!(dev.is_cuda(), "ET_REQUIRE_CUDA=1 but no CUDA device (built without --features cuda?)");
    }
    eprintln!("device: {dev:?}");
    dev
}

/// max |a − b| / max(1, max |a|), both moved to the CPU in f64.
fn rel_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
    let (a, b) = (a.to_device(&Device::Cpu)?.to_dtype(DType::F64)?, b.to_device(&Device::Cpu)?.to_dtype(DType::F64)?);
    let scale = a.abs()?.max_all()?.to_scalar::<f64>()?.max(1.0);
    Ok((a - b)?.abs()?.max_all()?.to_scalar::<f64>()? / scale)
}

/// Forward value and input/parameter gradients of `f` on the CPU kernels (f32) and on
/// `dev` in `dtype`, compared with `tol`: on a GPU both through the portable compositions of
/// candle's kernels and through ours (kernels/cuda: depthwise convolution, LayerNorm, the
/// attention softmax, GELU; the other ops are candle's either way).
fn compare(name: &str, dev: &Device, dtype: DType, tol: f64, shapes: &[&[usize]], f: &dyn Fn(&CandleOps, &[Tensor]) -> Result<Tensor>) -> Result<()> {
    let run = |ops: CandleOps, d: &Device, dt: DType| -> Result<(Tensor, Vec<Tensor>)> {
        let vars: Vec<Var> = shapes.iter().enumerate().map(|(i, s)| Var::from_tensor(&seeded(s, 10 + i as u64, d, DType::F32)?)).collect::<Result<_>>()?;
        let inputs: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().to_dtype(dt)).collect::<Result<_>>()?;
        let y = f(&ops, &inputs)?.to_dtype(DType::F32)?;
        let r = seeded(y.dims(), 99, d, DType::F32)?;
        let g = (&y * &r)?.sum_all()?.backward()?;
        let grads = vars.iter().map(|v| g.get(v.as_tensor()).cloned().ok_or_else(|| candle_core::Error::Msg(format!("{name}: no gradient")))).collect::<Result<_>>()?;
        Ok((y, grads))
    };
    let (y0, g0) = run(CandleOps::train(1), &Device::Cpu, DType::F32)?;
    let mut paths = vec![("portable", CandleOps::train(1).portable())];
    if dev.is_cuda() {
        paths.push(("our CUDA kernels", CandleOps::train(1)));
    }
    for (path, ops) in paths {
        let (y1, g1) = run(ops, dev, dtype)?;
        let d = rel_diff(&y0, &y1)?;
        assert!(d <= tol, "{name} {dtype:?} ({path}): forward differs by {d:.2e} (tolerance {tol:.0e})");
        for (i, (a, b)) in g0.iter().zip(&g1).enumerate() {
            let d = rel_diff(a, b)?;
            assert!(d <= tol, "{name} {dtype:?} ({path}): gradient {i} differs by {d:.2e} (tolerance {tol:.0e})");
        }
    }
    Ok(())
}

#[test]
fn ops_on_the_device_match_the_cpu_kernels_forward_and_backward() -> Result<()> {
    let dev = device();
    // f32 on a GPU: cuDNN may use TF32 for convolutions (10-bit mantissa).
    let dtypes: &[(DType, f64)] = if dev.is_cuda() { &[(DType::F32, 5e-3), (DType::BF16, 5e-2)] } else { &[(DType::F32, 1e-5)] };
    for &(dt, tol) in dtypes {
        for (label, w, g) in [
            ("depthwise 7x7", [8usize, 1, 7, 7], ConvGeom { stride: 1, padding: 3, groups: 8 }),
            ("depthwise 3x3/s2", [8, 1, 3, 3], ConvGeom { stride: 2, padding: 1, groups: 8 }),
            ("pointwise", [6, 8, 1, 1], ConvGeom { stride: 1, padding: 0, groups: 1 }),
            ("patchify 4x4/s4", [6, 8, 4, 4], ConvGeom { stride: 4, padding: 0, groups: 1 }),
            ("conv 3x3/s2", [6, 8, 3, 3], ConvGeom { stride: 2, padding: 1, groups: 1 }),
        ] {
            compare(label, &dev, dt, tol, &[&[2, 8, 13, 11], &w, &[w[0]]], &|o, v| o.conv2d(&v[0], &v[1], Some(&v[2]), g))?;
        }
        compare("layer norm (channels)", &dev, dt, tol, &[&[2, 8, 5, 3], &[8], &[8]], &|o, v| o.layer_norm_channels(&v[0], &v[1], &v[2], 1e-6))?;
        compare("layer norm (last)", &dev, dt, tol, &[&[3, 5, 24], &[24], &[24]], &|o, v| o.layer_norm(&v[0], &v[1], &v[2], 1e-5))?;
        // Rows wider than a block (256 threads), and more channels than a warp per group.
        compare("layer norm (last, wide)", &dev, dt, tol, &[&[2, 7, 300], &[300], &[300]], &|o, v| o.layer_norm(&v[0], &v[1], &v[2], 1e-6))?;
        compare("layer norm (channels, 1x1 map)", &dev, dt, tol, &[&[3, 40, 1, 1], &[40], &[40]], &|o, v| o.layer_norm_channels(&v[0], &v[1], &v[2], 1e-6))?;
        compare("gelu", &dev, dt, tol, &[&[4, 33]], &|o, v| o.gelu(&v[0]))?;
        compare("max pool 3x3/s2/p1", &dev, dt, tol, &[&[2, 4, 9, 8]], &|o, v| o.max_pool2d(&v[0], 3, 2, 1))?;
        compare("attention", &dev, dt, tol, &[&[4, 10, 48], &[2, 2, 10, 10]], &|o, v| o.attention(&v[0], 2, 8, Some(&v[1])))?;
        // DeiT's 197 tokens: softmax rows longer than a block and not a multiple of it.
        compare("attention 197 tokens", &dev, dt, tol, &[&[2, 197, 48]], &|o, v| o.attention(&v[0], 2, 8, None))?;
        compare("batch norm (train)", &dev, dt, tol, &[&[4, 6, 5, 5], &[6], &[6]], &|o, v| {
            let d = v[0].device();
            o.batch_norm(&v[0], &v[1], &v[2], &Tensor::zeros(6, DType::F32, d)?, &Tensor::ones(6, DType::F32, d)?, 1e-5, 0.1)
        })?;
        compare("scale + global pool", &dev, dt, tol, &[&[2, 8, 5, 5], &[8]], &|o, v| o.global_avg_pool(&o.scale_channels(&v[0], &v[1])?))?;
    }
    Ok(())
}

#[test]
fn models_on_the_device_match_the_cpu_and_every_parameter_learns_in_bf16() -> Result<()> {
    let dev = device();
    if !dev.is_cuda() {
        // On the CPU, tests/portable.rs covers the same ground (f16 standing in for bf16).
        eprintln!("no CUDA device: model checks run by scripts/device-check.sh");
        return Ok(());
    }
    let m = |e: et_models::ModelError| candle_core::Error::Msg(e.to_string());
    for (name, size) in [("convnext_atto", 64), ("resnet18", 64), ("deit_tiny_patch16_224", 32), ("swin_tiny_patch4_window7_224", 56), ("pvt_v2_b0", 64), ("caformer_s18", 64), ("CSWin_64_12211_tiny_224", 64)] {
        let cfg = model_config(name, &ModelOptions { num_classes: 10, img_size: Some(size), ..Default::default() }).map_err(m)?;
        let cpu = ParamStore::new(7);
        let cpu_model = Model::new(&cfg, cpu.var_builder(DType::F32, &Device::Cpu)).map_err(m)?;
        fill_for_fixture(&cpu)?;
        let x = seeded(&[2, 3, size, size], 1, &Device::Cpu, DType::F32)?;
        let want = cpu_model.forward(&CandleOps::eval(), &x)?;
        let ps = ParamStore::new(7);
        let model = Model::new(&cfg, ps.var_builder(DType::F32, &dev)).map_err(m)?;
        fill_for_fixture(&ps)?;
        let xd = x.to_device(&dev)?;
        let got = model.forward(&CandleOps::eval(), &xd)?;
        let d = rel_diff(&want, &got)?;
        assert!(d <= 1e-2, "{name}: f32 forward on {dev:?} differs by {d:.2e}");
        {
            let bf = Model::new(&cfg, ps.var_builder_cast(DType::BF16, &dev)).map_err(m)?;
            let y = bf.forward(&CandleOps::eval(), &xd.to_dtype(DType::BF16)?)?;
            let d = rel_diff(&want, &y)?;
            assert!(d <= 0.1, "{name}: bf16 forward differs by {d:.2e}");
            let y = bf.forward(&CandleOps::train(3), &xd.to_dtype(DType::BF16)?)?.to_dtype(DType::F32)?;
            assert_every_parameter_learns(&ps.trainable(), &y).map_err(|e| candle_core::Error::Msg(format!("{name}: {e}")))?;
        }
    }
    Ok(())
}
