//! timm's RandAugment policy (`timm/data/auto_augment.py`, `rand-m{M}-n{N}-mstd{S}-mmax{X}-inc{0|1}-p{P}`):
//! which ops, how often and how strongly; the ops themselves are in [`crate::augment_ops`].
//!
//! Known differences from timm + Pillow, all deliberate:
//! * `posterize(0 bits)` gives black (TF and Pillow < 10 semantics); Pillow ≥ 10 raises, which
//!   makes timm crash when an increasing posterize draws magnitude 10.
//! * `inc0` disables the increasing ops; timm's `bool("0")` is truthy, so there it enables them.
//! * Random draws come from [`Rng`], so streams differ from Python's `random`.

use image::RgbImage;

use crate::augment_ops::*;
use crate::error::DataError;
use crate::rng::Rng;

/// The 15 RandAugment operations, in timm's `_RAND_TRANSFORMS` / `_RAND_INCREASING_TRANSFORMS`
/// order (the two lists differ only in how a magnitude becomes an argument).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RaOp {
    AutoContrast,
    Equalize,
    Invert,
    Rotate,
    Posterize,
    Solarize,
    SolarizeAdd,
    Color,
    Contrast,
    Brightness,
    Sharpness,
    ShearX,
    ShearY,
    TranslateXRel,
    TranslateYRel,
}

pub const RAND_OPS: [RaOp; 15] = [
    RaOp::AutoContrast,
    RaOp::Equalize,
    RaOp::Invert,
    RaOp::Rotate,
    RaOp::Posterize,
    RaOp::Solarize,
    RaOp::SolarizeAdd,
    RaOp::Color,
    RaOp::Contrast,
    RaOp::Brightness,
    RaOp::Sharpness,
    RaOp::ShearX,
    RaOp::ShearY,
    RaOp::TranslateXRel,
    RaOp::TranslateYRel,
];

/// timm's `_LEVEL_DENOM`: magnitudes are on a 0..10 scale.
const LEVEL_DENOM: f64 = 10.0;

/// A RandAugment policy with timm's semantics.
#[derive(Clone, Debug, PartialEq)]
pub struct RandAugment {
    /// Ops drawn (uniformly, with replacement) per image.
    pub num_layers: usize,
    /// Mean magnitude on timm's 0..10 scale.
    pub magnitude: f64,
    /// Std of the per-op Gaussian magnitude noise; 0 disables it, infinity means uniform(0, m).
    pub magnitude_std: f64,
    /// Upper clip of the sampled magnitude (timm: `mmax`, default 10).
    pub magnitude_max: f64,
    /// Use the `*Increasing` variants (severity grows with magnitude).
    pub increasing: bool,
    /// Probability that each drawn op is applied.
    pub prob: f64,
    /// Fill colour of the geometric ops (timm: the dataset mean in 0..255).
    pub fill: [u8; 3],
    /// Max relative translation at magnitude 10 (timm hparam `translate_pct`).
    pub translate_pct: f64,
    pub interpolation: Interp,
}

impl RandAugment {
    /// timm's defaults for a given magnitude: 2 layers, no noise, clip at 10, p 0.5, ImageNet
    /// mean fill, bicubic (what timm uses with a bicubic train transform).
    pub fn new(magnitude: f64) -> Self {
        RandAugment {
            num_layers: 2,
            magnitude,
            magnitude_std: 0.0,
            magnitude_max: LEVEL_DENOM,
            increasing: false,
            prob: 0.5,
            fill: [124, 116, 104],
            translate_pct: 0.45,
            interpolation: Interp::Bicubic,
        }
    }

    /// Parses timm's `rand-m9-mstd0.5-inc1` style strings. Sections (any order): `m` magnitude,
    /// `n` layers, `mstd` noise std (> 100 means uniform sampling), `mmax` clip, `inc` 0/1,
    /// `p` per-op probability. timm's transform-set (`t...`) and weight (`w...`) sections are
    /// not supported.
    pub fn parse(policy: &str) -> Result<Self, DataError> {
        let bad = || DataError::BadPolicy(policy.to_string());
        let mut sections = policy.trim().split('-');
        if sections.next() != Some("rand") {
            return Err(bad());
        }
        let mut ra = RandAugment::new(LEVEL_DENOM);
        for section in sections {
            let split = section.find(|c: char| c.is_ascii_digit()).ok_or_else(bad)?;
            let (key, val) = section.split_at(split);
            let num: f64 = val.parse().map_err(|_| bad())?;
            if !num.is_finite() {
                return Err(bad());
            }
            let int = || {
                if num.fract() == 0.0 {
                    Ok(num as usize)
                } else {
                    Err(bad())
                }
            };
            match key {
                "m" => ra.magnitude = num,
                "n" => ra.num_layers = int()?,
                "mstd" => ra.magnitude_std = if num > 100.0 { f64::INFINITY } else { num },
                // timm's `magnitude_max or 10`: 0 means the default.
                "mmax" => ra.magnitude_max = if num == 0.0 { LEVEL_DENOM } else { num },
                "inc" => {
                    ra.increasing = match int()? {
                        0 => false,
                        1 => true,
                        _ => return Err(bad()),
                    }
                }
                "p" if num <= 1.0 => ra.prob = num,
                _ => return Err(bad()),
            }
        }
        Ok(ra)
    }

    /// Applies `num_layers` ops drawn uniformly with replacement, each with probability `prob`.
    pub fn apply(&self, img: &RgbImage, rng: &mut Rng) -> RgbImage {
        // Like timm, draw all ops first, then per op: the probability test, the magnitude and
        // the sign.
        let ops: Vec<RaOp> = (0..self.num_layers)
            .map(|_| RAND_OPS[rng.below(RAND_OPS.len())])
            .collect();
        let mut out: Option<RgbImage> = None;
        for op in ops {
            if self.prob < 1.0 && rng.uniform() > self.prob {
                continue;
            }
            let m = self.sample_magnitude(rng);
            out = Some(self.apply_op(op, out.as_ref().unwrap_or(img), m, rng));
        }
        out.unwrap_or_else(|| img.clone())
    }

    /// timm's per-op magnitude: optional noise, then clipped to [0, magnitude_max].
    pub fn sample_magnitude(&self, rng: &mut Rng) -> f64 {
        let mut m = self.magnitude;
        if self.magnitude_std > 0.0 {
            m = if self.magnitude_std.is_infinite() {
                rng.uniform_range(0.0, m)
            } else {
                m + self.magnitude_std * rng.normal()
            };
        }
        m.min(self.magnitude_max).max(0.0)
    }

    /// One op at magnitude `m` with timm's level-to-argument mapping (the random sign of
    /// rotate / shear / translate / increasing enhance is drawn from `rng`).
    pub fn apply_op(&self, op: RaOp, img: &RgbImage, m: f64, rng: &mut Rng) -> RgbImage {
        let level = m / LEVEL_DENOM;
        // timm's `_randomly_negate`: `-v if random() > 0.5 else v`.
        let mut negate = |v: f64| if rng.uniform() > 0.5 { -v } else { v };
        let (interp, fill) = (self.interpolation, self.fill);
        let enhance = |negate: &mut dyn FnMut(f64) -> f64| {
            if self.increasing {
                (1.0 + negate(level * 0.9)).max(0.1)
            } else {
                level * 1.8 + 0.1
            }
        };
        match op {
            RaOp::AutoContrast => auto_contrast(img),
            RaOp::Equalize => equalize(img),
            RaOp::Invert => invert(img),
            RaOp::Rotate => rotate(img, negate(level * 30.0), interp, fill),
            RaOp::Posterize => {
                let bits = (level * 4.0) as i64;
                let bits = if self.increasing { 4 - bits } else { bits };
                posterize(img, bits.clamp(0, 8) as u32)
            }
            RaOp::Solarize => {
                let t = ((level * 256.0) as i64).min(256);
                let t = if self.increasing { 256 - t } else { t };
                solarize(img, t.clamp(0, 256) as u32)
            }
            RaOp::SolarizeAdd => {
                solarize_add(img, ((level * 110.0) as i64).clamp(0, 128) as u32, 128)
            }
            RaOp::Color => color(img, enhance(&mut negate)),
            RaOp::Contrast => contrast(img, enhance(&mut negate)),
            RaOp::Brightness => brightness(img, enhance(&mut negate)),
            RaOp::Sharpness => sharpness(img, enhance(&mut negate)),
            RaOp::ShearX => shear_x(img, negate(level * 0.3), interp, fill),
            RaOp::ShearY => shear_y(img, negate(level * 0.3), interp, fill),
            RaOp::TranslateXRel => {
                let px = negate(level * self.translate_pct) * img.width() as f64;
                translate_x(img, px, interp, fill)
            }
            RaOp::TranslateYRel => {
                let px = negate(level * self.translate_pct) * img.height() as f64;
                translate_y(img, px, interp, fill)
            }
        }
    }
}

impl std::str::FromStr for RandAugment {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self, DataError> {
        RandAugment::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::augment_ops::tests::{input, pil::BRIGHTNESS_0_1};

    #[test]
    fn parse_policies() {
        let ra = RandAugment::parse("rand-m9-mstd0.5-inc1").unwrap();
        assert_eq!(
            (ra.magnitude, ra.magnitude_std, ra.increasing, ra.num_layers),
            (9.0, 0.5, true, 2)
        );
        assert_eq!(
            (ra.magnitude_max, ra.prob, ra.fill, ra.interpolation),
            (10.0, 0.5, [124, 116, 104], Interp::Bicubic)
        );
        let ra: RandAugment = "rand-n3-m7-mmax15-p0.8-inc0".parse().unwrap();
        assert_eq!(
            (
                ra.num_layers,
                ra.magnitude,
                ra.magnitude_max,
                ra.prob,
                ra.increasing
            ),
            (3, 7.0, 15.0, 0.8, false)
        );
        let ra = RandAugment::parse("rand").unwrap();
        assert_eq!(
            (ra.magnitude, ra.num_layers, ra.magnitude_std),
            (10.0, 2, 0.0)
        );
        assert!(RandAugment::parse("rand-mstd101")
            .unwrap()
            .magnitude_std
            .is_infinite());
        assert_eq!(
            RandAugment::parse("rand-mmax0").unwrap().magnitude_max,
            10.0
        );
        for bad in [
            "",
            "rand-",
            "augmix-m9",
            "rand-m9-x3",
            "rand-m",
            "rand-n2.5",
            "rand-inc2",
            "rand-p1.5",
            "rand-m9x",
            "rand-tweights",
            "rand-mstd",
        ] {
            assert!(
                matches!(RandAugment::parse(bad), Err(DataError::BadPolicy(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn increasing_magnitude_zero_leaves_enhance_ops_unchanged() {
        let img = input();
        let ra = RandAugment::parse("rand-m0-inc1").unwrap();
        let mut rng = Rng::new(3);
        for op in [
            RaOp::Color,
            RaOp::Contrast,
            RaOp::Brightness,
            RaOp::Sharpness,
            RaOp::Rotate,
            RaOp::ShearX,
            RaOp::TranslateYRel,
        ] {
            assert_eq!(ra.apply_op(op, &img, 0.0, &mut rng), img, "{op:?}");
        }
        // Increasing solarize at 0 has threshold 256; non-increasing enhance at 0 is factor 0.1.
        assert_eq!(ra.apply_op(RaOp::Solarize, &img, 0.0, &mut rng), img);
        let plain = RandAugment::parse("rand-m0").unwrap();
        assert_eq!(
            plain
                .apply_op(RaOp::Brightness, &img, 0.0, &mut rng)
                .as_raw(),
            &BRIGHTNESS_0_1.to_vec()
        );
        // Increasing posterize at magnitude 10 keeps 0 bits.
        assert!(ra
            .apply_op(RaOp::Posterize, &img, 10.0, &mut rng)
            .iter()
            .all(|&v| v == 0));
    }

    #[test]
    fn magnitude_sampling_is_clipped() {
        let mut rng = Rng::new(11);
        let ra = RandAugment::parse("rand-m9-mstd5").unwrap();
        let ms: Vec<f64> = (0..2000).map(|_| ra.sample_magnitude(&mut rng)).collect();
        assert!(ms.iter().all(|&m| (0.0..=10.0).contains(&m)));
        assert!(ms.iter().any(|&m| m == 10.0) && ms.iter().any(|&m| m < 9.0));
        let uni = RandAugment::parse("rand-m6-mstd1000").unwrap();
        assert!((0..500)
            .map(|_| uni.sample_magnitude(&mut rng))
            .all(|m| (0.0..6.0).contains(&m)));
        assert_eq!(
            RandAugment::parse("rand-m9")
                .unwrap()
                .sample_magnitude(&mut rng),
            9.0
        );
    }

    #[test]
    fn apply_is_deterministic_and_keeps_size() {
        let img = input();
        let ra = RandAugment::parse("rand-m9-mstd0.5-inc1-n3-p1").unwrap();
        let a = ra.apply(&img, &mut Rng::from_keys(&[1, 2]));
        let b = ra.apply(&img, &mut Rng::from_keys(&[1, 2]));
        assert_eq!(a, b);
        assert_eq!(a.dimensions(), (7, 6));
        let changed = (0..20)
            .filter(|&k| ra.apply(&img, &mut Rng::new(k)) != img)
            .count();
        assert!(
            changed >= 15,
            "p=1 with 3 ops should almost always change the image ({changed}/20)"
        );
        let off = RandAugment { prob: 0.0, ..ra };
        assert_eq!(off.apply(&img, &mut Rng::new(5)), img);
    }

    #[test]
    fn stronger_magnitudes_change_images_more() {
        // A smooth image with structure in every direction: rotations, shears and colour
        // ops all move its pixels.
        let img = RgbImage::from_fn(48, 40, |x, y| image::Rgb([(x * 5) as u8, (y * 6) as u8, ((x + y) * 3) as u8]));
        let change = |m: f64| -> f64 {
            let ra = RandAugment::parse(&format!("rand-m{m}-mstd0.5-inc1")).unwrap();
            (0..200u64)
                .map(|i| {
                    let out = ra.apply(&img, &mut Rng::from_keys(&[3, i]));
                    out.as_raw().iter().zip(img.as_raw()).map(|(a, b)| (*a as f64 - *b as f64).abs()).sum::<f64>() / img.as_raw().len() as f64
                })
                .sum::<f64>()
                / 200.0
        };
        let (weak, mid, strong) = (change(0.0), change(5.0), change(9.0));
        assert!(weak < mid && mid < strong, "mean change per pixel at m0 {weak:.2}, m5 {mid:.2}, m9 {strong:.2}");
    }

}
