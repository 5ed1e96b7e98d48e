//! One evaluation pass over a data set (an ImageFolder or shards) with timm's eval transform, for any model
//! given as a closure from a batch of NCHW images to logits. et-eval (ONNX Runtime or
//! candle) and et-train (validation after each stage) share it.

use crate::dataset::Dataset;
use crate::loader::{Item, Loader, LoaderConfig, Shard};
use crate::metrics::Totals;
use crate::resample::Filter;
use crate::{transform, DataError, Rng};
use std::sync::Arc;
use std::time::Instant;

/// The eval transform's parameters (resize the shorter side to r / crop_pct, centre crop).
#[derive(Clone, Debug)]
pub struct Preprocess {
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub crop_pct: f64,
    pub filter: Filter,
}

#[derive(Clone, Debug)]
pub struct EvalOptions {
    pub batch_size: usize,
    pub threads: usize,
    pub skip_corrupt: bool,
    /// This process's share in a data-parallel job (together the ranks see every sample once).
    pub shard: Shard,
}

/// Accuracy and speed at one resolution.
#[derive(Clone, Debug)]
pub struct EvalOutcome {
    pub totals: Totals,
    /// Seconds spent inside the model (excludes decoding).
    pub model_seconds: f64,
    pub skipped: Vec<(std::path::PathBuf, String)>,
}

/// Runs `logits(images, [n, 3, r, r]) -> (n × classes)` over every image of `data` (this
/// rank's share of them), in the data set's order.
pub fn evaluate_dataset<E, F>(
    data: &Arc<Dataset>,
    resolution: usize,
    classes: usize,
    pre: &Preprocess,
    opts: &EvalOptions,
    mut logits: F,
) -> Result<EvalOutcome, E>
where
    E: From<DataError>,
    F: FnMut(&[f32], [usize; 4]) -> Result<Vec<f32>, E>,
{
    let cfg = LoaderConfig {
        batch_size: opts.batch_size.max(1),
        shuffle: false,
        drop_last: false,
        seed: 0,
        threads: opts.threads.max(1),
        prefetch: 2,
        skip_corrupt: opts.skip_corrupt,
        shard: opts.shard,
        shuffle_buffer: 1,
    };
    let loader = Loader::new(data.clone(), cfg);
    let p = pre.clone();
    let r = resolution as u32;
    let tf = Arc::new(move |s: &Item, _rng: &mut Rng, out: &mut [f32]| -> Result<(), DataError> {
        let img = s.decode()?;
        let img = transform::eval_transform(&img, r, p.crop_pct, p.filter);
        transform::to_chw_normalized_into(&img, &p.mean, &p.std, out)
    });
    let mut out = EvalOutcome { totals: Totals::default(), model_seconds: 0.0, skipped: Vec::new() };
    for batch in loader.epoch(0, [3, resolution, resolution], tf) {
        let batch = batch?;
        out.skipped.extend(batch.skipped.iter().cloned());
        if batch.labels.is_empty() {
            continue;
        }
        let t = Instant::now();
        let y = logits(&batch.images, batch.shape)?;
        out.model_seconds += t.elapsed().as_secs_f64();
        if y.len() != batch.labels.len() * classes {
            return Err(DataError::Invalid(format!("model returned {} values for {} images of {classes} classes", y.len(), batch.labels.len())).into());
        }
        out.totals.add(&y, &batch.labels, classes);
    }
    Ok(out)
}
