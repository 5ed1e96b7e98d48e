//! Batches that fit in memory: at a resolution far above a model's own, one batch of
//! activations can exceed the machine (a 4000-px ConvNeXt-atto image alone needs about 2 GB),
//! and the kernel would kill the process without a word. The batch shrinks to fit half the
//! available memory, or the evaluation is refused with the numbers.

use crate::EvalError;
use et_models::registry::{activations, ModelConfig};

/// The batch size for `resolution`: `requested`, or fewer images where a batch would take
/// more than half of `available` bytes; an error when not even one image fits.
pub fn fit_batch(requested: usize, arch: Option<&ModelConfig>, resolution: usize, available: Option<u64>) -> Result<usize, EvalError> {
    let Some(available) = available else { return Ok(requested) };
    // Without the architecture (an ONNX file of an unknown model): activations of about
    // sixteen times the input.
    let per_image = match arch.map(|a| activations(a, resolution, resolution)) {
        Some(Ok(act)) => act.eval_bytes(resolution, resolution),
        _ => 4 * 3 * 16 * (resolution * resolution) as u64,
    };
    let fits = (available / 2 / per_image.max(1)) as usize;
    if fits == 0 {
        return Err(EvalError::Input(format!(
            "evaluating at {resolution} px needs about {:.1} GB per image, and {:.1} GB of memory are available: use smaller --resolutions",
            per_image as f64 / 1e9,
            available as f64 / 1e9
        )));
    }
    Ok(requested.min(fits))
}

#[cfg(test)]
mod tests {
    use super::*;
    use et_models::registry::{model_config, ModelOptions};

    #[test]
    fn batches_shrink_to_fit_and_hopeless_sizes_are_refused() {
        let cfg = model_config("convnext_atto", &ModelOptions::default()).unwrap();
        let gb = 1u64 << 30;
        assert_eq!(fit_batch(64, Some(&cfg), 224, Some(16 * gb)).unwrap(), 64);
        let b = fit_batch(64, Some(&cfg), 2048, Some(4 * gb)).unwrap();
        assert!((1..64).contains(&b), "{b}");
        let e = fit_batch(64, Some(&cfg), 4000, Some(gb)).unwrap_err().to_string();
        assert!(e.contains("GB per image") && e.contains("--resolutions"), "{e}");
        assert_eq!(fit_batch(64, None, 224, None).unwrap(), 64, "unknown memory: as asked");
    }
}
