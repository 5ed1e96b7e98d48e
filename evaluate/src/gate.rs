//! The CI accuracy gate: compare this evaluation's top-1 with a stored baseline report
//! (an earlier `--json` output) and name every resolution that regressed.

use crate::{EvalError, Report, ResolutionResult};
use std::path::Path;

/// How one resolution compares with the baseline.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Within tolerance (or better); `delta_pts` = now − baseline, in percentage points.
    Pass { resolution: usize, delta_pts: f64 },
    /// Top-1 fell by more than the tolerance.
    Regressed { resolution: usize, baseline: f64, now: f64, delta_pts: f64 },
    /// Evaluated now but absent from the baseline: reported, never a failure.
    NoBaseline { resolution: usize },
}

impl Verdict {
    pub fn failed(&self) -> bool {
        matches!(self, Verdict::Regressed { .. })
    }
}

pub fn load_baseline(path: &Path) -> Result<Report, EvalError> {
    let text = std::fs::read_to_string(path).map_err(|e| EvalError::Input(format!("cannot read baseline {}: {e}", path.display())))?;
    let report: Report = serde_json::from_str(&text).map_err(|e| {
        EvalError::Input(format!("baseline {} is not an et-eval --json report ({{\"results\":[{{\"resolution\",\"top1\",...}}]}}): {e}", path.display()))
    })?;
    if report.results.is_empty() {
        return Err(EvalError::Input(format!("baseline {} has no results", path.display())));
    }
    Ok(report)
}

/// Compares `now` with `baseline`: a resolution fails when its top-1 is more than
/// `tolerance_pts` percentage points below the baseline's. Top-1 values are fractions.
pub fn compare(baseline: &Report, now: &[ResolutionResult], tolerance_pts: f64) -> Vec<Verdict> {
    now.iter()
        .map(|r| match baseline.results.iter().find(|b| b.resolution == r.resolution) {
            None => Verdict::NoBaseline { resolution: r.resolution },
            Some(b) => {
                let delta_pts = 100.0 * (r.top1 - b.top1);
                // A small epsilon keeps "exactly at the tolerance" a pass despite rounding.
                if delta_pts < -tolerance_pts - 1e-9 {
                    Verdict::Regressed { resolution: r.resolution, baseline: b.top1, now: r.top1, delta_pts }
                } else {
                    Verdict::Pass { resolution: r.resolution, delta_pts }
                }
            }
        })
        .collect()
}

/// One line per resolution, as printed by et-eval.
pub fn describe(v: &Verdict, tolerance_pts: f64) -> String {
    match v {
        Verdict::Pass { resolution, delta_pts } => format!("gate: {resolution} px ok ({delta_pts:+.2} pts vs baseline, tolerance {tolerance_pts})"),
        Verdict::Regressed { resolution, baseline, now, delta_pts } => format!(
            "gate: {resolution} px REGRESSED: top-1 {:.2}% vs baseline {:.2}% ({delta_pts:+.2} pts, tolerance {tolerance_pts})",
            100.0 * now,
            100.0 * baseline
        ),
        Verdict::NoBaseline { resolution } => format!("gate: {resolution} px has no baseline entry (not checked)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(resolution: usize, top1: f64) -> ResolutionResult {
        ResolutionResult { resolution, top1, top5: 1.0, images: 100, loss: 0.0, img_per_s: 0.0 }
    }

    #[test]
    fn names_each_resolution_below_the_tolerance() {
        let base = Report { results: vec![res(160, 0.70), res(192, 0.75), res(224, 0.80)] };
        let now = vec![res(160, 0.69), res(192, 0.70), res(224, 0.81), res(256, 0.5)];
        let v = compare(&base, &now, 1.0);
        assert!(matches!(v[0], Verdict::Pass { resolution: 160, .. }), "exactly 1 pt down is within 1 pt: {:?}", v[0]);
        assert!(matches!(v[1], Verdict::Regressed { resolution: 192, .. }));
        assert!(matches!(v[2], Verdict::Pass { resolution: 224, .. }));
        assert_eq!(v[3], Verdict::NoBaseline { resolution: 256 });
        assert_eq!(v.iter().filter(|v| v.failed()).count(), 1);
        assert!(describe(&v[1], 1.0).contains("192 px REGRESSED"));
        // A zero tolerance fails any drop at all.
        assert!(compare(&base, &[res(160, 0.6999)], 0.0)[0].failed());
    }
}
