//! Curriculum schedules (SPEC.md §3) as pure data: per stage, the input resolution, the
//! RandAugment magnitude and how many passes over the data it gets.
//!
//! `budget` is in base-resolution-equivalent epochs. ET++ gives every stage an equal
//! share of compute, so a stage at resolution r runs (budget/10)·(base/r)² epochs.

use serde::Serialize;

/// Model family, for the family-specific ET++ resolution lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    ConvNeXt,
    DeiT,
    /// ResNet, Swin, CSWin (and the default for other models).
    Other,
}

impl Family {
    pub fn of_model(name: &str) -> Family {
        if name.starts_with("convnext") {
            Family::ConvNeXt
        } else if name.starts_with("deit") || name.starts_with("vit") {
            Family::DeiT
        } else {
            Family::Other
        }
    }

    /// ET++ resolutions at base 224, one per stage.
    fn etpp_resolutions(self) -> [usize; 10] {
        match self {
            Family::ConvNeXt => [160, 160, 160, 160, 160, 160, 224, 224, 224, 224],
            Family::DeiT => [96, 96, 160, 160, 160, 160, 192, 192, 224, 224],
            Family::Other => [96, 96, 160, 160, 160, 160, 224, 224, 224, 224],
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Stage {
    pub resolution: usize,
    /// RandAugment magnitude (timm `rand-m{m}-mstd0.5-inc1`).
    pub magnitude: f64,
    /// Passes over the training set in this stage (may be fractional).
    pub epochs: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Schedule {
    pub name: String,
    pub base_resolution: usize,
    pub budget: f64,
    pub stages: Vec<Stage>,
}

/// A resolution of the 224-px schedule scaled to `base`, kept a multiple of 8 (at least 8),
/// so that 160 → 24 and 224 → 32 for 32-px data, and 224-px schedules are unchanged.
pub fn scale_resolution(r224: usize, base: usize) -> usize {
    if base == 224 {
        return r224;
    }
    let r = r224 as f64 * base as f64 / 224.0;
    (((r / 8.0).round() as usize) * 8).clamp(8, base.max(8))
}

impl Schedule {
    /// EfficientTrain++: ten stages of equal compute, magnitude = stage index.
    pub fn et_pp(family: Family, base: usize, budget: f64) -> Schedule {
        let stages = family
            .etpp_resolutions()
            .iter()
            .enumerate()
            .map(|(i, &r224)| {
                let resolution = scale_resolution(r224, base);
                let ratio = base as f64 / resolution as f64;
                Stage { resolution, magnitude: i as f64, epochs: budget / 10.0 * ratio * ratio }
            })
            .collect();
        Schedule { name: "et-pp".into(), base_resolution: base, budget, stages }
    }

    /// The baseline recipe: every epoch at the base resolution with RandAugment m9.
    pub fn baseline(base: usize, budget: f64) -> Schedule {
        Schedule {
            name: "baseline".into(),
            base_resolution: base,
            budget,
            stages: vec![Stage { resolution: base, magnitude: 9.0, epochs: budget }],
        }
    }

    pub fn by_name(name: &str, family: Family, base: usize, budget: f64) -> Option<Schedule> {
        match name {
            "et-pp" | "etpp" => Some(Schedule::et_pp(family, base, budget)),
            "baseline" => Some(Schedule::baseline(base, budget)),
            _ => None,
        }
    }

    /// Compute spent by `stage` in base-equivalent epochs.
    pub fn stage_compute(&self, stage: usize) -> f64 {
        let s = &self.stages[stage];
        let f = s.resolution as f64 / self.base_resolution as f64;
        s.epochs * f * f
    }

    pub fn total_epochs(&self) -> f64 {
        self.stages.iter().map(|s| s.epochs).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etpp_at_224_matches_the_paper() {
        let s = Schedule::et_pp(Family::Other, 224, 200.0);
        let res: Vec<usize> = s.stages.iter().map(|s| s.resolution).collect();
        assert_eq!(res, vec![96, 96, 160, 160, 160, 160, 224, 224, 224, 224]);
        let mags: Vec<f64> = s.stages.iter().map(|s| s.magnitude).collect();
        assert_eq!(mags, (0..10).map(|i| i as f64).collect::<Vec<_>>());
        // (E/10)·(224/96)² epochs at 96 px; every stage costs E/10 base epochs.
        assert!((s.stages[0].epochs - 20.0 * (224.0f64 / 96.0).powi(2)).abs() < 1e-9);
        for i in 0..10 {
            assert!((s.stage_compute(i) - 20.0).abs() < 1e-9);
        }
        let c = Schedule::et_pp(Family::ConvNeXt, 224, 200.0);
        assert_eq!(c.stages.iter().filter(|s| s.resolution == 160).count(), 6);
        let d = Schedule::et_pp(Family::DeiT, 224, 100.0);
        assert_eq!(d.stages[6].resolution, 192);
    }

    #[test]
    fn scaled_to_32_px() {
        assert_eq!(scale_resolution(160, 32), 24);
        assert_eq!(scale_resolution(224, 32), 32);
        assert_eq!(scale_resolution(96, 32), 16);
        let s = Schedule::et_pp(Family::ConvNeXt, 32, 10.0);
        assert_eq!(s.stages[0].resolution, 24);
        assert!((s.stages[0].epochs - 1.0 * (32.0f64 / 24.0).powi(2)).abs() < 1e-9);
        assert!((s.stages[9].epochs - 1.0).abs() < 1e-9);
        let total: f64 = (0..10).map(|i| s.stage_compute(i)).sum();
        assert!((total - 10.0).abs() < 1e-9);
    }
}
