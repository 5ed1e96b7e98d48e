// Candle allocates a fresh buffer per op; glibc returns large ones to the OS at once, so
// every op page-faults its output in again (40% of a training step). mimalloc keeps them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::Result;
use clap::Parser;
use et_train::engine::{train, Event, TrainConfig};
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
    /// Skip undecodable images (reported and counted) instead of stopping.
    #[arg(long)]
    skip_corrupt: bool,
    /// Fine-tune from these weights (safetensors, timm names, e.g. a timm checkpoint or an
    /// earlier run's model.safetensors); a classifier head of another size is re-initialised.
    #[arg(long, value_name = "FILE")]
    init_from: Option<PathBuf>,
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
}

fn main() -> ExitCode {
    match run(Args::parse()) {
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

fn run(a: Args) -> Result<()> {
    if !a.data.exists() && a.data == PathBuf::from("assets/cifar10-mini") {
        anyhow::bail!("the bundled dataset assets/cifar10-mini is not in the current directory: run from the repository root or pass --data DIR");
    }
    let cfg = TrainConfig {
        data: a.data,
        model: a.model,
        schedule: a.schedule,
        epochs: a.epochs,
        batch_size: a.batch_size,
        lr: a.lr,
        min_lr: a.min_lr,
        warmup_epochs: a.warmup_epochs,
        weight_decay: a.weight_decay,
        label_smoothing: a.label_smoothing,
        drop_path: a.drop_path,
        stem_stride: a.stem_stride,
        base_resolution: a.base_resolution,
        crop_min_scale: a.crop_min_scale,
        crop_pct: a.crop_pct,
        erasing: a.reprob,
        seed: a.seed,
        threads: a.threads,
        out: a.out.clone(),
        log_every: a.log_every,
        skip_corrupt: a.skip_corrupt,
        init_from: a.init_from,
        mixup: a.mixup,
        cutmix: a.cutmix,
        mixup_switch_prob: a.mixup_switch_prob,
        mixup_prob: a.mixup_prob,
    };
    let mut print = |e: &Event| match e {
        Event::Plan { schedule, train_images, val_images, classes, params, steps } => {
            println!(
                "{} on {train_images} train / {val_images} val images, {classes} classes, {:.2} M parameters; schedule {} ({} stages, budget {} base epochs at {} px, {steps} steps)",
                cfg.model,
                *params as f64 / 1e6,
                schedule.name,
                schedule.stages.len(),
                schedule.budget,
                schedule.base_resolution
            );
            for (i, s) in schedule.stages.iter().enumerate() {
                println!("  stage {:>2}: {:>3} px, RandAugment m{}, {:.2} epochs", i + 1, s.resolution, s.magnitude, s.epochs);
            }
        }
        Event::Step { stage, stages, resolution, magnitude, step, steps, loss, lr, img_per_s, eta_s } => println!(
            "stage {}/{stages} | {resolution} px m{magnitude} | step {step}/{steps} | loss {loss:.4} | lr {lr:.2e} | {img_per_s:.1} img/s | ETA {:.0} s",
            stage + 1,
            eta_s
        ),
        Event::StageEnd { stage, resolution, seconds, val_top1, val_top5, mean_loss } => println!(
            "== stage {} done ({resolution} px, {seconds:.1} s): train loss {mean_loss:.4}, val top-1 {}, top-5 {}",
            stage + 1,
            pct(*val_top1),
            pct(*val_top5)
        ),
        Event::Skipped { path, reason } => eprintln!("et-train: skipped {}: {reason}", path.display()),
        Event::Initialised { from, loaded, reinitialised } => println!(
            "initialised {loaded} tensors from {}{}",
            from.display(),
            if reinitialised.is_empty() { String::new() } else { format!(" (re-initialised for the new classes: {})", reinitialised.join(", ")) }
        ),
    };
    let s = train(&cfg, &mut print)?;
    println!(
        "done in {:.1} s ({} steps{}): val top-1 {}, top-5 {}; wrote {}/{{model.safetensors, config.json, metrics.jsonl}}",
        s.seconds,
        s.steps,
        if s.skipped > 0 { format!(", {} unreadable images skipped", s.skipped) } else { String::new() },
        pct(s.val_top1),
        pct(s.val_top5),
        a.out.display()
    );
    Ok(())
}
