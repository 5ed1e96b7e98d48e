//! The model card (`README.md`) pushed with a run: what the model is, how to preprocess
//! for it, how to use it, and its measured accuracy.

use serde_json::Value;
use std::fmt::Write;

/// Accuracy at one resolution, fractions in [0, 1].
#[derive(Clone, Debug, PartialEq)]
pub struct Metric {
    pub resolution: usize,
    pub top1: f64,
    pub top5: f64,
    pub images: Option<usize>,
}

/// Reads the rows of an `et-eval --json` report.
pub fn metrics_from_eval_report(report: &Value) -> Vec<Metric> {
    let rows = report.get("results").and_then(Value::as_array).cloned().unwrap_or_default();
    rows.iter()
        .filter_map(|r| {
            Some(Metric {
                resolution: r.get("resolution")?.as_u64()? as usize,
                top1: r.get("top1")?.as_f64()?,
                top5: r.get("top5")?.as_f64()?,
                images: r.get("images").and_then(Value::as_u64).map(|n| n as usize),
            })
        })
        .collect()
}

/// The final validation accuracy of a run from its `metrics.jsonl` (last line carrying
/// `val_top1`), measured at the run's base resolution.
pub fn final_metric_from_jsonl(text: &str, base_resolution: usize) -> Option<Metric> {
    text.lines().rev().filter_map(|l| serde_json::from_str::<Value>(l).ok()).find_map(|v| {
        Some(Metric { resolution: base_resolution, top1: v.get("val_top1")?.as_f64()?, top5: v.get("val_top5")?.as_f64()?, images: None })
    })
}

/// README.md for a run: `config` is its config.json, `metrics` its measured accuracy.
pub fn model_card(repo_id: &str, config: &Value, onnx_files: &[String], metrics: &[Metric]) -> String {
    let s = |k: &str| config.get(k).and_then(Value::as_str).unwrap_or("?").to_string();
    let model = s("model");
    let mut out = String::new();
    let _ = writeln!(out, "---\nlibrary_name: efficienttrain-rs\ntags:\n- image-classification\n- efficienttrain\n- {model}\n---\n");
    let _ = writeln!(out, "# {repo_id}\n");
    let _ = writeln!(
        out,
        "A `{model}` image classifier trained with efficienttrain-rs (EfficientTrain++ curriculum), {} classes, base resolution {} px.\n",
        config.get("num_classes").and_then(Value::as_u64).unwrap_or(0),
        config.get("base_resolution").and_then(Value::as_u64).unwrap_or(0)
    );
    let _ = writeln!(out, "## Accuracy\n");
    if metrics.is_empty() {
        let _ = writeln!(out, "No evaluation was recorded with this upload.\n");
    } else {
        let _ = writeln!(out, "| resolution | top-1 (%) | top-5 (%) | images |\n|---:|---:|---:|---:|");
        for m in metrics {
            let _ = writeln!(
                out,
                "| {} | {:.2} | {:.2} | {} |",
                m.resolution,
                100.0 * m.top1,
                100.0 * m.top5,
                m.images.map(|n| n.to_string()).unwrap_or_else(|| "—".into())
            );
        }
        out.push('\n');
    }
    let _ = writeln!(out, "## Preprocessing\n");
    let _ = writeln!(
        out,
        "Resize the shorter side to int(r / crop_pct) ({} interpolation), centre-crop r×r, scale to [0, 1], normalise with mean {} and std {}; crop_pct = {}.\n",
        s("interpolation"),
        config.get("mean").map(Value::to_string).unwrap_or_default(),
        config.get("std").map(Value::to_string).unwrap_or_default(),
        config.get("crop_pct").map(Value::to_string).unwrap_or_default()
    );
    let _ = writeln!(out, "## Files\n\n- `model.safetensors`: weights with timm names\n- `config.json`: architecture, classes and preprocessing");
    for f in onnx_files {
        let _ = writeln!(out, "- `{f}`: ONNX (opset 17), preprocessing facts in its metadata");
    }
    let _ = writeln!(
        out,
        "\n## Use\n\n```sh\net-eval --from-hub {repo_id} --data DIR --resolutions {}\net-train --init-from {repo_id} --data DIR   # fine-tune\n```",
        config.get("base_resolution").and_then(Value::as_u64).unwrap_or(224)
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn card_has_the_metrics_table_and_preprocessing() {
        let cfg: Value = serde_json::from_str(r#"{"model":"convnext_atto","num_classes":10,"base_resolution":32,"mean":[0.5,0.5,0.5],"std":[0.25,0.25,0.25],"interpolation":"bicubic","crop_pct":0.875}"#).unwrap();
        let report: Value = serde_json::from_str(r#"{"results":[{"resolution":32,"top1":0.348,"top5":0.878,"images":500},{"resolution":48,"top1":0.3,"top5":0.8,"images":500}]}"#).unwrap();
        let m = metrics_from_eval_report(&report);
        assert_eq!(m.len(), 2);
        let card = model_card("me/atto", &cfg, &["model.onnx".into()], &m);
        assert!(card.contains("| 32 | 34.80 | 87.80 | 500 |"), "{card}");
        assert!(card.contains("| 48 | 30.00 | 80.00 | 500 |"));
        assert!(card.contains("crop_pct = 0.875") && card.contains("`model.onnx`"));
        let jsonl = "{\"event\":\"stage\",\"val_top1\":0.1,\"val_top5\":0.5}\n{\"event\":\"done\",\"val_top1\":0.348,\"val_top5\":0.878}\n";
        assert_eq!(final_metric_from_jsonl(jsonl, 32).unwrap().top1, 0.348);
        assert!(final_metric_from_jsonl("{}", 32).is_none());
    }
}
