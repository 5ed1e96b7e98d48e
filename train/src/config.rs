//! The settings of a training run (saved in every checkpoint: a resumed run uses these)
//! and their validation.

use crate::optim::OptimizerKind;
use et_kernels::device::{DeviceSpec, Precision};
use crate::TrainError;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainConfig {
    pub data: PathBuf,
    pub model: String,
    /// A built-in schedule (baseline, et-v1, et-pp) or a TOML file.
    pub schedule: String,
    /// Budget in base-resolution-equivalent epochs.
    pub epochs: f64,
    /// Images per forward pass (micro-batch).
    pub batch_size: usize,
    /// Images per optimiser step (a multiple of every stage's micro-batch) [default: batch_size].
    pub effective_batch: Option<usize>,
    pub optimizer: OptimizerKind,
    pub lr: f64,
    pub min_lr: f64,
    /// Warm-up in base-resolution-equivalent epochs.
    pub warmup_epochs: f64,
    pub weight_decay: f64,
    /// Weight decay at the end of the cosine wd schedule [default: weight_decay, constant].
    pub weight_decay_end: Option<f64>,
    /// Layer-wise lr decay (fine-tuning), e.g. 0.8.
    pub layer_decay: Option<f64>,
    /// Gradient clipping by global norm.
    pub clip_grad: Option<f64>,
    /// EMA of the weights with this decay.
    pub ema_decay: Option<f64>,
    pub label_smoothing: f64,
    pub drop_path: f64,
    /// Scale drop_path by budget / this (ET++: 200 epochs).
    pub drop_path_ref_epochs: Option<f64>,
    pub stem_stride: Option<usize>,
    pub base_resolution: Option<usize>,
    pub crop_min_scale: f64,
    pub crop_pct: Option<f64>,
    pub erasing: f64,
    pub seed: u64,
    pub threads: usize,
    pub out: PathBuf,
    pub log_every: usize,
    /// Stop at the first undecodable image (default: skip and count it).
    pub strict_data: bool,
    /// Write a checkpoint every N optimiser steps (0: only at stage ends).
    pub save_every_steps: usize,
    pub deterministic: bool,
    /// Start from these weights (timm names); a head of another size is re-initialised.
    pub init_from: Option<PathBuf>,
    pub mixup: f64,
    pub cutmix: f64,
    pub mixup_switch_prob: f64,
    pub mixup_prob: f64,
    /// The preset these settings started from (for the record).
    pub preset: Option<String>,
    /// Where the steps run (a resumed run may move).
    pub device: DeviceSpec,
    /// Compute precision: f32, or bf16 with f32 master weights, optimiser state and loss.
    pub precision: Precision,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            data: PathBuf::from("assets/cifar10-mini"),
            model: "convnext_atto".into(),
            schedule: "et-pp".into(),
            epochs: 12.0,
            batch_size: 64,
            effective_batch: None,
            optimizer: OptimizerKind::AdamW,
            lr: 2e-3,
            min_lr: 1e-6,
            warmup_epochs: 1.0,
            weight_decay: 0.05,
            weight_decay_end: None,
            layer_decay: None,
            clip_grad: None,
            ema_decay: None,
            label_smoothing: 0.1,
            drop_path: 0.0,
            drop_path_ref_epochs: None,
            stem_stride: None,
            base_resolution: None,
            crop_min_scale: 0.25,
            crop_pct: None,
            erasing: 0.0,
            seed: 0,
            threads: 1,
            out: PathBuf::from("runs/default"),
            log_every: 10,
            strict_data: false,
            save_every_steps: 0,
            deterministic: false,
            init_from: None,
            mixup: 0.0,
            cutmix: 0.0,
            mixup_switch_prob: 0.5,
            mixup_prob: 1.0,
            preset: None,
            device: DeviceSpec::Cpu,
            precision: Precision::F32,
        }
    }
}

pub fn validate(cfg: &TrainConfig) -> Result<(), TrainError> {
    let c = |m: String| Err(TrainError::Config(m));
    if let Err(e) = et_kernels::device::check_precision(cfg.device, cfg.precision) {
        return c(e.to_string());
    }
    if cfg.epochs <= 0.0 || !cfg.epochs.is_finite() {
        return c(format!("--epochs must be positive, got {}", cfg.epochs));
    }
    if cfg.batch_size == 0 {
        return c("--batch-size must be at least 1".into());
    }
    if cfg.effective_batch == Some(0) {
        return c("--effective-batch must be at least 1".into());
    }
    for (name, v) in [("--mixup", cfg.mixup), ("--cutmix", cfg.cutmix)] {
        if v < 0.0 || !v.is_finite() {
            return c(format!("{name} must be a non-negative alpha, got {v}"));
        }
    }
    for (name, v) in [("--mixup-switch-prob", cfg.mixup_switch_prob), ("--mixup-prob", cfg.mixup_prob)] {
        if !(0.0..=1.0).contains(&v) {
            return c(format!("{name} must be a probability in [0, 1], got {v}"));
        }
    }
    if let Some(d) = cfg.ema_decay {
        if !(0.0..1.0).contains(&d) {
            return c(format!("--ema-decay must be in [0, 1), got {d}"));
        }
    }
    if let Some(d) = cfg.layer_decay {
        if !(d > 0.0 && d <= 1.0) {
            return c(format!("--layer-decay must be in (0, 1], got {d}"));
        }
    }
    if cfg.clip_grad.is_some_and(|v| v.is_nan() || v <= 0.0) {
        return c("--clip-grad must be positive".into());
    }
    if cfg.drop_path_ref_epochs.is_some_and(|v| v.is_nan() || v <= 0.0) {
        return c("--drop-path-ref-epochs must be positive".into());
    }
    Ok(())
}

