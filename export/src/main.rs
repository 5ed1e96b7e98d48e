// Candle allocates a fresh buffer per op; glibc returns large ones to the OS at once, so
// every op page-faults its output in again (40% of a training step). mimalloc keeps them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::Result;
use clap::Parser;
use et_export::export_onnx;
use et_models::run_config::LoadedRun;
use std::path::PathBuf;
use std::process::ExitCode;

/// Export a trained run (an et-train output directory) to ONNX (opset 17, dynamic batch;
/// dynamic height/width for convolutional models, one fixed size per file for ViTs). Preprocessing facts (mean, std,
/// crop_pct, interpolation, class names) are stored as ONNX metadata for et-eval.
#[derive(Parser, Debug)]
#[command(name = "et-export", version)]
struct Args {
    /// The run directory to export (config.json + model.safetensors from et-train).
    #[arg(long, value_name = "RUN_DIR")]
    onnx: PathBuf,
    /// Intended input resolution, checked against the model and recorded in the file
    /// [default: the run's base resolution].
    #[arg(long, value_name = "R")]
    resolution: Option<usize>,
    /// Output file [default: RUN_DIR/model.onnx].
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("et-export: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> Result<()> {
    let run = LoadedRun::open(&args.onnx, &candle_core::Device::Cpu)?;
    let resolution = args.resolution.unwrap_or(run.config.base_resolution);
    let out = args.out.unwrap_or_else(|| args.onnx.join("model.onnx"));
    let s = export_onnx(&run, resolution, &out)?;
    println!(
        "wrote {} ({} nodes, {} initializers, {:.2} MB) for {} at {resolution}x{resolution} ({})",
        s.path.display(),
        s.nodes,
        s.initializers,
        s.bytes as f64 / 1e6,
        run.config.model,
        if run.config.model_config.dynamic_input_size() { "batch, height and width dynamic" } else { "dynamic batch; fixed size: the position embedding is resampled for this resolution" }
    );
    Ok(())
}
