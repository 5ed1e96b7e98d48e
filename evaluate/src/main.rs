// Candle allocates a fresh buffer per op; glibc returns large ones to the OS at once, so
// every op page-faults its output in again (40% of a training step). mimalloc keeps them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};
use et_data::folder::ImageFolder;
use et_data::resample::Filter;
use et_eval::backend::{CandleClassifier, Classifier, OnnxClassifier};
use et_eval::{check_classes, evaluate, format_table, write_json, EvalOptions, Preprocess};
use et_models::registry::{IMAGENET_MEAN, IMAGENET_STD};
use std::path::PathBuf;
use std::process::ExitCode;

/// Measure top-1 / top-5 of an image classifier on an ImageFolder, with ONNX Runtime
/// (--onnx, the artifact you ship) or candle (--run, the trained run), at one or more
/// resolutions. Preprocessing is timm's eval transform: resize the shorter side to
/// int(r / crop_pct) (bicubic), centre-crop r×r, normalise.
#[derive(Parser, Debug)]
#[command(name = "et-eval", version, args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    eval: Args,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// List the registered models: parameters, FLOPs (MACs) at 224 px, default preprocessing.
    Models,
    /// Logits of a model for NCHW float32 images in a .npy file (candle, eval mode).
    Predict {
        /// Registry model name (see `et-eval models`).
        #[arg(long)]
        model: String,
        /// Weights with timm names (safetensors); the number of classes is read from the head.
        #[arg(long, value_name = "FILE")]
        weights: PathBuf,
        /// Input images, float32 .npy of shape (N, 3, H, W), already preprocessed.
        #[arg(long, value_name = "X.npy")]
        input: PathBuf,
        /// Where to write the logits, float32 .npy of shape (N, classes).
        #[arg(long, value_name = "LOGITS.npy")]
        output: PathBuf,
        /// Small-image stem stride / ViT patch size the weights were trained with.
        #[arg(long)]
        stem_stride: Option<usize>,
        /// ViT base input size (position-embedding grid × patch size) [default: 224].
        #[arg(long)]
        img_size: Option<usize>,
    },
}

#[derive(clap::Args, Debug)]
struct Args {
    /// ONNX model to evaluate with ONNX Runtime (as written by `et-export --onnx`).
    #[arg(long, value_name = "FILE", conflicts_with = "run", required_unless_present = "run")]
    onnx: Option<PathBuf>,
    /// et-train output directory (config.json + model.safetensors) to evaluate with candle.
    #[arg(long, value_name = "RUN_DIR")]
    run: Option<PathBuf>,
    /// ImageFolder to evaluate: DIR/val if it exists, else DIR (one sub-folder per class).
    #[arg(long, value_name = "DIR", required = true)]
    data: Option<PathBuf>,
    /// Comma-separated input resolutions [default: the run's base resolution, or the
    /// resolution recorded in the ONNX file].
    #[arg(long, value_delimiter = ',', value_name = "R,R,...")]
    resolutions: Vec<usize>,
    /// Also write the results as JSON: {"results":[{"resolution","top1","top5","images",...}]}.
    #[arg(long, value_name = "OUT")]
    json: Option<PathBuf>,
    /// Images per forward pass.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Threads for decoding and for ONNX Runtime [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
    /// Path to libonnxruntime.so [default: $ORT_DYLIB_PATH, .ort/ in the repo, or the
    /// `onnxruntime` Python package].
    #[arg(long, value_name = "PATH")]
    ort_lib: Option<PathBuf>,
    /// Normalisation mean, three comma-separated values [default: the model's, else ImageNet's].
    #[arg(long, value_delimiter = ',', num_args = 3, value_name = "R,G,B")]
    mean: Option<Vec<f32>>,
    /// Normalisation std, three comma-separated values [default: the model's, else ImageNet's].
    #[arg(long, value_delimiter = ',', num_args = 3, value_name = "R,G,B")]
    std: Option<Vec<f32>>,
    /// Centre-crop fraction [default: the model's, else 0.875].
    #[arg(long)]
    crop_pct: Option<f64>,
    /// Resize filter: bicubic, bilinear, nearest, lanczos or box [default: the model's, else bicubic].
    #[arg(long)]
    interpolation: Option<String>,
    /// Skip undecodable images (and report them) instead of stopping.
    #[arg(long)]
    skip_corrupt: bool,
}

fn three(v: Option<Vec<f32>>) -> Option<[f32; 3]> {
    v.and_then(|v| v.try_into().ok())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Some(Cmd::Models) => models(),
        Some(Cmd::Predict { model, weights, input, output, stem_stride, img_size }) => predict(&model, &weights, &input, &output, stem_stride, img_size),
        None => run(cli.eval),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("et-eval: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> Result<()> {
    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    // Model first: a wrong model path or missing runtime should not wait for a data scan.
    let (mut model, defaults, default_res): (Box<dyn Classifier>, _, Option<usize>) = if let Some(dir) = &args.run {
        let m = CandleClassifier::open(dir)?;
        let c = m.run.config.clone();
        let d = (Some(c.mean), Some(c.std), Some(c.crop_pct), Some(c.interpolation.clone()), Some(c.class_names.clone()));
        (Box::new(m), d, Some(c.base_resolution))
    } else {
        let path = args.onnx.as_ref().ok_or_else(|| anyhow!("pass --onnx FILE or --run RUN_DIR"))?;
        let m = OnnxClassifier::open(path, args.ort_lib.as_deref(), threads)?;
        let md = m.metadata.clone();
        (Box::new(m), (md.mean, md.std, md.crop_pct, md.interpolation, md.class_names), md.resolution)
    };
    let (d_mean, d_std, d_crop, d_interp, class_names) = defaults;
    let interp = args.interpolation.or(d_interp).unwrap_or_else(|| "bicubic".into());
    let pre = Preprocess {
        mean: three(args.mean).or(d_mean).unwrap_or(IMAGENET_MEAN),
        std: three(args.std).or(d_std).unwrap_or(IMAGENET_STD),
        crop_pct: args.crop_pct.or(d_crop).unwrap_or(0.875),
        filter: Filter::parse(&interp).with_context(|| format!("--interpolation {interp}"))?,
    };
    if !(pre.crop_pct > 0.0 && pre.crop_pct <= 1.0) {
        bail!("--crop-pct must be in (0, 1], got {}", pre.crop_pct);
    }
    let resolutions = if args.resolutions.is_empty() {
        vec![default_res.ok_or_else(|| anyhow!("the model records no resolution: pass --resolutions R[,R...]"))?]
    } else {
        args.resolutions.clone()
    };
    if let Some(&r) = resolutions.iter().find(|&&r| r == 0) {
        bail!("--resolutions: {r} is not a valid size");
    }
    for &r in &resolutions {
        model.check_resolution(r)?;
    }
    let data = args.data.as_deref().ok_or_else(|| anyhow!("pass --data DIR"))?;
    let folder = ImageFolder::open(&ImageFolder::split_root(data, "val"))?;
    check_classes(&folder, class_names.as_deref(), model.num_classes())?;
    let opts = EvalOptions { batch_size: args.batch_size, threads, skip_corrupt: args.skip_corrupt };
    let mut results = Vec::new();
    for &r in &resolutions {
        results.push(evaluate(model.as_mut(), &folder, r, &pre, &opts)?);
    }
    print!("{}", format_table(&results));
    if let Some(path) = &args.json {
        write_json(&results, path)?;
    }
    Ok(())
}

fn models() -> Result<()> {
    println!("{:<30} {:>10} {:>11} {:>9} {:>14}", "model", "params (M)", "GFLOPs@224", "crop_pct", "interpolation");
    for name in et_models::registry::model_names() {
        let m = et_models::registry::describe(name)?;
        println!(
            "{:<30} {:>10.2} {:>11.2} {:>9} {:>14}",
            m.name,
            m.params as f64 / 1e6,
            m.macs_224 as f64 / 1e9,
            m.defaults.crop_pct,
            m.defaults.interpolation
        );
    }
    Ok(())
}

fn predict(model: &str, weights: &std::path::Path, input: &std::path::Path, output: &std::path::Path, stem_stride: Option<usize>, img_size: Option<usize>) -> Result<()> {
    use candle_core::{DType, Device, Tensor};
    use et_models::registry::{model_config, ModelOptions};
    use et_models::{CandleOps, Model, ParamStore};
    let (shape, data) = et_eval::npy::read_f32(input).map_err(|e| anyhow!(e))?;
    let [n, c, h, w] = shape[..] else { bail!("{}: expected an (N, 3, H, W) array, got shape {shape:?}", input.display()) };
    if c != 3 {
        bail!("{}: expected 3 channels (N, 3, H, W), got shape {shape:?}", input.display());
    }
    // The head's size in the file decides the number of classes.
    let probe = model_config(model, &ModelOptions { stem_stride, img_size, ..Default::default() })?;
    let file = candle_core::safetensors::load(weights, &Device::Cpu).with_context(|| format!("cannot read weights {}", weights.display()))?;
    let head = probe.head_names()[1];
    let classes = file.get(head).map(|t| t.elem_count()).ok_or_else(|| anyhow!("{} has no '{head}': not {model} weights with timm names", weights.display()))?;
    drop(file);
    let cfg = model_config(model, &ModelOptions { num_classes: classes, stem_stride, img_size, ..Default::default() })?;
    cfg.check_input(model, h, w)?;
    let ps = ParamStore::new(0);
    let net = Model::new(&cfg, ps.var_builder(DType::F32, &Device::Cpu))?;
    ps.load(weights, &[])?;
    let x = Tensor::from_vec(data, (n, c, h, w), &Device::Cpu)?;
    let y: Vec<f32> = net.forward(&CandleOps::eval(), &x)?.flatten_all()?.to_vec1()?;
    et_eval::npy::write_f32(output, &[n, classes], &y).map_err(|e| anyhow!(e))?;
    println!("wrote {} ({n} x {classes} logits)", output.display());
    Ok(())
}
