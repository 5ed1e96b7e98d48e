// Candle allocates a fresh buffer per op; glibc returns large ones to the OS at once, so
// every op page-faults its output in again (40% of a training step). mimalloc keeps them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};
use et_export::convert::{convert, Which};
use et_export::export_onnx;
use et_hub::card::{final_metric_from_jsonl, metrics_from_eval_report, model_card};
use et_hub::{Hub, RepoRef};
use et_models::registry::ModelOptions;
use et_models::run_config::{LoadedRun, CONFIG_FILE, WEIGHTS_FILE};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Export a trained run (an et-train output directory) to ONNX (opset 17, dynamic batch;
/// dynamic height/width for convolutional models, one fixed size per file for ViTs),
/// publish it on the Hugging Face Hub, or import a reference checkpoint (`convert`).
/// Preprocessing facts (mean, std, crop_pct, interpolation, class names) are stored as
/// ONNX metadata for et-eval.
#[derive(Parser, Debug)]
#[command(name = "et-export", version, args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    export: Args,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Import an official EfficientTrain / ConvNeXt / DeiT / Swin checkpoint (PyTorch
    /// pickle, state dict under `model` or `model_ema`) or a timm checkpoint (pickle or
    /// safetensors) into our weight names.
    Convert {
        /// The checkpoint: FILE.pth (torch.save) or FILE.safetensors.
        #[arg(long, value_name = "FILE")]
        from: PathBuf,
        /// Registry model name it holds (see `et-eval models`).
        #[arg(long)]
        model: String,
        /// FILE.safetensors, or a directory that becomes a run (config.json +
        /// model.safetensors) for et-eval --run, et-export --onnx and et-train --init-from.
        #[arg(long, value_name = "FILE|DIR")]
        out: PathBuf,
        /// Import the EMA weights (`model_ema`) instead of `model`.
        #[arg(long)]
        ema: bool,
    },
}

#[derive(clap::Args, Debug)]
struct Args {
    /// The run directory to export (config.json + model.safetensors from et-train).
    #[arg(long, value_name = "RUN_DIR", required = true)]
    onnx: Option<PathBuf>,
    /// Input resolution(s), checked against the model and recorded in the file; several
    /// (e.g. 160,224 for a ViT) write one file each, named model-R.onnx
    /// [default: the run's base resolution].
    #[arg(long, value_name = "R[,R...]", value_delimiter = ',')]
    resolution: Vec<usize>,
    /// Output file [default: RUN_DIR/model.onnx]; with several resolutions, R is inserted
    /// before the extension.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Also upload the run (model.safetensors, config.json, the ONNX file(s) and a model
    /// card README.md) to this Hugging Face Hub repository (HF_ENDPOINT, HF_TOKEN respected).
    #[arg(long, value_name = "OWNER/NAME[@REV]")]
    push_to_hub: Option<String>,
    /// An `et-eval --json` report whose accuracy table goes into the model card
    /// [default: the final validation accuracy in RUN_DIR/metrics.jsonl].
    #[arg(long, value_name = "FILE.json", requires = "push_to_hub")]
    eval_json: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Some(Cmd::Convert { from, model, out, ema }) => run_convert(&from, &model, &out, ema),
        None => run(cli.export),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("et-export: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn with_resolution(path: &Path, r: usize) -> PathBuf {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
    path.with_file_name(format!("{stem}-{r}.onnx"))
}

fn run(args: Args) -> Result<()> {
    let dir = args.onnx.as_deref().ok_or_else(|| anyhow!("pass --onnx RUN_DIR"))?;
    // Parse the Hub target before the (slow) export so a typo fails at once.
    let target: Option<RepoRef> = args.push_to_hub.as_deref().map(str::parse).transpose()?;
    let run = LoadedRun::open(dir, &candle_core::Device::Cpu)?;
    let resolutions = if args.resolution.is_empty() { vec![run.config.base_resolution] } else { args.resolution.clone() };
    let base = args.out.clone().unwrap_or_else(|| dir.join("model.onnx"));
    let mut written = Vec::new();
    for &r in &resolutions {
        let out = if resolutions.len() == 1 { base.clone() } else { with_resolution(&base, r) };
        let s = export_onnx(&run, r, &out)?;
        println!(
            "wrote {} ({} nodes, {} initializers, {:.2} MB) for {} at {r}x{r} ({})",
            s.path.display(),
            s.nodes,
            s.initializers,
            s.bytes as f64 / 1e6,
            run.config.model,
            if run.config.model_config.dynamic_input_size() { "batch, height and width dynamic" } else { "dynamic batch; fixed size: the position embedding is resampled for this resolution" }
        );
        written.push(out);
    }
    if let Some(repo) = target {
        push(dir, &repo, &written, args.eval_json.as_deref())?;
    }
    Ok(())
}

fn push(dir: &Path, repo: &RepoRef, onnx: &[PathBuf], eval_json: Option<&Path>) -> Result<()> {
    let config_text = std::fs::read_to_string(dir.join(CONFIG_FILE)).with_context(|| format!("cannot read {}", dir.join(CONFIG_FILE).display()))?;
    let config: serde_json::Value = serde_json::from_str(&config_text).with_context(|| format!("{} is not JSON", dir.join(CONFIG_FILE).display()))?;
    let metrics = match eval_json {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("cannot read --eval-json {}", p.display()))?;
            let report: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("--eval-json {} is not JSON", p.display()))?;
            let m = metrics_from_eval_report(&report);
            if m.is_empty() {
                bail!("--eval-json {} has no results: pass a report written by `et-eval --json`", p.display());
            }
            m
        }
        None => {
            let base = config.get("base_resolution").and_then(|v| v.as_u64()).unwrap_or(0) as usize;
            std::fs::read_to_string(dir.join(et_runfiles::METRICS_FILE)).ok().and_then(|t| final_metric_from_jsonl(&t, base)).into_iter().collect()
        }
    };
    let names: Vec<String> = onnx.iter().filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned())).collect();
    let card = dir.join(et_runfiles::MODEL_CARD);
    et_runfiles::write(&card, model_card(&repo.id(), &config, &names, &metrics).as_bytes()).with_context(|| format!("cannot write {}", card.display()))?;
    let mut files = vec![(dir.join(WEIGHTS_FILE), WEIGHTS_FILE.to_string()), (dir.join(CONFIG_FILE), CONFIG_FILE.to_string()), (card, et_runfiles::MODEL_CARD.to_string())];
    files.extend(onnx.iter().zip(&names).map(|(p, n)| (p.clone(), n.clone())));
    let hub = Hub::from_env()?;
    let commit = hub.upload(repo, &files, &format!("Upload {} from efficienttrain-rs", config.get("model").and_then(|v| v.as_str()).unwrap_or("model")))?;
    println!("pushed {} files to {repo}: {commit}", files.len());
    Ok(())
}

fn run_convert(from: &Path, model: &str, out: &Path, ema: bool) -> Result<()> {
    let which = if ema { Which::Ema } else { Which::Model };
    // A path ending in .safetensors is the weights file; anything else becomes a run directory.
    let as_file = out.extension().is_some_and(|e| e == "safetensors");
    let weights = if as_file {
        out.to_path_buf()
    } else {
        std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
        out.join(WEIGHTS_FILE)
    };
    let s = convert(from, model, which, &weights)?;
    if !as_file {
        let run = LoadedRun::from_weights(model, &weights, &ModelOptions::default(), &candle_core::Device::Cpu)?;
        run.config.save(&out.join(CONFIG_FILE))?;
    }
    println!(
        "wrote {} for {model}: {} tensors from {} ({} names{}), {} classes",
        out.display(),
        s.tensors,
        s.source,
        s.layout,
        if s.dropped > 0 { format!(", {} recomputed buffers dropped", s.dropped) } else { String::new() },
        s.num_classes
    );
    Ok(())
}
