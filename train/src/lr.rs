//! Learning-rate schedule over *compute progress* (fraction of the budget spent, in
//! base-resolution-equivalent epochs): linear warm-up, then cosine to `min_lr`.

#[derive(Clone, Debug, PartialEq)]
pub struct CosineSchedule {
    pub lr: f64,
    pub min_lr: f64,
    pub warmup_lr: f64,
    /// Warm-up length as a fraction of the budget.
    pub warmup: f64,
}

impl CosineSchedule {
    /// Learning rate at `progress` ∈ [0, 1].
    pub fn at(&self, progress: f64) -> f64 {
        let p = progress.clamp(0.0, 1.0);
        if p < self.warmup {
            return self.warmup_lr + (self.lr - self.warmup_lr) * p / self.warmup;
        }
        let t = if self.warmup < 1.0 { (p - self.warmup) / (1.0 - self.warmup) } else { 1.0 };
        self.min_lr + 0.5 * (self.lr - self.min_lr) * (1.0 + (std::f64::consts::PI * t).cos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine() {
        let s = CosineSchedule { lr: 1e-3, min_lr: 1e-6, warmup_lr: 1e-6, warmup: 0.1 };
        assert!((s.at(0.0) - 1e-6).abs() < 1e-12);
        assert!((s.at(0.05) - (1e-6 + (1e-3 - 1e-6) * 0.5)).abs() < 1e-12);
        assert!((s.at(0.1) - 1e-3).abs() < 1e-12);
        assert!((s.at(0.55) - (1e-6 + 0.5 * (1e-3 - 1e-6))).abs() < 1e-12);
        assert!((s.at(1.0) - 1e-6).abs() < 1e-12);
        assert!(s.at(0.3) > s.at(0.6));
    }
}
