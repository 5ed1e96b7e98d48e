//! The training loop: stages of the curriculum, one optimiser step per batch, validation
//! and an atomic checkpoint at the end of every stage, `metrics.jsonl` throughout.

use crate::loss::{smoothed_targets, soft_cross_entropy};
use crate::lr::CosineSchedule;
use crate::optim::{AdamW, AdamWConfig};
use crate::pipeline::{policy, TrainTransform};
use crate::schedule::{Family, Schedule};
use crate::TrainError;
use candle_core::{DType, Device, Tensor};
use et_data::evaluation::{evaluate_folder, EvalOptions, Preprocess};
use et_data::folder::{ImageFolder, Sample};
use et_data::loader::{Loader, LoaderConfig};
use et_data::mixup::{self, MixupConfig};
use et_data::randaugment::RandAugment;
use et_data::resample::Filter;
use et_data::transform::RandomResizedCrop;
use et_data::{decode, DataError, Rng};
use et_models::registry::{defaults, model_config, ModelOptions};
use et_models::run_config::{CONFIG_FILE, WEIGHTS_FILE};
use et_models::{CandleOps, Model, ParamStore, RunConfig};
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

#[derive(Clone, Debug)]
pub struct TrainConfig {
    pub data: PathBuf,
    pub model: String,
    pub schedule: String,
    /// Budget in base-resolution-equivalent epochs.
    pub epochs: f64,
    pub batch_size: usize,
    pub lr: f64,
    pub min_lr: f64,
    /// Warm-up in base-resolution-equivalent epochs.
    pub warmup_epochs: f64,
    pub weight_decay: f64,
    pub label_smoothing: f64,
    pub drop_path: f64,
    pub stem_stride: Option<usize>,
    pub base_resolution: Option<usize>,
    pub crop_min_scale: f64,
    pub crop_pct: Option<f64>,
    pub erasing: f64,
    pub seed: u64,
    pub threads: usize,
    pub out: PathBuf,
    pub log_every: usize,
    pub skip_corrupt: bool,
    /// Start from these weights (timm names); a head of another size is re-initialised.
    pub init_from: Option<PathBuf>,
    /// Mixup Beta(α, α) (0: off), timm batch mode.
    pub mixup: f64,
    /// CutMix Beta(α, α) (0: off).
    pub cutmix: f64,
    /// Probability of CutMix rather than Mixup when both are on.
    pub mixup_switch_prob: f64,
    /// Probability of mixing a batch.
    pub mixup_prob: f64,
}

/// What the loop reports to its caller (the CLI prints these).
#[derive(Debug)]
pub enum Event<'a> {
    Plan { schedule: &'a Schedule, train_images: usize, val_images: usize, classes: usize, params: usize, steps: usize },
    Step { stage: usize, stages: usize, resolution: usize, magnitude: f64, step: usize, steps: usize, loss: f64, lr: f64, img_per_s: f64, eta_s: f64 },
    StageEnd { stage: usize, resolution: usize, seconds: f64, val_top1: Option<f64>, val_top5: Option<f64>, mean_loss: f64 },
    Skipped { path: &'a Path, reason: &'a str },
    Initialised { from: &'a Path, loaded: usize, reinitialised: &'a [String] },
}

#[derive(Debug, Clone)]
pub struct Summary {
    pub seconds: f64,
    pub val_top1: Option<f64>,
    pub val_top5: Option<f64>,
    pub steps: usize,
    pub skipped: usize,
}

/// Base resolution from the data: the shorter side of the first image, capped at 224 and
/// rounded down to a multiple of 8 (32 for CIFAR, 224 for ImageNet-sized photos).
pub fn infer_base_resolution(first: &Sample) -> Result<usize, DataError> {
    let img = decode::decode_rgb(&first.path)?;
    let side = img.width().min(img.height()) as usize;
    Ok((side.min(224) / 8 * 8).max(8))
}

fn check_writable(dir: &Path) -> Result<(), TrainError> {
    let err = |e: std::io::Error| TrainError::Output(format!("cannot write to output directory {}: {e} (choose another --out)", dir.display()));
    std::fs::create_dir_all(dir).map_err(err)?;
    let probe = dir.join(".et-train-write-test");
    std::fs::write(&probe, b"ok").map_err(err)?;
    std::fs::remove_file(&probe).map_err(err)
}

struct Metrics(std::fs::File);

impl Metrics {
    fn log(&mut self, v: serde_json::Value) -> Result<(), TrainError> {
        writeln!(self.0, "{v}").map_err(|e| TrainError::Output(format!("cannot write metrics.jsonl: {e}")))
    }
}

pub fn train(cfg: &TrainConfig, on_event: &mut dyn FnMut(&Event)) -> Result<Summary, TrainError> {
    let started = Instant::now();
    if cfg.epochs <= 0.0 || !cfg.epochs.is_finite() {
        return Err(TrainError::Config(format!("--epochs must be positive, got {}", cfg.epochs)));
    }
    if cfg.batch_size == 0 {
        return Err(TrainError::Config("--batch-size must be at least 1".into()));
    }
    for (name, v) in [("--mixup", cfg.mixup), ("--cutmix", cfg.cutmix)] {
        if v < 0.0 || !v.is_finite() {
            return Err(TrainError::Config(format!("{name} must be a non-negative alpha, got {v}")));
        }
    }
    for (name, v) in [("--mixup-switch-prob", cfg.mixup_switch_prob), ("--mixup-prob", cfg.mixup_prob)] {
        if !(0.0..=1.0).contains(&v) {
            return Err(TrainError::Config(format!("{name} must be a probability in [0, 1], got {v}")));
        }
    }
    // Everything that can be checked before training is checked here, cheapest first.
    let family = Family::of_model(&cfg.model);
    let train_set = ImageFolder::open(&ImageFolder::split_root(&cfg.data, "train"))?;
    let val_dir = cfg.data.join("val");
    let val_set = if val_dir.is_dir() { Some(ImageFolder::with_classes(&val_dir, &train_set.classes)?) } else { None };
    if train_set.samples.len() < cfg.batch_size {
        return Err(TrainError::Config(format!(
            "the training set has {} images, fewer than --batch-size {}: lower --batch-size",
            train_set.samples.len(),
            cfg.batch_size
        )));
    }
    let base = match cfg.base_resolution {
        Some(b) => b,
        None => infer_base_resolution(&train_set.samples[0])?,
    };
    let schedule = Schedule::by_name(&cfg.schedule, family, base, cfg.epochs)
        .ok_or_else(|| TrainError::Config(format!("unknown schedule '{}': use et-pp or baseline", cfg.schedule)))?;
    let classes = train_set.classes.len();
    let mix = MixupConfig {
        mixup_alpha: cfg.mixup,
        cutmix_alpha: cfg.cutmix,
        switch_prob: cfg.mixup_switch_prob,
        prob: cfg.mixup_prob,
        label_smoothing: cfg.label_smoothing,
        num_classes: classes,
    };
    // Small images keep timm's layout but a finer stem (see models/src/convnext.rs).
    let stem_stride = cfg.stem_stride.or((base < 64).then_some(if family == Family::DeiT { 4 } else { 2 }));
    let opts = ModelOptions { num_classes: classes, drop_path_rate: cfg.drop_path, stem_stride, img_size: Some(base) };
    let model_cfg = model_config(&cfg.model, &opts)?;
    for s in &schedule.stages {
        model_cfg.check_input(&cfg.model, s.resolution, s.resolution)?;
    }
    check_writable(&cfg.out)?;

    let d = defaults(&cfg.model);
    let crop_pct = cfg.crop_pct.unwrap_or(if base < 64 { 1.0 } else { d.crop_pct });
    let run_config = RunConfig {
        model: cfg.model.clone(),
        model_config: model_cfg.clone(),
        num_classes: classes,
        class_names: train_set.classes.clone(),
        base_resolution: base,
        mean: d.mean,
        std: d.std,
        interpolation: d.interpolation.to_string(),
        crop_pct,
    };
    run_config.save(&cfg.out.join(CONFIG_FILE))?;

    let device = Device::Cpu;
    let params = ParamStore::new(cfg.seed);
    let model = Model::new(&model_cfg, params.var_builder(DType::F32, &device))?;
    if let Some(path) = &cfg.init_from {
        let report = params.load(path, model_cfg.head_names())?;
        on_event(&Event::Initialised { from: path, loaded: report.loaded, reinitialised: &report.reinitialised });
    }
    let mut opt = AdamW::new(params.trainable(), AdamWConfig { weight_decay: cfg.weight_decay, ..Default::default() });
    let lr_schedule = CosineSchedule { lr: cfg.lr, min_lr: cfg.min_lr, warmup_lr: cfg.min_lr.min(cfg.lr), warmup: (cfg.warmup_epochs / cfg.epochs).clamp(0.0, 1.0) };

    let n_train = train_set.samples.len();
    let stage_steps: Vec<usize> = schedule.stages.iter().map(|s| ((s.epochs * n_train as f64 / cfg.batch_size as f64).round() as usize).max(1)).collect();
    let total_steps: usize = stage_steps.iter().sum();
    on_event(&Event::Plan {
        schedule: &schedule,
        train_images: n_train,
        val_images: val_set.as_ref().map_or(0, |v| v.samples.len()),
        classes,
        params: params.num_trainable(),
        steps: total_steps,
    });
    let file = std::fs::File::create(cfg.out.join("metrics.jsonl")).map_err(|e| TrainError::Output(format!("cannot create metrics.jsonl: {e}")))?;
    let mut metrics = Metrics(file);
    metrics.log(json!({"event": "plan", "schedule": &schedule, "train_images": n_train, "classes": classes, "params": params.num_trainable(), "steps": total_steps, "batch_size": cfg.batch_size, "lr": cfg.lr, "seed": cfg.seed, "mixup": cfg.mixup, "cutmix": cfg.cutmix}))?;

    let samples = Arc::new(train_set.samples.clone());
    let loader = Loader::new(
        samples,
        LoaderConfig { batch_size: cfg.batch_size, shuffle: true, drop_last: true, seed: cfg.seed, threads: cfg.threads.max(1), prefetch: 2, skip_corrupt: cfg.skip_corrupt },
    );
    let pre = Preprocess { mean: d.mean, std: d.std, crop_pct, filter: Filter::Bicubic };
    let mut progress = 0.0;
    let mut step = 0usize;
    let mut epoch = 0u64;
    let mut skipped = 0usize;
    let mut last_val = (None, None);
    let mut recent: Vec<f64> = Vec::new();
    for (si, stage) in schedule.stages.iter().enumerate() {
        let stage_start = Instant::now();
        let r = stage.resolution;
        let mut crop = RandomResizedCrop::new(base as u32);
        crop.scale = (cfg.crop_min_scale, 1.0);
        let tf = TrainTransform {
            base,
            resolution: r,
            crop,
            hflip: 0.5,
            randaugment: Some(RandAugment::parse(&policy(stage.magnitude))?),
            mean: d.mean,
            std: d.std,
            erasing: cfg.erasing,
        };
        let transform = Arc::new(move |s: &Sample, rng: &mut Rng| tf.apply(&decode::decode_rgb(&s.path)?, rng));
        let compute_per_image = (r as f64 / base as f64).powi(2) / (n_train as f64 * cfg.epochs);
        let mut left = stage_steps[si];
        let mut loss_sum = 0.0;
        let mut window = (Instant::now(), 0usize);
        while left > 0 {
            for batch in loader.epoch(epoch, [3, r, r], transform.clone()) {
                let batch = batch?;
                for (path, reason) in &batch.skipped {
                    skipped += 1;
                    on_event(&Event::Skipped { path, reason });
                }
                if batch.labels.is_empty() {
                    continue;
                }
                let n = batch.labels.len();
                let mut images = batch.images;
                let targets = if mix.enabled() {
                    // timm's Mixup (batch mode), one draw per optimiser step.
                    let soft = mixup::apply(&mix, &mut images, batch.shape, &batch.labels, &mut Rng::from_keys(&[cfg.seed, step as u64, 0x6d78]));
                    Tensor::from_vec(soft, (n, classes), &device)?
                } else {
                    smoothed_targets(&batch.labels, classes, cfg.label_smoothing, &device)?
                };
                let x = Tensor::from_vec(images, batch.shape.as_slice(), &device)?;
                let ops = CandleOps::train(Rng::from_keys(&[cfg.seed, step as u64, 0x6470]).next_u64());
                let loss = soft_cross_entropy(&model.forward(&ops, &x)?, &targets)?;
                let loss_v = loss.to_scalar::<f32>()? as f64;
                if !loss_v.is_finite() {
                    metrics.log(json!({"event": "error", "step": step, "stage": si, "loss": loss_v.to_string()}))?;
                    return Err(TrainError::NonFinite { step, stage: si, loss: loss_v, last_checkpoint: (si > 0).then(|| cfg.out.join(WEIGHTS_FILE)) });
                }
                let lr = lr_schedule.at(progress);
                let missing = opt.step(&loss.backward()?, lr)?;
                params.apply_buffer_updates(ops.take_buffer_updates())?;
                if !missing.is_empty() {
                    return Err(TrainError::Internal(format!("no gradient reached {}", missing.join(", "))));
                }
                progress += n as f64 * compute_per_image;
                step += 1;
                left -= 1;
                loss_sum += loss_v;
                window.1 += n;
                recent.push(loss_v);
                if step % cfg.log_every.max(1) == 0 || left == 0 {
                    let img_per_s = window.1 as f64 / window.0.elapsed().as_secs_f64().max(1e-9);
                    let mean_loss = recent.iter().sum::<f64>() / recent.len() as f64;
                    let elapsed = started.elapsed().as_secs_f64();
                    let eta_s = if progress > 0.0 { elapsed * (1.0 - progress.min(1.0)) / progress } else { 0.0 };
                    on_event(&Event::Step { stage: si, stages: schedule.stages.len(), resolution: r, magnitude: stage.magnitude, step, steps: total_steps, loss: mean_loss, lr, img_per_s, eta_s });
                    metrics.log(json!({"event": "step", "step": step, "stage": si, "resolution": r, "loss": mean_loss, "lr": lr, "progress": progress, "img_per_s": img_per_s, "time_s": elapsed}))?;
                    window = (Instant::now(), 0);
                    recent.clear();
                }
                if left == 0 {
                    break;
                }
            }
            epoch += 1;
        }
        if let Some(val) = &val_set {
            let eval_opts = EvalOptions { batch_size: cfg.batch_size.max(64), threads: cfg.threads.max(1), skip_corrupt: cfg.skip_corrupt };
            let out = evaluate_folder::<TrainError, _>(val, base, classes, &pre, &eval_opts, |images, shape| {
                let x = Tensor::from_slice(images, shape.as_slice(), &device)?;
                Ok(model.forward(&CandleOps::eval(), &x)?.flatten_all()?.to_vec1::<f32>()?)
            })?;
            skipped += out.skipped.len();
            last_val = (Some(out.totals.top1_frac()), Some(out.totals.top5_frac()));
        }
        params.save(&cfg.out.join(WEIGHTS_FILE))?;
        let seconds = stage_start.elapsed().as_secs_f64();
        let mean_loss = loss_sum / stage_steps[si] as f64;
        on_event(&Event::StageEnd { stage: si, resolution: r, seconds, val_top1: last_val.0, val_top5: last_val.1, mean_loss });
        metrics.log(json!({"event": "stage_end", "stage": si, "resolution": r, "magnitude": stage.magnitude, "seconds": seconds, "val_top1": last_val.0, "val_top5": last_val.1, "train_loss": mean_loss, "progress": progress}))?;
    }
    let summary = Summary { seconds: started.elapsed().as_secs_f64(), val_top1: last_val.0, val_top5: last_val.1, steps: step, skipped };
    metrics.log(json!({"event": "done", "seconds": summary.seconds, "val_top1": summary.val_top1, "val_top5": summary.val_top5, "steps": step, "skipped": skipped}))?;
    Ok(summary)
}
