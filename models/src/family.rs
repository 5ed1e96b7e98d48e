//! What a model family knows about itself, in one place per family (as timm pairs each
//! model file with its registrations, `default_cfg`s and `checkpoint_filter_fn`): its
//! variants, default preprocessing, classifier names, small-image stem, layer ids for
//! layer-wise lr decay, official checkpoint names, ET++ resolutions and training recipe.
//! The registry is the list of these; nothing dispatches on name prefixes.

use crate::error::Result;
use crate::registry::{ModelConfig, ModelOptions};

pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// The preprocessing a family's reference weights expect (timm's pretrained config).
#[derive(Clone, Debug, PartialEq)]
pub struct Preprocessing {
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// Centre-crop fraction: evaluation resizes the shorter side to r / crop_pct.
    pub crop_pct: f64,
    pub interpolation: &'static str,
    pub input_size: usize,
}

impl Preprocessing {
    /// ImageNet statistics, bicubic, 224 px, with this crop fraction.
    pub const fn imagenet(crop_pct: f64) -> Self {
        Preprocessing { mean: IMAGENET_MEAN, std: IMAGENET_STD, crop_pct, interpolation: "bicubic", input_size: 224 }
    }
}

/// Layer id of every parameter for layer-wise lr decay: a parameter at id `i` learns at
/// lr · decay^(max − i), so the head (id `max`) keeps the full rate.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerIds {
    pub ids: Vec<usize>,
    pub max: usize,
}

impl LayerIds {
    /// The lr scale of each parameter.
    pub fn scales(&self, decay: f64) -> Vec<f64> {
        self.ids.iter().map(|&i| decay.powi((self.max - i) as i32)).collect()
    }
}

/// A group key of timm's `group_with_matcher`: numbers compared as a tuple; an unmatched
/// parameter (the head) sorts last.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum GroupKey {
    Matched(Vec<u64>),
    Unmatched,
}

/// timm's `MATCH_PREV_GROUP`: a key ending in it joins the group before it (a final norm
/// joins the last block).
pub const MATCH_PREV: u64 = 99999;

/// timm's `group_with_matcher(..., reverse=True)`: distinct keys in sorted order become
/// consecutive layer ids, except that keys ending in [`MATCH_PREV`] keep the previous id.
pub fn group_by_keys(keys: &[GroupKey]) -> LayerIds {
    let mut sorted: Vec<&GroupKey> = keys.iter().collect();
    sorted.sort();
    sorted.dedup();
    let mut id_of: Vec<(&GroupKey, usize)> = Vec::with_capacity(sorted.len());
    let mut lid: Option<usize> = None;
    for k in sorted {
        let joins_prev = matches!(k, GroupKey::Matched(v) if v.last() == Some(&MATCH_PREV));
        lid = Some(match lid {
            Some(l) if joins_prev => l,
            Some(l) => l + 1,
            None => 0,
        });
        id_of.push((k, lid.unwrap_or(0)));
    }
    let ids: Vec<usize> = keys.iter().map(|k| id_of.iter().find(|(g, _)| *g == k).map_or(0, |(_, i)| *i)).collect();
    let max = ids.iter().copied().max().unwrap_or(0);
    LayerIds { ids, max }
}

/// The integers captured from `name` after each of `prefixes` in turn: `captures("layers.2.
/// blocks.5.x", &["layers.", "blocks."])` is [2, 5]; `None` if a prefix or number is missing.
pub fn captures(name: &str, prefixes: &[&str]) -> Option<Vec<u64>> {
    let mut rest = name;
    let mut out = Vec::new();
    for p in prefixes {
        rest = rest.strip_prefix(p)?;
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        out.push(rest[..digits].parse().ok()?);
        rest = rest[digits..].strip_prefix('.').unwrap_or(&rest[digits..]);
    }
    Some(out)
}

/// A checkpoint naming scheme other than ours (the official repository's), recognised by
/// its names and mapped to ours; `map` returns `None` for tensors we recompute.
#[derive(Clone, Copy)]
pub struct OfficialNames {
    /// Where the names come from, for messages ("official ConvNeXt").
    pub layout: &'static str,
    /// Whether a checkpoint with these names uses the layout.
    pub detect: fn(&[&str]) -> bool,
    pub map: fn(&str) -> Option<String>,
}

/// The optimiser of a recipe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecipeOptimizer {
    AdamW,
    Lamb,
}

/// How long the lr warms up in a recipe.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Warmup {
    /// Epochs counted in the first stage's (rescaled) epochs, as ET++'s scripts pass them.
    FirstStageEpochs(f64),
    /// A share of the whole budget (DeiT).
    BudgetShare(f64),
}

/// The official ImageNet recipe of a variant: values for an effective batch of
/// `effective_batch`, the lr scaled linearly for another effective batch.
#[derive(Clone, Debug, PartialEq)]
pub struct Recipe {
    pub optimizer: RecipeOptimizer,
    pub lr: f64,
    pub effective_batch: usize,
    pub min_lr: f64,
    pub weight_decay: f64,
    pub warmup: Warmup,
    /// Drop-path rate of a 300-epoch run (ET++ scales it by budget / 200).
    pub drop_path: f64,
    pub clip_grad: Option<f64>,
    pub ema_decay: Option<f64>,
    pub label_smoothing: f64,
    pub mixup: f64,
    pub cutmix: f64,
    pub reprob: f64,
    pub crop_min_scale: f64,
    /// Where the values come from.
    pub source: &'static str,
}

impl Recipe {
    /// The recipe that ET++'s scripts share across families (DeiT's hyper-parameters at an
    /// effective batch of 4096): AdamW lr 4e-3, wd 0.05, 20 warm-up epochs, label smoothing
    /// 0.1, Mixup 0.8 / CutMix 1.0, random erasing 0.25, crop scale from 0.08.
    pub fn etpp(drop_path: f64, source: &'static str) -> Recipe {
        Recipe {
            optimizer: RecipeOptimizer::AdamW,
            lr: 4e-3,
            effective_batch: 4096,
            min_lr: 1e-6,
            weight_decay: 0.05,
            warmup: Warmup::FirstStageEpochs(20.0),
            drop_path,
            clip_grad: None,
            ema_decay: None,
            label_smoothing: 0.1,
            mixup: 0.8,
            cutmix: 1.0,
            reprob: 0.25,
            crop_min_scale: 0.08,
            source,
        }
    }
}

/// ET++'s ten-stage resolution list at 224 px for ResNet, Swin and CSWin (and the families
/// the paper gives no list for).
pub const ETPP_RESOLUTIONS: [usize; 10] = [96, 96, 160, 160, 160, 160, 224, 224, 224, 224];

/// The plain facts of a family, one table per family.
#[derive(Clone, Debug, PartialEq)]
pub struct About {
    /// The family's name for people ("ConvNeXt").
    pub name: &'static str,
    pub paper: &'static str,
    /// The reference code (timm's file where the weights come from there).
    pub code: &'static str,
    /// Preprocessing of the reference weights.
    pub preprocessing: Preprocessing,
    /// The classifier's weight and bias (re-initialised for another number of classes).
    pub head: [&'static str; 2],
    /// The stem stride et-train gives images under 64 px where the family has a small-image
    /// stem (`ModelOptions::stem_stride`); `None`: only the reference stem, inputs ≥ 32 px.
    pub small_image_stem: Option<usize>,
    /// Whether one exported graph takes any input size (convolutional families); position
    /// embeddings, windows and stripes fix the others to the export size.
    pub dynamic_input_size: bool,
    /// ET++'s resolution per stage at a base of 224 px.
    pub etpp_resolutions: [usize; 10],
}

/// A family: its facts, variants, and the rules that need code.
pub trait Family: Sync {
    fn about(&self) -> &'static About;
    /// Registered variant names, smallest first.
    fn variants(&self) -> Vec<&'static str>;
    /// The architecture of `variant` (one of [`Family::variants`]) with `opts`.
    fn config(&self, variant: &str, opts: &ModelOptions) -> Result<ModelConfig>;
    /// Layer ids for layer-wise lr decay of the trainable parameters `names`, given in the
    /// order the model creates them (the order of PyTorch's `named_parameters`).
    fn layer_ids(&self, names: &[String]) -> LayerIds;
    /// An official naming scheme that `et-export convert` maps to ours, if it differs.
    fn official_names(&self) -> Option<OfficialNames> {
        None
    }
    /// The official ImageNet training recipe of `variant`, where the project has it.
    fn recipe(&self, _variant: &str) -> Option<Recipe> {
        None
    }

    fn name(&self) -> &'static str {
        self.about().name
    }
    fn preprocessing(&self) -> Preprocessing {
        self.about().preprocessing.clone()
    }
    fn head_names(&self) -> [&'static str; 2] {
        self.about().head
    }
    fn small_image_stem(&self) -> Option<usize> {
        self.about().small_image_stem
    }
    fn dynamic_input_size(&self) -> bool {
        self.about().dynamic_input_size
    }
    fn etpp_resolutions(&self) -> [usize; 10] {
        self.about().etpp_resolutions
    }
}

/// Stage lists of a config read from a file: as many depths as widths (1 to 8 stages), every
/// depth in 1..=256 and width in 1..=8192 (larger values are damage, not a model).
pub fn check_stages(depths: &[usize], dims: &[usize]) -> std::result::Result<(), String> {
    if depths.is_empty() || depths.len() > 8 || depths.len() != dims.len() {
        return Err(format!("{} stage depths and {} stage widths: both need the same length, 1 to 8", depths.len(), dims.len()));
    }
    if let Some(d) = depths.iter().find(|&&d| !(1..=256).contains(&d)) {
        return Err(format!("a stage depth of {d} (1..=256)"));
    }
    if let Some(d) = dims.iter().find(|&&d| !(1..=8192).contains(&d)) {
        return Err(format!("a stage width of {d} (1..=8192)"));
    }
    Ok(())
}

/// Attention heads per stage: one per stage, each dividing its stage's width.
pub fn check_heads(dims: &[usize], heads: &[usize]) -> std::result::Result<(), String> {
    if heads.len() != dims.len() {
        return Err(format!("{} head counts for {} stages", heads.len(), dims.len()));
    }
    match dims.iter().zip(heads).find(|(&d, &h)| h == 0 || d % h != 0) {
        Some((d, h)) => Err(format!("{h} heads cannot split a width of {d}")),
        None => Ok(()),
    }
}

/// Whether an input of `height` × `width` is at least `min` on both sides (`why`: what sets
/// the minimum, for the message).
pub fn check_min_input(height: usize, width: usize, min: usize, why: &str) -> std::result::Result<(), String> {
    if height < min || width < min {
        return Err(format!("the smallest input is {min}x{min} ({why})"));
    }
    Ok(())
}

/// A drop-path rate in [0, 1).
pub fn check_rate(rate: f64) -> std::result::Result<(), String> {
    if (0.0..1.0).contains(&rate) {
        Ok(())
    } else {
        Err(format!("drop_path_rate {rate} (must be in [0, 1))"))
    }
}

/// The error for a small-image stem asked of a family that has none.
pub fn reject_small_stem(name: &str, opts: &ModelOptions) -> Result<()> {
    match opts.stem_stride {
        Some(s) => Err(crate::ModelError::UnsupportedOption {
            model: name.to_string(),
            option: format!("a small-image stem (stem stride {s})"),
            reason: "only the reference stem is implemented; its inputs must be at least 32x32".to_string(),
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grouping_follows_timm() {
        let m = |v: &[u64]| GroupKey::Matched(v.to_vec());
        // stem, block 1, block 0, a norm joining the last block, the head.
        let keys = [m(&[0]), m(&[1, 1]), m(&[1, 0]), m(&[1, MATCH_PREV]), GroupKey::Unmatched, m(&[1, 0])];
        let g = group_by_keys(&keys);
        assert_eq!(g.ids, vec![0, 2, 1, 2, 3, 1]);
        assert_eq!(g.max, 3);
        assert_eq!(g.scales(0.5), vec![0.125, 0.5, 0.25, 0.5, 1.0, 0.25]);
        assert_eq!(captures("layers.2.blocks.15.attn", &["layers.", "blocks."]), Some(vec![2, 15]));
        assert_eq!(captures("layers.x", &["layers."]), None);
        assert_eq!(captures("layer3.1.conv1", &["layer", ""]), Some(vec![3, 1]));
    }
}
