//! Every file the tools read, damaged on purpose: valid files truncated, with flipped bytes,
//! with values of the wrong type, empty or huge. Each reader must either take the file (a
//! harmless change) or stop with one error line — never a panic, a crash or an absurd
//! allocation. Readers: a run's config.json (et-eval --run, et-export --onnx), weights
//! (safetensors, et-eval --weights), a checkpoint's state.json (et-train --resume), TOML
//! schedules (et-train --schedule), ONNX metadata (et-eval --onnx) and .npy inputs
//! (et-eval predict).

mod common;
use common::runs::small_convnext_run;
use common::*;
use std::path::Path;
use std::process::Output;

/// Deterministic positions and values for the flips.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % n.max(1)
    }
}

/// Byte-level damage: cut at several points, single-byte flips, garbage appended, emptied.
fn byte_mutations(valid: &[u8], seed: u64) -> Vec<(String, Vec<u8>)> {
    let mut out = vec![("empty".to_string(), Vec::new())];
    for cut in [1, valid.len() / 3, valid.len() / 2, valid.len().saturating_sub(1)] {
        out.push((format!("cut at {cut}"), valid[..cut.min(valid.len())].to_vec()));
    }
    let mut rng = Lcg(seed);
    for _ in 0..8 {
        let mut b = valid.to_vec();
        let at = rng.next(b.len().min(4096));
        b[at] ^= 1 << rng.next(8);
        out.push((format!("bit flip at byte {at}"), b));
    }
    out.push(("garbage appended".into(), [valid, b"\xff\x00garbage"].concat()));
    out
}

/// JSON-level damage: each top-level value (and each element of arrays inside objects)
/// replaced by a wrong type, an empty array, a huge or negative number, or removed.
fn json_mutations(valid: &str) -> Vec<(String, Vec<u8>)> {
    let v: serde_json::Value = serde_json::from_str(valid).unwrap();
    let mut out = Vec::new();
    let replacements = [serde_json::json!("text"), serde_json::json!([]), serde_json::json!(1e12), serde_json::json!(-3), serde_json::json!(null), serde_json::json!({})];
    let mut paths: Vec<Vec<String>> = Vec::new();
    for (k, val) in v.as_object().unwrap() {
        paths.push(vec![k.clone()]);
        if let Some(o) = val.as_object() {
            paths.extend(o.keys().map(|k2| vec![k.clone(), k2.clone()]));
        }
    }
    for (i, path) in paths.iter().enumerate() {
        let mut m = v.clone();
        let slot = path.iter().fold(&mut m, |m, k| &mut m[k.as_str()]);
        *slot = replacements[i % replacements.len()].clone();
        out.push((format!("{} = {}", path.join("."), replacements[i % replacements.len()]), serde_json::to_vec(&m).unwrap()));
        let mut m = v.clone();
        if path.len() == 1 {
            m.as_object_mut().unwrap().remove(&path[0]);
        } else if let Some(o) = m[path[0].as_str()].as_object_mut() {
            o.remove(&path[1]);
        }
        out.push((format!("{} removed", path.join(".")), serde_json::to_vec(&m).unwrap()));
    }
    out
}

fn find_bytes(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `valid` with the first `from` replaced by `to` (bytes).
fn replace_bytes(valid: &[u8], from: &str, to: &str) -> Vec<u8> {
    let at = find_bytes(valid, from.as_bytes()).unwrap_or_else(|| panic!("{from} in the file"));
    [&valid[..at], to.as_bytes(), &valid[at + from.len()..]].concat()
}

/// Runs `tool args` with `target` holding each mutation of `valid` in turn, and checks
/// that nothing panics and every failure is one line.
fn fuzz(what: &str, target: &Path, valid: &[u8], mutations: Vec<(String, Vec<u8>)>, tool: &str, args: &[&str]) -> (usize, usize) {
    let (mut refused, mut taken) = (0, 0);
    for (how, bytes) in mutations {
        std::fs::write(target, &bytes).unwrap();
        let o: Output = run(tool, args);
        let err = stderr(&o);
        assert!(o.status.code().is_some_and(|c| c != 101) && !err.contains("panicked"), "{what} ({how}): {tool} crashed or panicked: {:?}\n{err}", o.status);
        if o.status.success() {
            taken += 1;
        } else {
            let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
            assert!(lines.len() == 1 && lines[0].starts_with(&format!("{tool}: error:")), "{what} ({how}): {tool} should fail with one error line, got:\n{err}");
            refused += 1;
        }
    }
    std::fs::write(target, valid).unwrap();
    (refused, taken)
}

#[test]
fn damaged_run_configs_and_weights_are_refused_in_one_line() {
    let tmp = TempDir::new("fuzz-run");
    mini_dataset(&tmp.join("data"), &["airplane", "cat", "ship"], 2);
    small_convnext_run(&tmp.join("run"), 1);
    let (run_dir, data) = (tmp.s("run"), tmp.s("data"));
    let config = tmp.join("run/config.json");
    let valid = std::fs::read(&config).unwrap();
    let text = String::from_utf8(valid.clone()).unwrap();
    let mutations: Vec<(String, Vec<u8>)> = json_mutations(&text).into_iter().chain(byte_mutations(&valid, 1)).collect();
    let (refused, _) = fuzz("config.json", &config, &valid, mutations.clone(), "et-eval", &["--run", &run_dir, "--data", &data]);
    assert!(refused > 20, "most damage to config.json is refused ({refused})");
    fuzz("config.json", &config, &valid, mutations, "et-export", &["--onnx", &run_dir, "--out", &tmp.s("x.onnx")]);
    // A damaged config that parses but describes a model too large to build.
    let huge = text.replace("\"dims\": [", "\"dims\": [8192, 8192, 8192, 8192, ").replace("\"depths\": [", "\"depths\": [200, 200, 200, 200, ");
    fuzz("config.json", &config, &valid, vec![("huge model".into(), huge.into_bytes())], "et-eval", &["--run", &run_dir, "--data", &data]);

    let weights = tmp.join("run/model.safetensors");
    let valid = std::fs::read(&weights).unwrap();
    let (refused, _) = fuzz("model.safetensors", &weights, &valid, byte_mutations(&valid, 2), "et-eval", &["--weights", &weights.to_string_lossy(), "--model", "convnext_atto", "--data", &data]);
    assert!(refused >= 5, "truncated weights are refused ({refused})");
}

#[test]
fn damaged_states_schedules_onnx_files_and_npy_inputs_are_refused_in_one_line() {
    let tmp = TempDir::new("fuzz-more");
    mini_dataset(&tmp.join("data"), &["airplane", "cat"], 4);
    let data = tmp.s("data");
    let o = run("et-train", &["--data", &data, "--epochs", "0.5", "--batch-size", "4", "--schedule", "baseline", "--out", &tmp.s("t")]);
    assert_ok(&o, "a short run");
    // Its only checkpoint, damaged: resuming must say so in one line.
    let latest = std::fs::read_to_string(tmp.join("t/checkpoints/latest")).unwrap();
    let state = tmp.join("t/checkpoints").join(latest.trim()).join("state.json");
    let valid = std::fs::read(&state).unwrap();
    let mutations: Vec<(String, Vec<u8>)> = json_mutations(&String::from_utf8(valid.clone()).unwrap()).into_iter().chain(byte_mutations(&valid, 3)).collect();
    let (refused, _) = fuzz("state.json", &state, &valid, mutations, "et-train", &["--resume", &tmp.s("t"), "--log-every", "1000"]);
    assert!(refused > 20, "damage to state.json is detected ({refused})");

    let schedule = tmp.join("s.toml");
    let valid = b"name = \"two\"\n[[stage]]\nfraction = 0.75\nmagnitude = 2\ncompute = 1\nbatch_size = 4\nreplay = { times = 2, size = 4, split = 2 }\n[[stage]]\nresolution = 32\nmagnitude = 9\ncompute = 3\n".to_vec();
    let mut mutations = byte_mutations(&valid, 4);
    for (from, to) in [("compute = 3", "compute = \"3\""), ("magnitude = 9", "magnitude = 1e300"), ("resolution = 32", "resolution = 99999999999"), ("fraction = 0.75", "fraction = -1"), ("times = 2", "times = 0"), ("batch_size = 4", "batch_size = 0"), ("[[stage]]\nresolution", "[stage]\nresolution")] {
        mutations.push((format!("{from} -> {to}"), String::from_utf8(valid.clone()).unwrap().replacen(from, to, 1).into_bytes()));
    }
    fuzz("schedule", &schedule, &valid, mutations, "et-train", &["--data", &data, "--schedule", &schedule.to_string_lossy(), "--dry-run"]);

    small_convnext_run(&tmp.join("run"), 1);
    let onnx = tmp.join("run/model.onnx");
    assert_ok(&run("et-export", &["--onnx", &tmp.s("run")]), "export");
    let valid = std::fs::read(&onnx).unwrap();
    let mut mutations = Vec::new();
    for cut in [0, 10, valid.len() / 2, valid.len() - 3] {
        mutations.push((format!("cut at {cut}"), valid[..cut].to_vec()));
    }
    // Metadata values: the same length, other content (the protobuf stays well-formed).
    // An entry is the key's length and bytes, then field 2's tag 0x12, the value's length and
    // bytes.
    for key in ["model", "resolution", "mean", "std", "crop_pct", "interpolation", "class_names"] {
        let pattern = [&[key.len() as u8], key.as_bytes(), &[0x12]].concat();
        if let Some(at) = find_bytes(&valid, &pattern) {
            let (start, len) = (at + pattern.len() + 1, valid[at + pattern.len()] as usize);
            for garble in [b"#" as &[u8], b"-1e99", b"nan"] {
                let mut b = valid.clone();
                for (x, g) in b[start..start + len].iter_mut().zip(garble.iter().cycle()) {
                    *x = *g;
                }
                mutations.push((format!("{key} = {:?}", String::from_utf8_lossy(&b[start..start + len])), b));
            }
        }
    }
    assert!(mutations.len() > 15, "the export carries its metadata");
    fuzz("model.onnx", &onnx, &valid, mutations, "et-eval", &["--onnx", &onnx.to_string_lossy(), "--data", &data]);

    let npy = tmp.join("x.npy");
    let mut valid = b"\x93NUMPY\x01\x00".to_vec();
    let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 3, 32, 32), }";
    let pad = 64 - (10 + header.len() + 1) % 64;
    let header = format!("{header}{}\n", " ".repeat(pad));
    valid.extend((header.len() as u16).to_le_bytes());
    valid.extend(header.as_bytes());
    valid.extend((0..3 * 32 * 32).flat_map(|i| ((i % 7) as f32 * 0.1).to_le_bytes()));
    let mut mutations = byte_mutations(&valid, 5);
    for (from, to) in [("(1, 3, 32, 32)", "(9999999, 3, 9999, 9999)"), ("'<f4'", "'<f8'"), ("False", "True "), ("(1, 3, 32, 32)", "(1, 3, 32)    ")] {
        mutations.push((format!("{from} -> {to}"), replace_bytes(&valid, from, to)));
    }
    let w = tmp.s("run/model.safetensors");
    fuzz("x.npy", &npy, &valid, mutations, "et-eval", &["predict", "--model", "convnext_atto", "--stem-stride", "2", "--weights", &w, "--input", &npy.to_string_lossy(), "--output", &tmp.s("y.npy")]);
}
