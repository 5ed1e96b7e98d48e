//! CAFormer (Yu et al., ["MetaFormer Baselines for Vision"](https://arxiv.org/abs/2210.13452),
//! 2023; reference code sail-sg/metaformer, timm's `metaformer.py`) with timm's `MetaFormer`
//! names: `stem.{conv,norm}`, `stages.{i}.downsample.{norm,conv}` (i > 0),
//! `stages.{i}.blocks.{j}.{norm1, token_mixer.*, res_scale1.scale, norm2, mlp.fc1, mlp.act,
//! mlp.fc2, res_scale2.scale}`, `head.norm`, `head.fc.{fc1,norm,fc2}`.
//!
//! MetaFormer blocks `x = r·x + mixer(norm(x))`, `x = r·x + mlp(norm(x))`: the first two
//! stages mix tokens with inverted separable convolutions (NCHW, 1×1 → StarReLU → 7×7
//! depthwise → 1×1), the last two with multi-head self-attention (tokens, head size 32)
//! and a learned residual scale r. StarReLU is s·relu(x)² + b with scalar s, b. Norms have no
//! bias except the head's; convolutions and linears in blocks have none either. Nothing
//! depends on the resolution: any input of at least 32×32 works, one ONNX graph for all.

use crate::family::{About, ETPP_RESOLUTIONS, Family, LayerIds, Preprocessing, check_min_input, check_rate, check_stages, reject_small_stem};
use crate::layers::{Conv2d, LayerNorm, Linear, drop_path_rate};
use crate::registry::{unknown, ModelConfig, ModelOptions};
use et_ops::{ConvGeom, Ops};
use candle_core::{Result, Tensor};
use candle_nn::{Init, VarBuilder};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Config {
    pub depths: Vec<usize>,
    pub dims: Vec<usize>,
    /// Stages (from the first) that use SepConv; the others use attention and res scales.
    pub conv_stages: usize,
    pub head_dim: usize,
    pub drop_path_rate: f64,
    pub in_chans: usize,
    pub num_classes: usize,
}

impl Config {
    pub fn new(depths: &[usize], dims: &[usize]) -> Self {
        Config { depths: depths.to_vec(), dims: dims.to_vec(), conv_stages: 2, head_dim: 32, drop_path_rate: 0.0, in_chans: 3, num_classes: 1000 }
    }

    /// Smallest input side: every stride-2 downsampling should see at least a 2×2 map.
    pub fn min_input(&self) -> usize {
        4 << (self.dims.len() - 1)
    }

    pub fn check_input(&self, height: usize, width: usize) -> std::result::Result<(), String> {
        check_min_input(height, width, self.min_input(), "its total stride")
    }

    /// A config read from a file is checked before a model is built from it.
    pub fn validate(&self) -> std::result::Result<(), String> {
        check_stages(&self.depths, &self.dims)?;
        if self.conv_stages > self.dims.len() || self.head_dim == 0 || self.in_chans == 0 {
            return Err(format!("conv_stages {} (at most the {} stages), head_dim {} and in_chans {} (≥ 1) out of range", self.conv_stages, self.dims.len(), self.head_dim, self.in_chans));
        }
        if let Some(d) = self.dims[self.conv_stages..].iter().find(|&&d| d % self.head_dim != 0) {
            return Err(format!("an attention stage of width {d} is not a multiple of head_dim {}", self.head_dim));
        }
        check_rate(self.drop_path_rate)
    }
}

const EPS: f64 = 1e-6;
const NO_PAD: ConvGeom = ConvGeom { stride: 1, padding: 0, groups: 1 };

/// s·relu(x)² + b, s and b learned scalars.
struct StarReLU {
    scale: Tensor,
    bias: Tensor,
}

impl StarReLU {
    fn new(vb: VarBuilder) -> Result<Self> {
        Ok(StarReLU { scale: vb.get_with_hints(1, "scale", Init::Const(1.0))?, bias: vb.get_with_hints(1, "bias", Init::Const(0.0))? })
    }

    fn forward<O: Ops>(&self, o: &O, x: &O::T) -> Result<O::T> {
        o.star_relu(x, &self.scale, &self.bias)
    }
}

enum Mixer {
    /// Inverted separable convolution (MobileNetV2), expansion 2, 7×7 depthwise.
    SepConv { pwconv1: Conv2d, act1: StarReLU, dwconv: Conv2d, pwconv2: Conv2d },
    Attention { qkv: Linear, proj: Linear, heads: usize, head_dim: usize },
}

impl Mixer {
    fn forward<O: Ops>(&self, o: &O, x: &O::T) -> Result<O::T> {
        match self {
            Mixer::SepConv { pwconv1, act1, dwconv, pwconv2 } => {
                let y = act1.forward(o, &pwconv1.forward(o, x)?)?;
                pwconv2.forward(o, &dwconv.forward(o, &y)?)
            }
            Mixer::Attention { qkv, proj, heads, head_dim } => proj.forward(o, &o.attention(&qkv.forward(o, x)?, *heads, *head_dim, None)?),
        }
    }
}

/// The MLP's two projections: 1×1 convolutions on NCHW maps, linears on tokens.
enum Proj {
    Conv(Conv2d),
    Linear(Linear),
}

impl Proj {
    fn new(vb: VarBuilder, c_in: usize, c_out: usize, nchw: bool) -> Result<Self> {
        Ok(if nchw { Proj::Conv(Conv2d::new(vb, c_in, c_out, 1, NO_PAD, false)?) } else { Proj::Linear(Linear::new(vb, c_in, c_out, false)?) })
    }

    fn forward<O: Ops>(&self, o: &O, x: &O::T) -> Result<O::T> {
        match self {
            Proj::Conv(c) => c.forward(o, x),
            Proj::Linear(l) => l.forward(o, x),
        }
    }
}

struct Block {
    /// NCHW maps (SepConv stages) or (N, L, C) tokens (attention stages).
    nchw: bool,
    norm1: LayerNorm,
    mixer: Mixer,
    res_scale1: Option<Tensor>,
    norm2: LayerNorm,
    fc1: Proj,
    act: StarReLU,
    fc2: Proj,
    res_scale2: Option<Tensor>,
    drop_path: f64,
}

impl Block {
    fn new(vb: VarBuilder, dim: usize, attention: bool, cfg: &Config, drop_path: f64) -> Result<Self> {
        let nchw = !attention;
        // Created in timm's order (layer-wise lr decay groups parameters by it).
        let norm1 = LayerNorm::no_bias(vb.pp("norm1"), dim, EPS)?;
        let vm = vb.pp("token_mixer");
        let mixer = if attention {
            let heads = (dim / cfg.head_dim).max(1);
            let inner = heads * cfg.head_dim;
            Mixer::Attention { qkv: Linear::new(vm.pp("qkv"), dim, 3 * inner, false)?, proj: Linear::new(vm.pp("proj"), inner, dim, false)?, heads, head_dim: cfg.head_dim }
        } else {
            let mid = 2 * dim;
            Mixer::SepConv {
                pwconv1: Conv2d::new(vm.pp("pwconv1"), dim, mid, 1, NO_PAD, false)?,
                act1: StarReLU::new(vm.pp("act1"))?,
                dwconv: Conv2d::new(vm.pp("dwconv"), mid, mid, 7, ConvGeom { stride: 1, padding: 3, groups: mid }, false)?,
                pwconv2: Conv2d::new(vm.pp("pwconv2"), mid, dim, 1, NO_PAD, false)?,
            }
        };
        let res_scale = |name: &str| -> Result<Option<Tensor>> { if attention { Ok(Some(vb.get_with_hints(dim, &format!("{name}.scale"), Init::Const(1.0))?)) } else { Ok(None) } };
        Ok(Block {
            nchw,
            norm1,
            mixer,
            res_scale1: res_scale("res_scale1")?,
            norm2: LayerNorm::no_bias(vb.pp("norm2"), dim, EPS)?,
            fc1: Proj::new(vb.pp("mlp.fc1"), dim, 4 * dim, nchw)?,
            act: StarReLU::new(vb.pp("mlp.act"))?,
            fc2: Proj::new(vb.pp("mlp.fc2"), 4 * dim, dim, nchw)?,
            res_scale2: res_scale("res_scale2")?,
            drop_path,
        })
    }

    fn norm<O: Ops>(&self, o: &O, n: &LayerNorm, x: &O::T) -> Result<O::T> {
        if self.nchw {
            n.forward_channels(o, x)
        } else {
            n.forward(o, x)
        }
    }

    fn residual<O: Ops>(&self, o: &O, x: &O::T, scale: &Option<Tensor>, y: &O::T) -> Result<O::T> {
        let x = match scale {
            Some(s) => o.mul_param(x, s)?,
            None => x.clone(),
        };
        o.add(&x, &o.drop_path(y, self.drop_path)?)
    }

    fn forward<O: Ops>(&self, o: &O, x: &O::T) -> Result<O::T> {
        let y = self.mixer.forward(o, &self.norm(o, &self.norm1, x)?)?;
        let x = self.residual(o, x, &self.res_scale1, &y)?;
        let y = self.fc2.forward(o, &self.act.forward(o, &self.fc1.forward(o, &self.norm(o, &self.norm2, &x)?)?)?)?;
        self.residual(o, &x, &self.res_scale2, &y)
    }
}

struct Stage {
    /// Stem (7×7 stride 4 conv, then norm) for stage 0; norm, then 3×3 stride 2 conv after.
    downsample: (LayerNorm, Conv2d),
    blocks: Vec<Block>,
    attention: bool,
}

pub struct CaFormer {
    pub config: Config,
    stages: Vec<Stage>,
    head_norm: LayerNorm,
    head_fc1: Linear,
    head_mlp_norm: LayerNorm,
    head_fc2: Linear,
}

impl CaFormer {
    pub fn new(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        let total: usize = cfg.depths.iter().sum();
        let rate = |i: usize| drop_path_rate(cfg.drop_path_rate, i, total);
        let mut stages = Vec::new();
        let mut block_idx = 0;
        for (i, &dim) in cfg.dims.iter().enumerate() {
            let vs = vb.pp(format!("stages.{i}"));
            let downsample = if i == 0 {
                let stem = ConvGeom { stride: 4, padding: 2, groups: 1 };
                let conv = Conv2d::new(vb.pp("stem.conv"), cfg.in_chans, dim, 7, stem, true)?;
                (LayerNorm::no_bias(vb.pp("stem.norm"), dim, EPS)?, conv)
            } else {
                let prev = cfg.dims[i - 1];
                let down = ConvGeom { stride: 2, padding: 1, groups: 1 };
                (LayerNorm::no_bias(vs.pp("downsample.norm"), prev, EPS)?, Conv2d::new(vs.pp("downsample.conv"), prev, dim, 3, down, true)?)
            };
            let attention = i >= cfg.conv_stages;
            let mut blocks = Vec::new();
            for j in 0..cfg.depths[i] {
                blocks.push(Block::new(vs.pp(format!("blocks.{j}")), dim, attention, cfg, rate(block_idx))?);
                block_idx += 1;
            }
            stages.push(Stage { downsample, blocks, attention });
        }
        let last = *cfg.dims.last().unwrap_or(&0);
        let hidden = 4 * last;
        Ok(CaFormer {
            config: cfg.clone(),
            stages,
            head_norm: LayerNorm::new(vb.pp("head.norm"), last, EPS)?,
            head_fc1: Linear::new(vb.pp("head.fc.fc1"), last, hidden, true)?,
            head_mlp_norm: LayerNorm::new(vb.pp("head.fc.norm"), hidden, EPS)?,
            head_fc2: Linear::new(vb.pp("head.fc.fc2"), hidden, cfg.num_classes, true)?,
        })
    }

    pub fn forward<O: Ops>(&self, o: &O, x: &O::T) -> Result<O::T> {
        let mut x = x.clone();
        for (i, stage) in self.stages.iter().enumerate() {
            let (norm, conv) = &stage.downsample;
            x = if i == 0 { norm.forward_channels(o, &conv.forward(o, &x)?)? } else { conv.forward(o, &norm.forward_channels(o, &x)?)? };
            if stage.attention {
                let map = x.clone();
                let mut t = o.to_tokens(&map)?;
                for block in &stage.blocks {
                    t = block.forward(o, &t)?;
                }
                x = o.tokens_to_map(&t, &map)?;
            } else {
                for block in &stage.blocks {
                    x = block.forward(o, &x)?;
                }
            }
        }
        let x = o.flatten(&self.head_norm.forward_channels(o, &o.global_avg_pool(&x)?)?)?;
        // MLP head: fc1 → squared ReLU → LayerNorm → fc2.
        let x = self.head_mlp_norm.forward(o, &o.squared_relu(&self.head_fc1.forward(o, &x)?)?)?;
        self.head_fc2.forward(o, &x)
    }
}

/// A registered variant: timm's `caformer_*`.
struct Variant {
    name: &'static str,
    depths: &'static [usize],
    dims: &'static [usize],
}

const VARIANTS: &[Variant] = &[
    Variant { name: "caformer_s18", depths: &[3, 3, 9, 3], dims: &[64, 128, 320, 512] },
    Variant { name: "caformer_s36", depths: &[3, 12, 18, 3], dims: &[64, 128, 320, 512] },
    Variant { name: "caformer_m36", depths: &[3, 12, 18, 3], dims: &[96, 192, 384, 576] },
];

pub struct CaFormerFamily;
pub static FAMILY: CaFormerFamily = CaFormerFamily;

static ABOUT: About = About {
    name: "CAFormer", paper: "https://arxiv.org/abs/2210.13452",
    code: "https://github.com/sail-sg/metaformer (timm: timm/models/metaformer.py)",
    preprocessing: Preprocessing::imagenet(1.0), // timm's caformer_*.sail_in1k
    head: ["head.fc.fc2.weight", "head.fc.fc2.bias"], small_image_stem: None, dynamic_input_size: true,
    etpp_resolutions: ETPP_RESOLUTIONS,
};

impl Family for CaFormerFamily {
    fn about(&self) -> &'static About { &ABOUT }
    fn variants(&self) -> Vec<&'static str> { VARIANTS.iter().map(|v| v.name).collect() }
    fn config(&self, name: &str, opts: &ModelOptions) -> crate::error::Result<ModelConfig> {
        let v = VARIANTS.iter().find(|v| v.name == name).ok_or_else(|| unknown(name))?;
        reject_small_stem(name, opts)?;
        Ok(ModelConfig::Caformer(Config::new(v.depths, v.dims)).with_common(opts))
    }
    /// timm has no `group_matcher` for MetaFormers and falls back to `auto_group_layers`:
    /// the parameters outside the classifier (`head.fc.fc2`), in the order the model
    /// creates them, twelve to a layer; the classifier one layer above.
    fn layer_ids(&self, names: &[String]) -> LayerIds {
        let trunk = names.iter().filter(|n| !n.starts_with("head.fc.fc2")).count();
        let head = trunk.div_ceil(12);
        let mut i = 0;
        let ids = names
            .iter()
            .map(|n| {
                if n.starts_with("head.fc.fc2") {
                    head
                } else {
                    i += 1;
                    (i - 1) / 12
                }
            })
            .collect();
        LayerIds { ids, max: head }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_parameter_gets_a_gradient() -> Result<()> {
        let mut cfg = Config::new(&[1, 1, 2, 1], &[8, 16, 32, 64]);
        cfg.head_dim = 8;
        (cfg.num_classes, cfg.drop_path_rate) = (3, 0.1);
        crate::test_support::assert_trains(ModelConfig::Caformer(cfg), &[2, 3, 64, 48])?;
        Ok(())
    }
}
