//! ONNX export of the zoo's models: the model's own `forward` is recorded through
//! [`onnx::OnnxOps`] and written as an opset-17 graph with a dynamic batch dimension
//! (and dynamic height / width for convolutional models).

pub mod convert;
pub mod onnx;

use candle_core::TensorId;
use et_models::run_config::LoadedRun;
use onnx::builder::{OnnxOps, IR_VERSION, OPSET};
use onnx::proto::*;
use prost::Message;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Model(#[from] et_models::ModelError),
    #[error("cannot record the model as ONNX: {0}")]
    Record(#[from] candle_core::Error),
    #[error("cannot write {path}: {reason}")]
    Write { path: PathBuf, reason: String },
}

/// What was written.
#[derive(Debug)]
pub struct ExportSummary {
    pub path: PathBuf,
    pub nodes: usize,
    pub initializers: usize,
    pub bytes: usize,
}

fn dim_param(name: &str) -> Dimension {
    Dimension { value: Some(DimValue::DimParam(name.into())) }
}

fn dim_value(v: usize) -> Dimension {
    Dimension { value: Some(DimValue::DimValue(v as i64)) }
}

fn value_info(name: &str, dims: Vec<Dimension>) -> ValueInfoProto {
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            tensor_type: Some(TypeProtoTensor { elem_type: Some(data_type::FLOAT), shape: Some(TensorShapeProto { dim: dims }) }),
        }),
    }
}

pub const INPUT_NAME: &str = "input";
pub const OUTPUT_NAME: &str = "logits";

/// Builds the ONNX model of a run. `resolution` is checked against the model and recorded
/// as the intended input size; the graph itself accepts any batch, height and width the
/// model accepts.
pub fn build_model_proto(run: &LoadedRun, resolution: usize) -> Result<ModelProto, ExportError> {
    let cfg = &run.config;
    cfg.model_config.check_input(&cfg.model, resolution, resolution)?;
    let names: HashMap<TensorId, String> = run.params.all().into_iter().map(|(name, var)| (var.as_tensor().id(), name)).collect();
    let ops = OnnxOps::new(names, INPUT_NAME, (resolution, resolution));
    let input: onnx::builder::Value = INPUT_NAME.into();
    let logits = run.model.forward(&ops, &input)?;
    let (mut nodes, initializers) = ops.finish();
    // Name the last value `logits` so users and et-eval find it.
    if let Some(last) = nodes.last_mut() {
        if last.output.first().map(|o| o.as_str()) == Some(&*logits) {
            last.output[0] = OUTPUT_NAME.into();
        }
    }
    // Convolutional models take any size; ViTs are exported for one grid (their position
    // embedding is resampled for `resolution` at export).
    let input_dims = if cfg.model_config.dynamic_input_size() {
        vec![dim_param("batch"), dim_value(3), dim_param("height"), dim_param("width")]
    } else {
        vec![dim_param("batch"), dim_value(3), dim_value(resolution), dim_value(resolution)]
    };
    let meta = |k: &str, v: String| StringStringEntryProto { key: Some(k.into()), value: Some(v) };
    let graph = GraphProto {
        node: nodes,
        name: Some(cfg.model.clone()),
        initializer: initializers,
        input: vec![value_info(INPUT_NAME, input_dims)],
        output: vec![value_info(OUTPUT_NAME, vec![dim_param("batch"), dim_value(cfg.num_classes)])],
    };
    Ok(ModelProto {
        ir_version: Some(IR_VERSION),
        producer_name: Some("efficienttrain-rs".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        doc_string: Some(format!("{} exported by et-export", cfg.model)),
        graph: Some(graph),
        opset_import: vec![OperatorSetIdProto { domain: Some(String::new()), version: Some(OPSET) }],
        metadata_props: vec![
            meta("model", cfg.model.clone()),
            meta("resolution", resolution.to_string()),
            meta("mean", format!("{:?}", cfg.mean)),
            meta("std", format!("{:?}", cfg.std)),
            meta("crop_pct", cfg.crop_pct.to_string()),
            meta("interpolation", cfg.interpolation.clone()),
            meta("class_names", serde_json::to_string(&cfg.class_names).unwrap_or_default()),
        ],
    })
}

/// Exports a run to `path` (written atomically).
pub fn export_onnx(run: &LoadedRun, resolution: usize, path: &Path) -> Result<ExportSummary, ExportError> {
    let proto = build_model_proto(run, resolution)?;
    let graph = proto.graph.as_ref().map(|g| (g.node.len(), g.initializer.len())).unwrap_or_default();
    let bytes = proto.encode_to_vec();
    et_runfiles::write(path, &bytes).map_err(|e| ExportError::Write { path: path.to_path_buf(), reason: e.to_string() })?;
    Ok(ExportSummary { path: path.to_path_buf(), nodes: graph.0, initializers: graph.1, bytes: bytes.len() })
}
