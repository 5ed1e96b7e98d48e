//! Training learns, and the README says what it does: the README's first command (the
//! bundled ET++ run, fixed seed) must end at the accuracy the README states, far above
//! chance, with a falling loss, and its batches must change resolution and RandAugment
//! magnitude stage by stage as the loader produced them. (A deliberately broken optimiser —
//! the update's sign flipped — ends near chance with a rising loss and fails this test.)

mod common;
use common::*;

/// The README's "val top-1 A %, top-5 B %" of the default run.
fn readme_accuracy() -> (f64, f64) {
    let text = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let at = text.find("val top-1 ").expect("README states the default run's accuracy");
    let rest = &text[at + "val top-1 ".len()..];
    let num = |s: &str| -> f64 { s.split(|c: char| !(c.is_ascii_digit() || c == '.')).next().unwrap().parse().unwrap() };
    let top1 = num(rest);
    let t5 = &rest[rest.find("top-5 ").expect("top-5") + "top-5 ".len()..];
    (top1, num(t5))
}

#[test]
fn the_default_run_learns_and_ends_where_the_readme_says() {
    let tmp = TempDir::new("learning");
    // The README's command is `cargo run --release -p et-train`: et-train with no arguments
    // but the output directory, from the repository root.
    let o = run("et-train", &["--out", &tmp.s("run")]);
    assert_ok(&o, "the default et-train run");
    let out = stdout(&o);
    let done = out.lines().find(|l| l.starts_with("done in")).unwrap_or_else(|| panic!("no summary line:\n{out}"));
    let pct = |key: &str| -> f64 {
        let s = &done[done.find(key).unwrap_or_else(|| panic!("{key} in {done}")) + key.len()..];
        s.split('%').next().unwrap().trim().parse().unwrap()
    };
    let (top1, top5) = (pct("val top-1 "), pct("top-5 "));
    let (readme1, readme5) = readme_accuracy();
    assert_eq!((format!("{top1:.1}"), format!("{top5:.1}")), (format!("{readme1:.1}"), format!("{readme5:.1}")), "the README states {readme1} % / {readme5} %, the run gave {top1} % / {top5} %");
    // Chance is 10 %; the deterministic run reaches 34.2 %; an optimiser that does not
    // descend stays near 10 %.
    assert!(top1 >= 25.0, "top-1 {top1} % is below the 25 % floor");

    let records: Vec<serde_json::Value> = std::fs::read_to_string(tmp.join("run/metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let steps: Vec<&serde_json::Value> = records.iter().filter(|r| r["event"] == "step").collect();
    let mean = |s: &[&serde_json::Value]| s.iter().map(|r| r["loss"].as_f64().unwrap()).sum::<f64>() / s.len() as f64;
    let (first, last) = (mean(&steps[..5]), mean(&steps[steps.len() - 5..]));
    assert!(first - last > 0.1, "the loss must fall: {first:.3} over the first logged steps, {last:.3} over the last");

    // What the loader produced, per stage: ConvNeXt's ET++ list scaled to 32 px is six
    // stages at 24 px then four at 32 px, RandAugment magnitude = stage index.
    for stage in 0..10u64 {
        let in_stage: Vec<&&serde_json::Value> = steps.iter().filter(|r| r["stage"] == stage).collect();
        assert!(!in_stage.is_empty(), "stage {stage} logged no step");
        let want = if stage < 6 { 24 } else { 32 };
        for r in in_stage {
            let shape: Vec<u64> = r["input"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
            assert_eq!(&shape[1..], &[3, want, want], "stage {stage}: batches of {shape:?}");
            assert_eq!(r["randaugment_magnitude"].as_f64(), Some(stage as f64), "stage {stage}'s transform");
        }
    }
}
