//! `config.json` of a training run: everything needed to rebuild the model and to
//! preprocess images for it, read by et-export and et-eval.

use crate::error::{ModelError, Result};
use crate::registry::{family, ModelConfig, ModelOptions};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    /// Registry name the run started from (e.g. `convnext_atto`).
    pub model: String,
    pub model_config: ModelConfig,
    pub num_classes: usize,
    /// Class folder names, index = label.
    pub class_names: Vec<String>,
    /// Resolution of the last curriculum stage (the model's native evaluation size).
    pub base_resolution: usize,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub interpolation: String,
    pub crop_pct: f64,
}

impl RunConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ModelError::BadConfig { path: path.to_path_buf(), reason: format!("{e} (is this a directory written by et-train?)") })?;
        let cfg: RunConfig = serde_json::from_str(&text).map_err(|e| ModelError::BadConfig { path: path.to_path_buf(), reason: e.to_string() })?;
        if cfg.class_names.len() != cfg.num_classes || cfg.model_config.num_classes() != cfg.num_classes {
            return Err(ModelError::BadConfig { path: path.to_path_buf(), reason: "num_classes disagrees with class_names or model_config".into() });
        }
        cfg.model_config.validate().map_err(|e| ModelError::BadConfig { path: path.to_path_buf(), reason: format!("model_config: {e}") })?;
        Ok(cfg)
    }

    /// Writes the config atomically (et-runfiles).
    pub fn save(&self, path: &Path) -> Result<()> {
        let err = |reason: String| ModelError::Write { path: path.to_path_buf(), reason };
        let text = serde_json::to_string_pretty(self).map_err(|e| err(e.to_string()))?;
        et_runfiles::write(path, (text + "\n").as_bytes()).map_err(|e| err(e.to_string()))
    }
}

/// A trained run loaded from its directory (`config.json` + `model.safetensors`).
pub struct LoadedRun {
    pub config: RunConfig,
    pub params: std::sync::Arc<crate::params::ParamStore>,
    pub model: crate::registry::Model,
}

pub use et_runfiles::{CONFIG_FILE, WEIGHTS_FILE};

impl LoadedRun {
    pub fn open(dir: &Path, device: &candle_core::Device) -> Result<Self> {
        if !dir.is_dir() {
            return Err(ModelError::BadConfig {
                path: dir.to_path_buf(),
                reason: "not a directory: pass the --out directory of an et-train run".into(),
            });
        }
        let config = RunConfig::load(&dir.join(CONFIG_FILE))?;
        let params = crate::params::ParamStore::new(0);
        let model = crate::registry::Model::new(&config.model_config, params.var_builder(candle_core::DType::F32, device))?;
        params.load(&dir.join(WEIGHTS_FILE), &[])?;
        Ok(LoadedRun { config, params, model })
    }

    /// A model from a bare weights file with timm names (no `config.json`): the number of
    /// classes is read from the head, preprocessing comes from the registry's defaults and
    /// the classes are unnamed (`class_names` are the indices).
    pub fn from_weights(model: &str, weights: &Path, opts: &ModelOptions, device: &candle_core::Device) -> Result<Self> {
        let fam = family(model)?;
        let probe = fam.config(model, opts)?;
        let file = candle_core::safetensors::load(weights, &candle_core::Device::Cpu)
            .map_err(|e| ModelError::BadConfig { path: weights.to_path_buf(), reason: format!("cannot read safetensors weights: {e}") })?;
        let head = probe.head_names()[1];
        let num_classes = file.get(head).map(|t| t.elem_count()).ok_or_else(|| ModelError::BadConfig {
            path: weights.to_path_buf(),
            reason: format!("no '{head}' tensor: not {model} weights with timm names (convert other checkpoints with `et-export convert`)"),
        })?;
        drop(file);
        let model_config = fam.config(model, &ModelOptions { num_classes, ..opts.clone() })?;
        let d = fam.preprocessing();
        let config = RunConfig {
            model: model.to_string(),
            model_config,
            num_classes,
            class_names: (0..num_classes).map(|i| i.to_string()).collect(),
            base_resolution: opts.img_size.unwrap_or(d.input_size),
            mean: d.mean,
            std: d.std,
            interpolation: d.interpolation.to_string(),
            crop_pct: d.crop_pct,
        };
        let params = crate::params::ParamStore::new(0);
        let model = crate::registry::Model::new(&config.model_config, params.var_builder(candle_core::DType::F32, device))?;
        params.load(weights, &[])?;
        Ok(LoadedRun { config, params, model })
    }
}
