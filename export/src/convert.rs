//! Importing reference checkpoints: the official ConvNeXt, DeiT and Swin repositories'
//! weight names (which EfficientTrain's released checkpoints use) and timm's, from a
//! PyTorch pickle (`torch.save`, with the state dict at the top or under `model` /
//! `model_ema` / `state_dict`) or a safetensors file, mapped to our (timm) names.
//!
//! The mapping rules follow timm's `checkpoint_filter_fn` of each family; the result is
//! loaded strictly into the registered model, so a checkpoint that does not fit is
//! reported with its missing and unexpected names instead of being half-loaded.

use candle_core::{Device, Tensor};
use et_models::family::OfficialNames;
use et_models::registry::{family, Model, ModelOptions};
use et_models::ParamStore;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("cannot read checkpoint {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{path} does not fit {model} ({layout} names): {detail}")]
    Mismatch { path: PathBuf, model: String, layout: &'static str, detail: String },
    #[error(transparent)]
    Model(#[from] et_models::ModelError),
    #[error("{0}")]
    Candle(#[from] candle_core::Error),
}

/// Which state dict of a training checkpoint to import.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    Model,
    Ema,
}

/// Prefixes that wrappers add: DistributedDataParallel, `torch.compile`.
fn strip_wrappers(name: &str) -> &str {
    let mut n = name;
    loop {
        match n.strip_prefix("module.").or_else(|| n.strip_prefix("_orig_mod.")) {
            Some(rest) => n = rest,
            None => return n,
        }
    }
}

/// The names of `model`'s family's official checkpoints when `names` use them (None: timm's
/// names, which are ours; the official DeiT repository's are timm's too).
pub fn official_layout(model: &str, names: &[&str]) -> Result<Option<OfficialNames>, ConvertError> {
    let stripped: Vec<&str> = names.iter().map(|n| strip_wrappers(n)).collect();
    Ok(family(model)?.official_names().filter(|o| (o.detect)(&stripped)))
}

/// Our name for a checkpoint name under `layout`, or `None` for tensors we recompute.
pub fn map_name(layout: Option<&OfficialNames>, name: &str) -> Option<String> {
    let name = strip_wrappers(name);
    match layout {
        Some(o) => (o.map)(name),
        None => Some(name.to_string()),
    }
}

/// Reads every tensor of a checkpoint: safetensors, or a PyTorch pickle whose state dict
/// sits under `model` / `model_ema` (training checkpoints), `state_dict`, or at the top.
/// Returns the tensors and where they were found.
pub fn read_checkpoint(path: &Path, which: Which) -> Result<(Vec<(String, Tensor)>, String), ConvertError> {
    let err = |reason: String| ConvertError::Read { path: path.to_path_buf(), reason };
    if !path.is_file() {
        return Err(err("no such file".into()));
    }
    let is_safetensors = std::fs::File::open(path)
        .and_then(|mut f| {
            let mut magic = [0u8; 4];
            std::io::Read::read_exact(&mut f, &mut magic).map(|()| magic)
        })
        .map(|m| &m[..2] != b"PK")
        .unwrap_or(true);
    if is_safetensors {
        if which == Which::Ema {
            return Err(err("a safetensors file holds one state dict: --ema applies to PyTorch training checkpoints".into()));
        }
        let map = candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| err(format!("neither a PyTorch zip checkpoint nor safetensors ({e})")))?;
        return Ok((map.into_iter().collect(), "safetensors".into()));
    }
    let keys: &[Option<&str>] = match which {
        Which::Model => &[Some("model"), Some("state_dict"), None],
        Which::Ema => &[Some("model_ema"), Some("state_dict_ema")],
    };
    let mut tried = Vec::new();
    for key in keys {
        if let Ok(t) = candle_core::pickle::read_all_with_key(path, *key) {
            if !t.is_empty() {
                return Ok((t, key.map(|k| format!("key '{k}'")).unwrap_or_else(|| "top level".into())));
            }
        }
        tried.push(key.unwrap_or("<top level>"));
    }
    Err(err(format!("no tensors under {} (a torch.save of a state dict or of a training checkpoint is expected)", tried.join(", "))))
}

#[derive(Debug)]
pub struct ConvertSummary {
    /// "timm" or the official layout's name.
    pub layout: &'static str,
    pub source: String,
    pub tensors: usize,
    pub dropped: usize,
    pub num_classes: usize,
}

/// Maps a checkpoint to `model`'s names and shapes and writes it (atomically) as
/// safetensors, after loading it strictly into the model.
pub fn convert(from: &Path, model: &str, which: Which, out: &Path) -> Result<ConvertSummary, ConvertError> {
    let (tensors, source) = read_checkpoint(from, which)?;
    let names: Vec<&str> = tensors.iter().map(|(n, _)| n.as_str()).collect();
    let official = official_layout(model, &names)?;
    let layout = official.as_ref().map_or("timm", |o| o.layout);
    let mut mapped: HashMap<String, Tensor> = HashMap::new();
    let mut dropped = 0;
    for (name, t) in tensors {
        match map_name(official.as_ref(), &name) {
            Some(n) => {
                mapped.insert(n, t);
            }
            None => dropped += 1,
        }
    }
    let fam = family(model)?;
    let head = fam.head_names()[1];
    let num_classes = mapped.get(head).map(|t| t.elem_count()).ok_or_else(|| ConvertError::Mismatch {
        path: from.to_path_buf(),
        model: model.to_string(),
        layout,
        detail: format!("no classifier head '{head}' after mapping (found {} tensors, e.g. {})", mapped.len(), sample(&mapped)),
    })?;
    let cfg = fam.config(model, &ModelOptions { num_classes, ..Default::default() })?;
    let params = ParamStore::zeros();
    Model::new(&cfg, params.var_builder(candle_core::DType::F32, &Device::Cpu))?;
    // 1×1 convolutions stored as linear layers (ConvNeXt's pwconv) differ only by trailing
    // unit dimensions.
    for (name, var) in params.all() {
        if let Some(t) = mapped.get_mut(&name) {
            if t.dims() != var.dims() && t.elem_count() == var.elem_count() && squeeze_ones(t.dims()) == squeeze_ones(var.dims()) {
                *t = t.reshape(var.dims())?;
            }
            *t = t.to_dtype(candle_core::DType::F32)?;
        }
    }
    let summary = ConvertSummary { layout, source, tensors: mapped.len(), dropped, num_classes };
    et_models::params::save_tensors(&mapped, out)?;
    // The strict load of the written file is the check: nothing half-fits.
    if let Err(e) = params.load(out, &[]) {
        let _ = std::fs::remove_file(out);
        let detail = match e {
            et_models::ModelError::WeightsMismatch { detail, .. } => detail,
            other => other.to_string(),
        };
        return Err(ConvertError::Mismatch { path: from.to_path_buf(), model: model.to_string(), layout, detail });
    }
    Ok(summary)
}

fn squeeze_ones(d: &[usize]) -> Vec<usize> {
    d.iter().copied().filter(|&x| x != 1).collect()
}

fn sample(m: &HashMap<String, Tensor>) -> String {
    let mut k: Vec<&String> = m.keys().collect();
    k.sort();
    k.iter().take(3).map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapped(model: &str, names: &[&str]) -> Vec<Option<String>> {
        let layout = official_layout(model, names).unwrap();
        assert!(layout.is_some(), "{model}: official names detected");
        names.iter().map(|n| map_name(layout.as_ref(), n)).collect()
    }

    #[test]
    fn official_convnext_names_map_to_timm() {
        let pairs = [
            ("downsample_layers.0.0.weight", "stem.0.weight"),
            ("downsample_layers.0.1.bias", "stem.1.bias"),
            ("downsample_layers.2.1.weight", "stages.2.downsample.1.weight"),
            ("stages.1.2.dwconv.weight", "stages.1.blocks.2.conv_dw.weight"),
            ("stages.3.0.pwconv1.bias", "stages.3.blocks.0.mlp.fc1.bias"),
            ("module.stages.0.0.pwconv2.weight", "stages.0.blocks.0.mlp.fc2.weight"),
            ("stages.0.0.gamma", "stages.0.blocks.0.gamma"),
            ("norm.weight", "head.norm.weight"),
            ("head.bias", "head.fc.bias"),
        ];
        let from: Vec<&str> = pairs.iter().map(|p| p.0).collect();
        let to: Vec<Option<String>> = pairs.iter().map(|p| Some(p.1.to_string())).collect();
        assert_eq!(mapped("convnext_tiny", &from), to);
        assert!(official_layout("convnext_tiny", &["stem.0.weight", "head.fc.weight"]).unwrap().is_none(), "timm names stay");
    }

    #[test]
    fn official_swin_names_map_to_timm_and_buffers_are_dropped() {
        let from = ["layers.0.downsample.reduction.weight", "layers.2.blocks.1.attn.relative_position_bias_table", "head.weight", "layers.1.blocks.1.attn_mask", "layers.1.blocks.0.attn.relative_position_index"];
        let got = mapped("swin_tiny_patch4_window7_224", &from);
        assert_eq!(got[0].as_deref(), Some("layers.1.downsample.reduction.weight"));
        assert_eq!(got[1].as_deref(), Some("layers.2.blocks.1.attn.relative_position_bias_table"));
        assert_eq!(got[2].as_deref(), Some("head.fc.weight"));
        assert_eq!((got[3].as_deref(), got[4].as_deref()), (None, None));
        assert!(official_layout("swin_tiny_patch4_window7_224", &["layers.0.blocks.0.attn.relative_position_bias_table", "head.fc.weight"]).unwrap().is_none());
        assert_eq!(map_name(None, "_orig_mod.blocks.0.attn.qkv.weight").as_deref(), Some("blocks.0.attn.qkv.weight"));
    }
}
