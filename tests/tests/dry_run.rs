//! `et-train --dry-run --json`: the official ET++ recipes' stage tables at 300 epochs and a
//! base of 224 px (fixture from the official launch scripts: tools/gen_etpp_tables.py), the
//! layer-decay groups, and nothing written.

mod common;
use common::*;
use serde_json::Value;

fn dry_run(args: &[&str]) -> Value {
    let o = run("et-train", &[&["--dry-run", "--json"], args].concat());
    assert_ok(&o, "et-train --dry-run --json");
    serde_json::from_str(&stdout(&o)).unwrap_or_else(|e| panic!("not one JSON object ({e}): {}", stdout(&o)))
}

#[test]
fn etpp_plans_equal_the_official_scripts() {
    let path = repo_root().join("train/tests/fixtures/etpp_official.json");
    let fixture: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let budget = fixture["epoch"].as_f64().unwrap();
    for (model, official) in fixture["models"].as_object().unwrap() {
        let official = official.as_array().unwrap();
        let plan = dry_run(&["--preset", model, "--epochs", &budget.to_string(), "--base-resolution", "224"]);
        assert_eq!(plan["model"], model.as_str());
        let stages = plan["stages"].as_array().unwrap();
        assert_eq!(stages.len(), official.len(), "{model}: stages");
        // The scripts count whole epochs, truncating each stage's end: a stage ends at the
        // whole epoch below our (exact) cumulative compute, in the stage's own epochs.
        let mut done = 0.0;
        for (i, (ours, theirs)) in stages.iter().zip(official).enumerate() {
            let r = ours["resolution"].as_f64().unwrap();
            assert_eq!(ours["resolution"], theirs["resolution"], "{model} stage {i}: resolution");
            assert_eq!(ours["magnitude"].as_f64(), theirs["magnitude"].as_f64(), "{model} stage {i}: magnitude");
            let epochs = ours["epochs"].as_f64().unwrap();
            let official_epochs = theirs["epochs"].as_f64().unwrap();
            assert!((epochs - official_epochs).abs() < 1.0, "{model} stage {i}: {epochs} epochs, the script {official_epochs}");
            done += ours["base_epochs"].as_f64().unwrap();
            let end = (done * (224.0 / r).powi(2) + 1e-9).floor();
            assert_eq!(end, theirs["end_epoch"].as_f64().unwrap(), "{model} stage {i}: end epoch at {r} px");
            let gpus = theirs["gpus"].as_u64().unwrap();
            let official_batch = theirs["batch_per_gpu"].as_u64().unwrap() * theirs["update_freq"].as_u64().unwrap() * gpus;
            assert_eq!(plan["effective_batch"].as_u64().unwrap(), official_batch, "{model} stage {i}: images per step");
        }
        let first = &official[0];
        assert!((plan["drop_path"].as_f64().unwrap() - first["drop_path"].as_f64().unwrap()).abs() < 1e-12, "{model}: drop path");
        // The scripts pass the warm-up in the first stage's epochs.
        let r0 = first["resolution"].as_f64().unwrap();
        let warmup = plan["warmup_epochs"].as_f64().unwrap() * (224.0 / r0).powi(2);
        assert_eq!((warmup + 1e-9).floor(), first["warmup_epochs"].as_f64().unwrap(), "{model}: warm-up");
    }
}

#[test]
fn dry_run_shows_layer_decay_groups_and_writes_nothing() {
    let tmp = TempDir::new("dry-run");
    let out = tmp.s("run");
    let plan = dry_run(&["--model", "swin_tiny_patch4_window7_224", "--layer-decay", "0.75", "--out", &out, "--base-resolution", "224", "--schedule", "baseline", "--epochs", "2"]);
    let groups = plan["layer_decay"].as_array().unwrap();
    assert_eq!(groups.len(), 14, "Swin-T: the patch embedding, 12 blocks, the head");
    let tensors: u64 = groups.iter().map(|g| g["tensors"].as_u64().unwrap()).sum();
    assert_eq!(tensors, 173, "every trainable tensor is in a group");
    assert_eq!(groups.last().unwrap()["lr_scale"], 1.0);
    assert!((groups[0]["lr_scale"].as_f64().unwrap() - 0.75f64.powi(13)).abs() < 1e-12);
    assert_eq!(plan["sources"]["layer_decay"], "command line");
    assert!(!std::path::Path::new(&out).exists(), "a dry run writes nothing");

    let o = run("et-train", &["--dry-run", "--out", &out]);
    assert_ok(&o, "et-train --dry-run");
    let text = stdout(&o);
    assert!(text.contains("convnext_atto") && text.contains("stage") && text.contains("lr at start"), "{text}");
    assert!(!std::path::Path::new(&out).exists());
}

/// `--low-freq` is a setting like any other (saved, shown with its source), applies to the
/// stages below the base resolution, and a TOML stage may set its own; a bad value is one line.
#[test]
fn dry_run_shows_the_low_frequency_mode_of_each_stage() {
    let plan = dry_run(&["--low-freq", "resize", "--base-resolution", "32", "--epochs", "2"]);
    assert_eq!(plan["settings"]["low_freq"], "resize");
    assert_eq!(plan["sources"]["low_freq"], "command line");
    let modes: Vec<&Value> = plan["stages"].as_array().unwrap().iter().map(|s| &s["low_pass"]).collect();
    let resolutions: Vec<u64> = plan["stages"].as_array().unwrap().iter().map(|s| s["resolution"].as_u64().unwrap()).collect();
    for (m, r) in modes.iter().zip(&resolutions) {
        assert_eq!(**m, if *r < 32 { Value::from("resize") } else { Value::Null }, "stage at {r} px");
    }
    assert!(resolutions.iter().any(|&r| r < 32));
    let default = dry_run(&["--base-resolution", "32", "--epochs", "2"]);
    assert_eq!(default["settings"]["low_freq"], "fft");
    assert_eq!(default["stages"][0]["low_pass"], "fft");

    let tmp = TempDir::new("dry-run-low-freq");
    let schedule = tmp.path().join("mixed.toml");
    std::fs::write(&schedule, "[[stage]]\nresolution = 16\nmagnitude = 1\ncompute = 1\nlow_freq = \"resize\"\n[[stage]]\nresolution = 24\nmagnitude = 2\ncompute = 1\n[[stage]]\nresolution = 32\nmagnitude = 3\ncompute = 1\n").unwrap();
    let schedule = schedule.to_string_lossy().into_owned();
    let plan = dry_run(&["--schedule", &schedule, "--base-resolution", "32", "--epochs", "2"]);
    let modes: Vec<&Value> = plan["stages"].as_array().unwrap().iter().map(|s| &s["low_pass"]).collect();
    assert_eq!(modes, [&Value::from("resize"), &Value::from("fft"), &Value::Null]);
    let o = run("et-train", &["--dry-run", "--schedule", &schedule, "--base-resolution", "32", "--epochs", "2"]);
    assert_ok(&o, "et-train --dry-run");
    let text = stdout(&o);
    assert!(text.contains("low-pass") && text.contains("resize"), "{text}");

    let o = run("et-train", &["--dry-run", "--low-freq", "lanczos"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("fft or resize"), "{err}");
}
