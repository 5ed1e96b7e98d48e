//! WebDataset shards end to end: et-pack's output (deterministic, readable by GNU tar, the
//! original bytes unless --shorter-side re-encodes a larger image), et-eval on shards giving
//! the folder's report, et-train on shards learning as on the folder and resuming exactly
//! mid-shard, and damaged shards skipped or refused in one line.

mod common;
use common::runs::{results, small_convnext_run, CLASSES};
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn pack(src: &str, out: &str, extra: &[&str]) -> Output {
    let mut a = vec![src, out];
    a.extend(extra);
    run("et-pack", &a)
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().flatten().flat_map(|e| if e.path().is_dir() { files(&e.path()) } else { vec![e.path()] }).collect();
    v.sort();
    v
}

fn index(split: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(split.join("index.json")).unwrap()).unwrap()
}

/// `tar -xOf SHARD MEMBER`: a member's bytes as GNU tar reads them.
fn extract(shard: &Path, member: &str) -> Vec<u8> {
    let o = Command::new("tar").arg("-xOf").arg(shard).arg(member).output().expect("tar (GNU tar)");
    assert!(o.status.success(), "tar -xOf {} {member}: {}", shard.display(), String::from_utf8_lossy(&o.stderr));
    o.stdout
}

#[test]
fn et_eval_on_packed_shards_gives_the_folders_report() {
    let tmp = TempDir::new("shards-eval");
    mini_dataset(&tmp.join("data"), &CLASSES, 12);
    assert_ok(&pack(&tmp.s("data"), &tmp.s("shards"), &[]), "et-pack");
    small_convnext_run(&tmp.join("run"), 4);
    let report = |data: &str, json: &str| {
        assert_ok(&run("et-eval", &["--run", &tmp.s("run"), "--data", data, "--resolutions", "32,24", "--batch-size", "4", "--json", &tmp.s(json)]), "et-eval");
        let mut r = results(&tmp.join(json));
        for x in &mut r {
            x.as_object_mut().unwrap().remove("img_per_s");
        }
        r
    };
    let folder = report(&tmp.s("data"), "folder.json");
    assert_eq!(folder[0]["images"], 18);
    assert_eq!(report(&tmp.s("shards"), "shards.json"), folder, "the same images, labels, order and preprocessing");
    assert_eq!(report(&tmp.s("shards/val/val-{000000..000000}.tar"), "pattern.json"), folder);
}

#[test]
fn et_pack_is_deterministic_and_gnu_tar_reads_the_original_bytes() {
    let tmp = TempDir::new("shards-pack");
    let src = "assets/cifar10-mini";
    assert_ok(&pack(src, &tmp.s("a"), &["--shard-mb", "1", "--threads", "1"]), "et-pack");
    assert_ok(&pack(src, &tmp.s("b"), &["--shard-mb", "1", "--threads", "2"]), "et-pack");
    let (a, b) = (files(&tmp.join("a")), files(&tmp.join("b")));
    assert_eq!(a.len(), b.len());
    assert!(a.len() >= 8, "several shards per split: {a:?}");
    for (x, y) in a.iter().zip(&b) {
        assert!(std::fs::read(x).unwrap() == std::fs::read(y).unwrap(), "{} differs between two packs", x.display());
    }
    let train = tmp.join("a/train");
    let idx = index(&train);
    let shard = train.join(idx["shards"][0]["file"].as_str().unwrap());
    let o = Command::new("tar").arg("-tvf").arg(&shard).output().expect("tar");
    assert!(o.status.success());
    let listing = String::from_utf8_lossy(&o.stdout);
    let samples = idx["shards"][0]["samples"].as_array().unwrap();
    assert_eq!(listing.lines().count(), 2 * samples.len());
    for (line, s) in listing.lines().step_by(2).zip(samples) {
        assert!(line.starts_with("-rw-r--r-- 0/0") && line.contains("1970-01-01 00:00"), "fixed header fields: {line}");
        assert!(line.ends_with(&format!("{}.jpg", s[0].as_str().unwrap())), "{line}");
    }
    let classes: Vec<String> = serde_json::from_str(&std::fs::read_to_string(train.join("classes.json")).unwrap()).unwrap();
    let mut labels = std::collections::HashSet::new();
    for s in samples.iter().take(20) {
        let key = s[0].as_str().unwrap();
        let original = repo_root().join(src).join("train").join(format!("{key}.jpg"));
        assert!(extract(&shard, &format!("{key}.jpg")) == std::fs::read(&original).unwrap(), "{key}: not the original bytes");
        let label: usize = String::from_utf8(extract(&shard, &format!("{key}.cls"))).unwrap().parse().unwrap();
        assert_eq!(classes[label], key.split('/').next().unwrap());
        labels.insert(label);
    }
    assert!(labels.len() > 3, "training images are packed in a shuffled order: {labels:?}");
    let val = index(&tmp.join("a/val"));
    let first: Vec<&str> = val["shards"][0]["samples"].as_array().unwrap().iter().take(3).map(|s| s[0].as_str().unwrap()).collect();
    assert_eq!(first, ["airplane/0000", "airplane/0001", "airplane/0002"], "validation keeps the folder's order");
}

#[test]
fn et_pack_refuses_what_it_cannot_do_in_one_line() {
    let tmp = TempDir::new("shards-pack-errors");
    std::fs::create_dir_all(tmp.join("empty")).unwrap();
    assert_clean_failure(&pack(&tmp.s("empty"), &tmp.s("o"), &[]), "et-pack", "is not an ImageFolder");
    assert_clean_failure(&pack(&tmp.s("missing"), &tmp.s("o"), &[]), "et-pack", "is not an ImageFolder");
    mini_dataset(&tmp.join("data"), &["cat"], 2);
    std::fs::create_dir_all(tmp.join("out")).unwrap();
    std::fs::write(tmp.join("out/stale.txt"), "old").unwrap();
    assert_clean_failure(&pack(&tmp.s("data"), &tmp.s("out"), &[]), "et-pack", "--force");
    assert_ok(&pack(&tmp.s("data"), &tmp.s("out"), &["--force"]), "et-pack --force");
    assert!(!tmp.join("out/stale.txt").exists() && tmp.join("out/train/train-000000.tar").is_file());
    assert_clean_failure(&pack(&tmp.s("data"), &tmp.s("o2"), &["--quality", "0"]), "et-pack", "--quality");
    // A disk that fills: one line, and no OUT left half-written.
    let small = tmp.join("small");
    let kept = tmp.join("kept");
    let args = ["assets/cifar10-mini".to_string(), small.join("out").to_string_lossy().into_owned()];
    let o = on_small_disk("et-pack", &small, &kept, 2, &args);
    assert_clean_failure(&o, "et-pack", "disk is full");
    assert!(std::fs::read_dir(&kept).unwrap().next().is_none(), "nothing left behind: {:?}", files(&kept));
}

/// Writes `img` to `path` in the format of its extension.
fn save(img: &image::RgbImage, path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    img.save(path).unwrap();
}

fn gradient(w: u32, h: u32) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 255 / w) as u8, (y * 255 / h) as u8, ((x + y) % 256) as u8]))
}

#[test]
fn shorter_side_re_encodes_only_the_larger_images() {
    let tmp = TempDir::new("shards-shrink");
    let src = tmp.join("src");
    let cases = [("a/big.png", 64, 48), ("a/small.jpg", 20, 30), ("b/edge.jpg", 40, 32), ("b/wide.jpg", 100, 36)];
    for (name, w, h) in cases {
        save(&gradient(w, h), &src.join(name));
    }
    assert_ok(&pack(&tmp.s("src"), &tmp.s("out"), &["--shorter-side", "32", "--quality", "95", "--keep-order"]), "et-pack --shorter-side");
    let shard = tmp.join("out/shard-000000.tar");
    let want = [("a/big", "jpg", Some((42, 32))), ("a/small", "jpg", None), ("b/edge", "jpg", None), ("b/wide", "jpg", Some((88, 32)))];
    let samples = index(&tmp.join("out"))["shards"][0]["samples"].clone();
    for ((key, field, resized), (name, _, _)) in want.iter().zip(cases) {
        let s = samples.as_array().unwrap().iter().find(|s| s[0] == *key).unwrap_or_else(|| panic!("{key} in the index"));
        assert_eq!(s[1], *field, "{key}");
        let bytes = extract(&shard, &format!("{key}.{field}"));
        let original = std::fs::read(src.join(name)).unwrap();
        match resized {
            None => assert!(bytes == original, "{key} must be copied byte for byte"),
            Some((w, h)) => {
                let got = image::load_from_memory(&bytes).unwrap().to_rgb8();
                assert_eq!(got.dimensions(), (*w, *h), "{key}");
                // The reference: the decoded original, Lanczos-resized (Pillow's filter).
                let reference = et_data::transform::resize_shorter(&et_data::decode::decode_bytes(&original).unwrap(), 32, et_data::resample::Filter::Lanczos);
                let diff = got.as_raw().iter().zip(reference.as_raw()).map(|(&a, &b)| (a as f64 - b as f64).abs()).sum::<f64>() / got.as_raw().len() as f64;
                assert!(diff < 3.0, "{key}: mean difference {diff} from the resized original");
            }
        }
    }
}

fn top1(o: &Output) -> f64 {
    let out = stdout(o);
    let done = out.lines().find(|l| l.starts_with("done in")).unwrap_or_else(|| panic!("no summary:\n{out}"));
    done[done.find("val top-1 ").unwrap() + 10..].split('%').next().unwrap().trim().parse().unwrap()
}

#[test]
fn et_train_on_shards_learns_as_on_the_folder() {
    let tmp = TempDir::new("shards-train");
    mini_dataset(&tmp.join("data"), &CLASSES, 200);
    // Several shards and a buffer smaller than one: the stream order, not a full shuffle.
    assert_ok(&pack(&tmp.s("data"), &tmp.s("shards"), &["--shard-mb", "0.3"]), "et-pack");
    let train = |data: &str, out: &str| {
        let o = run("et-train", &["--data", data, "--schedule", "baseline", "--epochs", "2", "--batch-size", "32", "--shuffle-buffer", "100", "--log-every", "100", "--out", &tmp.s(out)]);
        assert_ok(&o, "et-train");
        top1(&o)
    };
    let (folder, shards) = (train(&tmp.s("data"), "folder"), train(&tmp.s("shards"), "shards"));
    // Three classes (chance 33 %); both runs reach about 50 % after two epochs.
    assert!(shards >= 40.0, "top-1 on shards {shards} % is near chance (folder: {folder} %)");
    assert!((shards - folder).abs() <= 15.0, "top-1 on shards {shards} %, on the folder {folder} %");
}

#[test]
fn a_run_on_shards_killed_mid_shard_resumes_bit_identical() {
    let tmp = TempDir::new("shards-resume");
    mini_dataset(&tmp.join("data"), &CLASSES, 8);
    assert_ok(&pack(&tmp.s("data"), &tmp.s("shards"), &["--shard-mb", "0.02"]), "et-pack");
    let shards = index(&tmp.join("shards/train"))["shards"].as_array().unwrap().len();
    assert!(shards >= 2, "{shards} shards");
    let args = |out: &str| -> Vec<String> {
        ["--data", &tmp.s("shards"), "--schedule", "baseline", "--epochs", "2", "--batch-size", "4", "--shuffle-buffer", "5", "--save-every-steps", "3", "--ema-decay", "0.9", "--deterministic", "--compute-threads", "2", "--out", &tmp.s(out)].iter().map(|s| s.to_string()).collect()
    };
    assert_ok(&run("et-train", &args("a").iter().map(String::as_str).collect::<Vec<_>>()), "uninterrupted et-train");
    let latest = tmp.join("b/checkpoints/latest");
    let mut killed = false;
    for _ in 0..3 {
        let _ = std::fs::remove_dir_all(tmp.join("b"));
        let mut child = Command::new(bin("et-train")).args(args("b")).current_dir(repo_root()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn");
        let t0 = Instant::now();
        while !latest.exists() && child.try_wait().unwrap().is_none() && t0.elapsed() < Duration::from_secs(120) {
            std::thread::sleep(Duration::from_millis(2));
        }
        let running = child.try_wait().unwrap().is_none();
        child.kill().ok();
        child.wait().ok();
        if running {
            killed = true;
            break;
        }
    }
    assert!(killed, "et-train ended before it could be killed after its first checkpoint");
    let name = std::fs::read_to_string(&latest).unwrap();
    let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(tmp.join("b/checkpoints").join(name.trim()).join("state.json")).unwrap()).unwrap();
    assert!(state["next_batch"].as_u64().unwrap() > 0, "the checkpoint is mid-epoch: {}", state["next_batch"]);
    let o = run("et-train", &["--resume", &tmp.s("b")]);
    assert_ok(&o, "et-train --resume");
    for f in ["model.safetensors", "ema.safetensors"] {
        assert!(std::fs::read(tmp.join("a").join(f)).unwrap() == std::fs::read(tmp.join("b").join(f)).unwrap(), "{f}: the resumed run differs from the uninterrupted one");
    }
}

/// The data offset and size of sample `i` of the first shard of `split`.
fn member(split: &Path, i: usize) -> (PathBuf, usize, usize) {
    let idx = index(split);
    let s = &idx["shards"][0];
    let m = &s["samples"][i];
    (split.join(s["file"].as_str().unwrap()), m[2].as_u64().unwrap() as usize, m[3].as_u64().unwrap() as usize)
}

#[test]
fn damaged_shards_are_skipped_and_counted_or_refused_in_one_line() {
    let tmp = TempDir::new("shards-damage");
    mini_dataset(&tmp.join("data"), &CLASSES, 8);
    assert_ok(&pack(&tmp.s("data"), &tmp.s("shards"), &[]), "et-pack");
    small_convnext_run(&tmp.join("run"), 4);
    let eval = || run("et-eval", &["--run", &tmp.s("run"), "--data", &tmp.s("shards"), "--resolutions", "32", "--skip-corrupt", "--json", &tmp.s("r.json")]);
    let val = tmp.join("shards/val");
    // An image overwritten in place (same size): skipped with its name, one image fewer.
    let (shard, offset, size) = member(&val, 2);
    let mut bytes = std::fs::read(&shard).unwrap();
    bytes[offset..offset + size].fill(b'x');
    std::fs::write(&shard, &bytes).unwrap();
    let o = eval();
    assert_ok(&o, "et-eval with a damaged member");
    assert!(stderr(&o).contains("skipped") && stderr(&o).contains("cannot decode"), "{}", stderr(&o));
    assert_eq!(results(&tmp.join("r.json"))[0]["images"], 11);
    // Cut inside the last image: the index no longer describes the shard, which is read
    // again; the cut member is skipped.
    let (_, last_offset, _) = member(&val, 11);
    std::fs::write(&shard, &bytes[..last_offset + 10]).unwrap();
    let o = eval();
    assert_ok(&o, "et-eval with a truncated shard");
    assert!(stdout(&o).contains("indexing 1 of 1 shards"), "{}", stdout(&o));
    assert!(stderr(&o).contains("truncated"), "{}", stderr(&o));
    assert_eq!(results(&tmp.join("r.json"))[0]["images"], 10);
    // Structural damage: one line.
    std::fs::write(&shard, b"not a tar file at all".repeat(40)).unwrap();
    assert_clean_failure(&eval(), "et-eval", "not a tar archive");
    std::fs::remove_file(val.join("classes.json")).unwrap();
    assert_clean_failure(&eval(), "et-eval", "classes.json");
    let o = run("et-train", &["--data", &tmp.s("shards/train-{000000..000003}.tar"), "--out", &tmp.s("t")]);
    assert_clean_failure(&o, "et-train", "no shards match");
}
