//! Run directories with random weights: export, evaluation and Hub tests need a run, not
//! a trained one.

#![allow(dead_code)]

use candle_core::{DType, Device};
use et_models::registry::{model_config, ModelOptions};
use et_models::{Model, ParamStore, RunConfig};
use std::path::Path;

/// Writes `dir/{config.json, model.safetensors}` for `model` with seeded random weights.
pub fn random_run_of(dir: &Path, model: &str, opts: &ModelOptions, classes: &[&str], base_resolution: usize, seed: u64) {
    std::fs::create_dir_all(dir).unwrap();
    let cfg = model_config(model, opts).unwrap();
    let ps = ParamStore::new(seed);
    Model::new(&cfg, ps.var_builder(DType::F32, &Device::Cpu)).unwrap();
    ps.save(&dir.join("model.safetensors")).unwrap();
    RunConfig {
        model: model.into(),
        model_config: cfg,
        num_classes: classes.len(),
        class_names: classes.iter().map(|c| c.to_string()).collect(),
        base_resolution,
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
        interpolation: "bicubic".into(),
        crop_pct: 1.0,
    }
    .save(&dir.join("config.json"))
    .unwrap();
}

pub const CLASSES: [&str; 3] = ["airplane", "cat", "ship"];

/// ConvNeXt-atto with the 2×2 small-image stem, 3 classes, base 32 px.
pub fn small_convnext_run(dir: &Path, seed: u64) {
    let opts = ModelOptions { num_classes: 3, drop_path_rate: 0.0, stem_stride: Some(2), img_size: None };
    random_run_of(dir, "convnext_atto", &opts, &CLASSES, 32, seed);
}

/// Results of an `et-eval --json` report.
pub fn results(path: &Path) -> Vec<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).expect("json written")).expect("valid json");
    v["results"].as_array().expect("results array").clone()
}
