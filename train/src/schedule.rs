//! Curriculum schedules (docs/algorithm.md) as pure data: per stage, the input resolution, the
//! RandAugment magnitude and how many passes over the data it gets.
//!
//! `budget` is in base-resolution-equivalent epochs. ET++ gives every stage an equal
//! share of compute, so a stage at resolution r runs (budget/10)·(base/r)² epochs.

use et_data::stage_crop::LowFreq;
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stage {
    pub resolution: usize,
    /// RandAugment magnitude (timm `rand-m{m}-mstd0.5-inc1`).
    pub magnitude: f64,
    /// Passes over the training set in this stage (may be fractional).
    pub epochs: f64,
    /// Images per forward pass in this stage (default: the run's --batch-size); the
    /// effective batch stays fixed, so gradient accumulation adapts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
    /// ET++ replay buffer for this stage (docs/algorithm.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay: Option<Replay>,
    /// How this stage's input is low-passed (default: the run's --low-freq).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low_freq: Option<LowFreq>,
}

/// Replay settings of a stage: each step uses a fresh batch of batch/`times` images plus
/// chunks replayed from a FIFO buffer of `size` batches split in `split` chunks.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Replay {
    pub times: usize,
    pub size: usize,
    #[serde(default = "default_split")]
    pub split: usize,
}

fn default_split() -> usize {
    32
}

impl Stage {
    pub fn new(resolution: usize, magnitude: f64, epochs: f64) -> Stage {
        Stage { resolution, magnitude, epochs, batch_size: None, replay: None, low_freq: None }
    }

    /// How this stage low-passes its input: its own `low_freq`, else the run's `default`;
    /// `None` at the base resolution, where there is nothing to low-pass.
    pub fn low_pass(&self, base: usize, default: LowFreq) -> Option<LowFreq> {
        (self.resolution < base).then(|| self.low_freq.unwrap_or(default))
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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
    /// EfficientTrain++: ten stages of equal compute, magnitude = stage index, at the
    /// family's resolutions (`Family::etpp_resolutions`, given for a base of 224).
    pub fn et_pp(resolutions: [usize; 10], base: usize, budget: f64) -> Schedule {
        let stages = resolutions
            .iter()
            .enumerate()
            .map(|(i, &r224)| {
                let resolution = scale_resolution(r224, base);
                let ratio = base as f64 / resolution as f64;
                Stage::new(resolution, i as f64, budget / 10.0 * ratio * ratio)
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
            stages: vec![Stage::new(base, 9.0, budget)],
        }
    }

    /// EfficientTrain (v1): five stages of equal epochs, B = 160, 160, 160, 192, 224 (scaled
    /// to `base`), m = 1, 3, 5, 7, 9. The paper runs 300 epochs (≈196 base-equivalent epochs
    /// of compute); here the epochs per stage are set so the total compute equals `budget`.
    pub fn et_v1(base: usize, budget: f64) -> Schedule {
        let res: Vec<usize> = [160, 160, 160, 192, 224].iter().map(|&r| scale_resolution(r, base)).collect();
        let cost_per_epoch: f64 = res.iter().map(|&r| (r as f64 / base as f64).powi(2)).sum();
        let epochs = budget / cost_per_epoch;
        let stages = res.iter().zip([1.0, 3.0, 5.0, 7.0, 9.0]).map(|(&r, m)| Stage::new(r, m, epochs)).collect();
        Schedule { name: "et-v1".into(), base_resolution: base, budget, stages }
    }

    pub fn by_name(name: &str, etpp: [usize; 10], base: usize, budget: f64) -> Option<Schedule> {
        match name {
            "et-pp" | "etpp" => Some(Schedule::et_pp(etpp, base, budget)),
            "et-v1" | "etv1" => Some(Schedule::et_v1(base, budget)),
            "baseline" => Some(Schedule::baseline(base, budget)),
            _ => None,
        }
    }

    /// A built-in schedule by name, or a custom one from a `.toml` file (see [`CustomSchedule`]).
    pub fn resolve(spec: &str, etpp: [usize; 10], base: usize, budget: f64) -> Result<Schedule, String> {
        if let Some(s) = Schedule::by_name(spec, etpp, base, budget) {
            return Ok(s);
        }
        if spec.ends_with(".toml") || Path::new(spec).is_file() {
            let text = std::fs::read_to_string(spec).map_err(|e| format!("cannot read schedule file {spec}: {e}"))?;
            let custom: CustomSchedule = toml::from_str(&text).map_err(|e| {
                // toml's messages span lines (the offending line quoted): one line, with where.
                let at = e.span().map(|r| text[..r.start.min(text.len())].lines().count().max(1)).map_or(String::new(), |l| format!(" (line {l})"));
                format!("schedule file {spec}{at}: {}", e.message().split_whitespace().collect::<Vec<_>>().join(" "))
            })?;
            let name = custom.name.clone().unwrap_or_else(|| Path::new(spec).file_stem().map_or("custom".into(), |s| s.to_string_lossy().into_owned()));
            return custom.build(&name, base, budget).map_err(|e| format!("schedule file {spec}: {e}"));
        }
        Err(format!("unknown schedule '{spec}': use baseline, et-v1, et-pp or a .toml file"))
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

/// A schedule from a TOML file:
///
/// ```toml
/// name = "my-curriculum"      # optional
/// [[stage]]
/// fraction = 0.75             # of the base resolution (or: resolution = 24)
/// magnitude = 2               # RandAugment m
/// compute = 1                 # share of the budget (shares are normalised)
/// batch_size = 128            # optional
/// replay = { times = 2, size = 256, split = 32 }   # optional
/// low_freq = "resize"         # optional: fft or resize (default: the run's --low-freq)
/// ```
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomSchedule {
    pub name: Option<String>,
    pub stage: Vec<CustomStage>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomStage {
    pub resolution: Option<usize>,
    pub fraction: Option<f64>,
    pub magnitude: f64,
    pub compute: f64,
    pub batch_size: Option<usize>,
    pub replay: Option<Replay>,
    pub low_freq: Option<LowFreq>,
}

impl CustomSchedule {
    pub fn build(&self, name: &str, base: usize, budget: f64) -> Result<Schedule, String> {
        if self.stage.is_empty() {
            return Err("no [[stage]] entries".into());
        }
        let total: f64 = self.stage.iter().map(|s| s.compute).sum();
        let mut stages = Vec::new();
        for (i, s) in self.stage.iter().enumerate() {
            let n = i + 1;
            let resolution = match (s.resolution, s.fraction) {
                (Some(r), None) => r,
                (None, Some(f)) if f > 0.0 && f <= 1.0 => (((base as f64 * f) / 8.0).round() as usize * 8).clamp(8, base),
                (None, Some(f)) => return Err(format!("stage {n}: fraction must be in (0, 1], got {f}")),
                _ => return Err(format!("stage {n}: give exactly one of resolution or fraction")),
            };
            if resolution == 0 || resolution > base {
                return Err(format!("stage {n}: resolution {resolution} must be in 1..={base} (the base resolution)"));
            }
            if !(s.compute > 0.0 && s.compute.is_finite()) {
                return Err(format!("stage {n}: compute must be a positive share, got {}", s.compute));
            }
            if !(0.0..=30.0).contains(&s.magnitude) {
                return Err(format!("stage {n}: magnitude must be in [0, 30], got {}", s.magnitude));
            }
            if s.batch_size == Some(0) {
                return Err(format!("stage {n}: batch_size must be at least 1"));
            }
            if let Some(r) = s.replay {
                if r.times == 0 || r.split == 0 {
                    return Err(format!("stage {n}: replay times and split must be at least 1"));
                }
            }
            let ratio = base as f64 / resolution as f64;
            stages.push(Stage { resolution, magnitude: s.magnitude, epochs: budget * s.compute / total * ratio * ratio, batch_size: s.batch_size, replay: s.replay, low_freq: s.low_freq });
        }
        Ok(Schedule { name: name.to_string(), base_resolution: base, budget, stages })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use et_models::family::ETPP_RESOLUTIONS;
    use et_models::Family;

    #[test]
    fn etpp_at_224_matches_the_paper() {
        let s = Schedule::et_pp(ETPP_RESOLUTIONS, 224, 200.0);
        let res: Vec<usize> = s.stages.iter().map(|s| s.resolution).collect();
        assert_eq!(res, vec![96, 96, 160, 160, 160, 160, 224, 224, 224, 224]);
        let mags: Vec<f64> = s.stages.iter().map(|s| s.magnitude).collect();
        assert_eq!(mags, (0..10).map(|i| i as f64).collect::<Vec<_>>());
        // (E/10)·(224/96)² epochs at 96 px; every stage costs E/10 base epochs.
        assert!((s.stages[0].epochs - 20.0 * (224.0f64 / 96.0).powi(2)).abs() < 1e-9);
        for i in 0..10 {
            assert!((s.stage_compute(i) - 20.0).abs() < 1e-9);
        }
        let c = Schedule::et_pp(et_models::convnext::FAMILY.etpp_resolutions(), 224, 200.0);
        assert_eq!(c.stages.iter().filter(|s| s.resolution == 160).count(), 6);
        let d = Schedule::et_pp(et_models::vit::FAMILY.etpp_resolutions(), 224, 100.0);
        assert_eq!(d.stages[6].resolution, 192);
    }

    #[test]
    fn scaled_to_32_px() {
        assert_eq!(scale_resolution(160, 32), 24);
        assert_eq!(scale_resolution(224, 32), 32);
        assert_eq!(scale_resolution(96, 32), 16);
        let s = Schedule::et_pp(et_models::convnext::FAMILY.etpp_resolutions(), 32, 10.0);
        assert_eq!(s.stages[0].resolution, 24);
        assert!((s.stages[0].epochs - 1.0 * (32.0f64 / 24.0).powi(2)).abs() < 1e-9);
        assert!((s.stages[9].epochs - 1.0).abs() < 1e-9);
        let total: f64 = (0..10).map(|i| s.stage_compute(i)).sum();
        assert!((total - 10.0).abs() < 1e-9);
    }

    #[test]
    fn v1_shape_and_budget() {
        let s = Schedule::et_v1(224, 196.0);
        let res: Vec<usize> = s.stages.iter().map(|s| s.resolution).collect();
        assert_eq!(res, vec![160, 160, 160, 192, 224]);
        let mags: Vec<f64> = s.stages.iter().map(|s| s.magnitude).collect();
        assert_eq!(mags, vec![1.0, 3.0, 5.0, 7.0, 9.0]);
        // The paper's 5 × 60 epochs cost ≈ 196 base epochs.
        assert!((s.stages[0].epochs - 60.0).abs() < 0.1, "{}", s.stages[0].epochs);
        let total: f64 = (0..5).map(|i| s.stage_compute(i)).sum();
        assert!((total - 196.0).abs() < 1e-9);
        // At 32 px, 192 rounds to 24 (multiples of 8).
        let r32: Vec<usize> = Schedule::et_v1(32, 10.0).stages.iter().map(|s| s.resolution).collect();
        assert_eq!(r32, vec![24, 24, 24, 24, 32]);
    }

    #[test]
    fn custom_toml() {
        let text = r#"
            name = "two-step"
            [[stage]]
            fraction = 0.75
            magnitude = 2
            compute = 1
            batch_size = 16
            replay = { times = 2, size = 4 }
            low_freq = "resize"
            [[stage]]
            resolution = 32
            magnitude = 9
            compute = 3
        "#;
        let c: CustomSchedule = toml::from_str(text).unwrap();
        let s = c.build("x", 32, 8.0).unwrap();
        assert_eq!(s.stages[0].resolution, 24);
        assert!((s.stage_compute(0) - 2.0).abs() < 1e-9 && (s.stage_compute(1) - 6.0).abs() < 1e-9);
        assert_eq!(s.stages[0].batch_size, Some(16));
        assert_eq!(s.stages[0].replay, Some(Replay { times: 2, size: 4, split: 32 }));
        assert_eq!((s.stages[0].low_freq, s.stages[1].low_freq), (Some(LowFreq::Resize), None));
        let e = toml::from_str::<CustomSchedule>("[[stage]]\nresolution = 16\nmagnitude = 1\ncompute = 1\nlow_freq = \"lanczos\"").unwrap_err();
        assert!(e.to_string().contains("fft") && e.to_string().contains("resize"), "{e}");
        let bad: CustomSchedule = toml::from_str("[[stage]]\nresolution = 64\nmagnitude = 1\ncompute = 1").unwrap();
        assert!(bad.build("x", 32, 1.0).unwrap_err().contains("resolution 64"));
        let both: CustomSchedule = toml::from_str("[[stage]]\nresolution = 16\nfraction = 0.5\nmagnitude = 1\ncompute = 1").unwrap();
        assert!(both.build("x", 32, 1.0).unwrap_err().contains("exactly one"));
        assert!(toml::from_str::<CustomSchedule>("[[stage]]\nresolutoin = 16").is_err(), "typos are refused");
        assert!(Schedule::resolve("nope", ETPP_RESOLUTIONS, 32, 1.0).unwrap_err().contains("unknown schedule"));
    }
}
