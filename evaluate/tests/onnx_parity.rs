//! The exported ONNX graph against the candle model it was recorded from, through ONNX
//! Runtime (`ort`), at several input sizes; and the file against onnx.checker.

use candle_core::{DType, Device};
use et_eval::backend::{CandleClassifier, Classifier, OnnxClassifier};
use et_kernels::testing::seeded;
use et_models::testing::fill_for_fixture;
use et_models::registry::{model_config, ModelOptions};
use et_models::{Model, ParamStore, RunConfig};
use std::path::{Path, PathBuf};

fn temp(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("et-onnx-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&p).unwrap();
    p
}

/// A run with O(1)-scale deterministic weights, so that logits differ clearly between inputs.
fn random_run(dir: &Path, name: &str, stem: usize, conv_mlp_linear: bool) -> RunConfig {
    random_run_at(dir, name, stem, conv_mlp_linear, None)
}

fn random_run_at(dir: &Path, name: &str, stem: usize, conv_mlp_linear: bool, img_size: Option<usize>) -> RunConfig {
    // stem 0: the model's standard (timm) stem.
    let opts = ModelOptions { num_classes: 7, drop_path_rate: 0.0, stem_stride: (stem > 0).then_some(stem), img_size };
    let mut cfg = model_config(name, &opts).unwrap();
    if let (true, et_models::registry::ModelConfig::Convnext(c)) = (conv_mlp_linear, &mut cfg) {
        c.conv_mlp = false;
    }
    let ps = ParamStore::new(3);
    Model::new(&cfg, ps.var_builder(DType::F32, &Device::Cpu)).unwrap();
    fill_for_fixture(&ps).unwrap();
    ps.save(&dir.join("model.safetensors")).unwrap();
    let rc = RunConfig {
        model: name.into(),
        model_config: cfg,
        num_classes: 7,
        class_names: (0..7).map(|i| format!("c{i}")).collect(),
        base_resolution: 32,
        mean: [0.5; 3],
        std: [0.25; 3],
        interpolation: "bicubic".into(),
        crop_pct: 1.0,
    };
    rc.save(&dir.join("config.json")).unwrap();
    rc
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn check_parity(tag: &str, name: &str, stem: usize, linear: bool, sizes: &[(usize, usize)]) {
    let dir = temp(tag);
    random_run(&dir, name, stem, linear);
    let mut candle = CandleClassifier::open(&dir).unwrap();
    let onnx_path = dir.join("model.onnx");
    et_export::export_onnx(&candle.run, 32, &onnx_path).unwrap();
    let mut ort = OnnxClassifier::open(&onnx_path, None, 2).expect("ONNX Runtime is installed by scripts/test.sh (.ort/)");
    assert_eq!(ort.num_classes(), 7);
    assert_eq!(ort.metadata.resolution, Some(32));
    for (i, &(h, w)) in sizes.iter().enumerate() {
        let x = seeded(&[3, 3, h, w], 100 + i as u64, &Device::Cpu, DType::F32).unwrap();
        let data: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        let a = candle.logits(&data, [3, 3, h, w]).unwrap();
        let b = ort.logits(&data, [3, 3, h, w]).unwrap();
        let spread = a.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(spread > 0.1, "logits too small to compare meaningfully: {spread}");
        let d = max_abs_diff(&a, &b);
        assert!(d <= 1e-4, "{name} at {h}x{w}: max abs diff {d} (logits up to {spread})");
        println!("{name} at {h}x{w}: max abs diff {d:.2e} (logits up to {spread:.2})");
    }
    check_onnx_checker(&onnx_path);
    std::fs::remove_dir_all(&dir).ok();
}

/// `onnx.checker.check_model(full_check=True)` from the `onnx` package that scripts/test.sh
/// installs into .ort/checker.
fn check_onnx_checker(path: &Path) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let site = root.join(".ort/checker");
    let out = std::process::Command::new("python3")
        .env("PYTHONPATH", &site)
        .args(["-c", "import sys, onnx; onnx.checker.check_model(onnx.load(sys.argv[1]), full_check=True); print('ok')"])
        .arg(path)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "onnx.checker rejected {} (or the onnx package is missing from {}: run scripts/test.sh):\n{}",
        path.display(),
        site.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn convnext_atto_small_stem_matches_onnx_runtime() {
    check_parity("atto", "convnext_atto", 2, false, &[(32, 32), (24, 24), (40, 24)]);
}

#[test]
fn convnext_linear_mlp_imagenet_stem_matches_onnx_runtime() {
    check_parity("femto", "convnext_femto", 4, true, &[(64, 64), (96, 96)]);
}

#[test]
fn resnet18_imagenet_stem_matches_onnx_runtime() {
    check_parity("r18", "resnet18", 0, false, &[(64, 64), (96, 80)]);
}

#[test]
fn resnet50_small_stem_matches_onnx_runtime() {
    check_parity("r50", "resnet50", 1, false, &[(32, 32), (24, 24)]);
}

/// One graph for every size: token ↔ map conversions read H and W at run time.
#[test]
fn pvt_v2_matches_onnx_runtime_at_any_size() {
    check_parity("pvt", "pvt_v2_b0", 0, false, &[(64, 64), (96, 80), (100, 100)]);
}

#[test]
fn caformer_matches_onnx_runtime_at_any_size() {
    check_parity("caformer", "caformer_s18", 0, false, &[(64, 64), (96, 80), (100, 100)]);
}

/// ViTs and Swins export one graph per resolution (position embedding resampled, windows
/// padded and masked for that size at export); the batch stays dynamic.
fn check_fixed_size_parity(tag: &str, name: &str, stem: usize, img_size: Option<usize>, resolutions: &[usize]) {
    let dir = temp(tag);
    random_run_at(&dir, name, stem, false, img_size);
    let mut candle = CandleClassifier::open(&dir).unwrap();
    for &r in resolutions {
        let path = dir.join(format!("{tag}_{r}.onnx"));
        et_export::export_onnx(&candle.run, r, &path).unwrap();
        let mut ort = OnnxClassifier::open(&path, None, 2).unwrap();
        assert!(ort.check_resolution(r).is_ok());
        let err = ort.check_resolution(r + 4).unwrap_err().to_string();
        assert!(err.contains("fixed"), "{err}");
        for batch in [2, 3] {
            let x = seeded(&[batch, 3, r, r], 7, &Device::Cpu, DType::F32).unwrap();
            let data: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
            let (a, b) = (candle.logits(&data, [batch, 3, r, r]).unwrap(), ort.logits(&data, [batch, 3, r, r]).unwrap());
            let spread = a.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!(spread > 0.1, "logits too small to compare meaningfully: {spread}");
            let d = max_abs_diff(&a, &b);
            assert!(d <= 1e-4, "{name} at {r}, batch {batch}: max abs diff {d} (logits up to {spread})");
            println!("{name} at {r}, batch {batch}: max abs diff {d:.2e} (logits up to {spread:.2})");
        }
        check_onnx_checker(&path);
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn deit_matches_onnx_runtime_at_each_exported_resolution() {
    check_fixed_size_parity("deit", "deit_tiny_patch16_224", 4, Some(32), &[32, 24]);
}

/// Windows laid out at 224; 96 and 160 px pad every stage's map (and mask shifted windows).
#[test]
fn swin_tiny_matches_onnx_runtime_at_each_exported_resolution() {
    check_fixed_size_parity("swin", "swin_tiny_patch4_window7_224", 0, None, &[96, 160]);
}

/// Stripe widths [1, 2, 2, 2] at 64 px and [1, 2, 3, 3] at 96 px.
#[test]
fn cswin_tiny_matches_onnx_runtime_at_each_exported_resolution() {
    check_fixed_size_parity("cswin", "CSWin_64_12211_tiny_224", 0, None, &[64, 96]);
}

#[test]
fn fixed_size_graphs_and_metadata() {
    let dir = temp("meta");
    random_run(&dir, "convnext_atto", 2, false);
    let run = CandleClassifier::open(&dir).unwrap();
    let path = dir.join("m.onnx");
    let summary = et_export::export_onnx(&run.run, 24, &path).unwrap();
    assert!(summary.nodes > 50 && summary.initializers > 50, "{summary:?}");
    let ort = OnnxClassifier::open(&path, None, 1).unwrap();
    assert_eq!(ort.metadata.resolution, Some(24));
    assert_eq!(ort.metadata.mean, Some([0.5; 3]));
    assert_eq!(ort.metadata.crop_pct, Some(1.0));
    assert_eq!(ort.metadata.class_names.as_ref().map(|c| c.len()), Some(7));
    // Dynamic height/width: any size the model takes is accepted.
    assert!(ort.check_resolution(48).is_ok());
    std::fs::remove_dir_all(&dir).ok();
}

/// Every registered model, with its standard (timm) stem, at two ET++ low-resolution stage
/// sizes (every model takes 64 and 96; parity is a property of the graph, and small inputs
/// keep the suite fast): ONNX Runtime on the exported file against candle. Prints the
/// table of docs/export.md (`cargo test --release -p et-eval --test onnx_parity every_ -- --nocapture`).
#[test]
fn every_zoo_model_matches_onnx_runtime_at_two_resolutions() {
    let dir = temp("zoo");
    println!("| model | resolution | max abs diff | max abs logit | nodes | MB |\n|---|---:|---:|---:|---:|---:|");
    for name in et_models::registry::model_names() {
        let rc = random_run_at(&dir, name, 0, false, None);
        let mut candle = CandleClassifier::open(&dir).unwrap();
        // A dynamic-size graph is exported once and run at both sizes; a fixed-size one
        // (ViT, Swin, CSWin) is exported per size.
        let mut session: Option<(OnnxClassifier, et_export::ExportSummary)> = None;
        for r in [96, 64] {
            rc.model_config.check_input(name, r, r).unwrap_or_else(|e| panic!("{name} must take {r} px: {e}"));
            if session.is_none() || !rc.model_config.dynamic_input_size() {
                let path = dir.join("zoo.onnx");
                let s = et_export::export_onnx(&candle.run, r, &path).unwrap();
                session = Some((OnnxClassifier::open(&path, None, 2).unwrap(), s));
            }
            let (ort, s) = session.as_mut().unwrap();
            let x = seeded(&[1, 3, r, r], 11, &Device::Cpu, DType::F32).unwrap();
            let data: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
            let (a, b) = (candle.logits(&data, [1, 3, r, r]).unwrap(), ort.logits(&data, [1, 3, r, r]).unwrap());
            let spread = a.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = max_abs_diff(&a, &b);
            println!("| {name} | {r} | {d:.1e} | {spread:.2} | {} | {:.1} |", s.nodes, s.bytes as f64 / 1e6);
            assert!(spread > 0.1, "{name}: logits too small to compare meaningfully: {spread}");
            assert!(d <= 1e-4, "{name} at {r}: max abs diff {d} (logits up to {spread})");
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}
