//! ConvNeXt ([Liu et al., 2022](https://arxiv.org/abs/2201.03545); reference code
//! facebookresearch/ConvNeXt, timm's `convnext.py`) with timm's module names, so timm
//! checkpoints load as-is.
//!
//! Both block flavours compute in NCHW: timm's `conv_mlp=False` blocks (permute →
//! LayerNorm → Linear → GELU → Linear → permute) equal channel LayerNorm + 1×1 convs with
//! the linear weights, which avoids two transposes per block. Weights keep timm's shapes.

use crate::family::{About, Family, LayerIds, OfficialNames, Preprocessing, Recipe, captures, check_min_input, check_rate, check_stages};
use crate::layers::{Conv2d, LayerNorm, drop_path_rate};
use crate::registry::{unknown, ModelConfig, ModelOptions};
use et_ops::{ConvGeom, Ops};
use candle_core::{Result, Tensor};
use candle_nn::{Init, VarBuilder};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Config {
    pub depths: Vec<usize>,
    pub dims: Vec<usize>,
    /// Stem kernel = stride. timm: 4. For 32-px images we use 2, so the last stage still
    /// sees a 2×2 map; weight names are unchanged. (This is not timm's `patch_size=2`,
    /// which keeps a total stride of 32 by adding a stride-2 downsample to stage 0.)
    pub stem_stride: usize,
    /// timm's `conv_mlp`: MLP weights stored as 1×1 convs (atto…nano) or linears (tiny…).
    pub conv_mlp: bool,
    pub kernel_size: usize,
    pub ls_init_value: f64,
    pub drop_path_rate: f64,
    pub in_chans: usize,
    pub num_classes: usize,
}

impl Config {
    pub fn new(depths: &[usize], dims: &[usize], conv_mlp: bool) -> Self {
        Config {
            depths: depths.to_vec(),
            dims: dims.to_vec(),
            stem_stride: 4,
            conv_mlp,
            kernel_size: 7,
            ls_init_value: 1e-6,
            drop_path_rate: 0.0,
            in_chans: 3,
            num_classes: 1000,
        }
    }

    /// Smallest input side: every downsampling must see at least a 2×2 map.
    pub fn min_input(&self) -> usize {
        self.stem_stride * (1 << (self.dims.len() - 1))
    }

    /// Whether an input of this size fits, and why not.
    pub fn check_input(&self, height: usize, width: usize) -> std::result::Result<(), String> {
        check_min_input(height, width, self.min_input(), &format!("stem stride {} and {} stages", self.stem_stride, self.dims.len()))
    }

    /// A config read from a file is checked before a model is built from it.
    pub fn validate(&self) -> std::result::Result<(), String> {
        check_stages(&self.depths, &self.dims)?;
        if !(1..=16).contains(&self.stem_stride) || self.kernel_size % 2 == 0 || self.in_chans == 0 {
            return Err(format!("stem_stride {} (1..=16), kernel_size {} (odd) and in_chans {} (≥ 1) are out of range", self.stem_stride, self.kernel_size, self.in_chans));
        }
        check_rate(self.drop_path_rate)
    }
}

const LN_EPS: f64 = 1e-6;

struct Block {
    conv_dw: Conv2d,
    norm: LayerNorm,
    fc1: Conv2d,
    fc2: Conv2d,
    gamma: Option<Tensor>,
    drop_path: f64,
}

impl Block {
    fn new(vb: VarBuilder, dim: usize, cfg: &Config, drop_path: f64) -> Result<Self> {
        let k = cfg.kernel_size;
        let geom = ConvGeom { stride: 1, padding: k / 2, groups: dim };
        let conv_dw = Conv2d::new(vb.pp("conv_dw"), dim, dim, k, geom, true)?;
        let norm = LayerNorm::new(vb.pp("norm"), dim, LN_EPS)?;
        let (fc1, fc2) = if cfg.conv_mlp {
            let pw = ConvGeom { stride: 1, padding: 0, groups: 1 };
            (Conv2d::new(vb.pp("mlp.fc1"), dim, 4 * dim, 1, pw, true)?, Conv2d::new(vb.pp("mlp.fc2"), 4 * dim, dim, 1, pw, true)?)
        } else {
            (Conv2d::pointwise_from_linear(vb.pp("mlp.fc1"), dim, 4 * dim)?, Conv2d::pointwise_from_linear(vb.pp("mlp.fc2"), 4 * dim, dim)?)
        };
        let gamma = if cfg.ls_init_value > 0.0 { Some(vb.get_with_hints(dim, "gamma", Init::Const(cfg.ls_init_value))?) } else { None };
        Ok(Block { conv_dw, norm, fc1, fc2, gamma, drop_path })
    }

    fn forward<O: Ops>(&self, o: &O, x: &O::T) -> Result<O::T> {
        let y = self.conv_dw.forward(o, x)?;
        let y = self.norm.forward_channels(o, &y)?;
        let y = o.gelu(&self.fc1.forward(o, &y)?)?;
        let mut y = self.fc2.forward(o, &y)?;
        if let Some(g) = &self.gamma {
            y = o.scale_channels(&y, g)?;
        }
        o.add(&o.drop_path(&y, self.drop_path)?, x)
    }
}

struct Stage {
    downsample: Option<(LayerNorm, Conv2d)>,
    blocks: Vec<Block>,
}

pub struct ConvNeXt {
    pub config: Config,
    stem: (Conv2d, LayerNorm),
    stages: Vec<Stage>,
    head_norm: LayerNorm,
    head_fc: crate::layers::Linear,
}

impl ConvNeXt {
    pub fn new(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        let p = cfg.stem_stride;
        let stem_geom = ConvGeom { stride: p, padding: 0, groups: 1 };
        let stem = (
            Conv2d::new(vb.pp("stem.0"), cfg.in_chans, cfg.dims[0], p, stem_geom, true)?,
            LayerNorm::new(vb.pp("stem.1"), cfg.dims[0], LN_EPS)?,
        );
        let total: usize = cfg.depths.iter().sum();
        let rate = |i: usize| drop_path_rate(cfg.drop_path_rate, i, total);
        let mut stages = Vec::new();
        let mut block_idx = 0;
        for (i, (&depth, &dim)) in cfg.depths.iter().zip(&cfg.dims).enumerate() {
            let vs = vb.pp(format!("stages.{i}"));
            let downsample = if i > 0 {
                let prev = cfg.dims[i - 1];
                let geom = ConvGeom { stride: 2, padding: 0, groups: 1 };
                Some((LayerNorm::new(vs.pp("downsample.0"), prev, LN_EPS)?, Conv2d::new(vs.pp("downsample.1"), prev, dim, 2, geom, true)?))
            } else {
                None
            };
            let mut blocks = Vec::with_capacity(depth);
            for j in 0..depth {
                blocks.push(Block::new(vs.pp(format!("blocks.{j}")), dim, cfg, rate(block_idx))?);
                block_idx += 1;
            }
            stages.push(Stage { downsample, blocks });
        }
        let last = *cfg.dims.last().unwrap_or(&0);
        let head_norm = LayerNorm::new(vb.pp("head.norm"), last, LN_EPS)?;
        let head_fc = crate::layers::Linear::new(vb.pp("head.fc"), last, cfg.num_classes, true)?;
        Ok(ConvNeXt { config: cfg.clone(), stem, stages, head_norm, head_fc })
    }

    /// Pooled, normalised features (N, C).
    pub fn forward_features<O: Ops>(&self, o: &O, x: &O::T) -> Result<O::T> {
        let mut x = self.stem.0.forward(o, x)?;
        x = self.stem.1.forward_channels(o, &x)?;
        for stage in &self.stages {
            if let Some((norm, conv)) = &stage.downsample {
                x = conv.forward(o, &norm.forward_channels(o, &x)?)?;
            }
            for block in &stage.blocks {
                x = block.forward(o, &x)?;
            }
        }
        let x = o.global_avg_pool(&x)?;
        let x = self.head_norm.forward_channels(o, &x)?;
        o.flatten(&x)
    }

    pub fn forward<O: Ops>(&self, o: &O, x: &O::T) -> Result<O::T> {
        let f = self.forward_features(o, x)?;
        self.head_fc.forward(o, &f)
    }
}

/// A registered variant: timm's `convnext_*` (atto…nano store their MLP as 1×1 convs).
struct Variant {
    name: &'static str,
    depths: &'static [usize],
    dims: &'static [usize],
    conv_mlp: bool,
    /// Drop-path rate of the official 300-epoch recipe (ConvNeXt paper; atto…nano: timm's).
    drop_path: f64,
}

const VARIANTS: &[Variant] = &[
    Variant { name: "convnext_atto", depths: &[2, 2, 6, 2], dims: &[40, 80, 160, 320], conv_mlp: true, drop_path: 0.0 },
    Variant { name: "convnext_femto", depths: &[2, 2, 6, 2], dims: &[48, 96, 192, 384], conv_mlp: true, drop_path: 0.0 },
    Variant { name: "convnext_pico", depths: &[2, 2, 6, 2], dims: &[64, 128, 256, 512], conv_mlp: true, drop_path: 0.1 },
    Variant { name: "convnext_nano", depths: &[2, 2, 8, 2], dims: &[80, 160, 320, 640], conv_mlp: true, drop_path: 0.1 },
    Variant { name: "convnext_tiny", depths: &[3, 3, 9, 3], dims: &[96, 192, 384, 768], conv_mlp: false, drop_path: 0.1 },
    Variant { name: "convnext_small", depths: &[3, 3, 27, 3], dims: &[96, 192, 384, 768], conv_mlp: false, drop_path: 0.4 },
    Variant { name: "convnext_base", depths: &[3, 3, 27, 3], dims: &[128, 256, 512, 1024], conv_mlp: false, drop_path: 0.5 },
];

fn variant(name: &str) -> Option<&'static Variant> {
    VARIANTS.iter().find(|v| v.name == name)
}

pub struct ConvNeXtFamily;
pub static FAMILY: ConvNeXtFamily = ConvNeXtFamily;

static ABOUT: About = About {
    name: "ConvNeXt", paper: "https://arxiv.org/abs/2201.03545",
    code: "https://github.com/facebookresearch/ConvNeXt (timm: timm/models/convnext.py)",
    preprocessing: Preprocessing::imagenet(0.875), // timm's convnext_*.fb_in1k
    head: ["head.fc.weight", "head.fc.bias"], small_image_stem: Some(2), dynamic_input_size: true,
    etpp_resolutions: [160, 160, 160, 160, 160, 160, 224, 224, 224, 224],
};

impl Family for ConvNeXtFamily {
    fn about(&self) -> &'static About { &ABOUT }
    fn variants(&self) -> Vec<&'static str> { VARIANTS.iter().map(|v| v.name).collect() }
    fn config(&self, name: &str, opts: &ModelOptions) -> crate::error::Result<ModelConfig> {
        let v = variant(name).ok_or_else(|| unknown(name))?;
        let mut cfg = Config::new(v.depths, v.dims, v.conv_mlp);
        cfg.stem_stride = opts.stem_stride.unwrap_or(cfg.stem_stride);
        Ok(ModelConfig::Convnext(cfg).with_common(opts))
    }
    /// The official `get_num_layer_for_convnext` (as EfficientTrain's optim_factory.py): 12
    /// layers, stage 3's blocks three to a layer, the head 13.
    fn layer_ids(&self, names: &[String]) -> LayerIds {
        let id = |n: &str| -> usize {
            if n.starts_with("stem.") {
                return 0;
            }
            let Some(s) = captures(n, &["stages."]).map(|v| v[0] as usize) else { return 13 };
            let rest = &n[format!("stages.{s}.").len()..];
            if rest.starts_with("downsample") {
                return if s == 3 { 12 } else { s + 1 };
            }
            match (s, captures(rest, &["blocks."])) {
                (0 | 1, _) => s + 1,
                (2, Some(b)) => 3 + b[0] as usize / 3,
                (3, _) => 12,
                _ => 13,
            }
        };
        LayerIds { ids: names.iter().map(|n| id(n)).collect(), max: 13 }
    }
    fn official_names(&self) -> Option<OfficialNames> {
        Some(OfficialNames { layout: "official ConvNeXt", detect: |names| names.iter().any(|n| n.contains("downsample_layers.")), map: official_name })
    }
    /// ET++'s ConvNeXt scripts: the shared recipe with an EMA of decay 0.9999.
    fn recipe(&self, name: &str) -> Option<Recipe> {
        let v = variant(name)?;
        Some(Recipe { ema_decay: Some(0.9999), ..Recipe::etpp(v.drop_path, "ConvNeXt (Liu et al. 2022) as ET++'s ConvNeXt scripts train it") })
    }
}

/// facebookresearch/ConvNeXt names → timm's (timm's `checkpoint_filter_fn`):
/// `downsample_layers.0` is the stem, `downsample_layers.i` stage i's downsample, blocks
/// sit directly under `stages.i`, `dwconv`/`pwconv1`/`pwconv2` are `conv_dw`/`mlp.fc1`/
/// `mlp.fc2`, and the final norm and head are `head.norm` / `head.fc`.
fn official_name(name: &str) -> Option<String> {
    let mut s: Vec<String> = name.split('.').map(str::to_string).collect();
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
    Some(s.join("."))
}

#[cfg(test)]
mod tests {
    use super::*;
    use et_kernels::testing::{assert_every_parameter_learns, assert_tape_matches_graph, seeded};
    use et_kernels::CandleOps;
    use crate::params::ParamStore;
    use candle_core::{DType, Device};

    fn tiny(patch: usize) -> Config {
        let mut c = Config::new(&[1, 1, 2, 1], &[8, 16, 24, 32], true);
        c.stem_stride = patch;
        c.num_classes = 5;
        c.drop_path_rate = 0.1;
        c
    }

    #[test]
    fn every_trainable_parameter_gets_a_gradient() -> candle_core::Result<()> {
        for (conv_mlp, size) in [(true, 24), (false, 32)] {
            let mut cfg = tiny(2);
            cfg.conv_mlp = conv_mlp;
            // A non-trivial layer scale, so that gradients reach through every branch.
            cfg.ls_init_value = 0.5;
            let ps = ParamStore::new(1);
            let model = ConvNeXt::new(ps.var_builder(DType::F32, &Device::Cpu), &cfg)?;
            let x = seeded(&[3, 3, size, size], 2, &Device::Cpu, DType::F32)?;
            let y = model.forward(&CandleOps::train(7), &x)?;
            assert_eq!(y.dims(), &[3, 5]);
            assert_every_parameter_learns(&ps.trainable(), &y)?;
            assert_tape_matches_graph(&ps.trainable(), 7, |o| model.forward(o, &x))?;
        }
        Ok(())
    }

    #[test]
    fn timm_names_and_parameter_count() {
        let ps = ParamStore::new(0);
        let cfg = Config::new(&[2, 2, 6, 2], &[40, 80, 160, 320], true);
        ConvNeXt::new(ps.var_builder(DType::F32, &Device::Cpu), &cfg).unwrap();
        let names: Vec<String> = ps.all().into_iter().map(|(n, _)| n).collect();
        for expected in ["stem.0.weight", "stem.1.bias", "stages.0.blocks.0.conv_dw.weight", "stages.0.blocks.0.mlp.fc1.weight",
                         "stages.0.blocks.0.gamma", "stages.1.downsample.0.weight", "stages.1.downsample.1.weight", "head.norm.weight", "head.fc.bias"] {
            assert!(names.iter().any(|n| n == expected), "missing {expected}");
        }
        assert!(!names.iter().any(|n| n.starts_with("stages.0.downsample")));
        // timm 1.0.31: sum(p.numel() for p in timm.create_model(name).parameters()).
        assert_eq!(ps.num_trainable(), 3_695_520);
    }
}
