//! Layer-wise learning-rate decay for fine-tuning (BEiT / ConvNeXt recipes): a parameter at
//! layer id `i` of `n` gets lr · decay^(n − i), so the head learns at the full rate and the
//! stem at the smallest. Layer ids follow the official code, on timm's parameter names.

use crate::schedule::Family;
use std::collections::{BTreeSet, HashMap};

fn index_after(name: &str, prefix: &str) -> Option<usize> {
    name.strip_prefix(prefix)?.split('.').next()?.parse().ok()
}

/// ConvNeXt's `get_num_layer_for_convnext` (12 layers; head = 13).
fn convnext_layer(name: &str) -> usize {
    if name.starts_with("stem.") {
        return 0;
    }
    if let Some(stage) = index_after(name, "stages.") {
        let rest = &name[format!("stages.{stage}.").len()..];
        if rest.starts_with("downsample") {
            return match stage {
                0 => 0,
                1 | 2 => stage + 1,
                _ => 12,
            };
        }
        if let Some(block) = index_after(rest, "blocks.") {
            return match stage {
                0 | 1 => stage + 1,
                2 => 3 + block / 3,
                _ => 12,
            };
        }
    }
    13
}

/// Learning-rate multipliers for every name in `names`.
pub fn layer_scales(names: &[String], family: Family, decay: f64) -> HashMap<String, f64> {
    let (ids, max): (Vec<usize>, usize) = match family {
        Family::ConvNeXt => (names.iter().map(|n| convnext_layer(n)).collect(), 13),
        Family::DeiT => {
            // BEiT's get_num_layer_for_vit: embeddings 0, block i → i + 1, the rest depth + 1.
            let depth = names.iter().filter_map(|n| index_after(n, "blocks.")).max().map_or(0, |d| d + 1);
            let ids = names
                .iter()
                .map(|n| {
                    if n == "cls_token" || n == "pos_embed" || n == "dist_token" || n.starts_with("patch_embed.") {
                        0
                    } else if let Some(b) = index_after(n, "blocks.") {
                        b + 1
                    } else {
                        depth + 1
                    }
                })
                .collect();
            (ids, depth + 1)
        }
        Family::Other => {
            // ResNet (timm's group matcher): stem 0, each residual block in order, head last.
            let blocks: BTreeSet<(usize, usize)> = names
                .iter()
                .filter_map(|n| {
                    let l = index_after(n, "layer")?;
                    let b = index_after(&n[format!("layer{l}.").len()..], "")?;
                    Some((l, b))
                })
                .collect();
            let order: HashMap<(usize, usize), usize> = blocks.iter().enumerate().map(|(i, k)| (*k, i + 1)).collect();
            let last = blocks.len() + 1;
            let ids = names
                .iter()
                .map(|n| {
                    if n.starts_with("conv1.") || n.starts_with("bn1.") {
                        return 0;
                    }
                    index_after(n, "layer")
                        .and_then(|l| index_after(&n[format!("layer{l}.").len()..], "").map(|b| order[&(l, b)]))
                        .unwrap_or(last)
                })
                .collect();
            (ids, last)
        }
    };
    names.iter().zip(ids).map(|(n, id)| (n.clone(), decay.powi((max - id) as i32))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn convnext_follows_the_official_ids() {
        let names = s(&["stem.0.weight", "stages.0.blocks.1.conv_dw.weight", "stages.2.blocks.7.mlp.fc1.weight", "stages.2.downsample.1.weight", "stages.3.blocks.0.gamma", "head.fc.weight"]);
        let m = layer_scales(&names, Family::ConvNeXt, 0.5);
        assert_eq!(m["head.fc.weight"], 1.0);
        assert_eq!(m["stem.0.weight"], 0.5f64.powi(13));
        assert_eq!(m["stages.0.blocks.1.conv_dw.weight"], 0.5f64.powi(12));
        assert_eq!(m["stages.2.blocks.7.mlp.fc1.weight"], 0.5f64.powi(13 - 5));
        assert_eq!(m["stages.2.downsample.1.weight"], 0.5f64.powi(10));
        assert_eq!(m["stages.3.blocks.0.gamma"], 0.5);
    }

    #[test]
    fn vit_and_resnet() {
        let names = s(&["cls_token", "patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "blocks.11.mlp.fc2.bias", "norm.weight", "head.weight"]);
        let m = layer_scales(&names, Family::DeiT, 0.75);
        assert_eq!(m["head.weight"], 1.0);
        assert_eq!(m["norm.weight"], 1.0);
        assert_eq!(m["cls_token"], 0.75f64.powi(13));
        assert_eq!(m["blocks.0.attn.qkv.weight"], 0.75f64.powi(12));
        assert_eq!(m["blocks.11.mlp.fc2.bias"], 0.75);
        let names = s(&["conv1.weight", "bn1.bias", "layer1.0.conv1.weight", "layer1.1.bn2.weight", "layer2.0.downsample.0.weight", "fc.weight"]);
        let m = layer_scales(&names, Family::Other, 0.5);
        assert_eq!(m["fc.weight"], 1.0);
        assert_eq!(m["conv1.weight"], 0.5f64.powi(4));
        assert_eq!(m["layer1.0.conv1.weight"], 0.5f64.powi(3));
        assert_eq!(m["layer2.0.downsample.0.weight"], 0.5);
    }
}
