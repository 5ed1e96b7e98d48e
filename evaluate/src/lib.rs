//! et-eval: top-1 / top-5 of an image classifier over an ImageFolder or WebDataset shards, through ONNX Runtime
//! (`--onnx`) or candle (`--run`), at several resolutions, with the timm eval transform.

pub mod backend;
pub mod gate;
pub mod memory;
pub mod npy;
pub mod ortlib;

use backend::Classifier;
use et_data::dataset::Dataset;
pub use et_data::evaluation::{evaluate_dataset, EvalOptions, Preprocess};
use et_data::DataError;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Model(#[from] et_models::ModelError),
    #[error(transparent)]
    OrtLib(#[from] ortlib::OrtLibError),
    #[error("{0}")]
    Input(String),
    #[error("{0}")]
    Runtime(String),
    #[error("model failed: {0}")]
    Candle(#[from] candle_core::Error),
}

/// One line of the report (and of `--json`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ResolutionResult {
    pub resolution: usize,
    pub top1: f64,
    pub top5: f64,
    pub images: usize,
    #[serde(default)]
    pub loss: f64,
    #[serde(default)]
    pub img_per_s: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub results: Vec<ResolutionResult>,
}

/// Checks that the dataset's classes are the model's (same names in the same order).
pub fn check_classes(data: &Dataset, model_classes: Option<&[String]>, outputs: usize) -> Result<(), EvalError> {
    let classes = data.classes();
    if classes.len() > outputs {
        return Err(EvalError::Input(format!(
            "{} has {} classes but the model predicts {outputs} classes: evaluate on data with the model's classes",
            data.root().display(),
            classes.len()
        )));
    }
    if let Some(names) = model_classes {
        if let Some(i) = (0..classes.len()).find(|&i| names.get(i) != Some(&classes[i])) {
            return Err(EvalError::Input(format!(
                "class #{i} of {} is '{}' but the model's class #{i} is '{}': the data's classes must be the ones the model was trained on",
                data.root().display(),
                classes[i],
                names.get(i).map(String::as_str).unwrap_or("<none>")
            )));
        }
    }
    Ok(())
}

/// Evaluates `model` on every image of `data` at `resolution`.
pub fn evaluate(
    model: &mut dyn Classifier,
    data: &Arc<Dataset>,
    resolution: usize,
    pre: &Preprocess,
    opts: &EvalOptions,
) -> Result<ResolutionResult, EvalError> {
    model.check_resolution(resolution)?;
    let classes = model.num_classes();
    let out = evaluate_dataset(data, resolution, classes, pre, opts, |x, shape| model.logits(x, shape))?;
    for (path, why) in &out.skipped {
        eprintln!("et-eval: skipped {}: {why}", path.display());
    }
    let t = &out.totals;
    Ok(ResolutionResult {
        resolution,
        top1: t.top1_frac(),
        top5: t.top5_frac(),
        images: t.images,
        loss: t.mean_loss(),
        img_per_s: t.images as f64 / out.model_seconds.max(1e-9),
    })
}

/// The table printed by et-eval.
pub fn format_table(results: &[ResolutionResult]) -> String {
    let mut s = format!("{:>10} {:>7} {:>7} {:>7} {:>8} {:>9}\n", "resolution", "images", "top-1", "top-5", "loss", "img/s");
    for r in results {
        s += &format!(
            "{:>10} {:>7} {:>7.2} {:>7.2} {:>8.4} {:>9.1}\n",
            r.resolution,
            r.images,
            100.0 * r.top1,
            100.0 * r.top5,
            r.loss,
            r.img_per_s
        );
    }
    s
}

pub fn write_json(results: &[ResolutionResult], path: &Path) -> Result<(), EvalError> {
    let text = serde_json::to_string_pretty(&Report { results: results.to_vec() }).map_err(|e| EvalError::Runtime(e.to_string()))?;
    et_runfiles::write(path, (text + "\n").as_bytes()).map_err(|e| EvalError::Input(format!("cannot write {}: {e}", path.display())))
}
