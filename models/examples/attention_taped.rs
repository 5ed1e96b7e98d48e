//! DeiT-tiny's attention core (batch 16, 3 heads of 64 over 197 tokens) forward and
//! backward on the gradient tape, as et-train runs it; best of 7.
//!
//!     cargo run --release -p et-models --example attention_taped
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use candle_core::{Device, Tensor, Var};
use et_models::ops::Ops;
use et_models::CandleOps;
use std::time::Instant;

fn main() -> candle_core::Result<()> {
    et_models::cpu::configure(Some(2)).ok();
    let qkv = Var::from_tensor(&Tensor::randn(0f32, 1., (16, 197, 576), &Device::Cpu)?)?;
    let mut best = (f64::MAX, f64::MAX);
    for _ in 0..7 {
        let o = CandleOps::train(0).taped();
        let t = Instant::now();
        let y = o.attention(&qkv, 3, 64, None)?;
        let tf = t.elapsed().as_secs_f64();
        let loss = o.loss_input(&y)?.sum_all()?;
        let t = Instant::now();
        let g = o.backward(&loss)?;
        let tb = t.elapsed().as_secs_f64();
        assert!(g.get(qkv.as_tensor()).is_some());
        best = (best.0.min(tf), best.1.min(tb));
    }
    println!("attention 16x197, 3 heads of 64: fwd {:7.2} ms bwd {:7.2} ms", best.0 * 1e3, best.1 * 1e3);
    Ok(())
}
