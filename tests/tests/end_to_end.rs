//! The product's main path on a fresh checkout: et-train on a small dataset → safetensors
//! → et-export --onnx → et-eval with ONNX Runtime and with candle, which must agree.

mod common;
use common::*;
use serde_json::Value;

fn results(path: &std::path::Path) -> Vec<Value> {
    let v: Value = serde_json::from_str(&std::fs::read_to_string(path).expect("json written")).expect("valid json");
    v["results"].as_array().expect("results array").clone()
}

#[test]
fn train_export_and_evaluate_agree_across_backends() {
    let tmp = TempDir::new("e2e");
    mini_dataset(tmp.path(), &["airplane", "cat", "ship"], 8);
    let run_dir = tmp.s("run");
    let o = run("et-train", &["--data", &tmp.s(""), "--epochs", "1", "--batch-size", "8", "--out", &run_dir, "--seed", "3"]);
    assert_ok(&o, "et-train");
    let out = stdout(&o);
    assert!(out.contains("stage 10/10") && out.contains("val top-1"), "progress and validation are printed:\n{out}");

    // config.json has what export and eval need to rebuild and preprocess.
    let cfg: Value = serde_json::from_str(&std::fs::read_to_string(tmp.join("run/config.json")).unwrap()).unwrap();
    assert_eq!(cfg["model"], "convnext_atto");
    assert_eq!(cfg["num_classes"], 3);
    assert_eq!(cfg["class_names"], serde_json::json!(["airplane", "cat", "ship"]));
    assert_eq!(cfg["base_resolution"], 32);
    assert_eq!(cfg["model_config"]["family"], "convnext");
    for key in ["mean", "std", "interpolation", "crop_pct"] {
        assert!(!cfg[key].is_null(), "config.json lacks {key}");
    }
    let metrics = std::fs::read_to_string(tmp.join("run/metrics.jsonl")).unwrap();
    let stage_ends = metrics.lines().filter(|l| l.contains("\"stage_end\"")).count();
    assert_eq!(stage_ends, 10, "one stage_end record per ET++ stage");
    for line in metrics.lines() {
        serde_json::from_str::<Value>(line).expect("every metrics line is JSON");
    }

    let onnx = tmp.s("run/model.onnx");
    assert_ok(&run("et-export", &["--onnx", &run_dir]), "et-export");
    assert!(tmp.join("run/model.onnx").is_file());

    let ort_json = tmp.s("ort.json");
    let o = run("et-eval", &["--onnx", &onnx, "--data", &tmp.s(""), "--resolutions", "24,32", "--json", &ort_json]);
    assert_ok(&o, "et-eval --onnx");
    assert!(stdout(&o).contains("top-1"), "table printed:\n{}", stdout(&o));
    let candle_json = tmp.s("candle.json");
    assert_ok(&run("et-eval", &["--run", &run_dir, "--data", &tmp.s(""), "--resolutions", "24,32", "--json", &candle_json]), "et-eval --run");

    let (a, b) = (results(&tmp.join("ort.json")), results(&tmp.join("candle.json")));
    assert_eq!(a.len(), 2);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x["resolution"], y["resolution"]);
        assert_eq!(x["images"], 12, "3 classes x 4 val images");
        assert_eq!(x["images"], y["images"]);
        assert_eq!(x["top1"], y["top1"], "ONNX Runtime and candle disagree on top-1: {x} vs {y}");
        assert_eq!(x["top5"], y["top5"]);
        let (la, lb) = (x["loss"].as_f64().unwrap(), y["loss"].as_f64().unwrap());
        assert!((la - lb).abs() < 1e-4, "mean loss {la} vs {lb}");
    }
}

#[test]
fn mixup_and_cutmix_run_to_completion() {
    let tmp = TempDir::new("e2e-mixup");
    mini_dataset(tmp.path(), &["cat", "ship"], 8);
    let run_dir = tmp.s("run");
    let o = run("et-train", &["--data", &tmp.s(""), "--epochs", "0.5", "--batch-size", "4", "--mixup", "0.8", "--cutmix", "1.0", "--out", &run_dir]);
    assert_ok(&o, "et-train --mixup --cutmix");
    let metrics = std::fs::read_to_string(tmp.join("run/metrics.jsonl")).expect("metrics.jsonl written");
    let lines: Vec<Value> = metrics.lines().map(|l| serde_json::from_str(l).expect("every metrics line is JSON")).collect();
    assert_eq!(lines[0]["mixup"], 0.8);
    assert_eq!(lines[0]["cutmix"], 1.0);
    let steps: Vec<&Value> = lines.iter().filter(|v| v["event"] == "step").collect();
    assert!(!steps.is_empty() && steps.iter().all(|v| v["loss"].as_f64().is_some_and(f64::is_finite)), "{metrics}");
    assert_eq!(lines.last().unwrap()["event"], "done");
    assert!(tmp.join("run/model.safetensors").is_file());
    // Bad alphas are refused before training.
    let o = run("et-train", &["--data", &tmp.s(""), "--mixup=-1", "--out", &tmp.s("bad")]);
    assert_clean_failure(&o, "et-train", "--mixup");
}

#[test]
fn every_flag_is_documented_in_help() {
    let cases: [(&str, &[&str]); 3] = [
        ("et-train", &["--data", "--model", "--epochs", "--batch-size", "--lr", "--seed", "--out", "--schedule", "--strict-data", "--mixup", "--cutmix", "--resume", "--save-every-steps", "--deterministic", "--preset", "--effective-batch", "--clip-grad", "--ema-decay", "--optimizer", "--layer-decay", "--weight-decay-end", "--init-from", "--offline"]),
        ("et-export", &["--onnx", "--resolution", "--out", "--push-to-hub", "--eval-json", "convert"]),
        ("et-eval", &["--onnx", "--run", "--weights", "--model", "--from-hub", "--offline", "--data", "--resolutions", "--json", "--ort-lib", "--mean", "--std", "--crop-pct", "--interpolation", "--baseline", "--tolerance"]),
    ];
    for (tool, flags) in cases {
        let o = run(tool, &["--help"]);
        assert_ok(&o, tool);
        let help = stdout(&o);
        for flag in flags {
            assert!(help.contains(flag), "{tool} --help does not document {flag}:\n{help}");
        }
    }
}

#[test]
fn resnet_with_batch_norm_trains_exports_and_agrees() {
    let tmp = TempDir::new("e2e-resnet");
    mini_dataset(tmp.path(), &["cat", "ship"], 8);
    let run_dir = tmp.s("run");
    let o = run("et-train", &["--data", &tmp.s(""), "--model", "resnet18", "--epochs", "0.5", "--batch-size", "8", "--out", &run_dir]);
    assert_ok(&o, "et-train resnet18");
    // Training updated the BatchNorm running statistics that inference uses.
    let w = candle_core::safetensors::load(tmp.join("run/model.safetensors"), &candle_core::Device::Cpu).unwrap();
    let rv: Vec<f32> = w["bn1.running_var"].to_vec1().unwrap();
    assert!(rv.iter().any(|v| (v - 1.0).abs() > 1e-3), "running_var never updated: {:?}", &rv[..4]);
    assert!(!w.contains_key("bn1.num_batches_tracked"));
    assert_ok(&run("et-export", &["--onnx", &run_dir]), "et-export resnet18");
    let (a, b) = (tmp.s("a.json"), tmp.s("b.json"));
    assert_ok(&run("et-eval", &["--onnx", &tmp.s("run/model.onnx"), "--data", &tmp.s(""), "--resolutions", "32,24", "--json", &a]), "et-eval --onnx");
    assert_ok(&run("et-eval", &["--run", &run_dir, "--data", &tmp.s(""), "--resolutions", "32,24", "--json", &b]), "et-eval --run");
    for (x, y) in results(&tmp.join("a.json")).iter().zip(&results(&tmp.join("b.json"))) {
        assert_eq!(x["top1"], y["top1"], "{x} vs {y}");
        assert!((x["loss"].as_f64().unwrap() - y["loss"].as_f64().unwrap()).abs() < 1e-4, "{x} vs {y}");
    }
}

#[test]
fn fine_tuning_reinitialises_only_a_head_of_another_size() {
    let tmp = TempDir::new("finetune");
    mini_dataset(&tmp.join("three"), &["airplane", "cat", "ship"], 4);
    mini_dataset(&tmp.join("two"), &["cat", "ship"], 4);
    let args = |data: &str, out: &str| vec!["--data".to_string(), tmp.s(data), "--epochs".into(), "0.3".into(), "--batch-size".into(), "4".into(), "--out".into(), tmp.s(out)];
    let a = args("three", "a");
    assert_ok(&run("et-train", &a.iter().map(String::as_str).collect::<Vec<_>>()), "et-train");
    let mut b = args("two", "b");
    b.extend(["--init-from".into(), tmp.s("a/model.safetensors")]);
    let o = run("et-train", &b.iter().map(String::as_str).collect::<Vec<_>>());
    assert_ok(&o, "et-train --init-from");
    assert!(stdout(&o).contains("re-initialised for the new classes: head.fc.bias, head.fc.weight"), "{}", stdout(&o));
    // Weights of another architecture: named keys, clean failure.
    let mut c = args("two", "c");
    c.extend(["--init-from".into(), tmp.s("a/model.safetensors"), "--model".into(), "resnet18".into()]);
    let o = run("et-train", &c.iter().map(String::as_str).collect::<Vec<_>>());
    assert_clean_failure(&o, "et-train", "missing: bn1.bias");
    let mut d = args("two", "d");
    d.extend(["--init-from".into(), tmp.s("nope.safetensors")]);
    let o = run("et-train", &d.iter().map(String::as_str).collect::<Vec<_>>());
    assert_clean_failure(&o, "et-train", "nope.safetensors");
}
