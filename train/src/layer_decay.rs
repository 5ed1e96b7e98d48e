//! Layer-wise learning-rate decay for fine-tuning (BEiT's recipe, as ConvNeXt, Swin and
//! timm use it): a parameter at layer id `i` of `max` learns at lr · decay^(max − i), so the
//! head learns at the full rate and the stem at the smallest. Each family defines its layer
//! ids as its reference code does (`Family::layer_ids`); this module turns them into scales.

use et_models::Family;
use serde::Serialize;
use std::collections::HashMap;

/// Parameters that share a layer id.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LayerGroup {
    pub layer: usize,
    pub lr_scale: f64,
    pub tensors: usize,
}

/// Learning-rate multipliers for `names` (trainable parameters in creation order).
pub fn layer_scales(family: &dyn Family, names: &[String], decay: f64) -> HashMap<String, f64> {
    names.iter().cloned().zip(family.layer_ids(names).scales(decay)).collect()
}

/// The groups of `names`, stem first.
pub fn layer_groups(family: &dyn Family, names: &[String], decay: f64) -> Vec<LayerGroup> {
    let ids = family.layer_ids(names);
    let mut groups: Vec<LayerGroup> = Vec::new();
    for (&id, scale) in ids.ids.iter().zip(ids.scales(decay)) {
        match groups.iter_mut().find(|g| g.layer == id) {
            Some(g) => g.tensors += 1,
            None => groups.push(LayerGroup { layer: id, lr_scale: scale, tensors: 1 }),
        }
    }
    groups.sort_by_key(|g| g.layer);
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_count_tensors_per_layer() {
        let names: Vec<String> = ["stem.0.weight", "stages.0.blocks.0.gamma", "stages.0.blocks.1.gamma", "head.fc.weight"].iter().map(|s| s.to_string()).collect();
        let fam = &et_models::convnext::FAMILY;
        let g = layer_groups(fam, &names, 0.5);
        assert_eq!(g, vec![
            LayerGroup { layer: 0, lr_scale: 0.5f64.powi(13), tensors: 1 },
            LayerGroup { layer: 1, lr_scale: 0.5f64.powi(12), tensors: 2 },
            LayerGroup { layer: 13, lr_scale: 1.0, tensors: 1 },
        ]);
        assert_eq!(layer_scales(fam, &names, 0.5)["head.fc.weight"], 1.0);
    }
}
