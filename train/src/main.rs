// Candle allocates a fresh buffer per op; glibc returns large ones to the OS at once, so
// every op page-faults its output in again (40% of a training step). mimalloc keeps them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::Result;
use clap::{CommandFactory, FromArgMatches, Parser};
use et_kernels::device::{DeviceSpec, Precision};
use et_train::optim::OptimizerKind;
use et_train::engine::{train, Event, TrainConfig};
use et_train::{checkpoint, presets};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

/// Train a vision backbone with the EfficientTrain++ curriculum: early stages see only the
/// low-frequency content of each image (Fourier-domain cropping to a smaller input) and
/// weak RandAugment; both grow stage by stage. With no arguments it trains ConvNeXt-atto
/// on the CIFAR-10 subset bundled in assets/cifar10-mini.
#[derive(Parser, Debug)]
#[command(name = "et-train", version)]
struct Args {
    /// ImageFolder dataset: DIR/train/<class>/* (and DIR/val/<class>/* for validation),
    /// or DIR/<class>/* to train without validation.
    #[arg(long, value_name = "DIR", default_value = "assets/cifar10-mini")]
    data: PathBuf,
    /// Model name from the registry: convnext_{atto,femto,pico,nano,tiny,small,base},
    /// resnet{18,34,50}.
    #[arg(long, default_value = "convnext_atto")]
    model: String,
    /// Curriculum: et-pp (EfficientTrain++, 10 stages) or baseline (base resolution throughout).
    #[arg(long, default_value = "et-pp")]
    schedule: String,
    /// Training budget in base-resolution-equivalent epochs (low-resolution stages run
    /// proportionally more epochs for the same compute).
    #[arg(long, default_value_t = 12.0)]
    epochs: f64,
    /// Images per optimiser step (the same in every stage).
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Peak learning rate (AdamW), reached after warm-up, then cosine decay.
    #[arg(long, default_value_t = 2e-3)]
    lr: f64,
    /// Final (and warm-up start) learning rate.
    #[arg(long, default_value_t = 1e-6)]
    min_lr: f64,
    /// Warm-up length in base-resolution-equivalent epochs.
    #[arg(long, default_value_t = 1.0)]
    warmup_epochs: f64,
    /// AdamW weight decay (not applied to norms, biases and other 1-D parameters).
    #[arg(long, default_value_t = 0.05)]
    weight_decay: f64,
    /// Label smoothing of the cross-entropy targets.
    #[arg(long, default_value_t = 0.1)]
    label_smoothing: f64,
    /// Stochastic-depth (drop-path) rate of the last block.
    #[arg(long, default_value_t = 0.0)]
    drop_path: f64,
    /// Small-image stem with this stride (ConvNeXt: 2×2 patchify; ResNet: one 3×3 conv, no
    /// max-pool) [default: 2 for images under 64 px, else timm's stem].
    #[arg(long)]
    stem_stride: Option<usize>,
    /// Base (final-stage) resolution [default: the first training image's shorter side,
    /// capped at 224, rounded down to a multiple of 8].
    #[arg(long)]
    base_resolution: Option<usize>,
    /// Smallest area fraction of RandomResizedCrop (timm: 0.08).
    #[arg(long, default_value_t = 0.25)]
    crop_min_scale: f64,
    /// Centre-crop fraction used for validation and recorded for export/eval
    /// [default: 1.0 under 64 px, else the model's (0.875)].
    #[arg(long)]
    crop_pct: Option<f64>,
    /// Random-erasing probability (timm recipe: 0.25).
    #[arg(long, default_value_t = 0.0)]
    reprob: f64,
    /// Seed of every random choice (initialisation, data order, augmentation, drop path).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Data-loading threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Output directory: config.json, model.safetensors, metrics.jsonl.
    #[arg(long, value_name = "DIR", default_value = "runs/default")]
    out: PathBuf,
    /// Print progress every N steps.
    #[arg(long, default_value_t = 10)]
    log_every: usize,
    /// Stop at the first undecodable training or validation image instead of skipping it
    /// (skipped images are reported and counted in the stage summary).
    #[arg(long)]
    strict_data: bool,
    /// Accepted for older command lines: skipping is now the default.
    #[arg(long, hide = true)]
    skip_corrupt: bool,
    /// Write a checkpoint (weights, EMA, optimiser state, training state) every N optimiser
    /// steps, besides the one at every stage end; 0 = stage ends only.
    #[arg(long, value_name = "N", default_value_t = 0)]
    save_every_steps: usize,
    /// Continue the run whose directory (or checkpoint directory) is DIR, with its saved
    /// settings; only --threads, --log-every and --device may be given with it.
    #[arg(long, value_name = "DIR")]
    resume: Option<PathBuf>,
    /// Fix the compute thread count (saved in checkpoints and reused on --resume), so that a
    /// resumed run ends with bit-identical weights to an uninterrupted one.
    #[arg(long)]
    deterministic: bool,
    /// Compute threads with --deterministic [default: the number of cores].
    #[arg(long, value_name = "N")]
    compute_threads: Option<usize>,
    /// Start from the official recipe of a family (SPEC §3–4): convnext_*, deit_*, resnet*
    /// (AdamW, lr 4e-3 at an effective batch of 4096 scaled linearly, warm-up, drop path
    /// scaled by the budget, EMA, clipping, Mixup/CutMix, random erasing); flags given
    /// explicitly override it. Printed in full at start.
    #[arg(long, value_name = "MODEL")]
    preset: Option<String>,
    /// Images per optimiser step, reached by gradient accumulation over --batch-size
    /// micro-batches (must be a multiple of it) [default: --batch-size].
    #[arg(long, value_name = "N")]
    effective_batch: Option<usize>,
    /// Optimiser: adamw or lamb.
    #[arg(long, default_value = "adamw")]
    optimizer: OptimizerKind,
    /// Weight decay at the end of a cosine weight-decay schedule [default: constant].
    #[arg(long)]
    weight_decay_end: Option<f64>,
    /// Layer-wise learning-rate decay (fine-tuning), e.g. 0.8: layer i of n gets lr·d^(n−i).
    #[arg(long)]
    layer_decay: Option<f64>,
    /// Clip gradients to this global L2 norm (DeiT / Swin recipe: 5.0).
    #[arg(long, value_name = "NORM")]
    clip_grad: Option<f64>,
    /// Keep an exponential moving average of the weights with this decay (ConvNeXt: 0.9999);
    /// it is validated after every stage and saved as ema.safetensors.
    #[arg(long, value_name = "DECAY")]
    ema_decay: Option<f64>,
    /// Scale --drop-path by budget / E0 (ET++: E0 = 200 epochs).
    #[arg(long, value_name = "E0")]
    drop_path_ref_epochs: Option<f64>,
    /// Fine-tune from these weights (safetensors, timm names, e.g. a timm checkpoint or an
    /// earlier run's model.safetensors), or from a run on the Hugging Face Hub
    /// (OWNER/NAME[@REV], fetched into the Hub cache); a classifier head of another size is
    /// re-initialised.
    #[arg(long, value_name = "FILE|OWNER/NAME[@REV]")]
    init_from: Option<PathBuf>,
    /// With --init-from OWNER/NAME: use the local Hub cache only, no network.
    #[arg(long)]
    offline: bool,
    /// Mixup alpha (timm batch mode: each image blended with its mirror in the batch,
    /// λ ~ Beta(α, α), soft targets); 0 = off (timm recipe: 0.8).
    #[arg(long, value_name = "ALPHA", default_value_t = 0.0)]
    mixup: f64,
    /// CutMix alpha (a box of the mirror image pasted, λ = 1 − box area); 0 = off (timm recipe: 1.0).
    #[arg(long, value_name = "ALPHA", default_value_t = 0.0)]
    cutmix: f64,
    /// Probability of CutMix instead of Mixup when both are on.
    #[arg(long, default_value_t = 0.5)]
    mixup_switch_prob: f64,
    /// Probability of mixing a batch when Mixup or CutMix is on.
    #[arg(long, default_value_t = 1.0)]
    mixup_prob: f64,
    /// Where to train: cpu, cuda or cuda:N (CUDA needs a build with --features cuda).
    #[arg(long, default_value = "cpu", value_name = "cpu|cuda[:N]")]
    device: DeviceSpec,
    /// Compute precision: f32, or bf16 (CUDA; f32 master weights, optimiser state and loss).
    #[arg(long, default_value = "f32", value_name = "f32|bf16")]
    precision: Precision,
}

fn main() -> ExitCode {
    let matches = Args::command().get_matches();
    let args = match Args::from_arg_matches(&matches) {
        Ok(a) => a,
        Err(e) => e.exit(),
    };
    match run(args, &matches) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("et-train: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn pct(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{:.2}%", 100.0 * v))
}

/// Flags that may accompany --resume (they change nothing a checkpoint decides).
const RESUME_OK: &[&str] = &["resume", "threads", "log_every", "device"];

fn given(m: &clap::ArgMatches, id: &str) -> bool {
    m.try_contains_id(id).unwrap_or(false) && m.value_source(id) == Some(clap::parser::ValueSource::CommandLine)
}

fn config_from(a: &Args) -> TrainConfig {
    TrainConfig {
        data: a.data.clone(),
        model: a.model.clone(),
        schedule: a.schedule.clone(),
        epochs: a.epochs,
        batch_size: a.batch_size,
        effective_batch: a.effective_batch,
        optimizer: a.optimizer,
        lr: a.lr,
        min_lr: a.min_lr,
        warmup_epochs: a.warmup_epochs,
        weight_decay: a.weight_decay,
        weight_decay_end: a.weight_decay_end,
        layer_decay: a.layer_decay,
        clip_grad: a.clip_grad,
        ema_decay: a.ema_decay,
        label_smoothing: a.label_smoothing,
        drop_path: a.drop_path,
        drop_path_ref_epochs: a.drop_path_ref_epochs,
        stem_stride: a.stem_stride,
        base_resolution: a.base_resolution,
        crop_min_scale: a.crop_min_scale,
        crop_pct: a.crop_pct,
        erasing: a.reprob,
        seed: a.seed,
        threads: a.threads,
        out: a.out.clone(),
        log_every: a.log_every,
        strict_data: a.strict_data,
        save_every_steps: a.save_every_steps,
        deterministic: a.deterministic,
        init_from: a.init_from.clone(),
        mixup: a.mixup,
        cutmix: a.cutmix,
        mixup_switch_prob: a.mixup_switch_prob,
        mixup_prob: a.mixup_prob,
        preset: None,
        device: a.device,
        precision: a.precision,
    }
}

/// Pins the compute pools (rayon, and candle's own) to `n` threads; nothing has started
/// threads yet.
fn pin_threads(n: usize) -> Result<()> {
    et_kernels::cpu::configure(Some(n)).map_err(|e| anyhow::anyhow!("cannot set up {n} compute threads: {e}"))
}

fn run(a: Args, m: &clap::ArgMatches) -> Result<()> {
    let (cfg, resume) = match &a.resume {
        Some(dir) => {
            let cmd = Args::command();
            let extra: Vec<String> = cmd.get_arguments().map(|a| a.get_id().as_str()).filter(|id| !RESUME_OK.contains(id) && given(m, id)).map(|id| format!("--{}", id.replace('_', "-"))).collect();
            if !extra.is_empty() {
                anyhow::bail!("--resume continues with the run's saved settings: drop {}", extra.join(", "));
            }
            let ckpt = checkpoint::locate(dir)?;
            let state = checkpoint::load_state(&ckpt)?;
            let mut cfg = state.config.clone();
            if let Some(run_dir) = checkpoint::run_dir_of(&ckpt) {
                cfg.out = run_dir;
            }
            if given(m, "threads") {
                cfg.threads = a.threads;
            }
            if given(m, "log_every") {
                cfg.log_every = a.log_every;
            }
            if given(m, "device") {
                cfg.device = a.device;
            }
            if cfg.deterministic {
                pin_threads(state.compute_threads)?;
            }
            (cfg, Some((ckpt, state)))
        }
        None => {
            if !a.data.exists() && a.data == std::path::Path::new("assets/cifar10-mini") {
                anyhow::bail!("the bundled dataset assets/cifar10-mini is not in the current directory: run from the repository root or pass --data DIR");
            }
            let mut cfg = config_from(&a);
            if let Some(hub_ref) = cfg.init_from.as_ref().and_then(|p| p.to_str()).filter(|s| et_hub::is_hub_reference(s)) {
                let repo: et_hub::RepoRef = hub_ref.parse()?;
                let dir = et_hub::Hub::from_env()?.download_run(&repo, a.offline)?;
                println!("init-from {repo}: {}", dir.display());
                cfg.init_from = Some(dir.join(et_hub::WEIGHTS_FILE));
            } else if a.offline {
                anyhow::bail!("--offline applies to --init-from OWNER/NAME (a Hub repository)");
            }
            if let Some(name) = &a.preset {
                let p = presets::preset(name).ok_or_else(|| anyhow::anyhow!("no preset for '{name}': use one of {}", presets::NAMES.join(", ")))?;
                // The first stage's share of the base resolution, for the warm-up rule.
                let family = et_train::schedule::Family::of_model(&cfg.model);
                let first = et_train::schedule::Schedule::resolve(&cfg.schedule, family, 224, cfg.epochs).map(|s| s.stages[0].resolution as f64 / 224.0).unwrap_or(1.0);
                p.apply(&mut cfg, &|f| given(m, f), first);
                println!("preset {name} ({}):", p.source);
                let v = serde_json::to_value(&cfg)?;
                for (k, val) in v.as_object().into_iter().flatten() {
                    let mark = if given(m, k) || (k == "erasing" && given(m, "reprob")) { "  (given)" } else { "" };
                    println!("  {k:<22} {val}{mark}");
                }
            }
            if cfg.deterministic {
                pin_threads(a.compute_threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())))?;
            }
            (cfg, None)
        }
    };
    let tty = std::io::stderr().is_terminal();
    let mut bar_open = false;
    let mut print = |e: &Event| match e {
        Event::Plan { schedule, train_images, val_images, classes, params, steps, stage_steps, accum, drop_path } => {
            println!(
                "{} on {train_images} train / {val_images} val images, {classes} classes, {:.2} M parameters; schedule {} ({} stages, budget {} base epochs at {} px, {steps} steps); drop path {drop_path:.3}; {} {}",
                cfg.model,
                *params as f64 / 1e6,
                schedule.name,
                schedule.stages.len(),
                schedule.budget,
                schedule.base_resolution,
                cfg.device,
                cfg.precision
            );
            for (i, s) in schedule.stages.iter().enumerate() {
                let replay = s.replay.map_or(String::new(), |r| format!(", replay x{} (buffer {} batches)", r.times, r.size));
                println!("  stage {:>2}: {:>3} px, RandAugment m{}, {:.2} epochs, {} steps x {} micro-batches{replay}", i + 1, s.resolution, s.magnitude, s.epochs, stage_steps[i], accum[i]);
            }
        }
        Event::Resumed { from, step, stage, stage_step } => println!("resumed from {} at step {step} (stage {}, step {stage_step} of the stage)", from.display(), stage + 1),
        Event::Step { stage, stages, resolution, magnitude, step, steps, loss, lr, img_per_s, eta_s, progress } => {
            let line = format!(
                "stage {}/{stages} | {resolution} px m{magnitude} | step {step}/{steps} ({:.1}%) | loss {loss:.4} | lr {lr:.2e} | {img_per_s:.1} img/s | ETA {}",
                stage + 1,
                100.0 * progress,
                hms(*eta_s)
            );
            if tty {
                eprint!("\r\x1b[2K{line}");
                bar_open = true;
            } else {
                println!("{line}");
            }
        }
        Event::StageEnd { stage, resolution, seconds, val_top1, val_top5, ema_top1, mean_loss, skipped } => {
            if bar_open {
                eprintln!();
                bar_open = false;
            }
            println!(
                "== stage {} done ({resolution} px, {seconds:.1} s): train loss {mean_loss:.4}, val top-1 {}, top-5 {}{}{}",
                stage + 1,
                pct(*val_top1),
                pct(*val_top5),
                ema_top1.map_or(String::new(), |t| format!(", EMA top-1 {}", pct(Some(t)))),
                if *skipped > 0 { format!(", {skipped} unreadable images skipped") } else { String::new() }
            )
        }
        Event::Checkpoint { .. } => {}
        Event::Skipped { path, reason } => {
            if bar_open {
                eprintln!();
                bar_open = false;
            }
            eprintln!("et-train: skipped {}: {reason}", path.display())
        }
        Event::Initialised { from, loaded, reinitialised } => println!(
            "initialised {loaded} tensors from {}{}",
            from.display(),
            if reinitialised.is_empty() { String::new() } else { format!(" (re-initialised for the new classes: {})", reinitialised.join(", ")) }
        ),
    };
    let resume_ref = resume.as_ref().map(|(d, s)| (d.as_path(), s.clone()));
    let s = train(&cfg, resume_ref, &mut print)?;
    println!(
        "done in {} ({} steps{}): val top-1 {}, top-5 {}{}",
        hms(s.seconds),
        s.steps,
        if s.skipped > 0 { format!(", {} unreadable images skipped", s.skipped) } else { String::new() },
        pct(s.val_top1),
        pct(s.val_top5),
        s.ema_top1.map_or(String::new(), |t| format!(", EMA top-1 {}", pct(Some(t))))
    );
    println!("wall time per stage:");
    for (i, (r, t)) in s.stages.iter().enumerate() {
        println!("  stage {:>2} ({r:>3} px): {}", i + 1, hms(*t));
    }
    println!("wrote {}/{{model.safetensors, config.json, metrics.jsonl, training.png, checkpoints/}}", cfg.out.display());
    Ok(())
}

fn hms(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m{:02}s", s / 3600, s / 60 % 60, s % 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}
