//! et-eval as a CI accuracy gate, with one ONNX file per resolution, with bare weights,
//! and refusing ONNX files that are not image classifiers.

mod common;
use common::runs::*;
use common::*;
use et_models::registry::ModelOptions;

fn python(code: &str) -> std::process::Output {
    // numpy and onnx come with the onnx package that scripts/test.sh installs into .ort/checker.
    std::process::Command::new("python3").env("PYTHONPATH", repo_root().join(".ort/checker")).args(["-c", code]).output().expect("python3 runs")
}

#[test]
fn the_gate_names_each_regressed_resolution_and_sets_the_exit_status() {
    let tmp = TempDir::new("gate");
    mini_dataset(tmp.path(), &CLASSES, 8);
    small_convnext_run(&tmp.join("run"), 5);
    assert_ok(&run("et-export", &["--onnx", &tmp.s("run")]), "et-export");
    let onnx = tmp.s("run/model.onnx");
    let data = tmp.s("");
    let base = tmp.s("baseline.json");
    assert_ok(&run("et-eval", &["--onnx", &onnx, "--data", &data, "--resolutions", "24,32", "--json", &base]), "et-eval baseline");

    // Against itself: passes, and says so per resolution.
    let o = run("et-eval", &["--onnx", &onnx, "--data", &data, "--resolutions", "24,32", "--baseline", &base]);
    assert_ok(&o, "gate vs itself");
    assert!(stdout(&o).contains("gate: 24 px ok (+0.00 pts") && stdout(&o).contains("gate: 32 px ok"), "{}", stdout(&o));

    // A baseline 10 points better at 32 px only: exit 1, naming 32 and not 24.
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&base).unwrap()).unwrap();
    let measured = v["results"][1]["top1"].as_f64().unwrap();
    v["results"][1]["top1"] = serde_json::json!(measured + 0.10);
    let better = tmp.s("better.json");
    std::fs::write(&better, v.to_string()).unwrap();
    let o = run("et-eval", &["--onnx", &onnx, "--data", &data, "--resolutions", "24,32", "--baseline", &better, "--tolerance", "5"]);
    assert_eq!(o.status.code(), Some(1), "a regression exits with 1:\n{}\n{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("gate: 32 px REGRESSED") && stdout(&o).contains("gate: 24 px ok"), "{}", stdout(&o));
    let err = stderr(&o);
    assert!(err.contains("accuracy gate failed at 32 px") && !err.contains("24 px"), "{err}");
    // The same drop within the tolerance passes.
    assert_ok(&run("et-eval", &["--onnx", &onnx, "--data", &data, "--resolutions", "24,32", "--baseline", &better, "--tolerance", "10.5"]), "within tolerance");

    // A baseline that is not a report is an error (2), not a gate failure.
    std::fs::write(tmp.join("junk.json"), "{\"accuracy\": 1}").unwrap();
    let o = run("et-eval", &["--onnx", &onnx, "--data", &data, "--baseline", &tmp.s("junk.json")]);
    assert_clean_failure(&o, "et-eval", "is not an et-eval --json report");
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn fixed_size_onnx_files_are_evaluated_together_and_match_candle() {
    let tmp = TempDir::new("multi-onnx");
    mini_dataset(tmp.path(), &CLASSES, 6);
    // A ViT (fixed-size ONNX per resolution): patch 8, position embedding for 32 px.
    let opts = ModelOptions { num_classes: 3, drop_path_rate: 0.0, stem_stride: Some(8), img_size: Some(32) };
    random_run_of(&tmp.join("run"), "deit_tiny_patch16_224", &opts, &CLASSES, 32, 2);
    let o = run("et-export", &["--onnx", &tmp.s("run"), "--resolution", "16,32"]);
    assert_ok(&o, "et-export two resolutions");
    assert!(tmp.join("run/model-16.onnx").is_file() && tmp.join("run/model-32.onnx").is_file(), "{}", stdout(&o));

    let data = tmp.s("");
    let (a16, a32) = (format!("16={}", tmp.s("run/model-16.onnx")), format!("32={}", tmp.s("run/model-32.onnx")));
    let o = run("et-eval", &["--onnx", &a16, "--onnx", &a32, "--data", &data, "--json", &tmp.s("ort.json")]);
    assert_ok(&o, "et-eval R=FILE");
    assert_ok(&run("et-eval", &["--run", &tmp.s("run"), "--data", &data, "--resolutions", "16,32", "--json", &tmp.s("candle.json")]), "et-eval --run");
    let (a, b) = (results(&tmp.join("ort.json")), results(&tmp.join("candle.json")));
    assert_eq!(a.iter().map(|r| r["resolution"].as_u64().unwrap()).collect::<Vec<_>>(), vec![16, 32]);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!((&x["top1"], &x["top5"]), (&y["top1"], &y["top5"]), "ONNX Runtime {x} vs candle {y}");
        assert!((x["loss"].as_f64().unwrap() - y["loss"].as_f64().unwrap()).abs() < 1e-4);
    }

    // A resolution without a file, and a fixed-size file asked for another size.
    let o = run("et-eval", &["--onnx", &a16, "--data", &data, "--resolutions", "16,32"]);
    assert_clean_failure(&o, "et-eval", "no ONNX file for resolution 32");
    let o = run("et-eval", &["--onnx", &tmp.s("run/model-32.onnx"), "--data", &data, "--resolutions", "16"]);
    assert_clean_failure(&o, "et-eval", "takes fixed 32x32 inputs");
    let o = run("et-eval", &["--onnx", &a16, "--onnx", &format!("16={}", tmp.s("run/model-32.onnx")), "--data", &data]);
    assert_clean_failure(&o, "et-eval", "two files for resolution 16");
}

#[test]
fn bare_weights_evaluate_like_their_run() {
    let tmp = TempDir::new("weights");
    mini_dataset(tmp.path(), &CLASSES, 4);
    let opts = ModelOptions { num_classes: 3, ..Default::default() };
    random_run_of(&tmp.join("run"), "resnet18", &opts, &CLASSES, 32, 7);
    let data = tmp.s("");
    // The run's config says crop 1.0; bare weights get the registry's default: align them.
    let (run_dir, weights) = (tmp.s("run"), tmp.s("run/model.safetensors"));
    let (run_json, w_json) = (tmp.s("run.json"), tmp.s("weights.json"));
    let common = ["--data", data.as_str(), "--crop-pct", "1.0", "--resolutions", "32"];
    assert_ok(&run("et-eval", &[&["--run", run_dir.as_str(), "--json", run_json.as_str()][..], &common[..]].concat()), "et-eval --run");
    assert_ok(&run("et-eval", &[&["--weights", weights.as_str(), "--model", "resnet18", "--json", w_json.as_str()][..], &common[..]].concat()), "et-eval --weights");
    let (a, b) = (results(&tmp.join("run.json")), results(&tmp.join("weights.json")));
    for key in ["resolution", "images", "top1", "top5", "loss"] {
        assert_eq!(a[0][key], b[0][key], "{key}: --run {} vs --weights {}", a[0], b[0]);
    }
    let o = run("et-eval", &["--weights", &weights, "--model", "convnext_atto", "--data", &data]);
    assert_clean_failure(&o, "et-eval", "head.fc.bias");
}

#[test]
fn onnx_files_that_are_not_image_classifiers_are_refused() {
    let tmp = TempDir::new("not-classifier");
    mini_dataset(tmp.path(), &CLASSES, 2);
    let code = format!(
        r#"
import onnx
from onnx import helper, TensorProto as T
def save(inputs, path):
    outs = [helper.make_tensor_value_info("y", T.FLOAT, ["n", 3])]
    nodes = [helper.make_node("Identity", [inputs[0].name], ["y"])]
    g = helper.make_graph(nodes, "g", inputs, outs)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
save([helper.make_tensor_value_info("x", T.FLOAT, ["n", 3])], "{dir}/rank2.onnx")
save([helper.make_tensor_value_info("x", T.FLOAT, ["n", 3, 8, 8]), helper.make_tensor_value_info("z", T.FLOAT, ["n", 3, 8, 8])], "{dir}/two_inputs.onnx")
"#,
        dir = tmp.path().display()
    );
    let o = python(&code);
    assert!(o.status.success(), "python/onnx failed: {}", String::from_utf8_lossy(&o.stderr));
    let data = tmp.s("");
    let o = run("et-eval", &["--onnx", &tmp.s("rank2.onnx"), "--data", &data, "--resolutions", "8"]);
    assert_clean_failure(&o, "et-eval", "expected (N, 3, H, W)");
    let o = run("et-eval", &["--onnx", &tmp.s("two_inputs.onnx"), "--data", &data, "--resolutions", "8"]);
    assert_clean_failure(&o, "et-eval", "it has 2 inputs");
}
