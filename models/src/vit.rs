//! Vision Transformer as DeiT trains it ([Touvron et al., 2021](https://arxiv.org/abs/2012.12877);
//! reference code facebookresearch/deit, timm's `vision_transformer.py`), with timm's
//! `VisionTransformer` names: `patch_embed.proj`, `cls_token`, `pos_embed`,
//! `blocks.{i}.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}`, `norm`, `head`.
//!
//! Other resolutions work as timm's `dynamic_img_size=True`: the stored position embedding
//! keeps the base grid and is resampled on every forward (bicubic, antialiased, as
//! `resample_abs_pos_embed`). The resampling is two matrix products, so it is
//! differentiable and training at a low-resolution stage updates the base embedding.

use crate::family::{About, Family, GroupKey, LayerIds, MATCH_PREV, Preprocessing, Recipe, Warmup, captures, check_heads, check_rate, group_by_keys};
use crate::layers::{Conv2d, LayerNorm, Linear, WEIGHT_INIT, drop_path_rate};
use crate::registry::{unknown, ModelConfig, ModelOptions};
use et_ops::{ConvGeom, Ops};
use candle_core::{Result, Tensor};
use candle_nn::{Init, VarBuilder};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Config {
    pub patch_size: usize,
    /// Input size the position embedding is laid out for (grid = img_size / patch_size).
    pub img_size: usize,
    pub embed_dim: usize,
    pub depth: usize,
    pub num_heads: usize,
    pub mlp_ratio: f64,
    pub drop_path_rate: f64,
    pub in_chans: usize,
    pub num_classes: usize,
}

impl Config {
    pub fn new(embed_dim: usize, depth: usize, num_heads: usize) -> Self {
        Config { patch_size: 16, img_size: 224, embed_dim, depth, num_heads, mlp_ratio: 4.0, drop_path_rate: 0.0, in_chans: 3, num_classes: 1000 }
    }

    pub fn grid(&self) -> usize {
        self.img_size / self.patch_size
    }

    pub fn check_input(&self, height: usize, width: usize) -> std::result::Result<(), String> {
        let p = self.patch_size;
        if height % p != 0 || width % p != 0 {
            return Err(format!("height and width must be multiples of the patch size {p}"));
        }
        if height < p || width < p {
            return Err(format!("the smallest input is {p}x{p} (patch size {p})"));
        }
        Ok(())
    }

    /// A config read from a file is checked before a model is built from it.
    pub fn validate(&self) -> std::result::Result<(), String> {
        check_heads(&[self.embed_dim], &[self.num_heads])?;
        if !(1..=8192).contains(&self.embed_dim) || !(1..=256).contains(&self.depth) {
            return Err(format!("embed_dim {} (1..=8192) or depth {} (1..=256) out of range", self.embed_dim, self.depth));
        }
        if !(1..=64).contains(&self.patch_size) || self.img_size % self.patch_size != 0 || !(1..=4096).contains(&self.img_size) || self.in_chans == 0 {
            return Err(format!("img_size {} must be a multiple of patch_size {} (1..=64), at most 4096", self.img_size, self.patch_size));
        }
        if !(self.mlp_ratio > 0.0 && self.mlp_ratio <= 16.0) {
            return Err(format!("mlp_ratio {} (0..=16)", self.mlp_ratio));
        }
        check_rate(self.drop_path_rate)
    }
}

const LN_EPS: f64 = 1e-6;

/// Row-stochastic (out × in) matrix of antialiased bicubic resampling (PyTorch's
/// `antialias=True` bicubic, which is Pillow's).
pub fn bicubic_aa_matrix(input: usize, output: usize) -> Vec<f32> {
    et_interp::matrix(input, output, et_interp::Filter::Bicubic)
}

/// The position embedding (1, prefix + g², C) resampled to an (h × w) grid.
fn resample_pos_embed(pos: &Tensor, grid: usize, h: usize, w: usize, prefix: usize) -> Result<Tensor> {
    if h == grid && w == grid {
        return Ok(pos.clone());
    }
    let c = pos.dim(2)?;
    let dev = pos.device();
    let cls = pos.narrow(1, 0, prefix)?;
    let p = pos.narrow(1, prefix, grid * grid)?.reshape((grid, grid * c))?;
    let ry = Tensor::from_vec(bicubic_aa_matrix(grid, h), (h, grid), dev)?.to_dtype(pos.dtype())?;
    let rx = Tensor::from_vec(bicubic_aa_matrix(grid, w), (w, grid), dev)?.to_dtype(pos.dtype())?;
    // Rows first: (h, g·C) → (g, h·C) with columns leading, then columns.
    let t = ry.matmul(&p)?.reshape((h, grid, c))?.transpose(0, 1)?.contiguous()?.reshape((grid, h * c))?;
    let t = rx.matmul(&t)?.reshape((w, h, c))?.transpose(0, 1)?.contiguous()?.reshape((1, h * w, c))?;
    Tensor::cat(&[&cls, &t], 1)
}

struct Block {
    norm1: LayerNorm,
    qkv: Linear,
    proj: Linear,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    heads: usize,
    drop_path: f64,
}

impl Block {
    fn new(vb: VarBuilder, cfg: &Config, drop_path: f64) -> Result<Self> {
        let d = cfg.embed_dim;
        let hidden = (d as f64 * cfg.mlp_ratio) as usize;
        Ok(Block {
            norm1: LayerNorm::new(vb.pp("norm1"), d, LN_EPS)?,
            qkv: Linear::new(vb.pp("attn.qkv"), d, 3 * d, true)?,
            proj: Linear::new(vb.pp("attn.proj"), d, d, true)?,
            norm2: LayerNorm::new(vb.pp("norm2"), d, LN_EPS)?,
            fc1: Linear::new(vb.pp("mlp.fc1"), d, hidden, true)?,
            fc2: Linear::new(vb.pp("mlp.fc2"), hidden, d, true)?,
            heads: cfg.num_heads,
            drop_path,
        })
    }

    fn forward<O: Ops>(&self, o: &O, x: &O::T) -> Result<O::T> {
        let d = self.proj.weight.dim(0)?;
        let y = self.qkv.forward(o, &self.norm1.forward(o, x)?)?;
        let y = self.proj.forward(o, &o.attention(&y, self.heads, d / self.heads, None)?)?;
        let x = o.add(x, &o.drop_path(&y, self.drop_path)?)?;
        let y = self.fc2.forward(o, &o.gelu(&self.fc1.forward(o, &self.norm2.forward(o, &x)?)?)?)?;
        o.add(&x, &o.drop_path(&y, self.drop_path)?)
    }
}

pub struct VisionTransformer {
    pub config: Config,
    patch_embed: Conv2d,
    cls_token: Tensor,
    pos_embed: Tensor,
    blocks: Vec<Block>,
    norm: LayerNorm,
    head: Linear,
}

impl VisionTransformer {
    pub fn new(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        let (d, p) = (cfg.embed_dim, cfg.patch_size);
        let patch_embed = Conv2d::new(vb.pp("patch_embed.proj"), cfg.in_chans, d, p, ConvGeom { stride: p, padding: 0, groups: 1 }, true)?;
        let cls_token = vb.get_with_hints((1, 1, d), "cls_token", Init::Randn { mean: 0.0, stdev: 1e-6 })?;
        let pos_embed = vb.get_with_hints((1, 1 + cfg.grid() * cfg.grid(), d), "pos_embed", WEIGHT_INIT)?;
        let rate = |i: usize| drop_path_rate(cfg.drop_path_rate, i, cfg.depth);
        let blocks = (0..cfg.depth).map(|i| Block::new(vb.pp(format!("blocks.{i}")), cfg, rate(i))).collect::<Result<Vec<_>>>()?;
        let norm = LayerNorm::new(vb.pp("norm"), d, LN_EPS)?;
        let head = Linear::new(vb.pp("head"), d, cfg.num_classes, true)?;
        Ok(VisionTransformer { config: cfg.clone(), patch_embed, cls_token, pos_embed, blocks, norm, head })
    }

    pub fn forward<O: Ops>(&self, o: &O, x: &O::T) -> Result<O::T> {
        let (h, w) = o.input_hw(x)?;
        let p = self.config.patch_size;
        let pos = resample_pos_embed(&self.pos_embed, self.config.grid(), h / p, w / p, 1)?;
        let x = o.to_tokens(&self.patch_embed.forward(o, x)?)?;
        let mut x = o.add_param(&o.prepend_token(&x, &self.cls_token)?, &pos)?;
        for b in &self.blocks {
            x = b.forward(o, &x)?;
        }
        let x = self.norm.forward(o, &x)?;
        self.head.forward(o, &o.token(&x, 0)?)
    }
}

/// A registered variant: timm's `deit_*_patch16_224` (DeiT's weights, no distillation token).
struct Variant {
    name: &'static str,
    embed_dim: usize,
    depth: usize,
    heads: usize,
}

const VARIANTS: &[Variant] = &[
    Variant { name: "deit_tiny_patch16_224", embed_dim: 192, depth: 12, heads: 3 },
    Variant { name: "deit_small_patch16_224", embed_dim: 384, depth: 12, heads: 6 },
    Variant { name: "deit_base_patch16_224", embed_dim: 768, depth: 12, heads: 12 },
];

pub struct DeiTFamily;
pub static FAMILY: DeiTFamily = DeiTFamily;

static ABOUT: About = About {
    name: "DeiT", paper: "https://arxiv.org/abs/2012.12877",
    code: "https://github.com/facebookresearch/deit (timm: timm/models/vision_transformer.py)",
    preprocessing: Preprocessing::imagenet(0.9), // timm's deit_*.fb_in1k
    head: ["head.weight", "head.bias"], small_image_stem: Some(4), dynamic_input_size: false,
    etpp_resolutions: [96, 96, 160, 160, 160, 160, 192, 192, 224, 224],
};

impl Family for DeiTFamily {
    fn about(&self) -> &'static About { &ABOUT }
    fn variants(&self) -> Vec<&'static str> { VARIANTS.iter().map(|v| v.name).collect() }
    fn config(&self, name: &str, opts: &ModelOptions) -> crate::error::Result<ModelConfig> {
        let v = VARIANTS.iter().find(|v| v.name == name).ok_or_else(|| unknown(name))?;
        let mut cfg = Config::new(v.embed_dim, v.depth, v.heads);
        cfg.patch_size = opts.stem_stride.unwrap_or(16);
        cfg.img_size = opts.img_size.unwrap_or(224);
        if cfg.img_size % cfg.patch_size != 0 {
            return Err(crate::ModelError::BadResolution {
                model: name.to_string(),
                height: cfg.img_size,
                width: cfg.img_size,
                reason: format!("the base size must be a multiple of the patch size {}", cfg.patch_size),
            });
        }
        Ok(ModelConfig::Vit(cfg).with_common(opts))
    }
    /// timm's `group_matcher`: embeddings 0, block i → i + 1, the final norm with the last
    /// block, the head last.
    fn layer_ids(&self, names: &[String]) -> LayerIds {
        let key = |n: &str| {
            if ["cls_token", "reg_token", "pos_embed", "patch_embed", "norm_pre"].iter().any(|p| n.starts_with(p)) {
                GroupKey::Matched(vec![0])
            } else if let Some(b) = captures(n, &["blocks."]) {
                GroupKey::Matched(vec![1, b[0]])
            } else if n.starts_with("norm") {
                GroupKey::Matched(vec![1, MATCH_PREV])
            } else {
                GroupKey::Unmatched
            }
        };
        group_by_keys(&names.iter().map(|n| key(n)).collect::<Vec<_>>())
    }
    /// ET++'s DeiT-S script: the shared recipe with 20 % of the budget as warm-up and
    /// gradients clipped to norm 5.
    fn recipe(&self, name: &str) -> Option<Recipe> {
        VARIANTS.iter().any(|v| v.name == name).then(|| Recipe {
            warmup: Warmup::BudgetShare(0.2),
            clip_grad: Some(5.0),
            ..Recipe::etpp(0.1, "DeiT (Touvron et al. 2021) as ET++'s DeiT-S script trains it: 20 % warm-up, clipping 5.0")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resampling_matrix_is_identity_at_same_size_and_averages_when_shrinking() {
        let m = bicubic_aa_matrix(5, 5);
        for i in 0..5 {
            for j in 0..5 {
                assert!((m[i * 5 + j] - if i == j { 1.0 } else { 0.0 }).abs() < 1e-6);
            }
        }
        let m = bicubic_aa_matrix(14, 10);
        for row in m.chunks(14) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
    }

    #[test]
    fn every_parameter_gets_a_gradient_at_another_resolution() -> Result<()> {
        let mut cfg = Config::new(16, 2, 2);
        cfg.patch_size = 4;
        cfg.img_size = 16;
        (cfg.num_classes, cfg.drop_path_rate) = (3, 0.1);
        // 12 px: a 3×3 grid, so the 4×4 position embedding is resampled (and learns through it).
        crate::test_support::assert_trains(ModelConfig::Vit(cfg), &[2, 3, 12, 12])?;
        Ok(())
    }
}
