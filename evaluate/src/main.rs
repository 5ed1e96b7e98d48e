// Candle allocates a fresh buffer per op; glibc returns large ones to the OS at once, so
// every op page-faults its output in again (40% of a training step). mimalloc keeps them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};
use et_data::dataset::Dataset;
use et_data::resample::Filter;
use et_eval::backend::{CandleClassifier, Classifier, OnnxClassifier};
use et_eval::gate::{self, load_baseline};
use et_eval::{check_classes, evaluate, format_table, write_json, EvalOptions, Preprocess};
use et_hub::{Hub, RepoRef};
use et_models::registry::ModelOptions;
use et_models::run_config::LoadedRun;
use et_models::family::{IMAGENET_MEAN, IMAGENET_STD};
use std::path::PathBuf;
use std::process::ExitCode;

/// Measure top-1 / top-5 of an image classifier on an ImageFolder or WebDataset shards, with ONNX Runtime
/// (--onnx, the artifact you ship) or candle (--run, the trained run), at one or more
/// resolutions. Preprocessing is timm's eval transform: resize the shorter side to
/// int(r / crop_pct) (bicubic), centre-crop r×r, normalise.
#[derive(Parser, Debug)]
#[command(
    name = "et-eval",
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    group = clap::ArgGroup::new("model").required(true).multiple(true).args(["onnx", "run", "weights", "from_hub"])
)]
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
#[group(skip)]
struct Args {
    /// ONNX model to evaluate with ONNX Runtime (as written by `et-export --onnx`). Give it
    /// once per resolution as R=FILE to evaluate fixed-size files (e.g. ViTs) together.
    #[arg(long, value_name = "FILE|R=FILE", conflicts_with_all = ["run", "weights", "from_hub"])]
    onnx: Vec<String>,
    /// et-train output directory (config.json + model.safetensors) to evaluate with candle.
    #[arg(long, value_name = "RUN_DIR", conflicts_with_all = ["weights", "from_hub"])]
    run: Option<PathBuf>,
    /// Bare weights with timm names (safetensors) to evaluate with candle; needs --model.
    #[arg(long, value_name = "FILE", requires = "model_name", conflicts_with = "from_hub")]
    weights: Option<PathBuf>,
    /// Registry model name of --weights (see `et-eval models`).
    #[arg(long = "model", id = "model_name", value_name = "NAME", requires = "weights")]
    model_name: Option<String>,
    /// A run on the Hugging Face Hub (config.json + model.safetensors), fetched into the Hub
    /// cache (HF_ENDPOINT, HF_TOKEN and HF_HOME respected) and evaluated with candle.
    #[arg(long, value_name = "OWNER/NAME[@REV]")]
    from_hub: Option<String>,
    /// With --from-hub: use the local Hub cache only, no network.
    #[arg(long, requires = "from_hub")]
    offline: bool,
    /// Images to evaluate: DIR/val if it exists, else DIR; an ImageFolder (one sub-folder
    /// per class) or WebDataset shards (*.tar with classes.json), or a shard pattern
    /// DIR/val-{000000..000009}.tar.
    #[arg(long, value_name = "DIR|PATTERN", required = true)]
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
    /// Where candle models (--run, --weights, --from-hub) run: cpu, cuda or cuda:N (CUDA
    /// needs a build with --features cuda). ONNX files always run in ONNX Runtime on the CPU.
    #[arg(long, default_value = "cpu", value_name = "cpu|cuda[:N]")]
    device: et_kernels::device::DeviceSpec,
    /// Path to libonnxruntime.so [default: $ORT_DYLIB_PATH, .ort/ in the repo, or the
    /// `onnxruntime` Python package].
    #[arg(long, value_name = "PATH")]
    ort_lib: Option<PathBuf>,
    /// Normalisation mean, three comma-separated values [default: the model's, else ImageNet's].
    #[arg(long, value_delimiter = ',', value_name = "R,G,B")]
    mean: Option<Vec<f32>>,
    /// Normalisation std, three comma-separated values [default: the model's, else ImageNet's].
    #[arg(long, value_delimiter = ',', value_name = "R,G,B")]
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
    /// CI gate: an earlier --json report; exit with status 1, naming each resolution whose
    /// top-1 fell more than --tolerance points below it.
    #[arg(long, value_name = "FILE.json")]
    baseline: Option<PathBuf>,
    /// Allowed top-1 drop against --baseline, in percentage points.
    #[arg(long, value_name = "PTS", default_value_t = 0.0, requires = "baseline")]
    tolerance: f64,
}

/// A `--mean` / `--std` value: exactly three numbers.
fn three(flag: &str, v: &Option<Vec<f32>>) -> Result<Option<[f32; 3]>> {
    match v {
        None => Ok(None),
        Some(v) => match <[f32; 3]>::try_from(v.as_slice()) {
            Ok(a) if a.iter().all(|x| x.is_finite()) && (flag == "--mean" || a.iter().all(|&x| x > 0.0)) => Ok(Some(a)),
            _ => bail!("{flag} takes three comma-separated numbers (R,G,B{}), got {v:?}", if flag == "--std" { ", each positive" } else { "" }),
        },
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = et_kernels::cpu::configure(None) {
        eprintln!("et-eval: error: {e}");
        return ExitCode::FAILURE;
    }
    let result = match cli.cmd {
        Some(Cmd::Models) => models().map(|()| true),
        Some(Cmd::Predict { model, weights, input, output, stem_stride, img_size }) => predict(&model, &weights, &input, &output, stem_stride, img_size).map(|()| true),
        None => run(cli.eval),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        // The accuracy gate failed: the regressions are already printed.
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("et-eval: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Preprocessing facts a model carries (run config or ONNX metadata); `None` = unknown.
#[derive(Default)]
struct Carried {
    mean: Option<[f32; 3]>,
    std: Option<[f32; 3]>,
    crop_pct: Option<f64>,
    interpolation: Option<String>,
    class_names: Option<Vec<String>>,
    resolution: Option<usize>,
}

/// What to evaluate: one classifier, or one ONNX file per resolution.
struct Source {
    models: Vec<Box<dyn Classifier>>,
    /// Resolution → index in `models`, for `--onnx R=FILE`.
    by_resolution: Vec<(usize, usize)>,
    /// Index in `models` serving every other resolution.
    fallback: Option<usize>,
    carried: Carried,
}

fn candle_source(run: LoadedRun, device: &candle_core::Device) -> Source {
    let c = run.config.clone();
    // Converted or bare weights carry no class names, only indices: nothing to check.
    let named_classes = !c.class_names.iter().enumerate().all(|(i, n)| *n == i.to_string());
    let carried = Carried {
        mean: Some(c.mean),
        std: Some(c.std),
        crop_pct: Some(c.crop_pct),
        interpolation: Some(c.interpolation.clone()),
        class_names: named_classes.then(|| c.class_names.clone()),
        resolution: Some(c.base_resolution),
    };
    Source { models: vec![Box::new(CandleClassifier::new(run, device.clone()))], by_resolution: vec![], fallback: Some(0), carried }
}

/// `R=FILE` or `FILE`.
fn parse_onnx_spec(spec: &str) -> Result<(Option<usize>, PathBuf)> {
    match spec.split_once('=') {
        Some((r, file)) if !r.is_empty() && r.bytes().all(|b| b.is_ascii_digit()) => {
            let r: usize = r.parse().with_context(|| format!("--onnx {spec}: bad resolution"))?;
            if r == 0 || file.is_empty() {
                bail!("--onnx {spec}: expected R=FILE with R > 0");
            }
            Ok((Some(r), PathBuf::from(file)))
        }
        _ => Ok((None, PathBuf::from(spec))),
    }
}

fn open_source(args: &Args, threads: usize) -> Result<Source> {
    let device = args.device.open()?;
    if let Some(dir) = &args.run {
        return Ok(candle_source(LoadedRun::open(dir, &device)?, &device));
    }
    if let Some(weights) = &args.weights {
        let name = args.model_name.as_deref().ok_or_else(|| anyhow!("--weights needs --model NAME"))?;
        let run = LoadedRun::from_weights(name, weights, &ModelOptions::default(), &device)?;
        return Ok(candle_source(run, &device));
    }
    if let Some(spec) = &args.from_hub {
        let repo: RepoRef = spec.parse()?;
        let hub = Hub::from_env()?;
        let dir = hub.download_run(&repo, args.offline)?;
        eprintln!("et-eval: {repo} from {}", dir.display());
        return Ok(candle_source(LoadedRun::open(&dir, &device)?, &device));
    }
    let mut src = Source { models: vec![], by_resolution: vec![], fallback: None, carried: Carried::default() };
    for spec in &args.onnx {
        let (res, path) = parse_onnx_spec(spec)?;
        match res {
            Some(r) if src.by_resolution.iter().any(|&(q, _)| q == r) => bail!("--onnx: two files for resolution {r}"),
            None if src.fallback.is_some() => bail!("--onnx: several files without a resolution; give each as R=FILE"),
            _ => {}
        }
        let m = OnnxClassifier::open(&path, args.ort_lib.as_deref(), threads)?;
        if let Some(first) = src.models.first() {
            if first.num_classes() != m.num_classes() {
                bail!("--onnx: {} predicts {} classes but the first file predicts {}", path.display(), m.num_classes(), first.num_classes());
            }
        } else {
            let md = &m.metadata;
            src.carried = Carried {
                mean: md.mean,
                std: md.std,
                crop_pct: md.crop_pct,
                interpolation: md.interpolation.clone(),
                class_names: md.class_names.clone(),
                resolution: md.resolution,
            };
        }
        let i = src.models.len();
        if let Some(r) = res {
            src.by_resolution.push((r, i));
        } else {
            src.fallback = Some(i);
        }
        src.models.push(Box::new(m));
    }
    Ok(src)
}

fn run(args: Args) -> Result<bool> {
    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    // Baseline and model first: a wrong path or a missing runtime should not wait for a data scan.
    let baseline = args.baseline.as_deref().map(load_baseline).transpose()?;
    if !(args.tolerance >= 0.0 && args.tolerance.is_finite()) {
        bail!("--tolerance must be a non-negative number of percentage points, got {}", args.tolerance);
    }
    let mut src = open_source(&args, threads)?;
    let c = &src.carried;
    let interp = args.interpolation.clone().or(c.interpolation.clone()).unwrap_or_else(|| "bicubic".into());
    let pre = Preprocess {
        mean: three("--mean", &args.mean)?.or(c.mean).unwrap_or(IMAGENET_MEAN),
        std: three("--std", &args.std)?.or(c.std).unwrap_or(IMAGENET_STD),
        crop_pct: args.crop_pct.or(c.crop_pct).unwrap_or(0.875),
        filter: Filter::parse(&interp).map_err(|e| anyhow::anyhow!("--interpolation {interp}: {e}"))?,
    };
    if !(pre.crop_pct > 0.0 && pre.crop_pct <= 1.0) {
        bail!("--crop-pct must be in (0, 1], got {}", pre.crop_pct);
    }
    let resolutions = if !args.resolutions.is_empty() {
        args.resolutions.clone()
    } else if !src.by_resolution.is_empty() {
        src.by_resolution.iter().map(|&(r, _)| r).collect()
    } else {
        vec![c.resolution.ok_or_else(|| anyhow!("the model records no resolution: pass --resolutions R[,R...]"))?]
    };
    // Which classifier serves each resolution, checked before any image is read.
    let mut plan = Vec::new();
    for &r in &resolutions {
        if r == 0 {
            bail!("--resolutions: {r} is not a valid size");
        }
        let i = src.by_resolution.iter().find(|&&(q, _)| q == r).map(|&(_, i)| i).or(src.fallback).ok_or_else(|| {
            anyhow!("no ONNX file for resolution {r}: add --onnx {r}=FILE (files given for {:?})", src.by_resolution.iter().map(|p| p.0).collect::<Vec<_>>())
        })?;
        src.models[i].check_resolution(r)?;
        plan.push((r, i));
    }
    let data = args.data.as_deref().ok_or_else(|| anyhow!("pass --data DIR"))?;
    let folder = std::sync::Arc::new(Dataset::open_split(data, "val", &mut |note: &str| println!("data: {note}"))?);
    check_classes(&folder, src.carried.class_names.as_deref(), src.models[0].num_classes())?;
    let available = if et_kernels::cpu::memory_check_enabled() { et_kernels::cpu::available_memory() } else { None };
    let mut results = Vec::new();
    for (r, i) in plan {
        let batch_size = et_eval::memory::fit_batch(args.batch_size, src.models[i].architecture().as_ref(), r, available)?;
        if batch_size < args.batch_size {
            eprintln!("et-eval: {r} px: {batch_size} images per batch (not {}) to fit in memory", args.batch_size);
        }
        let opts = EvalOptions { batch_size, threads, skip_corrupt: args.skip_corrupt, shard: Default::default() };
        results.push(evaluate(src.models[i].as_mut(), &folder, r, &pre, &opts)?);
    }
    print!("{}", format_table(&results));
    if let Some(path) = &args.json {
        write_json(&results, path)?;
    }
    let Some(baseline) = baseline else { return Ok(true) };
    let verdicts = gate::compare(&baseline, &results, args.tolerance);
    for v in &verdicts {
        println!("{}", gate::describe(v, args.tolerance));
    }
    let failed: Vec<String> = verdicts.iter().filter_map(|v| match v {
        gate::Verdict::Regressed { resolution, .. } => Some(resolution.to_string()),
        _ => None,
    }).collect();
    if failed.is_empty() {
        return Ok(true);
    }
    eprintln!("et-eval: accuracy gate failed at {} px (top-1 more than {} pts below {})", failed.join(", "), args.tolerance, args.baseline.as_deref().map(|p| p.display().to_string()).unwrap_or_default());
    Ok(false)
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
            m.preprocessing.crop_pct,
            m.preprocessing.interpolation
        );
    }
    Ok(())
}

fn predict(model: &str, weights: &std::path::Path, input: &std::path::Path, output: &std::path::Path, stem_stride: Option<usize>, img_size: Option<usize>) -> Result<()> {
    use candle_core::{Device, Tensor};
    use et_kernels::CandleOps;
    let (shape, data) = et_eval::npy::read_f32(input).map_err(|e| anyhow!(e))?;
    let [n, c, h, w] = shape[..] else { bail!("{}: expected an (N, 3, H, W) array, got shape {shape:?}", input.display()) };
    if c != 3 {
        bail!("{}: expected 3 channels (N, 3, H, W), got shape {shape:?}", input.display());
    }
    // The head's size in the file decides the number of classes.
    let run = LoadedRun::from_weights(model, weights, &ModelOptions { stem_stride, img_size, ..Default::default() }, &Device::Cpu)?;
    run.config.model_config.check_input(model, h, w)?;
    let (net, classes) = (&run.model, run.config.num_classes);
    let x = Tensor::from_vec(data, (n, c, h, w), &Device::Cpu)?;
    let y: Vec<f32> = net.forward(&CandleOps::inference(), &x)?.flatten_all()?.to_vec1()?;
    et_eval::npy::write_f32(output, &[n, classes], &y).map_err(|e| anyhow!(e))?;
    println!("wrote {} ({n} x {classes} logits)", output.display());
    Ok(())
}
