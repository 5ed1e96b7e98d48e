//! Layer-wise lr decay groups of one variant per family against the reference code's
//! (fixture: tools/gen_layer_decay.py; EfficientTrain's optim_factory for ConvNeXt and
//! CSWin, timm's `param_groups_layer_decay` for the others).

use candle_core::{DType, Device};
use et_models::registry::{family, model_config, Model, ModelOptions};
use et_models::ParamStore;
use std::collections::BTreeMap;

#[test]
fn every_family_groups_its_parameters_as_the_reference_does() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/layer_decay.json");
    let fixture: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let decay = fixture["decay"].as_f64().unwrap();
    let models = fixture["models"].as_object().unwrap();
    assert_eq!(models.len(), 7, "one variant per family");
    for (name, want) in models {
        let want: BTreeMap<String, f64> = want.as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.as_f64().unwrap())).collect();
        let ps = ParamStore::zeros();
        let cfg = model_config(name, &ModelOptions { num_classes: 10, ..Default::default() }).unwrap();
        Model::new(&cfg, ps.var_builder(DType::F32, &Device::Cpu)).unwrap();
        let names = ps.trainable_in_creation_order();
        let ids = family(name).unwrap().layer_ids(&names);
        let got: BTreeMap<String, f64> = names.iter().cloned().zip(ids.scales(decay)).collect();
        assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>(), "{name}: parameter names");
        let wrong: Vec<String> = got.iter().filter(|(k, v)| ((**v - want[*k]) / want[*k]).abs() > 1e-9).map(|(k, v)| format!("{k}: {v} vs {}", want[k])).collect();
        assert!(wrong.is_empty(), "{name}: {} of {} scales differ, e.g. {:?}", wrong.len(), got.len(), &wrong[..wrong.len().min(6)]);
    }
}
