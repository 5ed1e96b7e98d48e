//! The Hugging Face Hub both ways against a loopback stand-in server (no network):
//! et-export --push-to-hub, et-eval --from-hub (and --offline), and every way a download
//! can fail.

mod common;
use common::hub_server::{Fault, StandInHub};
use common::runs::*;
use common::*;

fn hub_env<'a>(hub: &'a StandInHub, home: &'a str) -> [(&'a str, &'a str); 3] {
    // HF_TOKEN empty: a token from the developer's machine must not leak into the test.
    [("HF_ENDPOINT", hub.url.as_str()), ("HF_HOME", home), ("HF_TOKEN", "")]
}

#[test]
fn push_then_pull_then_evaluate_round_trips() {
    let tmp = TempDir::new("hub-rt");
    mini_dataset(tmp.path(), &CLASSES, 6);
    small_convnext_run(&tmp.join("run"), 11);
    std::fs::write(tmp.join("run/metrics.jsonl"), "{\"event\":\"done\",\"val_top1\":0.5,\"val_top5\":1.0}\n").unwrap();
    let hub = StandInHub::start();
    let home = tmp.s("hf-home");
    let env = hub_env(&hub, &home);

    let o = run_env("et-export", &["--onnx", &tmp.s("run"), "--push-to-hub", "me/atto-cifar"], &env);
    assert_ok(&o, "et-export --push-to-hub");
    assert!(stdout(&o).contains("pushed 4 files to me/atto-cifar"), "{}", stdout(&o));
    assert_eq!(hub.files("me/atto-cifar"), ["README.md", "config.json", "model.onnx", "model.safetensors"]);
    assert_eq!(hub.file("me/atto-cifar", "model.safetensors").unwrap(), std::fs::read(tmp.join("run/model.safetensors")).unwrap(), "weights arrive intact");
    let card = String::from_utf8(hub.file("me/atto-cifar", "README.md").unwrap()).unwrap();
    assert!(card.contains("| 32 | 50.00 | 100.00 |") && card.contains("convnext_atto"), "{card}");

    // Pull into an empty cache and evaluate: the same numbers as the local run.
    let data = tmp.s("");
    let o = run_env("et-eval", &["--from-hub", "me/atto-cifar", "--data", &data, "--json", &tmp.s("hub.json")], &env);
    assert_ok(&o, "et-eval --from-hub");
    assert_ok(&run("et-eval", &["--run", &tmp.s("run"), "--data", &data, "--json", &tmp.s("local.json")]), "et-eval --run");
    let (a, b) = (results(&tmp.join("hub.json")), results(&tmp.join("local.json")));
    for key in ["resolution", "images", "top1", "top5", "loss"] {
        assert_eq!(a[0][key], b[0][key], "{key}");
    }
    assert!(tmp.join("hf-home/hub/models--me--atto-cifar/snapshots").is_dir(), "the download lands in the Hub cache layout");

    // Offline: the cache alone, not one request to the server.
    let before = hub.requests().len();
    let o = run_env("et-eval", &["--from-hub", "me/atto-cifar", "--offline", "--data", &data], &env);
    assert_ok(&o, "et-eval --from-hub --offline");
    assert_eq!(hub.requests().len(), before, "--offline made requests: {:?}", &hub.requests()[before..]);
    let empty = tmp.s("empty-home");
    let o = run_env("et-eval", &["--from-hub", "me/atto-cifar", "--offline", "--data", &data], &hub_env(&hub, &empty));
    assert_clean_failure(&o, "et-eval", "not in the local Hub cache");

    // Fine-tuning starts from the Hub run.
    let o = run_env("et-train", &["--data", &data, "--init-from", "me/atto-cifar", "--epochs", "0.2", "--batch-size", "4", "--out", &tmp.s("ft")], &env);
    assert_ok(&o, "et-train --init-from OWNER/NAME");
    assert!(stdout(&o).contains("init-from me/atto-cifar"), "{}", stdout(&o));

    // A second push to the same repository (it exists now) updates it.
    assert_ok(&run_env("et-export", &["--onnx", &tmp.s("run"), "--push-to-hub", "me/atto-cifar"], &env), "second push");
}

#[test]
fn failed_downloads_are_one_clear_line() {
    let tmp = TempDir::new("hub-bad");
    mini_dataset(tmp.path(), &CLASSES, 2);
    small_convnext_run(&tmp.join("run"), 3);
    let hub = StandInHub::start();
    let weights = std::fs::read(tmp.join("run/model.safetensors")).unwrap();
    let config = std::fs::read(tmp.join("run/config.json")).unwrap();
    for repo in ["me/corrupt", "me/truncated", "me/no-weights"] {
        hub.put_file(repo, "config.json", config.clone());
        if repo != "me/no-weights" {
            hub.put_file(repo, "model.safetensors", weights.clone());
        }
    }
    hub.fault("me/corrupt", "model.safetensors", Fault::Corrupt);
    hub.fault("me/truncated", "model.safetensors", Fault::Truncate);
    let data = tmp.s("");
    let eval = |repo: &str, home: &str| run_env("et-eval", &["--from-hub", repo, "--data", &data], &hub_env(&hub, home));

    assert_clean_failure(&eval("me/corrupt", &tmp.s("h1")), "et-eval", "is corrupt");
    assert_clean_failure(&eval("me/truncated", &tmp.s("h2")), "et-eval", "model.safetensors");
    assert_clean_failure(&eval("me/no-weights", &tmp.s("h3")), "et-eval", "has no file 'model.safetensors'");
    assert_clean_failure(&eval("me/nothing-here", &tmp.s("h4")), "et-eval", "me/nothing-here was not found");
    assert_clean_failure(&eval("not a repo", &tmp.s("h5")), "et-eval", "is not a Hub repository");
    // A corrupt blob must not stay in the cache: once the server is fixed, it works.
    hub.put_file("me/fixed", "config.json", config);
    hub.put_file("me/fixed", "model.safetensors", weights);
    hub.fault("me/fixed", "model.safetensors", Fault::Corrupt);
    assert!(!eval("me/fixed", &tmp.s("h6")).status.success());
    hub.clear_faults();
    assert_ok(&eval("me/fixed", &tmp.s("h6")), "retry after a corrupt download");

    // Nothing listens on port 1.
    let o = run_env("et-eval", &["--from-hub", "me/corrupt", "--data", &data], &[("HF_ENDPOINT", "http://127.0.0.1:1"), ("HF_HOME", &tmp.s("h7")), ("HF_TOKEN", "")]);
    assert_clean_failure(&o, "et-eval", "cannot reach the Hub at http://127.0.0.1:1");
    let o = run_env("et-export", &["--onnx", &tmp.s("run"), "--push-to-hub", "me/x"], &[("HF_ENDPOINT", "http://127.0.0.1:1"), ("HF_HOME", &tmp.s("h7")), ("HF_TOKEN", "")]);
    assert_clean_failure(&o, "et-export", "cannot reach the Hub");
}
