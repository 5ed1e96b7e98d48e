//! `et-train --dry-run`: everything a run would do, decided and checked without training
//! or writing anything — the resolved settings and where each came from, the stage plan and,
//! with layer-wise decay, the parameter groups. Users check a multi-day plan with it.

use crate::config::{validate, TrainConfig, TrainLayer};
use crate::layer_decay::{layer_groups, LayerGroup};
use crate::plan::Plan;
use crate::schedule::Schedule;
use crate::setup::{model_plan, Data};
use crate::TrainError;
use candle_core::{DType, Device};
use et_models::{Model, ParamStore};
use serde::Serialize;
use serde_json::{json, Value};

#[derive(Clone, Debug, Serialize)]
pub struct StageRow {
    pub resolution: usize,
    /// How the input is brought down to the resolution (`None`: the base resolution).
    pub low_pass: Option<et_data::stage_crop::LowFreq>,
    pub magnitude: f64,
    /// Epochs at the stage's resolution.
    pub epochs: f64,
    /// Compute of the stage in base-resolution epochs.
    pub base_epochs: f64,
    pub steps: usize,
    pub micro_batch: usize,
    pub accumulation: usize,
    /// Replay factor (1: no replay buffer).
    pub replay_times: usize,
    pub lr: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct DryRun {
    pub settings: TrainConfig,
    /// For each setting that is not a default: "preset" or "command line".
    pub sources: serde_json::Map<String, Value>,
    pub model: String,
    pub family: String,
    pub params: usize,
    pub drop_path: f64,
    pub train_images: usize,
    pub val_images: usize,
    pub classes: usize,
    pub base_resolution: usize,
    pub schedule: String,
    pub budget: f64,
    pub effective_batch: usize,
    pub total_steps: usize,
    pub warmup_epochs: f64,
    pub stages: Vec<StageRow>,
    pub layer_decay: Vec<LayerGroup>,
}

/// The plan of a run with settings `cfg`, given by `cli` over `preset`.
pub fn dry_run(cfg: &TrainConfig, preset: Option<&TrainLayer>, cli: &TrainLayer) -> Result<DryRun, TrainError> {
    validate(cfg)?;
    let data = Data::open(cfg, &mut |note: &str| eprintln!("et-train: {note}"))?;
    let fam = et_models::registry::family(&cfg.model.model)?;
    let schedule = Schedule::resolve(&cfg.schedule.schedule, fam.etpp_resolutions(), data.base, cfg.schedule.epochs).map_err(TrainError::Config)?;
    let mp = model_plan(cfg, &data, &schedule)?;
    let plan = Plan::new(cfg, &schedule, data.train.len(), 1)?;
    let ps = ParamStore::zeros();
    Model::new(&mp.config, ps.var_builder(DType::F32, &Device::Cpu))?;
    let layer_decay = cfg.optim.layer_decay.map_or_else(Vec::new, |d| layer_groups(fam, &ps.trainable_in_creation_order(), d));
    let stages = schedule
        .stages
        .iter()
        .zip(&plan.stages)
        .enumerate()
        .map(|(i, (s, p))| StageRow {
            resolution: s.resolution,
            low_pass: s.low_pass(data.base, cfg.data.low_freq),
            magnitude: s.magnitude,
            epochs: s.epochs,
            base_epochs: schedule.stage_compute(i),
            steps: p.steps,
            micro_batch: p.micro_batch,
            accumulation: p.accumulation,
            replay_times: s.replay.map_or(1, |r| r.times.max(1)),
            lr: p.lr,
        })
        .collect();
    let mut sources = serde_json::Map::new();
    for (layer, name) in [(preset, "preset"), (Some(cli), "command line")] {
        for field in layer.map_or_else(Vec::new, |l| l.given()) {
            sources.insert(field.to_string(), json!(name));
        }
    }
    Ok(DryRun {
        settings: cfg.clone(),
        sources,
        model: cfg.model.model.clone(),
        family: fam.name().to_string(),
        params: ps.num_trainable(),
        drop_path: mp.drop_path,
        train_images: data.train.len(),
        val_images: data.val.as_ref().map_or(0, |v| v.len()),
        classes: data.classes(),
        base_resolution: data.base,
        schedule: schedule.name.clone(),
        budget: schedule.budget,
        effective_batch: plan.effective_batch,
        total_steps: plan.total_steps,
        warmup_epochs: cfg.optim.warmup_epochs,
        stages,
        layer_decay,
    })
}

impl DryRun {
    /// The plan for people.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let settings = serde_json::to_value(&self.settings).unwrap_or_default();
        out += "settings (default unless marked):\n";
        for (k, v) in settings.as_object().into_iter().flatten() {
            let mark = self.sources.get(k).and_then(|s| s.as_str()).map_or(String::new(), |s| format!("  ({s})"));
            out += &format!("  {k:<22} {v}{mark}\n");
        }
        out += &format!(
            "{} ({}, {:.2} M parameters, drop path {:.3}) on {} train / {} val images, {} classes, base {} px\n",
            self.model,
            self.family,
            self.params as f64 / 1e6,
            self.drop_path,
            self.train_images,
            self.val_images,
            self.classes,
            self.base_resolution
        );
        out += &format!("schedule {}: budget {} base epochs, {} optimiser steps of {} images, warm-up {:.2} base epochs\n", self.schedule, self.budget, self.total_steps, self.effective_batch, self.warmup_epochs);
        out += "  stage  res  low-pass  RandAugment    epochs  base-epochs   steps  batch   lr at start\n";
        for (i, s) in self.stages.iter().enumerate() {
            let batch = if s.accumulation > 1 { format!("{}x{}", s.micro_batch, s.accumulation) } else { s.micro_batch.to_string() };
            let replay = if s.replay_times > 1 { format!(", replay x{}", s.replay_times) } else { String::new() };
            let low_pass = s.low_pass.map_or("-".to_string(), |m| m.to_string());
            out += &format!("  {:>5}  {:>3}  {low_pass:<8}  m{:<11} {:>8.2}  {:>11.2}  {:>6}  {:>5}   {:.3e}{replay}\n", i + 1, s.resolution, s.magnitude, s.epochs, s.base_epochs, s.steps, batch, s.lr);
        }
        if !self.layer_decay.is_empty() {
            out += "layer-wise lr decay groups:\n  layer  lr scale  tensors\n";
            for g in &self.layer_decay {
                out += &format!("  {:>5}  {:>8.5}  {:>7}\n", g.layer, g.lr_scale, g.tensors);
            }
        }
        out
    }
}
