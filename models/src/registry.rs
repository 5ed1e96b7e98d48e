//! The registry: the list of families (each describes itself, see `family.rs`), names →
//! architecture configs, and one `Model` type that dispatches `forward` to the architecture.

use crate::caformer::{self, CaFormer};
use crate::convnext::{self, ConvNeXt};
use crate::cswin::{self, CSWin};
use crate::error::{ModelError, Result};
use crate::family::{Family, Preprocessing};
use crate::pvt_v2::{self, PvtV2};
use crate::resnet::{self, ResNet};
use crate::swin::{self, SwinTransformer};
use crate::vit::{self, VisionTransformer};
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
/// The largest model a config read from a file may describe (the registered models reach
/// 0.09 billion): 2 billion parameters, 8 GB of f32 weights.
const MAX_PARAMS: f64 = 2e9;

/// Every registered family, in the order `et-eval models` lists them.
pub static FAMILIES: [&dyn Family; 7] = [&convnext::FAMILY, &resnet::FAMILY, &vit::FAMILY, &swin::FAMILY, &pvt_v2::FAMILY, &caformer::FAMILY, &cswin::FAMILY];

pub fn model_names() -> Vec<&'static str> {
    FAMILIES.iter().flat_map(|f| f.variants()).collect()
}

pub(crate) fn unknown(name: &str) -> ModelError {
    ModelError::UnknownModel { name: name.to_string(), available: model_names().join(", ") }
}

/// The family of a registered model name.
pub fn family(name: &str) -> Result<&'static dyn Family> {
    FAMILIES.iter().copied().find(|f| f.variants().contains(&name)).ok_or_else(|| unknown(name))
}

/// The architecture config of a registered model name.
pub fn model_config(name: &str, opts: &ModelOptions) -> Result<ModelConfig> {
    family(name)?.config(name, opts)
}

impl ModelConfig {
    /// `self` with the options every family takes: classes and the drop-path rate.
    pub(crate) fn with_common(mut self, opts: &ModelOptions) -> ModelConfig {
        let (classes, rate) = (opts.num_classes, opts.drop_path_rate);
        match &mut self {
            ModelConfig::Convnext(c) => (c.num_classes, c.drop_path_rate) = (classes, rate),
            ModelConfig::Resnet(c) => (c.num_classes, c.drop_path_rate) = (classes, rate),
            ModelConfig::Vit(c) => (c.num_classes, c.drop_path_rate) = (classes, rate),
            ModelConfig::Swin(c) => (c.num_classes, c.drop_path_rate) = (classes, rate),
            ModelConfig::PvtV2(c) => (c.num_classes, c.drop_path_rate) = (classes, rate),
            ModelConfig::Caformer(c) => (c.num_classes, c.drop_path_rate) = (classes, rate),
            ModelConfig::Cswin(c) => (c.num_classes, c.drop_path_rate) = (classes, rate),
        }
        self
    }
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
    /// The family this architecture belongs to.
    pub fn family(&self) -> &'static dyn Family {
        match self {
            ModelConfig::Convnext(_) => &convnext::FAMILY,
            ModelConfig::Resnet(_) => &resnet::FAMILY,
            ModelConfig::Vit(_) => &vit::FAMILY,
            ModelConfig::Swin(_) => &swin::FAMILY,
            ModelConfig::PvtV2(_) => &pvt_v2::FAMILY,
            ModelConfig::Caformer(_) => &caformer::FAMILY,
            ModelConfig::Cswin(_) => &cswin::FAMILY,
        }
    }

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
    pub fn head_names(&self) -> [&'static str; 2] {
        self.family().head_names()
    }

    /// Whether the exported graph can take any height and width (convolutional models).
    pub fn dynamic_input_size(&self) -> bool {
        self.family().dynamic_input_size()
    }

    /// Checks a config read from a file (a run's `config.json`, possibly damaged or crafted)
    /// before any model is built from it: a bad one is an error, never a panic or an
    /// allocation of absurd size.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let classes = self.num_classes();
        if !(1..=1_000_000).contains(&classes) {
            return Err(format!("num_classes {classes} (1..=1000000)"));
        }
        // Each width and depth may be plausible and their product not: a model is refused
        // before a byte of it is allocated.
        let params = self.approx_params();
        if params > MAX_PARAMS {
            return Err(format!("it describes a model of about {:.1} billion parameters, more than the {:.0} billion this tool builds", params / 1e9, MAX_PARAMS / 1e9));
        }
        match self {
            ModelConfig::Convnext(c) => c.validate(),
            ModelConfig::Resnet(c) => c.validate(),
            ModelConfig::Vit(c) => c.validate(),
            ModelConfig::Swin(c) => c.validate(),
            ModelConfig::PvtV2(c) => c.validate(),
            ModelConfig::Caformer(c) => c.validate(),
            ModelConfig::Cswin(c) => c.validate(),
        }
    }

    /// Parameters within a factor of about two: a MetaFormer-style block of width d has about
    /// 12·d² weights (attention 4·d², MLP 8·d²), a ResNet block 17–18·w², plus the classifier.
    pub fn approx_params(&self) -> f64 {
        let blocks = |depths: &[usize], dims: &[usize]| depths.iter().zip(dims).map(|(&n, &d)| 12.0 * n as f64 * (d as f64).powi(2)).sum::<f64>();
        let widths = |base: usize, n: usize| (0..n).map(|i| base << i.min(16)).collect::<Vec<usize>>();
        let (body, last) = match self {
            ModelConfig::Convnext(c) => (blocks(&c.depths, &c.dims), c.dims.last().copied().unwrap_or(0)),
            ModelConfig::Resnet(c) => {
                // A basic block of width w holds 18·w², a bottleneck 17·w².
                let per = if c.block == crate::resnet::BlockKind::Basic { 18.0 } else { 17.0 };
                let body = c.layers.iter().zip([64.0f64, 128.0, 256.0, 512.0]).map(|(&n, w)| per * n as f64 * w * w).sum();
                (body, if c.block == crate::resnet::BlockKind::Basic { 512 } else { 2048 })
            }
            ModelConfig::Vit(c) => (12.0 * c.depth as f64 * (c.embed_dim as f64).powi(2) * c.mlp_ratio.max(1.0) / 4.0, c.embed_dim),
            ModelConfig::Swin(c) => {
                let w = widths(c.embed_dim, c.depths.len());
                (blocks(&c.depths, &w), w.last().copied().unwrap_or(0))
            }
            ModelConfig::PvtV2(c) => (blocks(&c.depths, &c.embed_dims), c.embed_dims.last().copied().unwrap_or(0)),
            ModelConfig::Caformer(c) => (blocks(&c.depths, &c.dims), c.dims.last().copied().unwrap_or(0)),
            ModelConfig::Cswin(c) => {
                let w = widths(c.embed_dim, c.depths.len());
                (blocks(&c.depths, &w), w.last().copied().unwrap_or(0))
            }
        };
        body + (last as f64 + 1.0) * self.num_classes() as f64
    }

    /// Whether the architecture accepts an input of this size (and why not).
    pub fn check_input(&self, name: &str, height: usize, width: usize) -> Result<()> {
        let why = match self {
            ModelConfig::Convnext(c) => c.check_input(height, width),
            ModelConfig::Resnet(c) => c.check_input(height, width),
            ModelConfig::Vit(c) => c.check_input(height, width),
            ModelConfig::Swin(c) => c.check_input(height, width),
            ModelConfig::PvtV2(c) => c.check_input(height, width),
            ModelConfig::Caformer(c) => c.check_input(height, width),
            ModelConfig::Cswin(c) => c.check_input(height, width),
        };
        why.map_err(|reason| ModelError::BadResolution { model: name.to_string(), height, width, reason })
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

/// Activation sizes of one image through a model (elements, f32 unless computed otherwise).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Activations {
    /// The largest single activation (or attention score matrix).
    pub largest: u64,
    /// All activations of a forward pass: what a training step keeps for its backward pass.
    pub total: u64,
}

impl Activations {
    /// Bytes one image needs in an evaluation forward pass: its input and six times the
    /// largest activation (a block's branch and its input alive at once; measured: 5x for
    /// ConvNeXt-atto at 1024 and 2048 px).
    pub fn eval_bytes(&self, height: usize, width: usize) -> u64 {
        4 * (3 * (height * width) as u64 + 6 * self.largest)
    }

    /// Bytes one image needs in a training step: the activations kept for the backward
    /// pass (f32). With the weights, the optimiser state and the EMA this came within
    /// 0.8–1.3x of the measured peak memory of every family's step (docs/performance.md).
    pub fn train_bytes(&self) -> u64 {
        4 * self.total
    }
}

/// The activations of one image of `height` × `width` through `cfg`'s model (shapes only:
/// a forward pass of the FLOP counter over zero-filled parameters).
pub fn activations(cfg: &ModelConfig, height: usize, width: usize) -> Result<Activations> {
    let ps = crate::params::ParamStore::zeros();
    let model = Model::new(cfg, ps.var_builder(candle_core::DType::F32, &candle_core::Device::Cpu))?;
    let counter = et_ops::flops::FlopCounter::new();
    model.forward(&counter, &vec![1, 3, height, width])?;
    Ok(Activations { largest: counter.largest_activation(), total: counter.total_activations() })
}

/// What `et-eval models` lists.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    pub name: &'static str,
    pub family: &'static str,
    pub params: usize,
    /// Multiply-accumulates of one 224×224 image (the papers' "FLOPs").
    pub macs_224: u64,
    pub preprocessing: Preprocessing,
}

/// Parameters and FLOPs of a registered model (1000 classes, timm's stem).
pub fn describe(name: &str) -> Result<ModelInfo> {
    let fam = family(name)?;
    let name = fam.variants().into_iter().find(|n| *n == name).ok_or_else(|| unknown(name))?;
    let cfg = fam.config(name, &ModelOptions::default())?;
    let ps = crate::params::ParamStore::zeros();
    let model = Model::new(&cfg, ps.var_builder(candle_core::DType::F32, &candle_core::Device::Cpu))?;
    let counter = et_ops::flops::FlopCounter::new();
    model.forward(&counter, &vec![1, 3, 224, 224])?;
    Ok(ModelInfo { name, family: fam.name(), params: ps.num_trainable(), macs_224: counter.macs(), preprocessing: fam.preprocessing() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_size_estimate_is_close_for_every_registered_model() {
        for name in model_names() {
            let exact = describe(name).unwrap().params as f64;
            let est = model_config(name, &ModelOptions::default()).unwrap().approx_params();
            assert!(est / exact > 0.4 && est / exact < 2.5, "{name}: estimate {est:.3e}, exact {exact:.3e}");
        }
        let mut huge = model_config("convnext_atto", &ModelOptions::default()).unwrap();
        if let ModelConfig::Convnext(c) = &mut huge {
            c.dims = vec![8192; 4];
            c.depths = vec![200; 4];
        }
        assert!(huge.validate().unwrap_err().contains("billion parameters"));
    }

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
