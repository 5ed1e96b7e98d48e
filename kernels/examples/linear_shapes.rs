//! Forward and backward of our linear layer (on the gradient tape, as et-train runs it) on
//! the token counts and widths of Swin-T's four stages at batch 8 (rows x in -> out), 2
//! threads, best of 5; `bench/torch_linear_shapes.py` times PyTorch's on the same list.
//! `--deit` takes DeiT-tiny's four shapes at batch 16 instead (3152 tokens: qkv, proj, fc1,
//! fc2), and its attention core (16 sequences of 197 tokens, 3 heads of 64).
//!
//!     cargo run --release -p et-models --example linear_shapes [-- --deit]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use candle_core::{Device, Tensor, Var};
use et_kernels::Ops;
use et_kernels::CandleOps;
use std::time::Instant;

/// Best (forward, backward) seconds of `f` over `reps` taped training steps; `v` must get
/// a gradient.
fn taped(reps: usize, v: &Var, f: impl Fn(&CandleOps) -> candle_core::Result<Tensor>) -> candle_core::Result<(f64, f64)> {
    let mut best = (f64::MAX, f64::MAX);
    for _ in 0..reps {
        let o = CandleOps::train(0).taped();
        let t = Instant::now();
        let y = f(&o)?;
        let tf = t.elapsed().as_secs_f64();
        let loss = o.loss_input(&y)?.sum_all()?;
        let t = Instant::now();
        let g = o.backward(&loss)?;
        let tb = t.elapsed().as_secs_f64();
        assert!(g.get(v.as_tensor()).is_some());
        best = (best.0.min(tf), best.1.min(tb));
    }
    Ok(best)
}

fn main() -> candle_core::Result<()> {
    let d = Device::Cpu;
    et_kernels::cpu::configure(Some(2)).ok();
    let swin = [(25088, 96, 384), (25088, 384, 96), (25088, 96, 288), (6272, 192, 768), (6272, 768, 192), (1568, 384, 1536), (1568, 1536, 384), (1568, 384, 1152), (392, 768, 3072), (392, 3072, 768)];
    let deit = [(3152, 192, 576), (3152, 192, 192), (3152, 192, 768), (3152, 768, 192)];
    let is_deit = std::env::args().any(|a| a == "--deit");
    let shapes: &[(usize, usize, usize)] = if is_deit { &deit } else { &swin };
    for &(m, k, n) in shapes {
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (m, k), &d)?)?;
        let w = Var::from_tensor(&(Tensor::randn(0f32, 1., (n, k), &d)? * 0.05)?)?;
        let b = Var::from_tensor(&Tensor::zeros(n, candle_core::DType::F32, &d)?)?;
        let (tf, tb) = taped(5, &w, |o| o.linear(&x, &w, Some(&b)))?;
        println!("{m}x{k}->{n} fwd {:7.2} ms bwd {:7.2} ms", tf * 1e3, tb * 1e3);
    }
    if is_deit {
        let qkv = Var::from_tensor(&Tensor::randn(0f32, 1., (16, 197, 576), &d)?)?;
        let (tf, tb) = taped(7, &qkv, |o| o.attention(&qkv, 3, 64, None))?;
        println!("attention 16x197, 3 heads of 64: fwd {:7.2} ms bwd {:7.2} ms", tf * 1e3, tb * 1e3);
    }
    Ok(())
}
