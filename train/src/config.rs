//! The settings of a training run, each defined once (see `settings.rs`), and their checks.
//! The resolved [`TrainConfig`] is saved in every checkpoint: a resumed run uses it.

use crate::optim::OptimizerKind;
use crate::settings;
use crate::TrainError;
use et_data::stage_crop::LowFreq;
use et_kernels::device::{DeviceSpec, Precision};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

settings! {
    /// What to train on and how images are augmented.
    pub struct DataSettings / DataLayer, heading = "Data" {
        /// ImageFolder dataset: DIR/train/<class>/* (and DIR/val/<class>/* for validation),
        /// or DIR/<class>/* to train without validation; or WebDataset shards laid out the
        /// same way (DIR/train/*.tar + DIR/val/*.tar, or DIR/*.tar, each with classes.json),
        /// or a pattern DIR/train-{000000..000127}.tar (no validation).
        [value_name = "DIR|PATTERN"]
        data: value PathBuf = PathBuf::from("assets/cifar10-mini"),
        /// Samples held by the shuffle buffer when reading shards (per process; each is one
        /// encoded image in memory). Ignored for an ImageFolder, which is shuffled whole.
        [value_name = "N"]
        shuffle_buffer: value usize = 1000,
        /// Data-loading (decode and augmentation) threads.
        threads: value usize = 1,
        /// Stop at the first undecodable training or validation image instead of skipping it
        /// (skipped images are named and counted in the stage summary).
        [num_args = 0, default_missing_value = "true"]
        strict_data: value bool = false,
        /// Smallest area fraction of RandomResizedCrop (timm's recipe: 0.08).
        crop_min_scale: value f64 = 0.25,
        /// How a stage below the base resolution gets its B×B input: fft (the exact
        /// low-frequency crop of the base-resolution crop) or resize (the crop resized
        /// straight to B, from a JPEG decoded at a reduced DCT scale: less decoding, a
        /// gradual low-pass instead of a brick wall); a stage of a TOML schedule may set its
        /// own (docs/training.md).
        [value_name = "fft|resize"]
        low_freq: value LowFreq = LowFreq::Fft,
        /// Centre-crop fraction used for validation and recorded for export and evaluation
        /// [default: 1.0 under 64 px, else the model's].
        crop_pct: optional f64,
        /// Random-erasing probability (timm's recipe: 0.25).
        [long = "reprob", value_name = "PROB"]
        erasing: value f64 = 0.0,
        /// Mixup alpha (timm's batch mode: each image blended with its mirror in the batch,
        /// λ ~ Beta(α, α), soft targets); 0 = off (timm's recipe: 0.8).
        [value_name = "ALPHA"]
        mixup: value f64 = 0.0,
        /// CutMix alpha (a box of the mirror image pasted, λ = 1 − box area); 0 = off
        /// (timm's recipe: 1.0).
        [value_name = "ALPHA"]
        cutmix: value f64 = 0.0,
        /// Probability of CutMix instead of Mixup when both are on.
        mixup_switch_prob: value f64 = 0.5,
        /// Probability of mixing a batch when Mixup or CutMix is on.
        mixup_prob: value f64 = 1.0,
    }
}

settings! {
    /// The network.
    pub struct ModelSettings / ModelLayer, heading = "Model" {
        /// Model name (`et-eval models` lists them):
        /// convnext_{atto,femto,pico,nano,tiny,small,base}, resnet{18,34,50},
        /// deit_{tiny,small,base}_patch16_224, swin_{tiny,small,base}_patch4_window7_224,
        /// pvt_v2_b{0,1,2}, caformer_{s18,s36,m36}, CSWin_64_12211_tiny_224,
        /// CSWin_64_24322_small_224, CSWin_96_24322_base_224.
        model: value String = "convnext_atto".to_string(),
        /// Stochastic-depth (drop-path) rate of the last block.
        drop_path: value f64 = 0.0,
        /// Scale --drop-path by budget / E0 (ET++: E0 = 200 epochs).
        [value_name = "E0"]
        drop_path_ref_epochs: optional f64,
        /// Small-image stem with this stride (ConvNeXt: 2×2 patchify; ResNet: one 3×3 conv,
        /// no max-pool; DeiT and Swin: the patch size) [default: the family's for images
        /// under 64 px, else the reference stem].
        stem_stride: optional usize,
        /// Fine-tune from these weights (safetensors with timm names, e.g. a timm checkpoint
        /// or an earlier run's model.safetensors), or from a run on the Hugging Face Hub
        /// (OWNER/NAME[@REV]); a classifier head of another size is re-initialised.
        [value_name = "FILE|OWNER/NAME[@REV]"]
        init_from: optional PathBuf,
    }
}

settings! {
    /// The curriculum and its budget.
    pub struct ScheduleSettings / ScheduleLayer, heading = "Curriculum" {
        /// Curriculum: et-pp (EfficientTrain++, 10 stages of equal compute), et-v1
        /// (EfficientTrain, 5 stages), baseline (the base resolution throughout) or a TOML
        /// file of stages (docs/training.md).
        [value_name = "et-pp|et-v1|baseline|FILE.toml"]
        schedule: value String = "et-pp".to_string(),
        /// Training budget in base-resolution-equivalent epochs (low-resolution stages run
        /// proportionally more epochs for the same compute).
        epochs: value f64 = 12.0,
        /// Base (final-stage) resolution [default: the first training image's shorter side,
        /// capped at 224, rounded down to a multiple of 8].
        base_resolution: optional usize,
    }
}

settings! {
    /// The optimiser and its schedules.
    pub struct OptimSettings / OptimLayer, heading = "Optimisation" {
        /// Images per forward pass (micro-batch); a stage of a TOML schedule may set its own.
        batch_size: value usize = 64,
        /// Images per optimiser step, reached by gradient accumulation over --batch-size
        /// micro-batches (a multiple of it) [default: --batch-size].
        [value_name = "N"]
        effective_batch: optional usize,
        /// Optimiser: adamw (PyTorch's AdamW) or lamb (timm's LAMB).
        [value_name = "adamw|lamb"]
        optimizer: value OptimizerKind = OptimizerKind::AdamW,
        /// Peak learning rate, reached after the warm-up, then cosine decay.
        lr: value f64 = 2e-3,
        /// Final (and warm-up start) learning rate.
        min_lr: value f64 = 1e-6,
        /// Warm-up length in base-resolution-equivalent epochs.
        warmup_epochs: value f64 = 1.0,
        /// Weight decay (not applied to norms, biases, position embeddings and other 1-D
        /// parameters).
        weight_decay: value f64 = 0.05,
        /// Weight decay at the end of a cosine weight-decay schedule [default: constant].
        weight_decay_end: optional f64,
        /// Layer-wise learning-rate decay for fine-tuning, e.g. 0.8: a parameter at layer i
        /// of n learns at lr·d^(n−i), with layer ids as each family's reference code has them.
        layer_decay: optional f64,
        /// Clip gradients to this global L2 norm (DeiT / Swin recipe: 5.0).
        [value_name = "NORM"]
        clip_grad: optional f64,
        /// Keep an exponential moving average of the weights with this decay (ConvNeXt:
        /// 0.9999); it is validated after every stage and saved as ema.safetensors.
        [value_name = "DECAY"]
        ema_decay: optional f64,
        /// Label smoothing of the cross-entropy targets.
        label_smoothing: value f64 = 0.1,
    }
}

settings! {
    /// Where and how the run executes and what it writes.
    pub struct RunSettings / RunLayer, heading = "Run" {
        /// Seed of every random choice (initialisation, data order, augmentation, drop path).
        seed: value u64 = 0,
        /// Output directory: config.json, model.safetensors, metrics.jsonl, training.png,
        /// checkpoints/.
        [value_name = "DIR"]
        out: value PathBuf = PathBuf::from("runs/default"),
        /// Print progress every N optimiser steps.
        [value_name = "N"]
        log_every: value usize = 10,
        /// Write a checkpoint (weights, EMA, optimiser state, training state) every N
        /// optimiser steps, besides the one at every stage end; 0 = stage ends only.
        [value_name = "N"]
        save_every_steps: value usize = 0,
        /// Fix the compute thread count (saved in checkpoints and reused on --resume), so that
        /// a resumed run ends with bit-identical weights to an uninterrupted one.
        [num_args = 0, default_missing_value = "true"]
        deterministic: value bool = false,
        /// Compute threads with --deterministic [default: the number of cores].
        [value_name = "N"]
        compute_threads: optional usize,
        /// Where to train: cpu, cuda or cuda:N (CUDA needs a build with --features cuda).
        [value_name = "cpu|cuda[:N]"]
        device: value DeviceSpec = DeviceSpec::Cpu,
        /// Compute precision: f32, or bf16 (CUDA; f32 master weights, optimiser state and loss).
        [value_name = "f32|bf16"]
        precision: value Precision = Precision::F32,
    }
}

/// Every setting of a run, grouped; saved flat (one JSON object) in run files.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    #[serde(flatten)]
    pub data: DataSettings,
    #[serde(flatten)]
    pub model: ModelSettings,
    #[serde(flatten)]
    pub schedule: ScheduleSettings,
    #[serde(flatten)]
    pub optim: OptimSettings,
    #[serde(flatten)]
    pub run: RunSettings,
    /// The preset these settings started from (for the record).
    #[serde(default)]
    pub preset: Option<String>,
}

/// One source of settings: every group's layer.
#[derive(Clone, Debug, Default, PartialEq, clap::Args)]
pub struct TrainLayer {
    #[command(flatten)]
    pub data: DataLayer,
    #[command(flatten)]
    pub model: ModelLayer,
    #[command(flatten)]
    pub schedule: ScheduleLayer,
    #[command(flatten)]
    pub optim: OptimLayer,
    #[command(flatten)]
    pub run: RunLayer,
}

impl TrainLayer {
    pub fn apply_to(&self, c: &mut TrainConfig) {
        self.data.apply_to(&mut c.data);
        self.model.apply_to(&mut c.model);
        self.schedule.apply_to(&mut c.schedule);
        self.optim.apply_to(&mut c.optim);
        self.run.apply_to(&mut c.run);
    }

    pub fn given(&self) -> Vec<&'static str> {
        [self.data.given(), self.model.given(), self.schedule.given(), self.optim.given(), self.run.given()].concat()
    }

    pub fn help_defaults() -> Vec<(&'static str, String)> {
        [DataLayer::help_defaults(), ModelLayer::help_defaults(), ScheduleLayer::help_defaults(), OptimLayer::help_defaults(), RunLayer::help_defaults()].concat()
    }
}

impl TrainConfig {
    /// `defaults < layers[0] < layers[1] < ...`.
    pub fn resolve(layers: &[&TrainLayer]) -> TrainConfig {
        let mut c = TrainConfig::default();
        for l in layers {
            l.apply_to(&mut c);
        }
        c
    }

    /// Images per optimiser step.
    pub fn effective_batch(&self) -> usize {
        self.optim.effective_batch.unwrap_or(self.optim.batch_size)
    }
}

pub fn validate(cfg: &TrainConfig) -> Result<(), TrainError> {
    let c = |m: String| Err(TrainError::Config(m));
    let (o, d) = (&cfg.optim, &cfg.data);
    if let Err(e) = et_kernels::device::check_precision(cfg.run.device, cfg.run.precision) {
        return c(e.to_string());
    }
    if cfg.schedule.epochs <= 0.0 || !cfg.schedule.epochs.is_finite() {
        return c(format!("--epochs must be positive, got {}", cfg.schedule.epochs));
    }
    if o.batch_size == 0 {
        return c("--batch-size must be at least 1".into());
    }
    if o.effective_batch == Some(0) {
        return c("--effective-batch must be at least 1".into());
    }
    for (name, v) in [("--lr", o.lr), ("--min-lr", o.min_lr), ("--weight-decay", o.weight_decay), ("--warmup-epochs", o.warmup_epochs)] {
        if v < 0.0 || !v.is_finite() {
            return c(format!("{name} must be a non-negative number, got {v}"));
        }
    }
    if !(0.0..1.0).contains(&o.label_smoothing) {
        return c(format!("--label-smoothing must be in [0, 1), got {}", o.label_smoothing));
    }
    for (name, v) in [("--mixup", d.mixup), ("--cutmix", d.cutmix)] {
        if v < 0.0 || !v.is_finite() {
            return c(format!("{name} must be a non-negative alpha, got {v}"));
        }
    }
    for (name, v) in [("--mixup-switch-prob", d.mixup_switch_prob), ("--mixup-prob", d.mixup_prob), ("--reprob", d.erasing)] {
        if !(0.0..=1.0).contains(&v) {
            return c(format!("{name} must be a probability in [0, 1], got {v}"));
        }
    }
    if !(d.crop_min_scale > 0.0 && d.crop_min_scale <= 1.0) {
        return c(format!("--crop-min-scale must be in (0, 1], got {}", d.crop_min_scale));
    }
    if d.crop_pct.is_some_and(|p| !(p > 0.0 && p <= 1.0)) {
        return c("--crop-pct must be in (0, 1]".into());
    }
    if let Some(v) = o.ema_decay {
        if !(0.0..1.0).contains(&v) {
            return c(format!("--ema-decay must be in [0, 1), got {v}"));
        }
    }
    if let Some(v) = o.layer_decay {
        if !(v > 0.0 && v <= 1.0) {
            return c(format!("--layer-decay must be in (0, 1], got {v}"));
        }
    }
    if o.clip_grad.is_some_and(|v| v.is_nan() || v <= 0.0) {
        return c("--clip-grad must be positive".into());
    }
    if !(0.0..1.0).contains(&cfg.model.drop_path) {
        return c(format!("--drop-path must be in [0, 1), got {}", cfg.model.drop_path));
    }
    if cfg.model.drop_path_ref_epochs.is_some_and(|v| v.is_nan() || v <= 0.0) {
        return c("--drop-path-ref-epochs must be positive".into());
    }
    if d.shuffle_buffer == 0 {
        return c("--shuffle-buffer must be at least 1".into());
    }
    if cfg.run.compute_threads == Some(0) || d.threads == 0 {
        return c("--threads and --compute-threads must be at least 1".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_apply_in_order_and_only_what_they_have() {
        let mut preset = TrainLayer::default();
        preset.optim.lr = Some(4e-3);
        preset.optim.clip_grad = Some(5.0);
        preset.data.mixup = Some(0.8);
        let mut cli = TrainLayer::default();
        cli.optim.lr = Some(1e-3);
        cli.run.deterministic = Some(true);
        let c = TrainConfig::resolve(&[&preset, &cli]);
        assert_eq!(c.optim.lr, 1e-3, "the command line wins");
        assert_eq!(c.optim.clip_grad, Some(5.0));
        assert_eq!(c.data.mixup, 0.8);
        assert!(c.run.deterministic);
        assert_eq!(c.optim.batch_size, 64, "untouched settings keep their defaults");
        assert_eq!(cli.given(), vec!["lr", "deterministic"]);
        let help = TrainLayer::help_defaults();
        assert!(help.contains(&("lr", "0.002".to_string())), "{help:?}");
        assert!(!help.iter().any(|(k, _)| *k == "clip_grad"), "optional settings have no default");
    }

    #[test]
    fn the_saved_form_is_one_flat_object() {
        let c = TrainConfig::default();
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["lr"], 2e-3);
        assert_eq!(v["erasing"], 0.0);
        assert_eq!(v["device"], "cpu");
        assert_eq!(v["low_freq"], "fft");
        let back: TrainConfig = serde_json::from_value(v).unwrap();
        assert_eq!(back, c);
        // Missing keys (an older file) take their defaults.
        let partial: TrainConfig = serde_json::from_str(r#"{"model": "resnet18", "lr": 0.1}"#).unwrap();
        assert_eq!(partial.model.model, "resnet18");
        assert_eq!(partial.optim.lr, 0.1);
        assert_eq!(partial.optim.batch_size, 64);
        assert_eq!(partial.data.low_freq, LowFreq::Fft, "a run saved before --low-freq existed used fft");
        let resize: TrainConfig = serde_json::from_str(r#"{"low_freq": "resize"}"#).unwrap();
        assert_eq!(resize.data.low_freq, LowFreq::Resize);
    }
}
