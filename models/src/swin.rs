//! Swin Transformer ([Liu et al., 2021](https://arxiv.org/abs/2103.14030); reference code
//! microsoft/Swin-Transformer, timm's `swin_transformer.py`) with timm's `SwinTransformer` names:
//! `patch_embed.{proj,norm}`, `layers.{i}.downsample.{norm,reduction}` (stages 1…3),
//! `layers.{i}.blocks.{j}.{norm1,attn.qkv,attn.proj,attn.relative_position_bias_table,
//! norm2,mlp.fc1,mlp.fc2}`, `norm`, `head.fc`. Activations between blocks are NHWC.
//!
//! Other resolutions behave as timm 1.0.31's `dynamic_img_size=True`: window sizes and
//! shifts are fixed when the model is built for `img_size` (a stage whose map at that size
//! is no larger than the window uses the whole map as its window and no shift: at 224 the
//! last stage's 7×7). At run time each block pads its (shifted) map with zeros at the
//! bottom/right up to a multiple of the window; the padded tokens take part in attention
//! like any other (timm masks nothing in unshifted blocks), and shifted blocks build the
//! shifted-window mask for the padded map. The relative position bias table depends only
//! on the window, so one checkpoint serves every resolution. We accept multiples of 32
//! (patch size × 2³), the sizes our parity tests cover.

use crate::layers::{Conv2d, LayerNorm, Linear, WEIGHT_INIT, drop_path_rate};
use crate::family::{About, ETPP_RESOLUTIONS, Family, GroupKey, LayerIds, MATCH_PREV, OfficialNames, Preprocessing, Recipe, captures, check_heads, check_rate, check_stages, group_by_keys};
use crate::registry::{unknown, ModelConfig, ModelOptions};
use et_ops::{ConvGeom, Ops};
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Config {
    pub patch_size: usize,
    pub embed_dim: usize,
    pub depths: Vec<usize>,
    pub num_heads: Vec<usize>,
    pub window_size: usize,
    /// Input size the windows are laid out for (timm's `img_size`).
    pub img_size: usize,
    pub mlp_ratio: f64,
    pub drop_path_rate: f64,
    pub in_chans: usize,
    pub num_classes: usize,
}

impl Config {
    pub fn new(embed_dim: usize, depths: &[usize], num_heads: &[usize]) -> Self {
        Config {
            patch_size: 4,
            embed_dim,
            depths: depths.to_vec(),
            num_heads: num_heads.to_vec(),
            window_size: 7,
            img_size: 224,
            mlp_ratio: 4.0,
            drop_path_rate: 0.0,
            in_chans: 3,
            num_classes: 1000,
        }
    }

    /// Total stride: inputs must be multiples of it.
    pub fn stride(&self) -> usize {
        self.patch_size << (self.depths.len() - 1)
    }

    /// (window, shift) of stage `i` as timm's `_calc_window_shift` at `img_size`.
    pub fn window_and_shift(&self, i: usize) -> (usize, usize) {
        let scale = 1 << i;
        let r = (self.img_size / self.patch_size).div_ceil(scale);
        if r <= self.window_size {
            (r.max(1), 0)
        } else {
            (self.window_size, self.window_size / 2)
        }
    }

    fn dim(&self, i: usize) -> usize {
        self.embed_dim << i
    }

    pub fn check_input(&self, height: usize, width: usize) -> std::result::Result<(), String> {
        let s = self.stride();
        if height % s != 0 || width % s != 0 {
            return Err(format!("height and width must be multiples of {s} (patch size {} × 2^{} patch merges), e.g. 96, 128, 160, 192, 224", self.patch_size, self.depths.len() - 1));
        }
        if height < s || width < s {
            return Err(format!("the smallest input is {s}x{s} (total stride {s})"));
        }
        Ok(())
    }

    /// A config read from a file is checked before a model is built from it.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let dims: Vec<usize> = (0..self.depths.len()).map(|i| self.embed_dim << i).collect();
        check_stages(&self.depths, &dims)?;
        check_heads(&dims, &self.num_heads)?;
        if !(1..=16).contains(&self.patch_size) || !(1..=32).contains(&self.window_size) || !(1..=4096).contains(&self.img_size) || self.in_chans == 0 {
            return Err(format!("patch_size {} (1..=16), window_size {} (1..=32) or img_size {} (1..=4096) out of range", self.patch_size, self.window_size, self.img_size));
        }
        if !(self.mlp_ratio > 0.0 && self.mlp_ratio <= 16.0) {
            return Err(format!("mlp_ratio {} (0..=16)", self.mlp_ratio));
        }
        check_rate(self.drop_path_rate)
    }
}

const LN_EPS: f64 = 1e-5;

/// Index into the (2w−1)² bias table for every (query, key) pair of a w×w window.
fn relative_position_index(w: usize) -> Vec<u32> {
    let l = w * w;
    let mut idx = Vec::with_capacity(l * l);
    for p in 0..l {
        for q in 0..l {
            let dy = (p / w) as isize - (q / w) as isize + w as isize - 1;
            let dx = (p % w) as isize - (q % w) as isize + w as isize - 1;
            idx.push((dy * (2 * w as isize - 1) + dx) as u32);
        }
    }
    idx
}

/// Shifted-window mask (windows, L, L) for a padded hp×wp map: 0 within a region, −100
/// across regions that the cyclic shift brought together (timm's `get_attn_mask`).
fn shifted_window_mask(hp: usize, wp: usize, w: usize, s: usize) -> Vec<f32> {
    let region = |i: usize, n: usize| if i < n - w { 0 } else if i < n - s { 1 } else { 2 };
    let (nh, nw, l) = (hp / w, wp / w, w * w);
    let mut mask = Vec::with_capacity(nh * nw * l * l);
    for wy in 0..nh {
        for wx in 0..nw {
            let id = |p: usize| 3 * region(wy * w + p / w, hp) + region(wx * w + p % w, wp);
            for p in 0..l {
                for q in 0..l {
                    mask.push(if id(p) == id(q) { 0.0 } else { -100.0 });
                }
            }
        }
    }
    mask
}

struct Block {
    norm1: LayerNorm,
    qkv: Linear,
    proj: Linear,
    bias_table: Tensor,
    /// The table row of every (query, key) pair of a window, built once.
    rel_index: Tensor,
    /// Shifted-window masks by padded map size, built on first use.
    masks: std::sync::Mutex<Vec<((usize, usize), Tensor)>>,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    dim: usize,
    heads: usize,
    window: usize,
    shift: usize,
    drop_path: f64,
}

impl Block {
    fn new(vb: VarBuilder, cfg: &Config, dim: usize, heads: usize, window: usize, shift: usize, drop_path: f64) -> Result<Self> {
        let hidden = (dim as f64 * cfg.mlp_ratio) as usize;
        let l = window * window;
        let rel_index = Tensor::from_vec(relative_position_index(window), l * l, vb.device())?;
        Ok(Block {
            norm1: LayerNorm::new(vb.pp("norm1"), dim, LN_EPS)?,
            qkv: Linear::new(vb.pp("attn.qkv"), dim, 3 * dim, true)?,
            proj: Linear::new(vb.pp("attn.proj"), dim, dim, true)?,
            bias_table: vb.get_with_hints(((2 * window - 1) * (2 * window - 1), heads), "attn.relative_position_bias_table", WEIGHT_INIT)?,
            rel_index,
            masks: std::sync::Mutex::new(Vec::new()),
            norm2: LayerNorm::new(vb.pp("norm2"), dim, LN_EPS)?,
            fc1: Linear::new(vb.pp("mlp.fc1"), dim, hidden, true)?,
            fc2: Linear::new(vb.pp("mlp.fc2"), hidden, dim, true)?,
            dim,
            heads,
            window,
            shift,
            drop_path,
        })
    }

    /// Attention bias (G, heads, L, L): the relative position bias, plus the mask of each of
    /// the G windows of a shifted block. A function of the table, so the table learns.
    fn attention_bias(&self, hp: usize, wp: usize) -> Result<Tensor> {
        let l = self.window * self.window;
        let rel = self.bias_table.index_select(&self.rel_index, 0)?.reshape((l, l, self.heads))?.permute((2, 0, 1))?.unsqueeze(0)?;
        if self.shift == 0 {
            return rel.contiguous();
        }
        rel.broadcast_add(&self.mask(hp, wp)?.to_dtype(rel.dtype())?)
    }

    /// The shifted-window mask (G, 1, L, L) of an hp×wp padded map.
    fn mask(&self, hp: usize, wp: usize) -> Result<Tensor> {
        // A poisoned lock only means another thread panicked mid-insert of a finished tensor.
        let mut masks = self.masks.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, m)) = masks.iter().find(|(k, _)| *k == (hp, wp)) {
            return Ok(m.clone());
        }
        let (w, l) = (self.window, self.window * self.window);
        let g = (hp / w) * (wp / w);
        let m = Tensor::from_vec(shifted_window_mask(hp, wp, w, self.shift), (g, 1, l, l), self.bias_table.device())?;
        masks.push(((hp, wp), m.clone()));
        Ok(m)
    }

    /// `x`: (N, h, w, C).
    fn forward<O: Ops>(&self, o: &O, x: &O::T, h: usize, w: usize) -> Result<O::T> {
        let (ws, c) = (self.window, self.dim);
        // Shifted windows: (N, h, w, C) → (N·windows, ws², C) and back.
        let y = o.window_partition(&self.norm1.forward(o, x)?, ws, self.shift, (h, w, c))?;
        let bias = self.attention_bias(h.div_ceil(ws) * ws, w.div_ceil(ws) * ws)?;
        let y = self.proj.forward(o, &o.attention(&self.qkv.forward(o, &y)?, self.heads, c / self.heads, Some(&bias))?)?;
        let y = o.window_reverse(&y, ws, self.shift, (h, w, c))?;
        let x = o.add(x, &o.drop_path(&y, self.drop_path)?)?;
        let y = self.fc2.forward(o, &o.gelu(&self.fc1.forward(o, &self.norm2.forward(o, &x)?)?)?)?;
        o.add(&x, &o.drop_path(&y, self.drop_path)?)
    }
}

/// 2×2 neighbourhoods concatenated (timm's order), LayerNorm, linear 4C → 2C.
struct PatchMerging {
    norm: LayerNorm,
    reduction: Linear,
    dim: usize,
}

impl PatchMerging {
    fn forward<O: Ops>(&self, o: &O, x: &O::T, h: usize, w: usize) -> Result<O::T> {
        let c = self.dim;
        let x = o.pad_end(x, &[0, h % 2, w % 2, 0])?;
        let (h2, w2) = (h.div_ceil(2), w.div_ceil(2));
        let x = o.reshape(&o.permute(&o.reshape(&x, &[h2, 2, w2, 2, c])?, &[0, 1, 3, 4, 2, 5])?, &[h2, w2, 4 * c])?;
        self.reduction.forward(o, &self.norm.forward(o, &x)?)
    }
}

struct Stage {
    downsample: Option<PatchMerging>,
    blocks: Vec<Block>,
}

pub struct SwinTransformer {
    pub config: Config,
    patch_embed: Conv2d,
    patch_norm: LayerNorm,
    stages: Vec<Stage>,
    norm: LayerNorm,
    head: Linear,
}

impl SwinTransformer {
    pub fn new(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        let p = cfg.patch_size;
        let patch_embed = Conv2d::new(vb.pp("patch_embed.proj"), cfg.in_chans, cfg.embed_dim, p, ConvGeom { stride: p, padding: 0, groups: 1 }, true)?;
        let patch_norm = LayerNorm::new(vb.pp("patch_embed.norm"), cfg.embed_dim, LN_EPS)?;
        let total: usize = cfg.depths.iter().sum();
        let rate = |i: usize| drop_path_rate(cfg.drop_path_rate, i, total);
        let mut stages = Vec::new();
        let mut block_idx = 0;
        for (i, (&depth, &heads)) in cfg.depths.iter().zip(&cfg.num_heads).enumerate() {
            let vs = vb.pp(format!("layers.{i}"));
            let dim = cfg.dim(i);
            let downsample = if i > 0 {
                let prev = cfg.dim(i - 1);
                Some(PatchMerging {
                    norm: LayerNorm::new(vs.pp("downsample.norm"), 4 * prev, LN_EPS)?,
                    reduction: Linear::new(vs.pp("downsample.reduction"), 4 * prev, dim, false)?,
                    dim: prev,
                })
            } else {
                None
            };
            let (window, shift) = cfg.window_and_shift(i);
            let mut blocks = Vec::with_capacity(depth);
            for j in 0..depth {
                // Odd blocks use shifted windows.
                let s = if j % 2 == 1 { shift } else { 0 };
                blocks.push(Block::new(vs.pp(format!("blocks.{j}")), cfg, dim, heads, window, s, rate(block_idx))?);
                block_idx += 1;
            }
            stages.push(Stage { downsample, blocks });
        }
        let last = cfg.dim(cfg.depths.len() - 1);
        let norm = LayerNorm::new(vb.pp("norm"), last, LN_EPS)?;
        let head = Linear::new(vb.pp("head.fc"), last, cfg.num_classes, true)?;
        Ok(SwinTransformer { config: cfg.clone(), patch_embed, patch_norm, stages, norm, head })
    }

    pub fn forward<O: Ops>(&self, o: &O, x: &O::T) -> Result<O::T> {
        let (h, w) = o.input_hw(x)?;
        let p = self.config.patch_size;
        let (mut h, mut w) = (h / p, w / p);
        let x = self.patch_embed.forward(o, x)?;
        let mut x = self.patch_norm.forward(o, &o.permute(&x, &[0, 2, 3, 1])?)?;
        for stage in &self.stages {
            if let Some(merge) = &stage.downsample {
                x = merge.forward(o, &x, h, w)?;
                (h, w) = (h.div_ceil(2), w.div_ceil(2));
            }
            for block in &stage.blocks {
                x = block.forward(o, &x, h, w)?;
            }
        }
        let x = self.norm.forward(o, &x)?;
        let x = o.flatten(&o.global_avg_pool(&o.permute(&x, &[0, 3, 1, 2])?)?)?;
        self.head.forward(o, &x)
    }
}

/// A registered variant: timm's `swin_*_patch4_window7_224`.
struct Variant {
    name: &'static str,
    embed_dim: usize,
    depths: &'static [usize],
    heads: &'static [usize],
    /// Drop-path rate of the official 300-epoch recipe.
    drop_path: f64,
}

const VARIANTS: &[Variant] = &[
    Variant { name: "swin_tiny_patch4_window7_224", embed_dim: 96, depths: &[2, 2, 6, 2], heads: &[3, 6, 12, 24], drop_path: 0.2 },
    Variant { name: "swin_small_patch4_window7_224", embed_dim: 96, depths: &[2, 2, 18, 2], heads: &[3, 6, 12, 24], drop_path: 0.3 },
    Variant { name: "swin_base_patch4_window7_224", embed_dim: 128, depths: &[2, 2, 18, 2], heads: &[4, 8, 16, 32], drop_path: 0.5 },
];

pub struct SwinFamily;
pub static FAMILY: SwinFamily = SwinFamily;

static ABOUT: About = About {
    name: "Swin Transformer", paper: "https://arxiv.org/abs/2103.14030",
    code: "https://github.com/microsoft/Swin-Transformer (timm: timm/models/swin_transformer.py)",
    preprocessing: Preprocessing::imagenet(0.9), // timm's swin_*.ms_in1k
    head: ["head.fc.weight", "head.fc.bias"], small_image_stem: Some(2), dynamic_input_size: false,
    etpp_resolutions: ETPP_RESOLUTIONS,
};

impl Family for SwinFamily {
    fn about(&self) -> &'static About { &ABOUT }
    fn variants(&self) -> Vec<&'static str> { VARIANTS.iter().map(|v| v.name).collect() }
    fn config(&self, name: &str, opts: &ModelOptions) -> crate::error::Result<ModelConfig> {
        let v = VARIANTS.iter().find(|v| v.name == name).ok_or_else(|| unknown(name))?;
        let mut cfg = Config::new(v.embed_dim, v.depths, v.heads);
        cfg.patch_size = opts.stem_stride.unwrap_or(4);
        cfg.img_size = opts.img_size.unwrap_or(224);
        Ok(ModelConfig::Swin(cfg).with_common(opts))
    }
    /// timm's `group_matcher`: the patch embedding 0, then every block in order (a stage's
    /// downsample with its first block), the final norm with the last block, the head last.
    fn layer_ids(&self, names: &[String]) -> LayerIds {
        let key = |n: &str| {
            if n.starts_with("patch_embed") {
                GroupKey::Matched(vec![0])
            } else if let (Some(i), true) = (captures(n, &["layers."]), n.contains(".downsample")) {
                GroupKey::Matched(vec![1, i[0], 0])
            } else if let Some(v) = captures(n, &["layers.", "blocks."]) {
                GroupKey::Matched(vec![1, v[0], v[1]])
            } else if n.starts_with("norm") {
                GroupKey::Matched(vec![1, MATCH_PREV])
            } else {
                GroupKey::Unmatched
            }
        };
        group_by_keys(&names.iter().map(|n| key(n)).collect::<Vec<_>>())
    }
    fn official_names(&self) -> Option<OfficialNames> {
        Some(OfficialNames {
            layout: "official Swin",
            detect: |names| names.iter().any(|n| n.contains("relative_position_bias_table")) && !names.iter().any(|n| n.starts_with("head.fc.")),
            map: official_name,
        })
    }
    /// ET++'s Swin scripts: the shared recipe with gradients clipped to norm 5.
    fn recipe(&self, name: &str) -> Option<Recipe> {
        let v = VARIANTS.iter().find(|v| v.name == name)?;
        Some(Recipe { clip_grad: Some(5.0), ..Recipe::etpp(v.drop_path, "Swin (Liu et al. 2021) as ET++'s Swin scripts train it: clipping 5.0") })
    }
}

/// microsoft/Swin-Transformer names → timm's: the official patch merging ends stage i
/// (timm's starts stage i + 1), the head has no `.fc`, and the relative-position index and
/// attention masks are buffers timm recomputes.
fn official_name(name: &str) -> Option<String> {
    let mut s: Vec<String> = name.split('.').map(str::to_string).collect();
    if s.iter().any(|p| p == "relative_position_index" || p == "attn_mask") {
        return None;
    }
    if s.len() > 2 && s[0] == "layers" && s[2] == "downsample" {
        let i: usize = s[1].parse().ok()?;
        s[1] = (i + 1).to_string();
    } else if s[0] == "head" {
        s.insert(1, "fc".into());
    }
    Some(s.join("."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_and_shifts_follow_timm_at_224() {
        let cfg = Config::new(96, &[2, 2, 6, 2], &[3, 6, 12, 24]);
        assert_eq!((0..4).map(|i| cfg.window_and_shift(i)).collect::<Vec<_>>(), vec![(7, 3), (7, 3), (7, 3), (7, 0)]);
        let mut small = cfg.clone();
        small.img_size = 64;
        assert_eq!((0..4).map(|i| small.window_and_shift(i)).collect::<Vec<_>>(), vec![(7, 3), (7, 3), (4, 0), (2, 0)]);
    }

    #[test]
    fn relative_index_and_mask_as_timm() {
        // timm's get_relative_position_index(2, 2).
        assert_eq!(relative_position_index(2), vec![4, 3, 1, 0, 5, 4, 2, 1, 7, 6, 4, 3, 8, 7, 5, 4]);
        // A 4×4 map, 2×2 windows, shift 1: the last window mixes four regions.
        let m = shifted_window_mask(4, 4, 2, 1);
        assert!(m[..16].iter().all(|&v| v == 0.0));
        let last = &m[3 * 16..];
        assert_eq!(last.iter().filter(|&&v| v == 0.0).count(), 4);
    }

    #[test]
    fn every_parameter_gets_a_gradient_with_padding_and_shifts() -> Result<()> {
        let mut cfg = Config::new(8, &[2, 2], &[1, 2]);
        cfg.window_size = 3;
        cfg.img_size = 32;
        (cfg.num_classes, cfg.drop_path_rate) = (3, 0.1);
        // 40 px: 10×10 then 5×5 maps, padded to 12×12 and 6×6 windows of 3.
        crate::test_support::assert_trains(ModelConfig::Swin(cfg), &[2, 3, 40, 40])?;
        Ok(())
    }
}
