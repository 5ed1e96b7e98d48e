//! Mixup / CutMix on a batch, as timm's `Mixup` in its default `'batch'` mode
//! (`timm/data/mixup.py`), with label smoothing folded into the soft targets.
//!
//! Per batch: with probability `prob` the batch is mixed; when both alphas are positive,
//! CutMix is chosen with probability `switch_prob`, else Mixup. Mixup draws
//! λ ~ Beta(α, α) and replaces x[i] by λ·x[i] + (1−λ)·x[N−1−i] (timm's `x.flip(0)`).
//! CutMix draws λ ~ Beta(α, α), a box from `rand_bbox` (side ratio √(1−λ), uniform
//! centre, clipped to the image), pastes the box of x[N−1−i] into x[i], and corrects λ
//! to 1 − box area / image area (`correct_lam`). The targets are
//! λ·smooth(onehot(y)) + (1−λ)·smooth(onehot(y.flip)) with off = ε/K, on = 1 − ε + off
//! (`mixup_target`). An odd batch mixes its middle sample with itself (timm requires an
//! even batch).

use crate::Rng;

#[derive(Clone, Debug, PartialEq)]
pub struct MixupConfig {
    /// Mixup's Beta(α, α); 0 disables Mixup.
    pub mixup_alpha: f64,
    /// CutMix's Beta(α, α); 0 disables CutMix.
    pub cutmix_alpha: f64,
    /// Probability of CutMix rather than Mixup when both are enabled.
    pub switch_prob: f64,
    /// Probability of mixing a batch at all.
    pub prob: f64,
    pub label_smoothing: f64,
    pub num_classes: usize,
}

impl MixupConfig {
    /// timm's recipe (docs/algorithm.md): Mixup 0.8, CutMix 1.0, switch 0.5, always, smoothing 0.1.
    pub fn new(num_classes: usize) -> Self {
        MixupConfig { mixup_alpha: 0.8, cutmix_alpha: 1.0, switch_prob: 0.5, prob: 1.0, label_smoothing: 0.1, num_classes }
    }

    /// Whether either Mixup or CutMix is on.
    pub fn enabled(&self) -> bool {
        self.mixup_alpha > 0.0 || self.cutmix_alpha > 0.0
    }
}

/// What was done to a batch (for tests and logging).
#[derive(Clone, Debug, PartialEq)]
pub enum MixKind {
    None,
    Mixup,
    /// The pasted box, rows `y0..y1`, columns `x0..x1`.
    Cutmix { y0: usize, y1: usize, x0: usize, x1: usize },
}

/// timm's `_params_per_batch`: (λ, use CutMix). λ = 1 means "leave the batch alone".
fn params_per_batch(cfg: &MixupConfig, rng: &mut Rng) -> (f64, bool) {
    if !cfg.enabled() || rng.uniform() >= cfg.prob {
        return (1.0, false);
    }
    if cfg.mixup_alpha > 0.0 && cfg.cutmix_alpha > 0.0 {
        let cut = rng.uniform() < cfg.switch_prob;
        let a = if cut { cfg.cutmix_alpha } else { cfg.mixup_alpha };
        (rng.beta(a, a), cut)
    } else if cfg.mixup_alpha > 0.0 {
        (rng.beta(cfg.mixup_alpha, cfg.mixup_alpha), false)
    } else {
        (rng.beta(cfg.cutmix_alpha, cfg.cutmix_alpha), true)
    }
}

/// timm's `rand_bbox` (no margin): returns (y0, y1, x0, x1).
pub fn rand_bbox(h: usize, w: usize, lam: f64, rng: &mut Rng) -> (usize, usize, usize, usize) {
    let ratio = (1.0 - lam).max(0.0).sqrt();
    let (cut_h, cut_w) = ((h as f64 * ratio) as i64, (w as f64 * ratio) as i64);
    let cy = rng.below(h) as i64;
    let cx = rng.below(w) as i64;
    let clip = |v: i64, hi: usize| v.clamp(0, hi as i64) as usize;
    (clip(cy - cut_h / 2, h), clip(cy + cut_h / 2, h), clip(cx - cut_w / 2, w), clip(cx + cut_w / 2, w))
}

/// Label smoothing: the target value of the true class and of every other class, with
/// `smoothing` spread evenly over the `num_classes` (timm's `off_value` / `on_value`). The
/// one definition every target in the project uses.
pub fn smoothing_values(num_classes: usize, smoothing: f64) -> (f32, f32) {
    let off = (smoothing / num_classes as f64) as f32;
    ((1.0 - smoothing) as f32 + off, off)
}

/// Smoothed one-hot targets, N × classes.
pub fn smoothed_targets(labels: &[usize], num_classes: usize, smoothing: f64) -> Vec<f32> {
    mixup_target(labels, num_classes, 1.0, smoothing)
}

/// timm's `mixup_target`: N × classes soft targets, rows summing to 1.
pub fn mixup_target(labels: &[usize], num_classes: usize, lam: f64, smoothing: f64) -> Vec<f32> {
    let n = labels.len();
    let (on, off) = smoothing_values(num_classes, smoothing);
    let mut t = vec![0f32; n * num_classes];
    for (i, row) in t.chunks_mut(num_classes.max(1)).enumerate().take(n) {
        let (a, b) = (labels[i], labels[n - 1 - i]);
        for (k, v) in row.iter_mut().enumerate() {
            let y1 = if k == a { on } else { off } as f64;
            let y2 = if k == b { on } else { off } as f64;
            // λ = 1 (no mixing) gives the smoothed values exactly.
            *v = if lam == 1.0 { y1 as f32 } else { (lam * y1 + (1.0 - lam) * y2) as f32 };
        }
    }
    t
}

/// Mixes `images` (N·C·H·W, `shape` = [N, C, H, W]) in place and returns the soft
/// targets (N × num_classes), with the λ used and what was done.
pub fn apply_detailed(cfg: &MixupConfig, images: &mut [f32], shape: [usize; 4], labels: &[usize], rng: &mut Rng) -> (Vec<f32>, f64, MixKind) {
    let [n, c, h, w] = shape;
    assert_eq!(images.len(), n * c * h * w, "images do not match shape {shape:?}");
    assert_eq!(labels.len(), n, "one label per image");
    assert!(labels.iter().all(|&l| l < cfg.num_classes), "label out of range");
    let (mut lam, cut) = params_per_batch(cfg, rng);
    let mut kind = MixKind::None;
    if lam != 1.0 {
        let per = c * h * w;
        if cut {
            let (y0, y1, x0, x1) = rand_bbox(h, w, lam, rng);
            lam = 1.0 - ((y1 - y0) * (x1 - x0)) as f64 / (h * w) as f64;
            // Pairs (i, N−1−i) exchange their boxes; the middle of an odd batch keeps its own.
            for i in 0..n / 2 {
                let j = n - 1 - i;
                let (head, tail) = images.split_at_mut(j * per);
                let (a, b) = (&mut head[i * per..(i + 1) * per], &mut tail[..per]);
                for ch in 0..c {
                    for y in y0..y1 {
                        let o = ch * h * w + y * w;
                        a[o + x0..o + x1].swap_with_slice(&mut b[o + x0..o + x1]);
                    }
                }
            }
            kind = MixKind::Cutmix { y0, y1, x0, x1 };
        } else {
            let (l, m) = (lam as f32, (1.0 - lam) as f32);
            for i in 0..n / 2 {
                let j = n - 1 - i;
                let (head, tail) = images.split_at_mut(j * per);
                for (p, q) in head[i * per..(i + 1) * per].iter_mut().zip(&mut tail[..per]) {
                    let (u, v) = (*p, *q);
                    *p = l * u + m * v;
                    *q = l * v + m * u;
                }
            }
            kind = MixKind::Mixup;
        }
    }
    (mixup_target(labels, cfg.num_classes, lam, cfg.label_smoothing), lam, kind)
}

/// Mixes `images` in place (timm's `Mixup.__call__`, batch mode) and returns the soft
/// targets, N × num_classes.
pub fn apply(cfg: &MixupConfig, images: &mut [f32], shape: [usize; 4], labels: &[usize], rng: &mut Rng) -> Vec<f32> {
    apply_detailed(cfg, images, shape, labels, rng).0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(n: usize, c: usize, h: usize, w: usize) -> Vec<f32> {
        (0..n * c * h * w).map(|i| ((i * 7919) % 1000) as f32 / 10.0).collect()
    }

    #[test]
    fn targets_rows_sum_to_one() {
        let cfg = MixupConfig::new(5);
        let labels = [0, 3, 4, 1, 2, 2];
        for seed in 0..50 {
            let mut x = batch(6, 3, 8, 8);
            let t = apply(&cfg, &mut x, [6, 3, 8, 8], &labels, &mut Rng::new(seed));
            assert_eq!(t.len(), 6 * 5);
            for row in t.chunks(5) {
                assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5, "{row:?}");
                assert!(row.iter().all(|&v| v >= 0.0));
            }
        }
    }

    #[test]
    fn zero_alphas_only_smooth() {
        let cfg = MixupConfig { mixup_alpha: 0.0, cutmix_alpha: 0.0, ..MixupConfig::new(4) };
        let x0 = batch(4, 3, 5, 6);
        let mut x = x0.clone();
        let labels = [1, 0, 3, 3];
        let (t, lam, kind) = apply_detailed(&cfg, &mut x, [4, 3, 5, 6], &labels, &mut Rng::new(1));
        assert_eq!(x, x0);
        assert_eq!((lam, kind), (1.0, MixKind::None));
        let (off, on) = (0.1f32 / 4.0, 0.9f32 + 0.1 / 4.0);
        for (i, row) in t.chunks(4).enumerate() {
            for (k, &v) in row.iter().enumerate() {
                assert!((v - if k == labels[i] { on } else { off }).abs() < 1e-7);
            }
        }
        // prob 0 is the same.
        let cfg = MixupConfig { prob: 0.0, ..MixupConfig::new(4) };
        let mut y = x0.clone();
        assert_eq!(apply(&cfg, &mut y, [4, 3, 5, 6], &labels, &mut Rng::new(1)), t);
        assert_eq!(y, x0);
    }

    #[test]
    fn cutmix_box_comes_from_the_flipped_image() {
        let cfg = MixupConfig { mixup_alpha: 0.0, cutmix_alpha: 1.0, ..MixupConfig::new(3) };
        let (n, c, h, w) = (5, 2, 12, 10);
        let labels = [0, 1, 2, 1, 0];
        let mut seen_box = 0;
        for seed in 0..40 {
            let x0 = batch(n, c, h, w);
            let mut x = x0.clone();
            let (t, lam, kind) = apply_detailed(&cfg, &mut x, [n, c, h, w], &labels, &mut Rng::new(seed));
            let MixKind::Cutmix { y0, y1, x0: bx0, x1: bx1 } = kind else { panic!("cutmix only: {kind:?}") };
            let area = ((y1 - y0) * (bx1 - bx0)) as f64 / (h * w) as f64;
            assert!((lam - (1.0 - area)).abs() < 1e-12, "lam {lam} vs box area {area}");
            seen_box += (area > 0.0) as usize;
            let per = c * h * w;
            for i in 0..n {
                let j = n - 1 - i;
                for ch in 0..c {
                    for y in 0..h {
                        for xx in 0..w {
                            let o = ch * h * w + y * w + xx;
                            let inside = (y0..y1).contains(&y) && (bx0..bx1).contains(&xx);
                            let want = if inside { x0[j * per + o] } else { x0[i * per + o] };
                            assert_eq!(x[i * per + o], want, "sample {i} ({ch},{y},{xx}) inside={inside}");
                        }
                    }
                }
                // Targets weigh the own label by lam and the flipped one by 1 - lam.
                let (off, on) = (0.1 / 3.0, 0.9 + 0.1 / 3.0);
                let row = &t[i * 3..(i + 1) * 3];
                for k in 0..3 {
                    let a = if k == labels[i] { on } else { off };
                    let b = if k == labels[j] { on } else { off };
                    assert!((row[k] as f64 - (lam * a + (1.0 - lam) * b)).abs() < 1e-6);
                }
            }
        }
        assert!(seen_box > 30, "boxes are mostly non-empty ({seen_box}/40)");
    }

    #[test]
    fn mixup_blends_with_the_flipped_image() {
        let cfg = MixupConfig { mixup_alpha: 0.8, cutmix_alpha: 0.0, ..MixupConfig::new(2) };
        let x0 = batch(4, 1, 3, 3);
        let mut x = x0.clone();
        let (_, lam, kind) = apply_detailed(&cfg, &mut x, [4, 1, 3, 3], &[0, 1, 1, 0], &mut Rng::new(9));
        assert_eq!(kind, MixKind::Mixup);
        assert!(lam > 0.0 && lam < 1.0);
        for i in 0..4 {
            for p in 0..9 {
                let want = lam as f32 * x0[i * 9 + p] + (1.0 - lam) as f32 * x0[(3 - i) * 9 + p];
                assert!((x[i * 9 + p] - want).abs() < 1e-4);
            }
        }
    }

    #[test]
    fn switch_prob_and_lambda_statistics() {
        let cfg = MixupConfig::new(10);
        let (mut cut, mut lam_mix) = (0, Vec::new());
        let labels: Vec<usize> = (0..4).collect();
        for seed in 0..2000 {
            let mut x = batch(4, 1, 16, 16);
            let (_, lam, kind) = apply_detailed(&cfg, &mut x, [4, 1, 16, 16], &labels, &mut Rng::from_keys(&[seed, 1]));
            match kind {
                MixKind::Cutmix { .. } => cut += 1,
                MixKind::Mixup => lam_mix.push(lam),
                MixKind::None => panic!("prob 1 always mixes"),
            }
        }
        assert!((cut as f64 / 2000.0 - 0.5).abs() < 0.05, "cutmix share {cut}/2000");
        let mean = lam_mix.iter().sum::<f64>() / lam_mix.len() as f64;
        assert!((mean - 0.5).abs() < 0.03, "Beta(0.8,0.8) mean {mean}");
    }

    #[test]
    fn deterministic_for_a_seed() {
        let cfg = MixupConfig::new(7);
        let labels = [6, 5, 4, 3];
        let run = |seed| {
            let mut x = batch(4, 3, 9, 9);
            let t = apply(&cfg, &mut x, [4, 3, 9, 9], &labels, &mut Rng::from_keys(&[seed, 2]));
            (x, t)
        };
        assert_eq!(run(3), run(3));
        assert_ne!(run(3), run(4));
    }
}
