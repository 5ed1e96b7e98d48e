//! The two ways to get logits for a batch of preprocessed images: ONNX Runtime (the
//! shipped artifact) and candle (the trained run itself), behind one trait.

use crate::ortlib;
use crate::EvalError;
use candle_core::{Device, Tensor};
use et_models::registry::{model_config, ModelConfig, ModelOptions};
use et_models::run_config::LoadedRun;
use et_kernels::CandleOps;
use ort::session::Session;
use ort::value::{TensorRef, ValueType};
use std::path::{Path, PathBuf};

pub trait Classifier {
    /// Logits, row-major (N, classes), for NCHW f32 images.
    fn logits(&mut self, images: &[f32], shape: [usize; 4]) -> Result<Vec<f32>, EvalError>;
    fn num_classes(&self) -> usize;
    /// Checks up front that the model takes `size`×`size` inputs.
    fn check_resolution(&self, size: usize) -> Result<(), EvalError>;
    /// The architecture, where known (for the memory a batch needs).
    fn architecture(&self) -> Option<ModelConfig>;
}

pub struct CandleClassifier {
    pub run: LoadedRun,
    device: Device,
}

impl CandleClassifier {
    pub fn open(dir: &Path) -> Result<Self, EvalError> {
        Ok(Self::new(LoadedRun::open(dir, &Device::Cpu)?, Device::Cpu))
    }

    /// `device` is the one `run` was loaded on.
    pub fn new(run: LoadedRun, device: Device) -> Self {
        CandleClassifier { run, device }
    }
}

impl Classifier for CandleClassifier {
    fn logits(&mut self, images: &[f32], shape: [usize; 4]) -> Result<Vec<f32>, EvalError> {
        let x = Tensor::from_slice(images, shape.as_slice(), &self.device)?;
        let y = self.run.model.forward(&CandleOps::inference(), &x)?;
        Ok(y.flatten_all()?.to_vec1()?)
    }

    fn num_classes(&self) -> usize {
        self.run.config.num_classes
    }

    fn check_resolution(&self, size: usize) -> Result<(), EvalError> {
        let c = &self.run.config;
        Ok(c.model_config.check_input(&c.model, size, size)?)
    }

    fn architecture(&self) -> Option<ModelConfig> {
        Some(self.run.config.model_config.clone())
    }
}

/// Preprocessing facts an exported model carries in its metadata (set by et-export).
#[derive(Clone, Debug, Default)]
pub struct OnnxMetadata {
    pub mean: Option<[f32; 3]>,
    pub std: Option<[f32; 3]>,
    pub crop_pct: Option<f64>,
    pub interpolation: Option<String>,
    pub class_names: Option<Vec<String>>,
    pub resolution: Option<usize>,
    /// The registry name of the exported model.
    pub model: Option<String>,
}

pub struct OnnxClassifier {
    session: Session,
    path: PathBuf,
    input: String,
    /// Fixed (height, width) of the input, if the graph does not leave them dynamic.
    fixed_hw: (Option<usize>, Option<usize>),
    classes: usize,
    pub metadata: OnnxMetadata,
}

fn parse3(s: Option<String>) -> Option<[f32; 3]> {
    let v: Vec<f32> = serde_json::from_str(&s?).ok()?;
    v.try_into().ok()
}

impl OnnxClassifier {
    pub fn open(path: &Path, ort_lib: Option<&Path>, threads: usize) -> Result<Self, EvalError> {
        if !path.is_file() {
            return Err(EvalError::Input(format!("ONNX file {} does not exist: export one with `et-export --onnx RUN_DIR`", path.display())));
        }
        let env = ortlib::environment(ort_lib)?;
        let bad = |reason: String| EvalError::Input(format!("{} is not a usable ONNX image classifier: {reason}", path.display()));
        let session = Session::builder(env)
            .and_then(|b| b.with_intra_threads(threads.max(1)).map_err(Into::into))
            .and_then(|mut b| b.commit_from_file(path))
            .map_err(|e| bad(e.to_string()))?;
        if session.inputs().len() != 1 {
            return Err(bad(format!("it has {} inputs; et-eval needs exactly one NCHW float input", session.inputs().len())));
        }
        let input = &session.inputs()[0];
        let dims: Vec<i64> = match input.dtype() {
            ValueType::Tensor { ty: ort::value::TensorElementType::Float32, shape, .. } => shape.iter().copied().collect(),
            other => return Err(bad(format!("its input '{}' is {other:?}; expected a float32 NCHW tensor", input.name()))),
        };
        if dims.len() != 4 || (dims[1] > 0 && dims[1] != 3) {
            return Err(bad(format!("its input '{}' has shape {dims:?}; expected (N, 3, H, W)", input.name())));
        }
        let classes = match session.outputs().first().map(|o| o.dtype()) {
            Some(ValueType::Tensor { shape, .. }) if shape.len() == 2 && shape[1] > 0 => shape[1] as usize,
            Some(other) => return Err(bad(format!("its first output is {other:?}; expected (N, classes) logits"))),
            None => return Err(bad("it has no outputs".into())),
        };
        let fixed = |d: i64| (d > 0).then_some(d as usize);
        let fixed_hw = (fixed(dims[2]), fixed(dims[3]));
        let md = session.metadata().map_err(|e| bad(e.to_string()))?;
        let metadata = OnnxMetadata {
            mean: parse3(md.custom("mean")),
            std: parse3(md.custom("std")),
            crop_pct: md.custom("crop_pct").and_then(|s| s.parse().ok()),
            interpolation: md.custom("interpolation"),
            class_names: md.custom("class_names").and_then(|s| serde_json::from_str(&s).ok()),
            resolution: md.custom("resolution").and_then(|s| s.parse().ok()),
            model: md.custom("model"),
        };
        drop(md);
        let input = input.name().to_string();
        Ok(OnnxClassifier { session, path: path.to_path_buf(), input, fixed_hw, classes, metadata })
    }
}

impl Classifier for OnnxClassifier {
    fn logits(&mut self, images: &[f32], shape: [usize; 4]) -> Result<Vec<f32>, EvalError> {
        // One message for every runtime failure; fields are borrowed apart so the input
        // name is not copied per batch.
        let (session, input, path) = (&mut self.session, self.input.as_str(), &self.path);
        let failed = |e: ort::Error| EvalError::Runtime(format!("ONNX Runtime failed on {}: {e}", path.display()));
        let tensor = TensorRef::from_array_view((shape, images)).map_err(failed)?;
        let outputs = session.run(ort::inputs![input => tensor]).map_err(failed)?;
        let (_, data) = outputs[0].try_extract_tensor::<f32>().map_err(failed)?;
        Ok(data.to_vec())
    }

    fn num_classes(&self) -> usize {
        self.classes
    }

    fn check_resolution(&self, size: usize) -> Result<(), EvalError> {
        match self.fixed_hw {
            (Some(h), _) | (_, Some(h)) if h != size => Err(EvalError::Input(format!(
                "{} takes fixed {}x{} inputs, not {size}x{size}: evaluate it at --resolutions {h}, or export another file with `et-export --onnx RUN_DIR --resolution {size}`",
                self.path.display(),
                self.fixed_hw.0.unwrap_or(size),
                self.fixed_hw.1.unwrap_or(size)
            ))),
            _ => Ok(()),
        }
    }

    /// The registered model the file says it exports, with the reference stem (a guess for
    /// the memory estimate only).
    fn architecture(&self) -> Option<ModelConfig> {
        model_config(self.metadata.model.as_deref()?, &ModelOptions { num_classes: self.classes, ..Default::default() }).ok()
    }
}
