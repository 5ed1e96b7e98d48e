//! Top-k accuracy and cross-entropy from logits.

/// Running totals over an evaluation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Totals {
    pub images: usize,
    pub top1: usize,
    pub top5: usize,
    pub loss_sum: f64,
}

impl Totals {
    /// Adds a batch of row-major logits (N, classes) with their labels.
    pub fn add(&mut self, logits: &[f32], labels: &[usize], classes: usize) {
        for (row, &label) in logits.chunks_exact(classes).zip(labels) {
            let target = row[label];
            // Rank of the target: how many classes score strictly higher (ties count for it).
            let higher = row.iter().filter(|&&v| v > target).count();
            self.top1 += (higher < 1) as usize;
            self.top5 += (higher < 5) as usize;
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let lse = max + row.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
            self.loss_sum += lse - target as f64;
            self.images += 1;
        }
    }

    pub fn top1_frac(&self) -> f64 {
        self.top1 as f64 / self.images.max(1) as f64
    }

    pub fn top5_frac(&self) -> f64 {
        self.top5 as f64 / self.images.max(1) as f64
    }

    pub fn mean_loss(&self) -> f64 {
        self.loss_sum / self.images.max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topk_and_loss() {
        let mut t = Totals::default();
        // 6 classes; sample 0: label 0 is best; sample 1: label 5 is 6th of 6.
        let logits = [5.0, 1.0, 1.0, 1.0, 1.0, 1.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0];
        t.add(&logits, &[0, 5], 6);
        assert_eq!((t.images, t.top1, t.top5), (2, 1, 1));
        let l0 = -(5f64.exp() / (5f64.exp() + 5.0 * 1f64.exp())).ln();
        let z1: f64 = (1..=6).map(|v| (v as f64).exp()).sum();
        let l1 = -(1f64.exp() / z1).ln();
        assert!((t.mean_loss() - (l0 + l1) / 2.0).abs() < 1e-9);
        let mut u = Totals::default();
        u.add(&logits, &[2, 4], 6);
        assert_eq!((u.top1, u.top5), (0, 2));
    }
}
