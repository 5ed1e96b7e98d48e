//! `et-export convert`: reference checkpoints with the official repositories' names (and
//! timm's) become our weights; a checkpoint that does not fit names what is wrong.

mod common;
use candle_core::{DType, Device, Tensor};
use common::*;
use et_models::registry::{model_config, ModelOptions};
use et_models::{Model, ParamStore};
use std::collections::HashMap;

/// The official ConvNeXt repository's name for one of ours, written independently of the
/// converter (facebookresearch/ConvNeXt models/convnext.py).
fn official_convnext_name(ours: &str) -> String {
    let p: Vec<&str> = ours.split('.').collect();
    match p.as_slice() {
        ["stem", rest @ ..] => format!("downsample_layers.0.{}", rest.join(".")),
        ["stages", i, "downsample", rest @ ..] => format!("downsample_layers.{i}.{}", rest.join(".")),
        ["stages", i, "blocks", j, rest @ ..] => {
            let r = rest.join(".").replace("conv_dw", "dwconv").replace("mlp.fc1", "pwconv1").replace("mlp.fc2", "pwconv2");
            format!("stages.{i}.{j}.{r}")
        }
        ["head", "norm", rest @ ..] => format!("norm.{}", rest.join(".")),
        ["head", "fc", rest @ ..] => format!("head.{}", rest.join(".")),
        _ => panic!("unexpected name {ours}"),
    }
}

fn weights_of(model: &str, classes: usize, seed: u64) -> HashMap<String, Tensor> {
    let cfg = model_config(model, &ModelOptions { num_classes: classes, ..Default::default() }).unwrap();
    let ps = ParamStore::new(seed);
    Model::new(&cfg, ps.var_builder(DType::F32, &Device::Cpu)).unwrap();
    ps.tensors()
}

fn assert_same(a: &HashMap<String, Tensor>, path: &std::path::Path) {
    let b = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
    assert_eq!(a.len(), b.len());
    for (k, v) in a {
        let w = b.get(k).unwrap_or_else(|| panic!("{k} missing after conversion"));
        assert_eq!(v.dims(), w.dims(), "{k}");
        let d: f32 = (v - w).unwrap().abs().unwrap().max_all().unwrap().to_scalar().unwrap();
        assert_eq!(d, 0.0, "{k} changed");
    }
}

#[test]
fn official_convnext_checkpoint_converts_exactly_into_a_usable_run() {
    let tmp = TempDir::new("convert-cnx");
    let ours = weights_of("convnext_tiny", 7, 3);
    // The official names, with the pointwise convs as nn.Linear (out, in) matrices and a
    // DistributedDataParallel prefix.
    let official: HashMap<String, Tensor> = ours
        .iter()
        .map(|(k, v)| {
            let v = if k.contains("mlp.fc") && v.rank() == 4 { v.flatten_from(1).unwrap() } else { v.clone() };
            (format!("module.{}", official_convnext_name(k)), v)
        })
        .collect();
    let src = tmp.join("official.safetensors");
    candle_core::safetensors::save(&official, &src).unwrap();
    let o = run("et-export", &["convert", "--from", &tmp.s("official.safetensors"), "--model", "convnext_tiny", "--out", &tmp.s("run")]);
    assert_ok(&o, "et-export convert");
    assert!(stdout(&o).contains("official ConvNeXt names") && stdout(&o).contains("7 classes"), "{}", stdout(&o));
    assert_same(&ours, &tmp.join("run/model.safetensors"));
    // The directory is a run: it exports.
    assert_ok(&run("et-export", &["--onnx", &tmp.s("run"), "--resolution", "64"]), "export the converted run");
}

#[test]
fn timm_names_pass_through_and_deit_heads_are_sized_from_the_file() {
    let tmp = TempDir::new("convert-deit");
    let ours = weights_of("deit_tiny_patch16_224", 5, 1);
    candle_core::safetensors::save(&ours, tmp.join("timm.safetensors")).unwrap();
    let o = run("et-export", &["convert", "--from", &tmp.s("timm.safetensors"), "--model", "deit_tiny_patch16_224", "--out", &tmp.s("w.safetensors")]);
    assert_ok(&o, "convert timm names");
    assert!(stdout(&o).contains("timm names") && stdout(&o).contains("5 classes"), "{}", stdout(&o));
    assert_same(&ours, &tmp.join("w.safetensors"));
}

#[test]
fn a_real_training_checkpoint_is_read_and_a_misfit_is_named() {
    // torch.save({'model', 'model_ema', 'optimizer', 'epoch', 'args': Namespace}) of a
    // ConvNeXt narrower than any registered one (tools/gen_convert_fixture.py).
    let fixture = repo_root().join("tests/fixtures/official_convnext_tiny.pth");
    let f = fixture.to_str().unwrap();
    let tmp = TempDir::new("convert-pth");
    let out = tmp.s("w.safetensors");
    let o = run("et-export", &["convert", "--from", f, "--model", "convnext_atto", "--out", &out]);
    assert_clean_failure(&o, "et-export", "does not fit convnext_atto (official ConvNeXt names)");
    let err = stderr(&o);
    // Names are mapped (the official `norm` is our `head.norm`) before shapes are compared.
    assert!(err.contains("shape mismatch: ") && err.contains("head.norm.bias (file [32], model [320])"), "{err}");
    assert!(err.contains("missing: stages.0.blocks.1.conv_dw.bias"), "atto has 2 blocks in stage 0, the checkpoint 1: {err}");
    assert!(!tmp.join("w.safetensors").exists(), "nothing is left behind");
    // --ema reads the other state dict (different values, same misfit).
    assert_clean_failure(&run("et-export", &["convert", "--from", f, "--model", "convnext_atto", "--out", &out, "--ema"]), "et-export", "does not fit");

    for (bytes, needle) in [(&b"not a checkpoint"[..], "cannot read checkpoint"), (&std::fs::read(&fixture).unwrap()[..5000], "cannot read checkpoint")] {
        std::fs::write(tmp.join("bad.pth"), bytes).unwrap();
        assert_clean_failure(&run("et-export", &["convert", "--from", &tmp.s("bad.pth"), "--model", "convnext_atto", "--out", &out]), "et-export", needle);
    }
    assert_clean_failure(&run("et-export", &["convert", "--from", f, "--model", "convnext_huge", "--out", &out]), "et-export", "convnext_huge");
}

#[test]
fn official_swin_checkpoint_drops_recomputed_buffers_and_moves_patch_merging() {
    let tmp = TempDir::new("convert-swin");
    let ours = weights_of("swin_tiny_patch4_window7_224", 4, 2);
    // microsoft/Swin-Transformer: patch merging at the end of stage i (timm: start of i + 1),
    // `head` without `.fc`, and the index / mask buffers in the state dict.
    let mut official: HashMap<String, Tensor> = HashMap::new();
    for (k, v) in &ours {
        let p: Vec<&str> = k.split('.').collect();
        let name = match p.as_slice() {
            ["layers", i, "downsample", rest @ ..] => format!("layers.{}.downsample.{}", i.parse::<usize>().unwrap() - 1, rest.join(".")),
            ["head", "fc", rest @ ..] => format!("head.{}", rest.join(".")),
            _ => k.clone(),
        };
        if k.ends_with("relative_position_bias_table") {
            let index = k.replace("relative_position_bias_table", "relative_position_index");
            official.insert(index, Tensor::zeros((49, 49), DType::I64, &Device::Cpu).unwrap());
        }
        official.insert(name, v.clone());
    }
    official.insert("layers.0.blocks.1.attn_mask".into(), Tensor::zeros((64, 49, 49), DType::F32, &Device::Cpu).unwrap());
    candle_core::safetensors::save(&official, tmp.join("swin.safetensors")).unwrap();
    let o = run("et-export", &["convert", "--from", &tmp.s("swin.safetensors"), "--model", "swin_tiny_patch4_window7_224", "--out", &tmp.s("w.safetensors")]);
    assert_ok(&o, "convert official Swin");
    assert!(stdout(&o).contains("official Swin names") && stdout(&o).contains("recomputed buffers dropped"), "{}", stdout(&o));
    assert_same(&ours, &tmp.join("w.safetensors"));
}
