//! The model zoo: names → architecture configs (timm's variants), per-model defaults for
//! preprocessing, and one `Model` type that dispatches `forward` to the architecture.

use crate::caformer::{self, CaFormer};
use crate::convnext::{self, ConvNeXt};
use crate::cswin::{self, CSWin};
use crate::pvt_v2::{self, PvtV2};
use crate::resnet::{self, BlockKind, ResNet};
use crate::swin::{self, SwinTransformer};
use crate::vit::{self, VisionTransformer};
use crate::error::{ModelError, Result};
use et_ops::Ops;
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

/// Architecture description saved in a run's `config.json`: enough to rebuild the model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "family", rename_all = "snake_case")]
pub enum ModelConfig {
    Convnext(convnext::Config),
    Resnet(resnet::Config),
    Vit(vit::Config),
    Swin(swin::Config),
    PvtV2(pvt_v2::Config),
    Caformer(caformer::Config),
    Cswin(cswin::Config),
}

/// Options a user may change without changing the architecture's identity.
#[derive(Clone, Debug)]
pub struct ModelOptions {
    pub num_classes: usize,
    pub drop_path_rate: f64,
    /// A small-image stem with this stride (ConvNeXt: 2×2 patchify instead of 4×4;
    /// ResNet: one 3×3 conv instead of 7×7/2 + max-pool; ViT: the patch size). `None`:
    /// timm's stem.
    pub stem_stride: Option<usize>,
    /// Input size a ViT's position embedding (a Swin's windows) is laid out for [default: 224].
    pub img_size: Option<usize>,
}

impl Default for ModelOptions {
    fn default() -> Self {
        ModelOptions { num_classes: 1000, drop_path_rate: 0.0, stem_stride: None, img_size: None }
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

const VIT: &[(&str, usize, usize, usize)] = &[
    ("deit_tiny_patch16_224", 192, 12, 3),
    ("deit_small_patch16_224", 384, 12, 6),
    ("deit_base_patch16_224", 768, 12, 12),
];

/// (name, embed_dim, depths, heads): timm's `swin_*_patch4_window7_224`.
const SWIN: &[(&str, usize, &[usize], &[usize])] = &[
    ("swin_tiny_patch4_window7_224", 96, &[2, 2, 6, 2], &[3, 6, 12, 24]),
    ("swin_small_patch4_window7_224", 96, &[2, 2, 18, 2], &[3, 6, 12, 24]),
    ("swin_base_patch4_window7_224", 128, &[2, 2, 18, 2], &[4, 8, 16, 32]),
];

/// (name, depths, embed_dims, heads): timm's `pvt_v2_b*`.
const PVT_V2: &[(&str, &[usize], &[usize], &[usize])] = &[
    ("pvt_v2_b0", &[2, 2, 2, 2], &[32, 64, 160, 256], &[1, 2, 5, 8]),
    ("pvt_v2_b1", &[2, 2, 2, 2], &[64, 128, 320, 512], &[1, 2, 5, 8]),
    ("pvt_v2_b2", &[3, 4, 6, 3], &[64, 128, 320, 512], &[1, 2, 5, 8]),
];

/// (name, depths, dims): timm's `caformer_*`.
const CAFORMER: &[(&str, &[usize], &[usize])] = &[
    ("caformer_s18", &[3, 3, 9, 3], &[64, 128, 320, 512]),
    ("caformer_s36", &[3, 12, 18, 3], &[64, 128, 320, 512]),
    ("caformer_m36", &[3, 12, 18, 3], &[96, 192, 384, 576]),
];

/// (name, embed_dim, depths, heads): the official CSWin repository's 224 models (not in
/// timm; EfficientTrain uses these names).
const CSWIN: &[(&str, usize, &[usize], &[usize])] = &[
    ("CSWin_64_12211_tiny_224", 64, &[1, 2, 21, 1], &[2, 4, 8, 16]),
    ("CSWin_64_24322_small_224", 64, &[2, 4, 32, 2], &[2, 4, 8, 16]),
    ("CSWin_96_24322_base_224", 96, &[2, 4, 32, 2], &[4, 8, 16, 32]),
];

pub fn model_names() -> Vec<&'static str> {
    let families: [&mut dyn Iterator<Item = &'static str>; 7] = [
        &mut CONVNEXT.iter().map(|m| m.0),
        &mut RESNET.iter().map(|m| m.0),
        &mut VIT.iter().map(|m| m.0),
        &mut SWIN.iter().map(|m| m.0),
        &mut PVT_V2.iter().map(|m| m.0),
        &mut CAFORMER.iter().map(|m| m.0),
        &mut CSWIN.iter().map(|m| m.0),
    ];
    families.into_iter().flatten().collect()
}

/// Whether `ModelOptions::stem_stride` is implemented for this model (ConvNeXt, ResNet,
/// DeiT, Swin); PVT v2, CAFormer and CSWin only have timm's / the official stem.
pub fn has_small_stem(name: &str) -> bool {
    !(PVT_V2.iter().any(|m| m.0 == name) || CAFORMER.iter().any(|m| m.0 == name) || CSWIN.iter().any(|m| m.0 == name))
}

fn no_small_stem(name: &str, opts: &ModelOptions) -> Result<()> {
    match opts.stem_stride {
        Some(s) => Err(ModelError::UnsupportedOption {
            model: name.to_string(),
            option: format!("a small-image stem (stem stride {s})"),
            reason: "only timm's stem is implemented; its inputs must be at least 32x32".to_string(),
        }),
        None => Ok(()),
    }
}

/// timm's pretrained configs: `convnext_*.fb_in1k` (crop 0.875), `resnet*.a1_in1k` (0.95),
/// `deit_*.fb_in1k`, `swin_*.ms_in1k`, `pvt_v2_*.in1k` (0.9), `caformer_*.sail_in1k` (1.0);
/// CSWin's official `cswin_224` config (0.9).
pub fn defaults(name: &str) -> ModelDefaults {
    let crop_pct = if name.starts_with("caformer") {
        1.0
    } else if name.starts_with("resnet") {
        0.95
    } else if name.starts_with("deit") || name.starts_with("swin") || name.starts_with("pvt_v2") || name.starts_with("CSWin") {
        0.9
    } else {
        0.875
    };
    ModelDefaults { mean: IMAGENET_MEAN, std: IMAGENET_STD, crop_pct, interpolation: "bicubic", input_size: 224 }
}

/// The architecture config of a registered model name.
pub fn model_config(name: &str, opts: &ModelOptions) -> Result<ModelConfig> {
    if let Some(&(_, dim, depth, heads)) = VIT.iter().find(|m| m.0 == name) {
        let mut cfg = vit::Config::new(dim, depth, heads);
        cfg.num_classes = opts.num_classes;
        cfg.drop_path_rate = opts.drop_path_rate;
        cfg.patch_size = opts.stem_stride.unwrap_or(16);
        cfg.img_size = opts.img_size.unwrap_or(224);
        if cfg.img_size % cfg.patch_size != 0 {
            return Err(ModelError::BadResolution {
                model: name.to_string(),
                height: cfg.img_size,
                width: cfg.img_size,
                reason: format!("the base size must be a multiple of the patch size {}", cfg.patch_size),
            });
        }
        return Ok(ModelConfig::Vit(cfg));
    }
    if let Some(&(_, dim, depths, heads)) = SWIN.iter().find(|m| m.0 == name) {
        let mut cfg = swin::Config::new(dim, depths, heads);
        cfg.num_classes = opts.num_classes;
        cfg.drop_path_rate = opts.drop_path_rate;
        cfg.patch_size = opts.stem_stride.unwrap_or(4);
        cfg.img_size = opts.img_size.unwrap_or(224);
        return Ok(ModelConfig::Swin(cfg));
    }
    if let Some(&(_, depths, dims, heads)) = PVT_V2.iter().find(|m| m.0 == name) {
        no_small_stem(name, opts)?;
        let mut cfg = pvt_v2::Config::new(depths, dims, heads);
        cfg.num_classes = opts.num_classes;
        cfg.drop_path_rate = opts.drop_path_rate;
        return Ok(ModelConfig::PvtV2(cfg));
    }
    if let Some(&(_, depths, dims)) = CAFORMER.iter().find(|m| m.0 == name) {
        no_small_stem(name, opts)?;
        let mut cfg = caformer::Config::new(depths, dims);
        cfg.num_classes = opts.num_classes;
        cfg.drop_path_rate = opts.drop_path_rate;
        return Ok(ModelConfig::Caformer(cfg));
    }
    if let Some(&(_, dim, depths, heads)) = CSWIN.iter().find(|m| m.0 == name) {
        no_small_stem(name, opts)?;
        let mut cfg = cswin::Config::new(dim, depths, heads);
        cfg.num_classes = opts.num_classes;
        cfg.drop_path_rate = opts.drop_path_rate;
        return Ok(ModelConfig::Cswin(cfg));
    }
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
    Vit(VisionTransformer),
    Swin(SwinTransformer),
    PvtV2(PvtV2),
    CaFormer(CaFormer),
    CSWin(CSWin),
}

impl ModelConfig {
    pub fn num_classes(&self) -> usize {
        match self {
            ModelConfig::Convnext(c) => c.num_classes,
            ModelConfig::Resnet(c) => c.num_classes,
            ModelConfig::Vit(c) => c.num_classes,
            ModelConfig::Swin(c) => c.num_classes,
            ModelConfig::PvtV2(c) => c.num_classes,
            ModelConfig::Caformer(c) => c.num_classes,
            ModelConfig::Cswin(c) => c.num_classes,
        }
    }

    /// Parameters that a fine-tuning run with another number of classes re-initialises.
    pub fn head_names(&self) -> &'static [&'static str] {
        match self {
            ModelConfig::Convnext(_) => &["head.fc.weight", "head.fc.bias"],
            ModelConfig::Resnet(_) => &["fc.weight", "fc.bias"],
            ModelConfig::Vit(_) | ModelConfig::PvtV2(_) | ModelConfig::Cswin(_) => &["head.weight", "head.bias"],
            ModelConfig::Swin(_) => &["head.fc.weight", "head.fc.bias"],
            ModelConfig::Caformer(_) => &["head.fc.fc2.weight", "head.fc.fc2.bias"],
        }
    }

    /// Whether the exported graph can take any height and width (convolutional models).
    /// ViT, Swin and CSWin graphs are recorded for one size: the resampled position
    /// embedding, the window partition, padding, masks and stripe widths depend on it.
    pub fn dynamic_input_size(&self) -> bool {
        !matches!(self, ModelConfig::Vit(_) | ModelConfig::Swin(_) | ModelConfig::Cswin(_))
    }

    /// Whether the architecture accepts an input of this size (and why not).
    pub fn check_input(&self, name: &str, height: usize, width: usize) -> Result<()> {
        let (min, why) = match self {
            ModelConfig::Convnext(c) => (c.min_input(), format!("stem stride {} and {} stages", c.stem_stride, c.dims.len())),
            ModelConfig::Resnet(c) => (c.min_input(), "its total stride".to_string()),
            ModelConfig::PvtV2(c) => (c.min_input(), format!("stride-4 stem and a {0}x{0} spatial reduction in the first stage", c.sr_ratios[0])),
            ModelConfig::Caformer(c) => (c.min_input(), "its total stride".to_string()),
            ModelConfig::Cswin(_) => {
                if height != width || height % 32 != 0 {
                    return Err(ModelError::BadResolution {
                        model: name.to_string(),
                        height,
                        width,
                        reason: "CSWin takes square inputs whose side is a multiple of 32 (stripe widths 1, 2, side/32, side/32), e.g. 96, 128, 160, 192, 224".to_string(),
                    });
                }
                (32, "its total stride".to_string())
            }
            ModelConfig::Vit(c) => {
                let p = c.patch_size;
                if height % p != 0 || width % p != 0 {
                    return Err(ModelError::BadResolution {
                        model: name.to_string(),
                        height,
                        width,
                        reason: format!("height and width must be multiples of the patch size {p}"),
                    });
                }
                (p, format!("patch size {p}"))
            }
            ModelConfig::Swin(c) => {
                let s = c.stride();
                if height % s != 0 || width % s != 0 {
                    return Err(ModelError::BadResolution {
                        model: name.to_string(),
                        height,
                        width,
                        reason: format!("height and width must be multiples of {s} (patch size {} × 2^{} patch merges), e.g. 96, 128, 160, 192, 224", c.patch_size, c.depths.len() - 1),
                    });
                }
                (s, format!("total stride {s}"))
            }
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
            ModelConfig::Vit(c) => Model::Vit(VisionTransformer::new(vb, c)?),
            ModelConfig::Swin(c) => Model::Swin(SwinTransformer::new(vb, c)?),
            ModelConfig::PvtV2(c) => Model::PvtV2(PvtV2::new(vb, c)?),
            ModelConfig::Caformer(c) => Model::CaFormer(CaFormer::new(vb, c)?),
            ModelConfig::Cswin(c) => Model::CSWin(CSWin::new(vb, c)?),
        })
    }

    /// Logits (N, num_classes) for an NCHW input.
    pub fn forward<O: Ops>(&self, o: &O, x: &O::T) -> candle_core::Result<O::T> {
        match self {
            Model::ConvNeXt(m) => m.forward(o, x),
            Model::ResNet(m) => m.forward(o, x),
            Model::Vit(m) => m.forward(o, x),
            Model::Swin(m) => m.forward(o, x),
            Model::PvtV2(m) => m.forward(o, x),
            Model::CaFormer(m) => m.forward(o, x),
            Model::CSWin(m) => m.forward(o, x),
        }
    }
}

/// Builds a registered model with its parameters created (and initialised) through `vb`.
pub fn create_model(name: &str, opts: &ModelOptions, vb: VarBuilder) -> Result<(ModelConfig, Model)> {
    let cfg = model_config(name, opts)?;
    let model = Model::new(&cfg, vb)?;
    Ok((cfg, model))
}

/// What `et-eval models` lists.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    pub name: &'static str,
    pub params: usize,
    /// Multiply-accumulates of one 224×224 image (the papers' "FLOPs").
    pub macs_224: u64,
    pub defaults: ModelDefaults,
}

/// Parameters and FLOPs of a registered model (1000 classes, timm's stem).
pub fn describe(name: &str) -> Result<ModelInfo> {
    let name = model_names().into_iter().find(|n| *n == name).ok_or_else(|| ModelError::UnknownModel { name: name.to_string(), available: model_names().join(", ") })?;
    let cfg = model_config(name, &ModelOptions::default())?;
    let ps = crate::params::ParamStore::zeros();
    let model = Model::new(&cfg, ps.var_builder(candle_core::DType::F32, &candle_core::Device::Cpu))?;
    let counter = et_ops::flops::FlopCounter::new();
    model.forward(&counter, &vec![1, 3, 224, 224])?;
    Ok(ModelInfo { name, params: ps.num_trainable(), macs_224: counter.macs(), defaults: defaults(name) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flops_match_published_numbers() {
        // GMACs at 224 from timm's model cards / the papers (ConvNeXt-T 4.5G, ResNet-50 4.1G,
        // DeiT-S 4.6G, Swin-T/S/B 4.5/8.7/15.4G, PVTv2-B0/B1/B2 0.6/2.1/4.0G, CAFormer-S18/
        // S36/M36 4.1/8.0/13.2G, CSWin-T/S/B 4.3/6.9/15.0G; the PVT and
        // CAFormer values to two decimals from torch.utils.flop_counter on timm 1.0.31, /2).
        let published = [
            ("convnext_atto", 0.55),
            ("convnext_tiny", 4.47),
            ("resnet18", 1.82),
            ("resnet50", 4.11),
            ("deit_tiny_patch16_224", 1.26),
            ("deit_small_patch16_224", 4.61),
            ("swin_tiny_patch4_window7_224", 4.51),
            ("swin_small_patch4_window7_224", 8.77),
            ("swin_base_patch4_window7_224", 15.47),
            ("pvt_v2_b0", 0.57),
            ("pvt_v2_b1", 2.11),
            ("pvt_v2_b2", 4.03),
            ("caformer_s18", 4.11),
            ("caformer_s36", 7.97),
            ("caformer_m36", 13.24),
            ("CSWin_64_12211_tiny_224", 4.3),
            ("CSWin_64_24322_small_224", 6.9),
            ("CSWin_96_24322_base_224", 15.0),
        ];
        for (name, gmacs) in published {
            let got = describe(name).unwrap().macs_224 as f64 / 1e9;
            assert!((got - gmacs).abs() / gmacs < 0.03, "{name}: {got:.3} GMACs, published {gmacs}");
        }
        assert!(describe("nope").is_err());
    }
}
