//! Everything a run needs before its first step, checked cheapest first: the data, the
//! schedule, the model (and its EMA twin), preprocessing facts; and the validation pass.

use crate::engine::TrainConfig;
use crate::schedule::{Family, Schedule};
use crate::TrainError;
use candle_core::{DType, Device, Tensor};
use et_data::evaluation::{evaluate_folder, EvalOptions, Preprocess};
use et_data::folder::{ImageFolder, Sample};
use et_data::mixup::MixupConfig;
use et_data::resample::Filter;
use et_data::{decode, DataError};
use et_models::registry::{defaults, model_config, ModelOptions};
use et_models::registry::ModelConfig;
use et_kernels::device::Precision;
use et_kernels::CandleOps;
use et_models::{Model, ParamStore, RunConfig};
use std::sync::Arc;

pub struct Setup {
    pub schedule: Schedule,
    pub train_set: ImageFolder,
    pub val_set: Option<ImageFolder>,
    pub classes: usize,
    pub base: usize,
    pub params: Arc<ParamStore>,
    pub model: Model,
    pub model_cfg: ModelConfig,
    pub ema_params: Option<Arc<ParamStore>>,
    pub ema_model: Option<Model>,
    pub run_config: RunConfig,
    pub mix: MixupConfig,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub pre: Preprocess,
    /// The drop-path rate used (after budget scaling).
    pub drop_path: f64,
    pub device: Device,
}

impl Setup {
    /// The model that a training step runs: the f32 model itself, or in bf16 a model built
    /// from the same f32 masters cast for this step (the casts carry the gradients back).
    /// `None`: use [`Setup::model`].
    pub fn cast_model(&self, precision: Precision) -> Result<Option<Model>, TrainError> {
        match precision {
            Precision::F32 => Ok(None),
            p => Ok(Some(Model::new(&self.model_cfg, self.params.var_builder_cast(p.dtype(), &self.device))?)),
        }
    }
}

/// Base resolution from the data: the shorter side of the first image, capped at 224 and
/// rounded down to a multiple of 8 (32 for CIFAR, 224 for ImageNet-sized photos).
pub fn infer_base_resolution(first: &Sample) -> Result<usize, DataError> {
    let img = decode::decode_rgb(&first.path)?;
    let side = img.width().min(img.height()) as usize;
    Ok((side.min(224) / 8 * 8).max(8))
}

/// SPEC §3: ET++ scales the drop-path rate with the budget (E/200 of the 300-epoch rate).
pub fn scaled_drop_path(rate: f64, budget: f64, ref_epochs: Option<f64>) -> f64 {
    match ref_epochs {
        Some(e0) => (rate * budget / e0).clamp(0.0, 0.9),
        None => rate,
    }
}

pub fn prepare(cfg: &TrainConfig) -> Result<Setup, TrainError> {
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
    let schedule = Schedule::resolve(&cfg.schedule, family, base, cfg.epochs).map_err(TrainError::Config)?;
    let classes = train_set.classes.len();
    let mix = MixupConfig {
        mixup_alpha: cfg.mixup,
        cutmix_alpha: cfg.cutmix,
        switch_prob: cfg.mixup_switch_prob,
        prob: cfg.mixup_prob,
        label_smoothing: cfg.label_smoothing,
        num_classes: classes,
    };
    // Small images keep timm's layout but a finer stem (see models/src/convnext.rs), where
    // the model has one; the others take small inputs with their own stem (≥ 32 px).
    let auto_stem = base < 64 && et_models::registry::has_small_stem(&cfg.model);
    let stem_stride = cfg.stem_stride.or(auto_stem.then_some(if family == Family::DeiT { 4 } else { 2 }));
    let drop_path = scaled_drop_path(cfg.drop_path, cfg.epochs, cfg.drop_path_ref_epochs);
    let opts = ModelOptions { num_classes: classes, drop_path_rate: drop_path, stem_stride, img_size: Some(base) };
    let model_cfg = model_config(&cfg.model, &opts)?;
    for s in &schedule.stages {
        model_cfg.check_input(&cfg.model, s.resolution, s.resolution)?;
    }
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
    let device = cfg.device.open().map_err(|e| TrainError::Config(e.to_string()))?;
    let params = ParamStore::new(cfg.seed);
    let model = Model::new(&model_cfg, params.var_builder(DType::F32, &device))?;
    let (ema_params, ema_model) = if cfg.ema_decay.is_some() {
        let p = ParamStore::new(cfg.seed);
        let m = Model::new(&model_cfg, p.var_builder(DType::F32, &device))?;
        (Some(p), Some(m))
    } else {
        (None, None)
    };
    let pre = Preprocess { mean: d.mean, std: d.std, crop_pct, filter: Filter::Bicubic };
    Ok(Setup { schedule, train_set, val_set, classes, base, params, model, model_cfg, ema_params, ema_model, run_config, mix, mean: d.mean, std: d.std, pre, drop_path, device })
}

/// Top-1, top-5 and the number of unreadable images skipped, on `val` at the base resolution.
pub fn evaluate(val: &ImageFolder, s: &Setup, model: &Model, cfg: &TrainConfig) -> Result<(f64, f64, usize), TrainError> {
    let device = &s.device;
    let eval_opts = EvalOptions { batch_size: cfg.batch_size.max(64), threads: cfg.threads.max(1), skip_corrupt: !cfg.strict_data };
    let out = evaluate_folder::<TrainError, _>(val, s.base, s.classes, &s.pre, &eval_opts, |images, shape| {
        let x = Tensor::from_slice(images, shape.as_slice(), device)?;
        Ok(model.forward(&CandleOps::eval(), &x)?.flatten_all()?.to_vec1::<f32>()?)
    })?;
    Ok((out.totals.top1_frac(), out.totals.top5_frac(), out.skipped.len()))
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
