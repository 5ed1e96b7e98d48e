//! The model zoo: names → architecture configs (timm's variants), per-model defaults for
//! preprocessing, and one `Model` type that dispatches `forward` to the architecture.

use crate::convnext::{self, ConvNeXt};
use crate::resnet::{self, BlockKind, ResNet};
use crate::error::{ModelError, Result};
use crate::ops::Ops;
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

/// Architecture description saved in a run's `config.json`: enough to rebuild the model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "family", rename_all = "snake_case")]
pub enum ModelConfig {
    Convnext(convnext::Config),
    Resnet(resnet::Config),
}

/// Options a user may change without changing the architecture's identity.
#[derive(Clone, Debug)]
pub struct ModelOptions {
    pub num_classes: usize,
    pub drop_path_rate: f64,
    /// A small-image stem with this stride (ConvNeXt: 2×2 patchify instead of 4×4;
    /// ResNet: one 3×3 conv instead of 7×7/2 + max-pool). `None`: timm's stem.
    pub stem_stride: Option<usize>,
}

impl Default for ModelOptions {
    fn default() -> Self {
        ModelOptions { num_classes: 1000, drop_path_rate: 0.0, stem_stride: None }
    }
}

/// timm's pretrained-config defaults that matter for preprocessing.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelDefaults {
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub crop_pct: f64,
    pub interpolation: &'static str,
    pub input_size: usize,
}

pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

const CONVNEXT: &[(&str, &[usize], &[usize], bool)] = &[
    ("convnext_atto", &[2, 2, 6, 2], &[40, 80, 160, 320], true),
    ("convnext_femto", &[2, 2, 6, 2], &[48, 96, 192, 384], true),
    ("convnext_pico", &[2, 2, 6, 2], &[64, 128, 256, 512], true),
    ("convnext_nano", &[2, 2, 8, 2], &[80, 160, 320, 640], true),
    ("convnext_tiny", &[3, 3, 9, 3], &[96, 192, 384, 768], false),
    ("convnext_small", &[3, 3, 27, 3], &[96, 192, 384, 768], false),
    ("convnext_base", &[3, 3, 27, 3], &[128, 256, 512, 1024], false),
];

const RESNET: &[(&str, BlockKind, &[usize])] = &[
    ("resnet18", BlockKind::Basic, &[2, 2, 2, 2]),
    ("resnet34", BlockKind::Basic, &[3, 4, 6, 3]),
    ("resnet50", BlockKind::Bottleneck, &[3, 4, 6, 3]),
];

pub fn model_names() -> Vec<&'static str> {
    CONVNEXT.iter().map(|m| m.0).chain(RESNET.iter().map(|m| m.0)).collect()
}

/// timm's pretrained configs: `convnext_*.fb_in1k` (crop 0.875), `resnet*.a1_in1k` (crop 0.95).
pub fn defaults(name: &str) -> ModelDefaults {
    let crop_pct = if name.starts_with("resnet") { 0.95 } else { 0.875 };
    ModelDefaults { mean: IMAGENET_MEAN, std: IMAGENET_STD, crop_pct, interpolation: "bicubic", input_size: 224 }
}

/// The architecture config of a registered model name.
pub fn model_config(name: &str, opts: &ModelOptions) -> Result<ModelConfig> {
    if let Some(&(_, block, layers)) = RESNET.iter().find(|m| m.0 == name) {
        let mut cfg = resnet::Config::new(block, layers);
        cfg.num_classes = opts.num_classes;
        cfg.drop_path_rate = opts.drop_path_rate;
        cfg.small_stem_stride = opts.stem_stride;
        return Ok(ModelConfig::Resnet(cfg));
    }
    let Some(&(_, depths, dims, conv_mlp)) = CONVNEXT.iter().find(|m| m.0 == name) else {
        return Err(ModelError::UnknownModel { name: name.to_string(), available: model_names().join(", ") });
    };
    let mut cfg = convnext::Config::new(depths, dims, conv_mlp);
    cfg.num_classes = opts.num_classes;
    cfg.drop_path_rate = opts.drop_path_rate;
    if let Some(p) = opts.stem_stride {
        cfg.stem_stride = p;
    }
    Ok(ModelConfig::Convnext(cfg))
}

pub enum Model {
    ConvNeXt(ConvNeXt),
    ResNet(ResNet),
}

impl ModelConfig {
    pub fn num_classes(&self) -> usize {
        match self {
            ModelConfig::Convnext(c) => c.num_classes,
            ModelConfig::Resnet(c) => c.num_classes,
        }
    }

    /// Parameters that a fine-tuning run with another number of classes re-initialises.
    pub fn head_names(&self) -> &'static [&'static str] {
        match self {
            ModelConfig::Convnext(_) => &["head.fc.weight", "head.fc.bias"],
            ModelConfig::Resnet(_) => &["fc.weight", "fc.bias"],
        }
    }

    /// Whether the architecture accepts an input of this size (and why not).
    pub fn check_input(&self, name: &str, height: usize, width: usize) -> Result<()> {
        let (min, why) = match self {
            ModelConfig::Convnext(c) => (c.min_input(), format!("stem stride {} and {} stages", c.stem_stride, c.dims.len())),
            ModelConfig::Resnet(c) => (c.min_input(), "its total stride".to_string()),
        };
        if height < min || width < min {
            return Err(ModelError::BadResolution {
                model: name.to_string(),
                height,
                width,
                reason: format!("the smallest input is {min}x{min} ({why})"),
            });
        }
        Ok(())
    }
}

impl Model {
    pub fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        Ok(match cfg {
            ModelConfig::Convnext(c) => Model::ConvNeXt(ConvNeXt::new(vb, c)?),
            ModelConfig::Resnet(c) => Model::ResNet(ResNet::new(vb, c)?),
        })
    }

    /// Logits (N, num_classes) for an NCHW input.
    pub fn forward<O: Ops>(&self, o: &O, x: &O::T) -> candle_core::Result<O::T> {
        match self {
            Model::ConvNeXt(m) => m.forward(o, x),
            Model::ResNet(m) => m.forward(o, x),
        }
    }
}

/// Builds a registered model with its parameters created (and initialised) through `vb`.
pub fn create_model(name: &str, opts: &ModelOptions, vb: VarBuilder) -> Result<(ModelConfig, Model)> {
    let cfg = model_config(name, opts)?;
    let model = Model::new(&cfg, vb)?;
    Ok((cfg, model))
}
