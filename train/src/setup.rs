//! Everything a run needs before its first step, checked cheapest first: the data, the
//! schedule, the model (and its EMA twin) and the facts saved for export and evaluation.

use crate::config::TrainConfig;
use crate::schedule::Schedule;
use crate::TrainError;
use candle_core::{DType, Device};
use et_data::dataset::Dataset;
use et_data::{decode, DataError};
use et_models::registry::{family, ModelConfig, ModelOptions};
use et_models::{Family, Model, ParamStore, RunConfig};
use std::sync::Arc;

/// The training images (and validation images, when the dataset has a `val/` split): an
/// ImageFolder or WebDataset shards.
pub struct Data {
    pub train: Arc<Dataset>,
    pub val: Option<Arc<Dataset>>,
    /// The final stage's resolution.
    pub base: usize,
}

impl Data {
    /// Opens `--data`; `log` hears notes on shards (indexing them, empty ones).
    pub fn open(cfg: &TrainConfig, log: &mut dyn FnMut(&str)) -> Result<Data, TrainError> {
        let data = &cfg.data.data;
        let train = Dataset::open_split(data, "train", log)?;
        let val = if Dataset::has_split(data, "val") { Some(Arc::new(Dataset::open_with_classes(data, "val", train.classes(), log)?)) } else { None };
        let base = match cfg.schedule.base_resolution {
            Some(b) => b,
            None => infer_base_resolution(&train)?,
        };
        Ok(Data { train: Arc::new(train), val, base })
    }

    pub fn classes(&self) -> usize {
        self.train.classes().len()
    }
}

/// Base resolution from the data: the shorter side of the first readable image, capped at
/// 224 and rounded down to a multiple of 8 (32 for CIFAR, 224 for ImageNet-sized photos).
pub fn infer_base_resolution(data: &Dataset) -> Result<usize, DataError> {
    let mut first_error = None;
    // A damaged first image is skipped here as during training; only if none of the first
    // few can be read is the dataset refused.
    for i in 0..data.len().min(16) {
        let img = data.read(i).and_then(|bytes| decode::decode_bytes(&bytes).map_err(|reason| DataError::Decode { path: data.name(i).into_owned(), reason }));
        match img {
            Ok(img) => return Ok((img.width().min(img.height()) as usize).min(224) / 8 * 8).map(|b| b.max(8)),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    Err(first_error.unwrap_or_else(|| DataError::Invalid("the training set is empty".into())))
}

/// ET++ scales the drop-path rate with the budget: E/E0 of the reference (E0 = 200) rate.
pub fn scaled_drop_path(rate: f64, budget: f64, ref_epochs: Option<f64>) -> f64 {
    match ref_epochs {
        Some(e0) => (rate * budget / e0).clamp(0.0, 0.9),
        None => rate,
    }
}

/// The network being trained: its parameters, the model built on them, what it is.
pub struct Network {
    pub family: &'static dyn Family,
    pub config: ModelConfig,
    pub params: Arc<ParamStore>,
    pub model: Model,
}

impl Network {
    pub fn new(family: &'static dyn Family, config: ModelConfig, seed: u64, device: &Device) -> Result<Network, TrainError> {
        let params = ParamStore::new(seed);
        let model = Model::new(&config, params.var_builder(DType::F32, device))?;
        Ok(Network { family, config, params, model })
    }
}

/// The model of a run: family, architecture (checked against every stage's resolution),
/// drop path after budget scaling, and the `config.json` that export and evaluation read.
pub struct ModelPlan {
    pub family: &'static dyn Family,
    pub config: ModelConfig,
    pub drop_path: f64,
    pub run_config: RunConfig,
}

pub fn model_plan(cfg: &TrainConfig, data: &Data, schedule: &Schedule) -> Result<ModelPlan, TrainError> {
    let name = &cfg.model.model;
    let fam = family(name)?;
    let base = data.base;
    // Small images keep the reference layout with a finer stem where the family has one.
    let stem_stride = cfg.model.stem_stride.or(if base < 64 { fam.small_image_stem() } else { None });
    let drop_path = scaled_drop_path(cfg.model.drop_path, cfg.schedule.epochs, cfg.model.drop_path_ref_epochs);
    let opts = ModelOptions { num_classes: data.classes(), drop_path_rate: drop_path, stem_stride, img_size: Some(base) };
    let config = fam.config(name, &opts)?;
    for s in &schedule.stages {
        config.check_input(name, s.resolution, s.resolution)?;
    }
    let p = fam.preprocessing();
    let run_config = RunConfig {
        model: name.clone(),
        model_config: config.clone(),
        num_classes: data.classes(),
        class_names: data.train.classes().to_vec(),
        base_resolution: base,
        mean: p.mean,
        std: p.std,
        interpolation: p.interpolation.to_string(),
        crop_pct: cfg.data.crop_pct.unwrap_or(if base < 64 { 1.0 } else { p.crop_pct }),
    };
    Ok(ModelPlan { family: fam, config, drop_path, run_config })
}

/// Refuses, before anything is trained, a plan whose steps cannot fit in this machine's
/// memory (CPU training; a GPU's memory is its own): per stage, the activations a
/// micro-batch keeps for its backward pass, plus the weights, their gradients, the
/// optimiser's two moments and the EMA.
pub fn check_memory(cfg: &TrainConfig, model: &ModelPlan, plan: &crate::plan::Plan, world: usize, available: Option<u64>) -> Result<(), TrainError> {
    let Some(available) = available else { return Ok(()) };
    let copies = 4.0 + if cfg.optim.ema_decay.is_some() { 1.0 } else { 0.0 };
    let fixed = model.config.approx_params() * 4.0 * copies;
    let mut seen: Vec<(usize, usize)> = Vec::new();
    for (i, (stage, sp)) in plan.schedule.stages.iter().zip(&plan.stages).enumerate() {
        let (r, images) = (stage.resolution, sp.micro_batch / world.max(1));
        if seen.contains(&(r, images)) {
            continue;
        }
        seen.push((r, images));
        let act = et_models::registry::activations(&model.config, r, r)?;
        let need = act.train_bytes() as f64 * images as f64 + fixed;
        if need > available as f64 {
            return Err(TrainError::Config(format!(
                "stage {} ({r} px): a micro-batch of {images} images needs about {:.1} GB (the activations kept for the backward pass, the weights and the optimiser state), and {:.1} GB of memory are available: lower --batch-size (--effective-batch keeps the recipe through gradient accumulation), or set ET_MEMORY_CHECK=0 if the estimate is wrong for this machine",
                i + 1,
                need / 1e9,
                available as f64 / 1e9
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_path_follows_the_budget() {
        assert!((scaled_drop_path(0.2, 200.0, Some(200.0)) - 0.2).abs() < 1e-12);
        assert!((scaled_drop_path(0.2, 100.0, Some(200.0)) - 0.1).abs() < 1e-12);
        assert_eq!(scaled_drop_path(0.2, 100.0, None), 0.2);
    }
}
