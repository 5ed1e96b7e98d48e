//! ResNet ([He et al., 2016](https://arxiv.org/abs/1512.03385)) with timm's (=
//! torchvision's) module names: `conv1`, `bn1`, `layer{1..4}.{i}.conv{1,2,3}` /
//! `bn{1,2,3}` / `downsample.{0,1}`, `fc`. As in timm (`timm/models/resnet.py`) the
//! bottleneck's stride sits on its 3×3 conv, and the last norm of each block starts at zero.

use crate::family::{About, ETPP_RESOLUTIONS, Family, GroupKey, LayerIds, Preprocessing, Recipe, captures, check_min_input, check_rate, group_by_keys};
use crate::layers::{BatchNorm2d, Conv2d, Linear, drop_path_rate};
use crate::registry::{unknown, ModelConfig, ModelOptions};
use et_ops::{ConvGeom, Ops};
use candle_core::Result;
use candle_nn::{Init, VarBuilder};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockKind {
    Basic,
    Bottleneck,
}

impl BlockKind {
    fn expansion(self) -> usize {
        match self {
            BlockKind::Basic => 1,
            BlockKind::Bottleneck => 4,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Config {
    pub block: BlockKind,
    pub layers: Vec<usize>,
    /// `None`: timm's stem (7×7/2 conv + 3×3/2 max-pool, total stride 32). `Some(s)`: a
    /// small-image stem, one 3×3 conv with stride s and no max-pool (CIFAR-style ResNets),
    /// same weight names; total stride 8·s.
    pub small_stem_stride: Option<usize>,
    pub drop_path_rate: f64,
    pub in_chans: usize,
    pub num_classes: usize,
}

impl Config {
    pub fn new(block: BlockKind, layers: &[usize]) -> Self {
        Config { block, layers: layers.to_vec(), small_stem_stride: None, drop_path_rate: 0.0, in_chans: 3, num_classes: 1000 }
    }

    /// Total stride of the network; inputs must be at least this large.
    pub fn min_input(&self) -> usize {
        match self.small_stem_stride {
            Some(s) => 8 * s,
            None => 32,
        }
    }

    pub fn check_input(&self, height: usize, width: usize) -> std::result::Result<(), String> {
        check_min_input(height, width, self.min_input(), "its total stride")
    }

    /// A config read from a file is checked before a model is built from it.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.layers.len() != 4 || self.layers.iter().any(|&n| !(1..=64).contains(&n)) {
            return Err(format!("layers {:?}: four stages of 1 to 64 blocks", self.layers));
        }
        if self.small_stem_stride.is_some_and(|s| !(1..=4).contains(&s)) || self.in_chans == 0 {
            return Err("small_stem_stride must be 1 to 4 and in_chans at least 1".into());
        }
        check_rate(self.drop_path_rate)
    }
}

/// timm's ResNet init: Kaiming-normal (fan-out, ReLU) conv weights.
fn conv(vb: VarBuilder, c_in: usize, c_out: usize, k: usize, stride: usize) -> Result<Conv2d> {
    let std = (2.0 / (c_out * k * k) as f64).sqrt();
    let weight = vb.get_with_hints((c_out, c_in, k, k), "weight", Init::Randn { mean: 0.0, stdev: std })?;
    Ok(Conv2d { weight, bias: None, geom: ConvGeom { stride, padding: k / 2, groups: 1 } })
}

struct Block {
    convs: Vec<(Conv2d, BatchNorm2d)>,
    downsample: Option<(Conv2d, BatchNorm2d)>,
    drop_path: f64,
}

impl Block {
    fn new(vb: VarBuilder, kind: BlockKind, c_in: usize, planes: usize, stride: usize, drop_path: f64) -> Result<Self> {
        let out = planes * kind.expansion();
        // (in, out, kernel, stride) of conv1.., the stride on the 3×3 conv.
        let shapes: Vec<(usize, usize, usize, usize)> = match kind {
            BlockKind::Basic => vec![(c_in, planes, 3, stride), (planes, planes, 3, 1)],
            BlockKind::Bottleneck => vec![(c_in, planes, 1, 1), (planes, planes, 3, stride), (planes, out, 1, 1)],
        };
        let last = shapes.len();
        let convs = shapes
            .into_iter()
            .enumerate()
            .map(|(i, (ci, co, k, s))| {
                let bn_init = if i + 1 == last { 0.0 } else { 1.0 };
                Ok((conv(vb.pp(format!("conv{}", i + 1)), ci, co, k, s)?, BatchNorm2d::with_init(vb.pp(format!("bn{}", i + 1)), co, bn_init)?))
            })
            .collect::<Result<Vec<_>>>()?;
        let downsample = if stride != 1 || c_in != out {
            Some((conv(vb.pp("downsample.0"), c_in, out, 1, stride)?, BatchNorm2d::new(vb.pp("downsample.1"), out)?))
        } else {
            None
        };
        Ok(Block { convs, downsample, drop_path })
    }

    fn forward<O: Ops>(&self, o: &O, x: &O::T) -> Result<O::T> {
        let mut y = x.clone();
        for (i, (conv, bn)) in self.convs.iter().enumerate() {
            let c = conv.forward(o, &y)?;
            y = if i + 1 < self.convs.len() { bn.forward_relu(o, &c)? } else { bn.forward(o, &c)? };
        }
        let shortcut = match &self.downsample {
            Some((conv, bn)) => bn.forward(o, &conv.forward(o, x)?)?,
            None => x.clone(),
        };
        o.add_relu(&o.drop_path(&y, self.drop_path)?, &shortcut)
    }
}

pub struct ResNet {
    pub config: Config,
    conv1: Conv2d,
    bn1: BatchNorm2d,
    blocks: Vec<Block>,
    fc: Linear,
}

impl ResNet {
    pub fn new(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        let conv1 = match cfg.small_stem_stride {
            Some(s) => conv(vb.pp("conv1"), cfg.in_chans, 64, 3, s)?,
            None => conv(vb.pp("conv1"), cfg.in_chans, 64, 7, 2)?,
        };
        let bn1 = BatchNorm2d::new(vb.pp("bn1"), 64)?;
        let total: usize = cfg.layers.iter().sum();
        let rate = |i: usize| drop_path_rate(cfg.drop_path_rate, i, total);
        let mut blocks = Vec::new();
        let mut c_in = 64;
        let mut idx = 0;
        for (stage, &n) in cfg.layers.iter().enumerate() {
            let planes = 64 << stage;
            for j in 0..n {
                let stride = if stage > 0 && j == 0 { 2 } else { 1 };
                blocks.push(Block::new(vb.pp(format!("layer{}.{j}", stage + 1)), cfg.block, c_in, planes, stride, rate(idx))?);
                c_in = planes * cfg.block.expansion();
                idx += 1;
            }
        }
        // PyTorch's default Linear init, which timm keeps for the classifier.
        let bound = 1.0 / (c_in as f64).sqrt();
        let fc = Linear {
            weight: vb.pp("fc").get_with_hints((cfg.num_classes, c_in), "weight", Init::Uniform { lo: -bound, up: bound })?,
            bias: Some(vb.pp("fc").get_with_hints(cfg.num_classes, "bias", Init::Uniform { lo: -bound, up: bound })?),
        };
        Ok(ResNet { config: cfg.clone(), conv1, bn1, blocks, fc })
    }

    pub fn forward<O: Ops>(&self, o: &O, x: &O::T) -> Result<O::T> {
        let mut x = self.bn1.forward_relu(o, &self.conv1.forward(o, x)?)?;
        if self.config.small_stem_stride.is_none() {
            x = o.max_pool2d(&x, 3, 2, 1)?;
        }
        for b in &self.blocks {
            x = b.forward(o, &x)?;
        }
        let x = o.flatten(&o.global_avg_pool(&x)?)?;
        self.fc.forward(o, &x)
    }
}

/// A registered variant: timm's `resnet*` (torchvision's layout).
struct Variant {
    name: &'static str,
    block: BlockKind,
    layers: &'static [usize],
}

const VARIANTS: &[Variant] = &[
    Variant { name: "resnet18", block: BlockKind::Basic, layers: &[2, 2, 2, 2] },
    Variant { name: "resnet34", block: BlockKind::Basic, layers: &[3, 4, 6, 3] },
    Variant { name: "resnet50", block: BlockKind::Bottleneck, layers: &[3, 4, 6, 3] },
];

pub struct ResNetFamily;
pub static FAMILY: ResNetFamily = ResNetFamily;

static ABOUT: About = About {
    name: "ResNet", paper: "https://arxiv.org/abs/1512.03385",
    code: "timm/models/resnet.py (https://github.com/huggingface/pytorch-image-models)",
    preprocessing: Preprocessing::imagenet(0.95), // timm's resnet*.a1_in1k
    head: ["fc.weight", "fc.bias"], small_image_stem: Some(2), dynamic_input_size: true,
    etpp_resolutions: ETPP_RESOLUTIONS,
};

impl Family for ResNetFamily {
    fn about(&self) -> &'static About { &ABOUT }
    fn variants(&self) -> Vec<&'static str> { VARIANTS.iter().map(|v| v.name).collect() }
    fn config(&self, name: &str, opts: &ModelOptions) -> crate::error::Result<ModelConfig> {
        let v = VARIANTS.iter().find(|v| v.name == name).ok_or_else(|| unknown(name))?;
        let mut cfg = Config::new(v.block, v.layers);
        cfg.small_stem_stride = opts.stem_stride;
        Ok(ModelConfig::Resnet(cfg).with_common(opts))
    }
    /// timm's `group_matcher`: the stem, then every residual block in order, the head last.
    fn layer_ids(&self, names: &[String]) -> LayerIds {
        let key = |n: &str| {
            if ["conv1", "bn1", "maxpool"].iter().any(|p| n.starts_with(p)) {
                GroupKey::Matched(vec![0])
            } else if let Some(v) = captures(n, &["layer", ""]) {
                GroupKey::Matched([1].into_iter().chain(v).collect())
            } else {
                GroupKey::Unmatched
            }
        };
        group_by_keys(&names.iter().map(|n| key(n)).collect::<Vec<_>>())
    }
    /// ET++'s ResNet-50 script: the shared recipe, no drop path.
    fn recipe(&self, name: &str) -> Option<Recipe> {
        VARIANTS.iter().any(|v| v.name == name).then(|| Recipe::etpp(0.0, "ET++'s ResNet-50 script (the shared AdamW recipe)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use et_kernels::testing::{assert_every_parameter_learns, assert_tape_matches_graph, seeded};
    use et_kernels::CandleOps;
    use crate::params::ParamStore;
    use candle_core::{DType, Device};

    #[test]
    fn every_trainable_parameter_gets_a_gradient_and_statistics_update() -> Result<()> {
        for (kind, stem) in [(BlockKind::Basic, Some(1)), (BlockKind::Bottleneck, None)] {
            let mut cfg = Config::new(kind, &[1, 1, 1, 1]);
            cfg.small_stem_stride = stem;
            cfg.num_classes = 4;
            cfg.drop_path_rate = 0.1;
            let ps = ParamStore::new(2);
            let model = ResNet::new(ps.var_builder(DType::F32, &Device::Cpu), &cfg)?;
            // zero_init_last would block gradients to earlier convs of the branch: make it non-zero.
            for (name, var) in ps.trainable() {
                if name.ends_with("bn2.weight") || name.ends_with("bn3.weight") {
                    var.set(&var.as_tensor().ones_like()?)?;
                }
            }
            let size = if stem.is_some() { 16 } else { 64 };
            let x = seeded(&[2, 3, size, size], 3, &Device::Cpu, DType::F32)?;
            let ops = CandleOps::train(5);
            let y = model.forward(&ops, &x)?;
            assert_eq!(y.dims(), &[2, 4]);
            assert_every_parameter_learns(&ps.trainable(), &y)?;
            assert_tape_matches_graph(&ps.trainable(), 5, |o| model.forward(o, &x))?;
            let updates = ops.take_buffer_updates();
            let buffers = ps.all().len() - ps.trainable().len();
            assert_eq!(updates.len(), buffers, "every running statistic is updated once");
        }
        Ok(())
    }
}
