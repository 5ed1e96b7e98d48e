#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use candle_core::{DType, Device, Tensor};
use et_models::registry::{create_model, ModelOptions};
use et_kernels::CandleOps;
use et_models::ParamStore;
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let size: usize = args.get(1).map(|s| s.parse().unwrap()).unwrap_or(32);
    let batch: usize = args.get(2).map(|s| s.parse().unwrap()).unwrap_or(64);
    let ps = ParamStore::new(0);
    let opts = ModelOptions { num_classes: 10, drop_path_rate: 0.0, stem_stride: Some(2), img_size: None };
    let (_, model) = create_model("convnext_atto", &opts, ps.var_builder(DType::F32, &Device::Cpu))?;
    let x = Tensor::randn(0f32, 1.0, (batch, 3, size, size), &Device::Cpu)?;
    for i in 0..4 {
        let t = Instant::now();
        let y = model.forward(&CandleOps::train(i), &x)?;
        let loss = y.sqr()?.mean_all()?;
        let tf = t.elapsed().as_secs_f64();
        let g = loss.backward()?;
        let tb = t.elapsed().as_secs_f64() - tf;
        drop(g);
        println!("fwd {tf:.3}s bwd {tb:.3}s -> {:.1} img/s", batch as f64 / (tf + tb));
    }
    Ok(())
}
