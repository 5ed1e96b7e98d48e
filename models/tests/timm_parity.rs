//! The models against timm: logits on fixtures written by tools/gen_fixtures.py (timm
//! modules, random weights), and parameter counts of every registered variant.

use candle_core::{DType, Device, Tensor};
use et_models::registry::{model_config, model_names, ModelConfig, ModelOptions};
use et_kernels::CandleOps;
use et_models::{convnext, Model, ParamStore};
use std::collections::HashMap;
use std::path::Path;

fn fixture(name: &str) -> HashMap<String, Tensor> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(format!("{name}.safetensors"));
    candle_core::safetensors::load(&path, &Device::Cpu).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Loads the fixture's weights strictly into `cfg` and compares logits for every input.
fn check(name: &str, cfg: convnext::Config) {
    let tensors = fixture(name);
    let weights: HashMap<String, Tensor> = tensors.iter().filter(|(k, _)| !k.starts_with("__")).map(|(k, v)| (k.clone(), v.clone())).collect();
    let dir = std::env::temp_dir().join(format!("et-parity-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let wpath = dir.join("w.safetensors");
    et_models::params::save_tensors(&weights, &wpath).unwrap();
    let ps = ParamStore::new(0);
    let model = Model::new(&ModelConfig::Convnext(cfg), ps.var_builder(DType::F32, &Device::Cpu)).unwrap();
    ps.load(&wpath, &[]).unwrap();
    let mut i = 0;
    while let Some(x) = tensors.get(&format!("__input{i}__")) {
        let want = &tensors[&format!("__logits{i}__")];
        let got = model.forward(&CandleOps::eval(), x).unwrap();
        let diff = (got - want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        assert!(diff <= 1e-4, "{name} input {i} {:?}: max abs diff {diff}", x.dims());
        i += 1;
    }
    assert!(i >= 2, "{name}: fixture has {i} inputs");
    std::fs::remove_dir_all(&dir).ok();
}

fn small(depths: &[usize], conv_mlp: bool, classes: usize, stem: usize) -> convnext::Config {
    let mut c = convnext::Config::new(depths, &[8, 16, 24, 32], conv_mlp);
    c.num_classes = classes;
    c.stem_stride = stem;
    c
}

#[test]
fn convnext_conv_mlp_matches_timm() {
    check("convnext_convmlp", small(&[1, 1, 2, 1], true, 7, 4));
}

#[test]
fn convnext_linear_mlp_matches_timm() {
    check("convnext_linear", small(&[1, 2, 1, 1], false, 5, 4));
}

#[test]
fn convnext_small_image_stem_matches_timm_modules() {
    check("convnext_stem2", small(&[1, 1, 1, 1], true, 10, 2));
}

#[test]
fn parameter_counts_equal_timm() {
    // timm 1.0.31, num_classes=1000: sum(p.numel() for p in timm.create_model(name).parameters()).
    let timm = [
        ("convnext_atto", 3_695_520),
        ("convnext_femto", 5_217_784),
        ("convnext_pico", 9_045_672),
        ("convnext_nano", 15_593_560),
        ("convnext_tiny", 28_589_128),
        ("convnext_small", 50_223_688),
        ("convnext_base", 88_591_464),
        ("resnet18", 11_689_512),
        ("resnet34", 21_797_672),
        ("resnet50", 25_557_032),
        ("deit_tiny_patch16_224", 5_717_416),
        ("deit_small_patch16_224", 22_050_664),
        ("deit_base_patch16_224", 86_567_656),
        ("swin_tiny_patch4_window7_224", 28_288_354),
        ("swin_small_patch4_window7_224", 49_606_258),
        ("swin_base_patch4_window7_224", 87_768_224),
        ("pvt_v2_b0", 3_666_760),
        ("pvt_v2_b1", 14_009_000),
        ("pvt_v2_b2", 25_362_856),
        ("caformer_s18", 26_341_656),
        ("caformer_s36", 39_297_102),
        ("caformer_m36", 56_204_878),
        // Not in timm: the official code (microsoft/CSWin-Transformer models/cswin.py) and
        // tools/cswin_ref.py both count these.
        ("CSWin_64_12211_tiny_224", 22_320_552),
        ("CSWin_64_24322_small_224", 34_643_304),
        ("CSWin_96_24322_base_224", 77_382_184),
    ];
    assert_eq!(model_names(), timm.iter().map(|t| t.0).collect::<Vec<_>>());
    for (name, count) in timm {
        let ps = ParamStore::zeros();
        let cfg = model_config(name, &ModelOptions::default()).unwrap();
        Model::new(&cfg, ps.var_builder(DType::F32, &Device::Cpu)).unwrap();
        assert_eq!(ps.num_trainable(), count, "{name}");
    }
}

/// Registered models at full size: weights and inputs from `fixture_values` (shared with
/// tools/gen_fixtures.py), logits from timm in zoo_logits.safetensors.
fn check_zoo(key: &str, name: &str, stem_stride: Option<usize>, sizes: &[usize]) {
    check_zoo_at(key, name, stem_stride, None, sizes)
}

fn check_zoo_at(key: &str, name: &str, stem_stride: Option<usize>, img_size: Option<usize>, sizes: &[usize]) {
    check_against("zoo_logits", key, name, stem_stride, img_size, sizes)
}

fn check_against(file: &str, key: &str, name: &str, stem_stride: Option<usize>, img_size: Option<usize>, sizes: &[usize]) {
    let logits = fixture(file);
    let ps = ParamStore::new(0);
    let opts = ModelOptions { num_classes: 1000, drop_path_rate: 0.0, stem_stride, img_size };
    let cfg = model_config(name, &opts).unwrap();
    let model = Model::new(&cfg, ps.var_builder(DType::F32, &Device::Cpu)).unwrap();
    et_models::testing::fill_for_fixture(&ps).unwrap();
    for &s in sizes {
        let want = logits.get(&format!("{key}@{s}")).unwrap_or_else(|| panic!("fixture lacks {key}@{s}: rerun tools/gen_fixtures.py"));
        let x = Tensor::from_vec(et_models::testing::fixture_values("__input__", &[2, 3, s, s]), (2, 3, s, s), &Device::Cpu).unwrap();
        let got = model.forward(&CandleOps::eval(), &x).unwrap();
        let scale = want.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        let diff = (got - want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        // 1e-4 absolute for logits of order one; relative to the logits' size beyond that.
        assert!(diff <= 1e-4 * scale.max(1.0), "{key} at {s}px: max abs diff {diff} (logits up to {scale})");
        println!("{key} at {s}px: max abs diff {diff:.2e} (logits up to {scale:.2})");
    }
}

#[test]
fn convnext_atto_full_size_matches_timm() {
    check_zoo("convnext_atto", "convnext_atto", None, &[224, 160]);
}

#[test]
fn convnext_tiny_full_size_matches_timm() {
    check_zoo("convnext_tiny", "convnext_tiny", None, &[224]);
}

#[test]
fn resnet18_matches_timm() {
    check_zoo("resnet18", "resnet18", None, &[224, 160]);
}

#[test]
fn resnet50_matches_timm() {
    check_zoo("resnet50", "resnet50", None, &[224, 128]);
}

#[test]
fn resnet18_small_stem_matches_timm_modules() {
    check_zoo("resnet18_stem1", "resnet18", Some(1), &[32]);
}

#[test]
fn deit_tiny_matches_timm_at_224_and_with_resampled_position_embedding() {
    check_zoo("deit_tiny_patch16_224", "deit_tiny_patch16_224", None, &[224, 160]);
}

#[test]
fn deit_tiny_with_small_patches_matches_timm() {
    check_zoo_at("deit_tiny_p4", "deit_tiny_patch16_224", Some(4), Some(32), &[32, 24]);
}

#[test]
fn swin_tiny_matches_timm_at_224_and_with_padded_windows() {
    // 160 and 96 px: every stage's map is padded to the 7×7 windows (timm's dynamic_img_size).
    check_zoo("swin_tiny_patch4_window7_224", "swin_tiny_patch4_window7_224", None, &[224, 160, 96]);
}

#[test]
fn pvt_v2_b0_matches_timm_at_any_resolution() {
    check_zoo("pvt_v2_b0", "pvt_v2_b0", None, &[224, 160, 100]);
}

#[test]
fn caformer_s18_matches_timm_at_any_resolution() {
    check_zoo("caformer_s18", "caformer_s18", None, &[224, 160, 100]);
}

#[test]
fn cswin_tiny_matches_the_reference_at_224_and_with_narrower_stripes() {
    // Reference: tools/cswin_ref.py (official architecture); 160 and 96 px use stripe widths
    // [1, 2, 5, 5] and [1, 2, 3, 3].
    check_zoo("CSWin_64_12211_tiny_224", "CSWin_64_12211_tiny_224", None, &[224, 160, 96]);
}

/// The larger variants, against logits from `tools/gen_fixtures.py --large` (not committed:
/// run that first, then `cargo test --release -p et-models --test timm_parity -- --ignored`).
#[test]
#[ignore]
fn large_variants_match_timm() {
    for name in ["convnext_femto", "convnext_pico", "convnext_nano", "convnext_small", "convnext_base", "resnet34", "deit_small_patch16_224", "deit_base_patch16_224", "swin_small_patch4_window7_224", "swin_base_patch4_window7_224", "pvt_v2_b1", "pvt_v2_b2", "caformer_s36", "caformer_m36", "CSWin_64_24322_small_224", "CSWin_96_24322_base_224"] {
        check_against("zoo_logits_large", name, name, None, None, &[224]);
    }
}
