//! Soft-target cross-entropy (timm's `SoftTargetCrossEntropy`), with label smoothing
//! folded into the targets (et-data's `smoothing_values`), built from ops that all have
//! gradients.

use candle_core::{Result, Tensor, D};

/// Smoothed one-hot targets (N, classes) as a tensor (et-data's `smoothed_targets`).
pub fn smoothed_targets(labels: &[usize], classes: usize, smoothing: f64, device: &candle_core::Device) -> Result<Tensor> {
    Tensor::from_vec(et_data::mixup::smoothed_targets(labels, classes, smoothing), (labels.len(), classes), device)
}

/// mean over the batch of −Σ_k target_k · log_softmax(logits)_k.
pub fn soft_cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let log_p = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    (targets * log_p)?.sum(D::Minus1)?.neg()?.mean_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};
    use et_kernels::testing::{check_grads, seeded};

    #[test]
    fn value_and_gradient() -> Result<()> {
        let dev = Device::Cpu;
        let logits = Tensor::new(&[[2.0f32, 0.0, -1.0]], &dev)?;
        let t = smoothed_targets(&[0], 3, 0.0, &dev)?;
        let want = -(2f64.exp() / (2f64.exp() + 1.0 + (-1f64).exp())).ln();
        assert!((soft_cross_entropy(&logits, &t)?.to_scalar::<f32>()? as f64 - want).abs() < 1e-6);
        let t = smoothed_targets(&[1, 2], 4, 0.1, &dev)?;
        let rows: Vec<f32> = t.sum(1)?.to_vec1()?;
        assert!(rows.iter().all(|s| (s - 1.0).abs() < 1e-6));
        // Large logits must not overflow.
        let big = Tensor::new(&[[1000.0f32, -1000.0]], &dev)?;
        assert!(soft_cross_entropy(&big, &smoothed_targets(&[1], 2, 0.0, &dev)?)?.to_scalar::<f32>()?.is_finite());
        let x = Var::from_tensor(&seeded(&[3, 5], 1, &dev, DType::F64)?)?;
        let tt = smoothed_targets(&[0, 4, 2], 5, 0.1, &dev)?.to_dtype(DType::F64)?;
        check_grads(&[&x], |v| soft_cross_entropy(v[0], &tt)?.unsqueeze(0))
    }
}
