//! Pyramid Vision Transformer v2 ([Wang et al., 2022](https://arxiv.org/abs/2106.13797);
//! reference code whai362/PVT, timm's `pvt_v2.py`) with timm's
//! `PyramidVisionTransformerV2` names: `patch_embed.{proj,norm}`,
//! `stages.{i}.downsample.{proj,norm}` (i > 0), `stages.{i}.blocks.{j}.{norm1, attn.q,
//! attn.kv, attn.sr, attn.norm, attn.proj, norm2, mlp.fc1, mlp.dwconv, mlp.fc2}`,
//! `stages.{i}.norm`, `head`.
//!
//! Overlapping patch embeddings (7×7 stride 4, then 3×3 stride 2) and spatial-reduction
//! attention (keys and values from a stride-`sr` convolution of the map) have no
//! resolution-dependent parameters: any input of at least 32×32 works, and the ONNX graph
//! takes any size because token ↔ map conversions read H and W at run time.

use crate::family::{About, ETPP_RESOLUTIONS, Family, GroupKey, LayerIds, Preprocessing, captures, check_heads, check_min_input, check_rate, check_stages, group_by_keys, reject_small_stem};
use crate::layers::{Conv2d, LayerNorm, Linear, drop_path_rate};
use crate::registry::{unknown, ModelConfig, ModelOptions};
use et_ops::{ConvGeom, Ops};
use candle_core::Result;
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Config {
    pub depths: Vec<usize>,
    pub embed_dims: Vec<usize>,
    pub num_heads: Vec<usize>,
    pub sr_ratios: Vec<usize>,
    pub mlp_ratios: Vec<f64>,
    pub drop_path_rate: f64,
    pub in_chans: usize,
    pub num_classes: usize,
}

impl Config {
    pub fn new(depths: &[usize], embed_dims: &[usize], num_heads: &[usize]) -> Self {
        Config {
            depths: depths.to_vec(),
            embed_dims: embed_dims.to_vec(),
            num_heads: num_heads.to_vec(),
            sr_ratios: vec![8, 4, 2, 1],
            mlp_ratios: vec![8.0, 8.0, 4.0, 4.0],
            drop_path_rate: 0.0,
            in_chans: 3,
            num_classes: 1000,
        }
    }

    /// Smallest input side: the first stage's map (stride 4) must hold one reduction window.
    pub fn min_input(&self) -> usize {
        4 * self.sr_ratios.first().copied().unwrap_or(1).max(1)
    }

    pub fn check_input(&self, height: usize, width: usize) -> std::result::Result<(), String> {
        let sr = self.sr_ratios.first().copied().unwrap_or(1);
        check_min_input(height, width, self.min_input(), &format!("stride-4 stem and a {sr}x{sr} spatial reduction in the first stage"))
    }

    /// A config read from a file is checked before a model is built from it.
    pub fn validate(&self) -> std::result::Result<(), String> {
        check_stages(&self.depths, &self.embed_dims)?;
        check_heads(&self.embed_dims, &self.num_heads)?;
        let n = self.depths.len();
        if self.sr_ratios.len() != n || self.mlp_ratios.len() != n {
            return Err(format!("{} sr_ratios and {} mlp_ratios for {n} stages", self.sr_ratios.len(), self.mlp_ratios.len()));
        }
        if self.sr_ratios.iter().any(|&r| !(1..=32).contains(&r)) || self.mlp_ratios.iter().any(|&r| !(r > 0.0 && r <= 16.0)) || self.in_chans == 0 {
            return Err(format!("sr_ratios {:?} (1..=32) or mlp_ratios {:?} (0..=16) out of range", self.sr_ratios, self.mlp_ratios));
        }
        check_rate(self.drop_path_rate)
    }
}

/// timm's `LayerNorm` (blocks and stage norms) vs `nn.LayerNorm` (patch embeddings and the
/// reduction norm).
const BLOCK_EPS: f64 = 1e-6;
const TORCH_EPS: f64 = 1e-5;

fn conv(vb: VarBuilder, c_in: usize, c_out: usize, k: usize, stride: usize, padding: usize, groups: usize) -> Result<Conv2d> {
    Conv2d::new(vb, c_in, c_out, k, ConvGeom { stride, padding, groups }, true)
}

struct Attention {
    q: Linear,
    kv: Linear,
    /// Spatial reduction: conv k = s = sr, then LayerNorm (absent when sr = 1).
    sr: Option<(Conv2d, LayerNorm)>,
    proj: Linear,
    dim: usize,
    heads: usize,
}

impl Attention {
    /// `x`: (N, H·W, C) tokens of the NCHW map `like`.
    fn forward<O: Ops>(&self, o: &O, x: &O::T, like: &O::T) -> Result<O::T> {
        let q = self.q.forward(o, x)?;
        let kv = match &self.sr {
            Some((conv, norm)) => self.kv.forward(o, &norm.forward(o, &conv.forward_tokens(o, x, like)?)?)?,
            None => self.kv.forward(o, x)?,
        };
        let (c, heads) = (self.dim, self.heads);
        let kv = o.split(&kv, 2, &[c, c])?;
        let (k, v) = (&kv[0], &kv[1]);
        self.proj.forward(o, &o.sdpa(&q, k, v, heads, c / heads, None)?)
    }
}

struct Block {
    norm1: LayerNorm,
    attn: Attention,
    norm2: LayerNorm,
    fc1: Linear,
    dwconv: Conv2d,
    fc2: Linear,
    drop_path: f64,
}

impl Block {
    fn new(vb: VarBuilder, dim: usize, heads: usize, sr: usize, mlp_ratio: f64, drop_path: f64) -> Result<Self> {
        let hidden = (dim as f64 * mlp_ratio) as usize;
        let va = vb.pp("attn");
        let sr = if sr > 1 { Some((conv(va.pp("sr"), dim, dim, sr, sr, 0, 1)?, LayerNorm::new(va.pp("norm"), dim, TORCH_EPS)?)) } else { None };
        Ok(Block {
            norm1: LayerNorm::new(vb.pp("norm1"), dim, BLOCK_EPS)?,
            attn: Attention {
                q: Linear::new(va.pp("q"), dim, dim, true)?,
                kv: Linear::new(va.pp("kv"), dim, 2 * dim, true)?,
                sr,
                proj: Linear::new(va.pp("proj"), dim, dim, true)?,
                dim,
                heads,
            },
            norm2: LayerNorm::new(vb.pp("norm2"), dim, BLOCK_EPS)?,
            fc1: Linear::new(vb.pp("mlp.fc1"), dim, hidden, true)?,
            dwconv: conv(vb.pp("mlp.dwconv"), hidden, hidden, 3, 1, 1, hidden)?,
            fc2: Linear::new(vb.pp("mlp.fc2"), hidden, dim, true)?,
            drop_path,
        })
    }

    fn forward<O: Ops>(&self, o: &O, x: &O::T, like: &O::T) -> Result<O::T> {
        let y = self.attn.forward(o, &self.norm1.forward(o, x)?, like)?;
        let x = o.add(x, &o.drop_path(&y, self.drop_path)?)?;
        // Mix-FFN: a 3×3 depthwise conv between the two linears supplies position information.
        let y = self.fc1.forward(o, &self.norm2.forward(o, &x)?)?;
        let y = self.dwconv.forward_tokens(o, &y, like)?;
        let y = self.fc2.forward(o, &o.gelu(&y)?)?;
        o.add(&x, &o.drop_path(&y, self.drop_path)?)
    }
}

struct Stage {
    /// Overlapping patch embedding: the stem (stage 0) or a 3×3 stride-2 downsampling.
    embed: (Conv2d, LayerNorm),
    blocks: Vec<Block>,
    norm: LayerNorm,
}

pub struct PvtV2 {
    pub config: Config,
    stages: Vec<Stage>,
    head: Linear,
}

impl PvtV2 {
    pub fn new(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        let total: usize = cfg.depths.iter().sum();
        let rate = |i: usize| drop_path_rate(cfg.drop_path_rate, i, total);
        let mut stages = Vec::new();
        let mut block_idx = 0;
        for (i, &dim) in cfg.embed_dims.iter().enumerate() {
            let vs = vb.pp(format!("stages.{i}"));
            let embed = if i == 0 {
                let ve = vb.pp("patch_embed");
                (conv(ve.pp("proj"), cfg.in_chans, dim, 7, 4, 3, 1)?, LayerNorm::new(ve.pp("norm"), dim, TORCH_EPS)?)
            } else {
                let ve = vs.pp("downsample");
                (conv(ve.pp("proj"), cfg.embed_dims[i - 1], dim, 3, 2, 1, 1)?, LayerNorm::new(ve.pp("norm"), dim, TORCH_EPS)?)
            };
            let mut blocks = Vec::new();
            for j in 0..cfg.depths[i] {
                blocks.push(Block::new(vs.pp(format!("blocks.{j}")), dim, cfg.num_heads[i], cfg.sr_ratios[i], cfg.mlp_ratios[i], rate(block_idx))?);
                block_idx += 1;
            }
            stages.push(Stage { embed, blocks, norm: LayerNorm::new(vs.pp("norm"), dim, BLOCK_EPS)? });
        }
        let last = *cfg.embed_dims.last().unwrap_or(&0);
        let head = Linear::new(vb.pp("head"), last, cfg.num_classes, true)?;
        Ok(PvtV2 { config: cfg.clone(), stages, head })
    }

    pub fn forward<O: Ops>(&self, o: &O, x: &O::T) -> Result<O::T> {
        let mut x = x.clone();
        for stage in &self.stages {
            // The embedding's map fixes this stage's H and W for every token ↔ map conversion.
            let map = stage.embed.0.forward(o, &x)?;
            let mut t = stage.embed.1.forward(o, &o.to_tokens(&map)?)?;
            for block in &stage.blocks {
                t = block.forward(o, &t, &map)?;
            }
            x = o.tokens_to_map(&stage.norm.forward(o, &t)?, &map)?;
        }
        self.head.forward(o, &o.flatten(&o.global_avg_pool(&x)?)?)
    }
}

/// A registered variant: timm's `pvt_v2_b*`.
struct Variant {
    name: &'static str,
    depths: &'static [usize],
    embed_dims: &'static [usize],
    heads: &'static [usize],
}

const VARIANTS: &[Variant] = &[
    Variant { name: "pvt_v2_b0", depths: &[2, 2, 2, 2], embed_dims: &[32, 64, 160, 256], heads: &[1, 2, 5, 8] },
    Variant { name: "pvt_v2_b1", depths: &[2, 2, 2, 2], embed_dims: &[64, 128, 320, 512], heads: &[1, 2, 5, 8] },
    Variant { name: "pvt_v2_b2", depths: &[3, 4, 6, 3], embed_dims: &[64, 128, 320, 512], heads: &[1, 2, 5, 8] },
];

pub struct PvtV2Family;
pub static FAMILY: PvtV2Family = PvtV2Family;

static ABOUT: About = About {
    name: "PVT v2", paper: "https://arxiv.org/abs/2106.13797",
    code: "https://github.com/whai362/PVT (timm: timm/models/pvt_v2.py)",
    preprocessing: Preprocessing::imagenet(0.9), // timm's pvt_v2_*.in1k
    head: ["head.weight", "head.bias"], small_image_stem: None, dynamic_input_size: true,
    etpp_resolutions: ETPP_RESOLUTIONS,
};

impl Family for PvtV2Family {
    fn about(&self) -> &'static About { &ABOUT }
    fn variants(&self) -> Vec<&'static str> { VARIANTS.iter().map(|v| v.name).collect() }
    fn config(&self, name: &str, opts: &ModelOptions) -> crate::error::Result<ModelConfig> {
        let v = VARIANTS.iter().find(|v| v.name == name).ok_or_else(|| unknown(name))?;
        reject_small_stem(name, opts)?;
        Ok(ModelConfig::PvtV2(Config::new(v.depths, v.embed_dims, v.heads)).with_common(opts))
    }
    /// timm's `group_matcher`: the patch embedding 0, then one id per stage, the head last.
    fn layer_ids(&self, names: &[String]) -> LayerIds {
        let key = |n: &str| {
            if n.starts_with("patch_embed") {
                GroupKey::Matched(vec![0])
            } else if let Some(i) = captures(n, &["stages."]) {
                GroupKey::Matched(vec![1, i[0]])
            } else {
                GroupKey::Unmatched
            }
        };
        group_by_keys(&names.iter().map(|n| key(n)).collect::<Vec<_>>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_parameter_gets_a_gradient() -> Result<()> {
        let mut cfg = Config::new(&[1, 2, 1, 1], &[8, 16, 24, 32], &[1, 2, 3, 4]);
        (cfg.num_classes, cfg.drop_path_rate) = (3, 0.1);
        // Not square, odd maps after the stem (18×17, 9×9, 5×5, 3×3), and every reduced map
        // keeps more than one key (with a single key, q cannot learn: softmax of one score).
        crate::test_support::assert_trains(ModelConfig::PvtV2(cfg), &[2, 3, 72, 68])?;
        Ok(())
    }
}
