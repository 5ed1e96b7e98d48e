//! Importing reference checkpoints: the official ConvNeXt, DeiT and Swin repositories'
//! weight names (which EfficientTrain's released checkpoints use) and timm's, from a
//! PyTorch pickle (`torch.save`, with the state dict at the top or under `model` /
//! `model_ema` / `state_dict`) or a safetensors file, mapped to our (timm) names.
//!
//! The mapping rules follow timm's `checkpoint_filter_fn` of each family; the result is
//! loaded strictly into the registered model, so a checkpoint that does not fit is
//! reported with its missing and unexpected names instead of being half-loaded.

use candle_core::{Device, Tensor};
use et_models::registry::{model_config, Model, ModelOptions};
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

/// The naming scheme a checkpoint uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// timm's names (also the official DeiT repository's, which builds on timm).
    Timm,
    /// facebookresearch/ConvNeXt: `downsample_layers`, `stages.i.j`, `dwconv`, `pwconv1`.
    OfficialConvNeXt,
    /// microsoft/Swin-Transformer: the patch merging at the end of stage i (timm: start of
    /// i + 1), `head` without `.fc`, and buffers timm recomputes.
    OfficialSwin,
}

impl Layout {
    pub fn describe(self) -> &'static str {
        match self {
            Layout::Timm => "timm",
            Layout::OfficialConvNeXt => "official ConvNeXt",
            Layout::OfficialSwin => "official Swin",
        }
    }
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

pub fn detect_layout<'a>(names: impl IntoIterator<Item = &'a str> + Clone) -> Layout {
    let has = |pat: &str| names.clone().into_iter().any(|n| strip_wrappers(n).contains(pat));
    if has("downsample_layers.") {
        Layout::OfficialConvNeXt
    } else if has("relative_position_bias_table") && !has("head.fc.") {
        Layout::OfficialSwin
    } else {
        Layout::Timm
    }
}

/// Our name for a checkpoint name, or `None` for tensors we recompute (Swin's index and
/// mask buffers).
pub fn map_name(layout: Layout, name: &str) -> Option<String> {
    let name = strip_wrappers(name);
    let mut s: Vec<String> = name.split('.').map(str::to_string).collect();
    match layout {
        Layout::Timm => {}
        Layout::OfficialConvNeXt => {
            if s.len() > 2 && s[0] == "downsample_layers" {
                if s[1] == "0" {
                    s.splice(0..2, ["stem".to_string()]);
                } else {
                    s[0] = "stages".into();
                    s.insert(2, "downsample".into());
                }
            } else if s.len() > 2 && s[0] == "stages" && s[2].parse::<usize>().is_ok() {
                s.insert(2, "blocks".into());
            } else if s[0] == "head" {
                s.insert(1, "fc".into());
            } else if s[0] == "norm" {
                s.insert(0, "head".into());
            }
            for part in s.iter_mut() {
                *part = match part.as_str() {
                    "dwconv" => "conv_dw".into(),
                    "pwconv1" => "mlp.fc1".into(),
                    "pwconv2" => "mlp.fc2".into(),
                    other => other.into(),
                };
            }
        }
        Layout::OfficialSwin => {
            if s.iter().any(|p| p == "relative_position_index" || p == "attn_mask") {
                return None;
            }
            if s.len() > 2 && s[0] == "layers" && s[2] == "downsample" {
                let i: usize = s[1].parse().ok()?;
                s[1] = (i + 1).to_string();
            } else if s[0] == "head" {
                s.insert(1, "fc".into());
            }
        }
    }
    Some(s.join("."))
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
    pub layout: Layout,
    pub source: String,
    pub tensors: usize,
    pub dropped: usize,
    pub num_classes: usize,
}

/// Maps a checkpoint to `model`'s names and shapes and writes it (atomically) as
/// safetensors, after loading it strictly into the model.
pub fn convert(from: &Path, model: &str, which: Which, out: &Path) -> Result<ConvertSummary, ConvertError> {
    let (tensors, source) = read_checkpoint(from, which)?;
    let layout = detect_layout(tensors.iter().map(|(n, _)| n.as_str()));
    let mut mapped: HashMap<String, Tensor> = HashMap::new();
    let mut dropped = 0;
    for (name, t) in tensors {
        match map_name(layout, &name) {
            Some(n) => {
                mapped.insert(n, t);
            }
            None => dropped += 1,
        }
    }
    let probe = model_config(model, &ModelOptions::default())?;
    let head = probe.head_names()[1];
    let num_classes = mapped.get(head).map(|t| t.elem_count()).ok_or_else(|| ConvertError::Mismatch {
        path: from.to_path_buf(),
        model: model.to_string(),
        layout: layout.describe(),
        detail: format!("no classifier head '{head}' after mapping (found {} tensors, e.g. {})", mapped.len(), sample(&mapped)),
    })?;
    let cfg = model_config(model, &ModelOptions { num_classes, ..Default::default() })?;
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
        return Err(ConvertError::Mismatch { path: from.to_path_buf(), model: model.to_string(), layout: layout.describe(), detail });
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

    #[test]
    fn official_convnext_names_map_to_timm() {
        let l = Layout::OfficialConvNeXt;
        for (from, to) in [
            ("downsample_layers.0.0.weight", "stem.0.weight"),
            ("downsample_layers.0.1.bias", "stem.1.bias"),
            ("downsample_layers.2.1.weight", "stages.2.downsample.1.weight"),
            ("stages.1.2.dwconv.weight", "stages.1.blocks.2.conv_dw.weight"),
            ("stages.3.0.pwconv1.bias", "stages.3.blocks.0.mlp.fc1.bias"),
            ("module.stages.0.0.pwconv2.weight", "stages.0.blocks.0.mlp.fc2.weight"),
            ("stages.0.0.gamma", "stages.0.blocks.0.gamma"),
            ("norm.weight", "head.norm.weight"),
            ("head.bias", "head.fc.bias"),
        ] {
            assert_eq!(map_name(l, from).as_deref(), Some(to), "{from}");
        }
        assert_eq!(detect_layout(["downsample_layers.0.0.weight", "head.weight"]), l);
    }

    #[test]
    fn official_swin_names_map_to_timm_and_buffers_are_dropped() {
        let l = Layout::OfficialSwin;
        assert_eq!(map_name(l, "layers.0.downsample.reduction.weight").as_deref(), Some("layers.1.downsample.reduction.weight"));
        assert_eq!(map_name(l, "layers.2.blocks.1.attn.relative_position_bias_table").as_deref(), Some("layers.2.blocks.1.attn.relative_position_bias_table"));
        assert_eq!(map_name(l, "head.weight").as_deref(), Some("head.fc.weight"));
        assert_eq!(map_name(l, "layers.1.blocks.1.attn_mask"), None);
        assert_eq!(map_name(l, "layers.1.blocks.0.attn.relative_position_index"), None);
        assert_eq!(detect_layout(["layers.0.blocks.0.attn.relative_position_bias_table", "head.weight"]), l);
        assert_eq!(detect_layout(["layers.0.blocks.0.attn.relative_position_bias_table", "head.fc.weight"]), Layout::Timm);
        assert_eq!(map_name(Layout::Timm, "_orig_mod.blocks.0.attn.qkv.weight").as_deref(), Some("blocks.0.attn.qkv.weight"));
    }
}
