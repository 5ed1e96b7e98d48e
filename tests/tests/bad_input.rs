//! Bad input never panics: one line naming the problem and the fix, non-zero exit.

mod common;
use common::runs::small_convnext_run;
use common::*;

fn train_args<'a>(data: &'a str, out: &'a str) -> Vec<&'a str> {
    vec!["--data", data, "--epochs", "0.2", "--batch-size", "4", "--out", out]
}

#[test]
fn missing_and_empty_data_directories() {
    let tmp = TempDir::new("missing");
    let o = run("et-train", &train_args(&tmp.s("nope"), &tmp.s("out")));
    assert_clean_failure(&o, "et-train", "does not exist");
    std::fs::create_dir_all(tmp.join("empty")).unwrap();
    let o = run("et-train", &train_args(&tmp.s("empty"), &tmp.s("out")));
    assert_clean_failure(&o, "et-train", "no class folders");
    std::fs::create_dir_all(tmp.join("noimg/train/cat")).unwrap();
    std::fs::write(tmp.join("noimg/train/cat/readme.txt"), "not an image").unwrap();
    let o = run("et-train", &train_args(&tmp.s("noimg"), &tmp.s("out")));
    assert_clean_failure(&o, "et-train", "noimg");
    let o = run("et-eval", &["--run", &tmp.s("norun"), "--data", &tmp.s("empty")]);
    assert_clean_failure(&o, "et-eval", "norun");
}

#[test]
fn corrupt_images_are_skipped_and_counted_or_fatal_with_strict_data() {
    let tmp = TempDir::new("corrupt");
    mini_dataset(tmp.path(), &["airplane", "cat"], 6);
    let good = tmp.join("train/cat/0000.jpg");
    let bytes = std::fs::read(&good).unwrap();
    std::fs::write(tmp.join("train/cat/truncated.jpg"), &bytes[..bytes.len() / 2]).unwrap();
    std::fs::write(tmp.join("train/airplane/notes.jpg"), "this is text, not a JPEG").unwrap();
    let (data, out) = (tmp.s(""), tmp.s("out"));
    // By default the run finishes, names what it skipped and counts it per stage and in all.
    let o = run("et-train", &train_args(&data, &out));
    assert_ok(&o, "et-train with corrupt images");
    let (err, so) = (stderr(&o), stdout(&o));
    assert!(err.contains("notes.jpg") && err.contains("truncated.jpg"), "skipped files are reported:\n{err}");
    assert!(so.lines().any(|l| l.starts_with("== stage") && l.contains("unreadable images skipped")), "counted in the stage summary:\n{so}");
    let done = so.lines().find(|l| l.starts_with("done in")).expect("final summary");
    let n: usize = done.split(" unreadable images skipped").next().and_then(|p| p.rsplit(' ').next()).and_then(|v| v.parse().ok()).expect("total count");
    assert!(n >= 2, "{done}");
    // --strict-data stops at the first one, naming it; then at the other.
    let mut left = vec![("train/cat/truncated.jpg", "truncated.jpg"), ("train/airplane/notes.jpg", "notes.jpg")];
    while !left.is_empty() {
        let mut args = train_args(&data, &out);
        args.push("--strict-data");
        let o = run("et-train", &args);
        let err = stderr(&o);
        let k = left.iter().position(|(_, name)| err.contains(name)).unwrap_or_else(|| panic!("names a corrupt file:\n{err}"));
        assert_clean_failure(&o, "et-train", left[k].1);
        std::fs::remove_file(tmp.join(left[k].0)).unwrap();
        left.remove(k);
    }
    assert_ok(&run("et-train", &[&train_args(&data, &out)[..], &["--strict-data"]].concat()), "et-train --strict-data on clean data");
}

#[test]
fn unwritable_output_fails_before_training() {
    let tmp = TempDir::new("unwritable");
    mini_dataset(tmp.path(), &["airplane", "cat"], 4);
    std::fs::write(tmp.join("file"), "a file where a directory should be").unwrap();
    let o = run("et-train", &train_args(&tmp.s(""), &tmp.s("file/run")));
    assert_clean_failure(&o, "et-train", "cannot write to output directory");
    assert!(!stdout(&o).contains("stage 1/"), "no training step ran:\n{}", stdout(&o));
}

#[test]
fn unknown_model_name() {
    let tmp = TempDir::new("model");
    mini_dataset(tmp.path(), &["airplane", "cat"], 4);
    let (data, out) = (tmp.s(""), tmp.s("out"));
    let mut args = train_args(&data, &out);
    args.extend(["--model", "resnet9000"]);
    let o = run("et-train", &args);
    assert_clean_failure(&o, "et-train", "unknown model 'resnet9000'");
    assert!(stderr(&o).contains("convnext_atto"), "lists the available models");
}

#[test]
fn resolutions_the_model_cannot_take() {
    let tmp = TempDir::new("res");
    small_convnext_run(&tmp.join("run"), 1);
    mini_dataset(tmp.path(), &["airplane", "cat", "ship"], 2);
    let o = run("et-export", &["--onnx", &tmp.s("run"), "--resolution", "8"]);
    assert_clean_failure(&o, "et-export", "cannot take 8x8");
    let o = run("et-eval", &["--run", &tmp.s("run"), "--data", &tmp.s(""), "--resolutions", "32,12"]);
    assert_clean_failure(&o, "et-eval", "cannot take 12x12");
    let o = run("et-eval", &["--run", &tmp.s("run"), "--data", &tmp.s(""), "--resolutions", "0"]);
    assert_clean_failure(&o, "et-eval", "not a valid size");
    // Data whose classes are not the model's.
    let other = TempDir::new("res-other");
    mini_dataset(other.path(), &["bird", "cat", "ship"], 2);
    let o = run("et-eval", &["--run", &tmp.s("run"), "--data", &other.s("")]);
    assert_clean_failure(&o, "et-eval", "'bird'");
}

#[test]
fn missing_or_broken_onnx_runtime_library() {
    let tmp = TempDir::new("ort");
    small_convnext_run(&tmp.join("run"), 1);
    mini_dataset(tmp.path(), &["airplane", "cat", "ship"], 2);
    assert_ok(&run("et-export", &["--onnx", &tmp.s("run")]), "et-export");
    let onnx = tmp.s("run/model.onnx");
    let data = tmp.s("");
    let o = run_env("et-eval", &["--onnx", &onnx, "--data", &data], &[("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")]);
    assert_clean_failure(&o, "et-eval", "pip install onnxruntime");
    std::fs::write(tmp.join("fake.so"), "not a library").unwrap();
    let o = run("et-eval", &["--onnx", &onnx, "--data", &data, "--ort-lib", &tmp.s("fake.so")]);
    assert_clean_failure(&o, "et-eval", "cannot load ONNX Runtime");
    // Not an ONNX file at all.
    std::fs::write(tmp.join("bad.onnx"), "garbage").unwrap();
    let o = run("et-eval", &["--onnx", &tmp.s("bad.onnx"), "--data", &data, "--resolutions", "32"]);
    assert_clean_failure(&o, "et-eval", "not a usable ONNX image classifier");
}

#[test]
fn a_diverging_loss_stops_the_run_and_names_the_last_good_checkpoint() {
    let tmp = TempDir::new("nan");
    mini_dataset(tmp.path(), &["airplane", "cat"], 8);
    let (data, out) = (tmp.s(""), tmp.s("run"));
    // An absurd learning rate: the first update blows the weights up, a later loss is inf/NaN.
    let mut args = train_args(&data, &out);
    args.extend(["--lr", "1e30", "--save-every-steps", "1", "--warmup-epochs", "0"]);
    let o = run("et-train", &args);
    assert_clean_failure(&o, "et-train", "training stopped; the last good checkpoint is ");
    let err = stderr(&o);
    let ckpt = err.split("the last good checkpoint is ").nth(1).and_then(|s| s.split(';').next()).expect("checkpoint path in the message");
    assert!(std::path::Path::new(ckpt.trim()).join("state.json").is_file(), "the named checkpoint is complete: {err}");
    let metrics = std::fs::read_to_string(tmp.join("run/metrics.jsonl")).unwrap();
    assert!(metrics.lines().any(|l| l.contains("\"event\":\"error\"")), "the failure is logged:\n{metrics}");
}

#[test]
fn devices_and_precisions_this_build_cannot_run() {
    let tmp = TempDir::new("device");
    mini_dataset(tmp.path(), &["airplane", "cat"], 4);
    let (data, out) = (tmp.s(""), tmp.s("out"));
    let with = |extra: &[&'static str]| [&train_args(&data, &out)[..], extra].concat();
    let o = run("et-train", &with(&["--precision", "bf16"]));
    assert_clean_failure(&o, "et-train", "--precision bf16 needs --device cuda");
    if !cfg!(feature = "cuda") {
        let o = run("et-train", &with(&["--device", "cuda"]));
        assert_clean_failure(&o, "et-train", "rebuild with `cargo build --release --features et-train/cuda,et-eval/cuda`");
        small_convnext_run(&tmp.join("run"), 1);
        let o = run("et-eval", &["--run", &tmp.s("run"), "--data", &data, "--device", "cuda:1"]);
        assert_clean_failure(&o, "et-eval", "no CUDA support");
    }
    let o = run("et-train", &with(&["--device", "tpu"]));
    assert!(!o.status.success() && stderr(&o).contains("use cpu, cuda or cuda:N"), "{}", stderr(&o));
}

#[test]
fn sizes_beyond_memory_shrink_the_batch_or_are_refused_up_front() {
    let tmp = TempDir::new("memory");
    mini_dataset(tmp.path(), &["airplane", "cat"], 2);
    small_convnext_run(&tmp.join("run"), 1);
    // 4000 px images: about 2 GB each for ConvNeXt-atto, far beyond a batch of 64 here.
    let o = run("et-eval", &["--run", &tmp.s("run"), "--data", &tmp.s(""), "--resolutions", "4000"]);
    assert!(o.status.code().is_some(), "et-eval was killed: {:?}\n{}", o.status, stderr(&o));
    if o.status.success() {
        assert!(stderr(&o).contains("images per batch (not 64) to fit in memory"), "{}", stderr(&o));
    } else {
        assert_clean_failure(&o, "et-eval", "GB per image");
    }
    // Training at such a size cannot fit at all: refused before anything is built or written.
    let o = run("et-train", &["--data", &tmp.s(""), "--base-resolution", "4000", "--batch-size", "4", "--out", &tmp.s("out")]);
    assert_clean_failure(&o, "et-train", "lower --batch-size");
    assert!(!tmp.join("out/model.safetensors").exists());
}
