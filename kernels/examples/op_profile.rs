#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use candle_core::{DType, Device, Tensor, Var};
use et_kernels::{ConvGeom, Ops};
use et_kernels::CandleOps;
use std::time::Instant;

fn time(name: &str, f: &dyn Fn() -> candle_core::Result<Tensor>, vars: &[&Var]) -> candle_core::Result<()> {
    let mut best = (f64::MAX, f64::MAX);
    for _ in 0..5 {
        let t = Instant::now();
        let y = f()?;
        let tf = t.elapsed().as_secs_f64();
        let g = y.sum_all()?.backward()?;
        let tb = t.elapsed().as_secs_f64() - tf;
        for v in vars { assert!(g.get(v.as_tensor()).is_some()); }
        best = (best.0.min(tf), best.1.min(tb));
    }
    println!("{name:<28} fwd {:7.2} ms  bwd {:7.2} ms", best.0 * 1e3, best.1 * 1e3);
    Ok(())
}

fn main() -> candle_core::Result<()> {
    let d = Device::Cpu;
    let o = CandleOps::eval();
    let (n, c, h) = (64, 40, 16);
    let x = Var::from_tensor(&Tensor::randn(0f32, 1., (n, c, h, h), &d)?)?;
    let wdw = Var::from_tensor(&Tensor::randn(0f32, 1., (c, 1, 7, 7), &d)?)?;
    let b = Var::from_tensor(&Tensor::zeros(c, DType::F32, &d)?)?;
    let lw = Var::from_tensor(&Tensor::ones(c, DType::F32, &d)?)?;
    let w1 = Var::from_tensor(&Tensor::randn(0f32, 1., (4 * c, c, 1, 1), &d)?)?;
    let b1 = Var::from_tensor(&Tensor::zeros(4 * c, DType::F32, &d)?)?;
    let big = Var::from_tensor(&Tensor::randn(0f32, 1., (n, 4 * c, h, h), &d)?)?;
    let wds = Var::from_tensor(&Tensor::randn(0f32, 1., (2 * c, c, 2, 2), &d)?)?;
    time("depthwise 7x7", &|| o.conv2d(&x, &wdw, Some(&b), ConvGeom { stride: 1, padding: 3, groups: c }), &[&x, &wdw])?;
    time("layernorm channels", &|| o.layer_norm_channels(&x, &lw, &b, 1e-6), &[&x, &lw])?;
    time("pointwise c->4c", &|| o.conv2d(&x, &w1, Some(&b1), ConvGeom { stride: 1, padding: 0, groups: 1 }), &[&x, &w1])?;
    time("gelu 4c", &|| o.gelu(&big), &[&big])?;
    time("scale channels", &|| o.scale_channels(&x, &lw), &[&x])?;
    time("add residual", &|| o.add(&x, &x), &[&x])?;
    time("downsample conv 2x2 s2", &|| o.conv2d(&x, &wds, None, ConvGeom { stride: 2, padding: 0, groups: 1 }), &[&x, &wds])?;
    // The MLP's 1×1 convs at every stage of the 32-px model: the maps shrink to 2×2, so
    // per-image GEMMs get very narrow.
    for (c, h) in [(40, 16), (80, 8), (160, 4), (320, 2)] {
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (n, c, h, h), &d)?)?;
        let w1 = Var::from_tensor(&Tensor::randn(0f32, 1., (4 * c, c, 1, 1), &d)?)?;
        let b1 = Var::from_tensor(&Tensor::zeros(4 * c, DType::F32, &d)?)?;
        let gflop = 2.0 * (n * 4 * c * c * h * h) as f64 * 1e-9;
        let name = format!("pointwise {c}->{} {h}x{h} ({gflop:.2} GF)", 4 * c);
        time(&name, &|| o.conv2d(&x, &w1, Some(&b1), ConvGeom { stride: 1, padding: 0, groups: 1 }), &[&x, &w1])?;
    }
    // DeiT-tiny's block at batch 16: the MLP's first linear layer and the attention core
    // (3 heads of 64 over 197 tokens), with their GFLOP per forward.
    let t = Var::from_tensor(&Tensor::randn(0f32, 1., (16, 197, 192), &d)?)?;
    let wl = Var::from_tensor(&(Tensor::randn(0f32, 1., (768, 192), &d)? * 0.05)?)?;
    let bl = Var::from_tensor(&Tensor::zeros(768, DType::F32, &d)?)?;
    let gflop = 2.0 * (16 * 197 * 192 * 768) as f64 * 1e-9;
    time(&format!("linear 192->768 ({gflop:.2} GF)"), &|| o.linear(&t, &wl, Some(&bl)), &[&t, &wl])?;
    let qkv = Var::from_tensor(&Tensor::randn(0f32, 1., (16, 197, 576), &d)?)?;
    let gflop = 2.0 * 2.0 * (16 * 3 * 197 * 197 * 64) as f64 * 1e-9;
    time(&format!("attention 3x64 ({gflop:.2} GF)"), &|| o.attention(&qkv, 3, 64, None), &[&qkv])?;
    Ok(())
}
