//! CSWin Transformer ([Dong et al., 2022](https://arxiv.org/abs/2107.00652)): cross-shaped
//! window self-attention with
//! locally-enhanced positional encoding (LePE). Not in timm; names, variants and layout
//! follow the official repository (microsoft/CSWin-Transformer, `models/cswin.py`), whose
//! names EfficientTrain's checkpoints use: `stage1_conv_embed.{0,2}`,
//! `stage{1..4}.{j}.{norm1, qkv, attns.{0,1}.get_v, proj, norm2, mlp.fc1, mlp.fc2}`,
//! `merge{1..3}.{conv,norm}`, `norm`, `head`.
//!
//! Architecture facts (from that file): a 7×7 stride-4 (padding 2) conv stem + LayerNorm;
//! stages joined by 3×3 stride-2 convs + LayerNorm; in a block, the channels of q, k and v
//! split into two halves with half the heads each: one half attends within vertical
//! stripes (full height × stripe width sw), the other within horizontal stripes
//! (sw × full width); the last stage attends over the whole map with all channels (one
//! branch). LePE adds a 3×3 depthwise conv of v, applied to each stripe separately (zero
//! padding at stripe borders), to the attention output. LayerNorm eps 1e-5, qkv with bias,
//! mean pooling of the final tokens.
//!
//! Resolution: the official code is built for one size (224: sw = 1, 2, 7, 7).
//! EfficientTrain's copy (LeapLabTHU/EfficientTrain `models/cswin.py`) builds the model for
//! each training size R with sw = [1, 2, R/32, R/32], which equals the official at 224; we
//! apply that rule to the input at every forward (weights do not depend on R). Inputs are
//! square multiples of 32, as that code assumes; ONNX graphs are exported per size.

use crate::family::{About, ETPP_RESOLUTIONS, Family, LayerIds, Preprocessing, Recipe, check_heads, check_rate, check_stages, reject_small_stem};
use crate::layers::{Conv2d, LayerNorm, Linear, drop_path_rate};
use crate::registry::{unknown, ModelConfig, ModelOptions};
use et_ops::{ConvGeom, Ops};
use candle_core::Result;
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Config {
    pub embed_dim: usize,
    pub depths: Vec<usize>,
    pub num_heads: Vec<usize>,
    pub mlp_ratio: f64,
    pub drop_path_rate: f64,
    pub in_chans: usize,
    pub num_classes: usize,
}

impl Config {
    pub fn new(embed_dim: usize, depths: &[usize], num_heads: &[usize]) -> Self {
        Config { embed_dim, depths: depths.to_vec(), num_heads: num_heads.to_vec(), mlp_ratio: 4.0, drop_path_rate: 0.0, in_chans: 3, num_classes: 1000 }
    }

    /// Stripe width of each stage for an R×R input (EfficientTrain's rule, see above).
    pub fn stripe_widths(&self, r: usize) -> [usize; 4] {
        [1, 2, r / 32, r / 32]
    }

    fn dim(&self, i: usize) -> usize {
        self.embed_dim << i
    }

    pub fn check_input(&self, height: usize, width: usize) -> std::result::Result<(), String> {
        if height != width || height % 32 != 0 || height == 0 {
            return Err("CSWin takes square inputs whose side is a multiple of 32 (stripe widths 1, 2, side/32, side/32), e.g. 96, 128, 160, 192, 224".to_string());
        }
        Ok(())
    }

    /// A config read from a file is checked before a model is built from it.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.depths.len() != 4 {
            return Err(format!("{} stages: CSWin has four", self.depths.len()));
        }
        let dims: Vec<usize> = (0..4).map(|i| self.embed_dim << i).collect();
        check_stages(&self.depths, &dims)?;
        check_heads(&dims, &self.num_heads)?;
        // Each branch of stages 1-3 takes half the heads.
        if self.num_heads[..3].iter().any(|&h| h % 2 != 0) || self.in_chans == 0 {
            return Err(format!("heads {:?}: the first three stages need an even number (two branches)", self.num_heads));
        }
        if !(self.mlp_ratio > 0.0 && self.mlp_ratio <= 16.0) {
            return Err(format!("mlp_ratio {} (0..=16)", self.mlp_ratio));
        }
        check_rate(self.drop_path_rate)
    }
}

const LN_EPS: f64 = 1e-5;

/// Attention within (hs × ws) windows of an h×w token map, plus LePE.
struct LePEAttention {
    get_v: Conv2d,
    heads: usize,
}

impl LePEAttention {
    /// q, k, v: (N, h·w, c) → (N, h·w, c).
    #[allow(clippy::too_many_arguments)]
    fn forward<O: Ops>(&self, o: &O, q: &O::T, k: &O::T, v: &O::T, (h, w): (usize, usize), (hs, ws): (usize, usize), c: usize) -> Result<O::T> {
        let (nh, nw, l) = (h / hs, w / ws, hs * ws);
        let to_windows = |t: &O::T| -> Result<O::T> { o.reshape(&o.permute(&o.reshape(t, &[nh, hs, nw, ws, c])?, &[0, 1, 3, 2, 4, 5])?, &[l, c]) };
        let (q, k, v) = (to_windows(q)?, to_windows(k)?, to_windows(v)?);
        // LePE: each window as its own image, so the 3×3 conv sees zeros across stripe borders.
        let img = o.permute(&o.reshape(&v, &[hs, ws, c])?, &[0, 3, 1, 2])?;
        let lepe = o.reshape(&o.permute(&self.get_v.forward(o, &img)?, &[0, 2, 3, 1])?, &[l, c])?;
        let y = o.add(&o.sdpa(&q, &k, &v, self.heads, c / self.heads, None)?, &lepe)?;
        o.reshape(&o.permute(&o.reshape(&y, &[nh, nw, hs, ws, c])?, &[0, 1, 3, 2, 4, 5])?, &[h * w, c])
    }
}

struct Block {
    norm1: LayerNorm,
    qkv: Linear,
    /// Two half-width branches (vertical, horizontal stripes), or one full-map branch.
    attns: Vec<LePEAttention>,
    proj: Linear,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    dim: usize,
    drop_path: f64,
}

impl Block {
    fn new(vb: VarBuilder, dim: usize, heads: usize, last_stage: bool, mlp_ratio: f64, drop_path: f64) -> Result<Self> {
        let (branches, bdim, bheads) = if last_stage { (1, dim, heads) } else { (2, dim / 2, heads / 2) };
        let attns = (0..branches)
            .map(|b| {
                let geom = ConvGeom { stride: 1, padding: 1, groups: bdim };
                Ok(LePEAttention { get_v: Conv2d::new(vb.pp(format!("attns.{b}.get_v")), bdim, bdim, 3, geom, true)?, heads: bheads })
            })
            .collect::<Result<Vec<_>>>()?;
        let hidden = (dim as f64 * mlp_ratio) as usize;
        Ok(Block {
            norm1: LayerNorm::new(vb.pp("norm1"), dim, LN_EPS)?,
            qkv: Linear::new(vb.pp("qkv"), dim, 3 * dim, true)?,
            attns,
            proj: Linear::new(vb.pp("proj"), dim, dim, true)?,
            norm2: LayerNorm::new(vb.pp("norm2"), dim, LN_EPS)?,
            fc1: Linear::new(vb.pp("mlp.fc1"), dim, hidden, true)?,
            fc2: Linear::new(vb.pp("mlp.fc2"), hidden, dim, true)?,
            dim,
            drop_path,
        })
    }

    /// `x`: (N, r·r, C) tokens of an r×r map; `sw`: stripe width.
    fn forward<O: Ops>(&self, o: &O, x: &O::T, r: usize, sw: usize) -> Result<O::T> {
        let c = self.dim;
        let qkv = self.qkv.forward(o, &self.norm1.forward(o, x)?)?;
        let y = if self.attns.len() == 1 {
            let qkv = o.split(&qkv, 2, &[c; 3])?;
            self.attns[0].forward(o, &qkv[0], &qkv[1], &qkv[2], (r, r), (r, r), c)?
        } else {
            let half = c / 2;
            // q of branch 0, q of branch 1, k of branch 0, …
            let parts = o.split(&qkv, 2, &[half; 6])?;
            let mut outs = Vec::with_capacity(2);
            // Branch 0: vertical stripes (full height); branch 1: horizontal stripes.
            for (b, window) in [(r, sw), (sw, r)].into_iter().enumerate() {
                outs.push(self.attns[b].forward(o, &parts[b], &parts[2 + b], &parts[4 + b], (r, r), window, half)?);
            }
            o.concat(&[&outs[0], &outs[1]], 2)?
        };
        let x = o.add(x, &o.drop_path(&self.proj.forward(o, &y)?, self.drop_path)?)?;
        let y = self.fc2.forward(o, &o.gelu(&self.fc1.forward(o, &self.norm2.forward(o, &x)?)?)?)?;
        o.add(&x, &o.drop_path(&y, self.drop_path)?)
    }
}

pub struct CSWin {
    pub config: Config,
    stem: (Conv2d, LayerNorm),
    /// Before stages 2…4: 3×3 stride-2 conv, LayerNorm.
    merges: Vec<(Conv2d, LayerNorm)>,
    stages: Vec<Vec<Block>>,
    norm: LayerNorm,
    head: Linear,
}

impl CSWin {
    pub fn new(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        let d0 = cfg.embed_dim;
        let stem = (
            Conv2d::new(vb.pp("stage1_conv_embed.0"), cfg.in_chans, d0, 7, ConvGeom { stride: 4, padding: 2, groups: 1 }, true)?,
            LayerNorm::new(vb.pp("stage1_conv_embed.2"), d0, LN_EPS)?,
        );
        let total: usize = cfg.depths.iter().sum();
        let rate = |i: usize| drop_path_rate(cfg.drop_path_rate, i, total);
        let (mut merges, mut stages, mut block_idx) = (Vec::new(), Vec::new(), 0);
        let last = cfg.depths.len() - 1;
        for (i, &depth) in cfg.depths.iter().enumerate() {
            let dim = cfg.dim(i);
            if i > 0 {
                let vm = vb.pp(format!("merge{i}"));
                let geom = ConvGeom { stride: 2, padding: 1, groups: 1 };
                merges.push((Conv2d::new(vm.pp("conv"), cfg.dim(i - 1), dim, 3, geom, true)?, LayerNorm::new(vm.pp("norm"), dim, LN_EPS)?));
            }
            let mut blocks = Vec::with_capacity(depth);
            for j in 0..depth {
                blocks.push(Block::new(vb.pp(format!("stage{}.{j}", i + 1)), dim, cfg.num_heads[i], i == last, cfg.mlp_ratio, rate(block_idx))?);
                block_idx += 1;
            }
            stages.push(blocks);
        }
        let d = cfg.dim(last);
        Ok(CSWin { config: cfg.clone(), stem, merges, stages, norm: LayerNorm::new(vb.pp("norm"), d, LN_EPS)?, head: Linear::new(vb.pp("head"), d, cfg.num_classes, true)? })
    }

    pub fn forward<O: Ops>(&self, o: &O, x: &O::T) -> Result<O::T> {
        let (h, w) = o.input_hw(x)?;
        if h != w || h % 32 != 0 {
            candle_core::bail!("CSWin takes square inputs whose side is a multiple of 32, got {h}x{w}")
        }
        let sw = self.config.stripe_widths(h);
        let mut r = h / 4;
        let mut x = self.stem.1.forward(o, &o.to_tokens(&self.stem.0.forward(o, x)?)?)?;
        for (i, blocks) in self.stages.iter().enumerate() {
            if i > 0 {
                let (conv, norm) = &self.merges[i - 1];
                let c = self.config.dim(i - 1);
                let map = o.permute(&o.reshape(&x, &[r, r, c])?, &[0, 3, 1, 2])?;
                x = norm.forward(o, &o.to_tokens(&conv.forward(o, &map)?)?)?;
                r /= 2;
            }
            for block in blocks {
                x = block.forward(o, &x, r, sw[i.min(3)])?;
            }
        }
        let c = self.config.dim(self.stages.len() - 1);
        let x = self.norm.forward(o, &x)?;
        // Mean over tokens: (N, L, C) → (N, C, L, 1) → global average pool.
        let x = o.flatten(&o.global_avg_pool(&o.reshape(&o.permute(&x, &[0, 2, 1])?, &[c, r * r, 1])?)?)?;
        self.head.forward(o, &x)
    }
}

/// A registered variant: the official repository's 224-px models.
struct Variant {
    name: &'static str,
    embed_dim: usize,
    depths: &'static [usize],
    heads: &'static [usize],
    /// Drop-path rate of ET++'s 300-epoch recipe.
    drop_path: f64,
}

const VARIANTS: &[Variant] = &[
    Variant { name: "CSWin_64_12211_tiny_224", embed_dim: 64, depths: &[1, 2, 21, 1], heads: &[2, 4, 8, 16], drop_path: 0.2 },
    Variant { name: "CSWin_64_24322_small_224", embed_dim: 64, depths: &[2, 4, 32, 2], heads: &[2, 4, 8, 16], drop_path: 0.4 },
    Variant { name: "CSWin_96_24322_base_224", embed_dim: 96, depths: &[2, 4, 32, 2], heads: &[4, 8, 16, 32], drop_path: 0.5 },
];

pub struct CSWinFamily;
pub static FAMILY: CSWinFamily = CSWinFamily;

static ABOUT: About = About {
    name: "CSWin Transformer", paper: "https://arxiv.org/abs/2107.00652",
    code: "https://github.com/microsoft/CSWin-Transformer (EfficientTrain's copy: models/cswin.py)",
    preprocessing: Preprocessing::imagenet(0.9), // the official cswin_224 config
    head: ["head.weight", "head.bias"], small_image_stem: None, dynamic_input_size: false,
    etpp_resolutions: ETPP_RESOLUTIONS,
};

impl Family for CSWinFamily {
    fn about(&self) -> &'static About { &ABOUT }
    fn variants(&self) -> Vec<&'static str> { VARIANTS.iter().map(|v| v.name).collect() }
    fn config(&self, name: &str, opts: &ModelOptions) -> crate::error::Result<ModelConfig> {
        let v = VARIANTS.iter().find(|v| v.name == name).ok_or_else(|| unknown(name))?;
        reject_small_stem(name, opts)?;
        Ok(ModelConfig::Cswin(Config::new(v.embed_dim, v.depths, v.heads)).with_common(opts))
    }
    /// EfficientTrain's `get_num_layer_for_cswin`: 20 layers of two consecutive blocks
    /// (stage 4 and the last merge at 20), the stem 0, the norm and head 21.
    fn layer_ids(&self, names: &[String]) -> LayerIds {
        let id = |n: &str| -> usize {
            let first = n.split('.').next().unwrap_or("");
            let block = || n.split('.').nth(1).and_then(|b| b.parse::<usize>().ok()).unwrap_or(0) / 2;
            match first {
                "stage1_conv_embed" => 0,
                "merge1" => 2,
                "merge2" => 4,
                "merge3" => 20,
                "stage1" => 1 + block(),
                "stage2" => 2 + block(),
                "stage3" => 4 + block(),
                "stage4" => 20 + block(),
                _ => 21,
            }
        };
        LayerIds { ids: names.iter().map(|n| id(n)).collect(), max: 21 }
    }
    /// ET++'s CSWin-T and -S scripts: the shared recipe with an EMA of decay 0.9999. (The
    /// base model's script uses LAMB with eps 1e-6, which the presets do not offer.)
    fn recipe(&self, name: &str) -> Option<Recipe> {
        let v = VARIANTS.iter().find(|v| v.name == name && v.embed_dim == 64)?;
        Some(Recipe { ema_decay: Some(0.9999), ..Recipe::etpp(v.drop_path, "CSWin (Dong et al. 2022) as ET++'s CSWin scripts train it") })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use et_kernels::testing::seeded;
    use et_kernels::CandleOps;
    use candle_core::{DType, Device};

    #[test]
    fn every_parameter_gets_a_gradient() -> Result<()> {
        let mut cfg = Config::new(8, &[1, 1, 2, 1], &[2, 2, 4, 4]);
        (cfg.num_classes, cfg.drop_path_rate) = (3, 0.1);
        // 64 px: maps 16, 8, 4, 2 with stripes 1, 2, 2 and a full last stage.
        let (_, model, _) = crate::test_support::assert_trains(ModelConfig::Cswin(cfg), &[2, 3, 64, 64])?;
        assert!(model.forward(&CandleOps::eval(), &seeded(&[1, 3, 64, 96], 2, &Device::Cpu, DType::F32)?).is_err());
        Ok(())
    }
}
