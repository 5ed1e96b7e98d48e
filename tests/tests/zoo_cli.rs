//! `et-eval models` and `et-eval predict`, the checking interface for the model zoo.

mod common;
use candle_core::{DType, Device, Tensor};
use common::*;
use et_models::registry::{model_config, ModelOptions};
use et_kernels::CandleOps;
use et_models::{Model, ParamStore};

#[test]
fn models_lists_every_registered_model_with_params_and_flops() {
    let o = run("et-eval", &["models"]);
    assert_ok(&o, "et-eval models");
    let out = stdout(&o);
    for name in et_models::registry::model_names() {
        assert!(out.contains(name), "{name} missing from:\n{out}");
    }
    let r50 = out.lines().find(|l| l.starts_with("resnet50")).unwrap();
    assert!(r50.contains("25.56") && r50.contains("4.09"), "{r50}");
}

fn numpy(code: &str) -> std::process::Output {
    // numpy comes with the onnx package that scripts/test.sh installs into .ort/checker.
    std::process::Command::new("python3")
        .env("PYTHONPATH", repo_root().join(".ort/checker"))
        .args(["-c", code])
        .output()
        .expect("python3 runs")
}

#[test]
fn predict_matches_the_in_process_model_and_speaks_numpy() {
    let tmp = TempDir::new("predict");
    let opts = ModelOptions { num_classes: 5, drop_path_rate: 0.0, stem_stride: Some(1), img_size: None };
    let cfg = model_config("resnet18", &opts).unwrap();
    let ps = ParamStore::new(4);
    let model = Model::new(&cfg, ps.var_builder(DType::F32, &Device::Cpu)).unwrap();
    et_models::testing::fill_for_fixture(&ps).unwrap();
    ps.save(&tmp.join("w.safetensors")).unwrap();
    // numpy writes the input (checks our reader) and reads the output (checks our writer).
    let make = format!("import numpy as np; np.save('{}', (np.arange(2*3*16*16, dtype=np.float32).reshape(2,3,16,16) % 7) / 7 - 0.5)", tmp.s("x.npy"));
    let o = numpy(&make);
    assert!(o.status.success(), "numpy (run scripts/test.sh to install it): {}", stderr(&o));
    let o = run("et-eval", &["predict", "--model", "resnet18", "--weights", &tmp.s("w.safetensors"), "--input", &tmp.s("x.npy"), "--output", &tmp.s("y.npy"), "--stem-stride", "1"]);
    assert_ok(&o, "et-eval predict");
    let (shape, got) = et_eval::npy::read_f32(&tmp.join("y.npy")).unwrap();
    assert_eq!(shape, vec![2, 5]);
    let x: Vec<f32> = (0..2 * 3 * 16 * 16).map(|i| (i % 7) as f32 / 7.0 - 0.5).collect();
    let want: Vec<f32> = model.forward(&CandleOps::eval(), &Tensor::from_vec(x, (2, 3, 16, 16), &Device::Cpu).unwrap()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let d = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(d < 1e-5, "predict vs in-process: {d}");
    let o = numpy(&format!("import numpy as np; y = np.load('{}'); assert y.shape == (2, 5) and y.dtype == np.float32, (y.shape, y.dtype)", tmp.s("y.npy")));
    assert!(o.status.success(), "numpy cannot read our output: {}", stderr(&o));

    // Bad input: wrong rank, wrong dtype, weights of another model.
    let o = numpy(&format!("import numpy as np; np.save('{}', np.zeros((3, 16, 16), np.float32)); np.save('{}', np.zeros((1, 3, 16, 16)))", tmp.s("rank3.npy"), tmp.s("f64.npy")));
    assert!(o.status.success());
    let base = |input: &str, model: &str| vec!["predict".to_string(), "--model".into(), model.into(), "--weights".into(), tmp.s("w.safetensors"), "--input".into(), tmp.s(input), "--output".into(), tmp.s("out.npy"), "--stem-stride".into(), "1".into()];
    let args = base("rank3.npy", "resnet18");
    let o = run("et-eval", &args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_clean_failure(&o, "et-eval", "(N, 3, H, W)");
    let args = base("f64.npy", "resnet18");
    let o = run("et-eval", &args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_clean_failure(&o, "et-eval", "not a float32 .npy");
    let args = base("x.npy", "convnext_atto");
    let o = run("et-eval", &args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_clean_failure(&o, "et-eval", "head.fc.bias");
}
