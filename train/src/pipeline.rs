//! The per-image training transform of one curriculum stage (docs/algorithm.md): random
//! resized crop, flip, RandAugment of the stage's magnitude, normalisation and (optionally)
//! random erasing, at the stage's resolution B. `--low-freq` chooses how the crop becomes
//! B × B (`et_data::stage_crop`): `fft` crops at the base resolution and applies the exact
//! low-frequency crop after RandAugment; `resize` crops straight to B. Every other step, and
//! every random draw, is the same in both.

use et_data::loader::Item;
use et_data::lowfreq::lowfreq_crop_square;
use et_data::randaugment::RandAugment;
use et_data::stage_crop::{LowFreq, StageCrop};
use et_data::transform::{normalize_chw, random_hflip, to_chw_f32, to_chw_normalized_into, RandomErasing, RandomResizedCrop};
use et_data::{DataError, Rng};
use et_data::RgbImage;

#[derive(Clone, Debug)]
pub struct TrainTransform {
    pub resolution: usize,
    /// RandomResizedCrop at the base resolution (its box, scale, ratio and filter serve
    /// both low-frequency modes).
    pub crop: RandomResizedCrop,
    pub low_freq: LowFreq,
    pub hflip: f64,
    pub randaugment: Option<RandAugment>,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub erasing: f64,
}

/// timm's policy string for a stage of magnitude `m` (`rand-m{m}-mstd0.5-inc1`, as the official scripts).
pub fn policy(magnitude: f64) -> String {
    format!("rand-m{magnitude}-mstd0.5-inc1")
}

impl TrainTransform {
    /// CHW f32 of size 3 × resolution × resolution.
    pub fn apply(&self, img: &RgbImage, rng: &mut Rng) -> Result<Vec<f32>, DataError> {
        let img = self.stage_crop().apply(img, rng);
        let mut out = vec![0.0; 3 * self.resolution * self.resolution];
        self.after_crop(img, rng, &mut out)?;
        Ok(out)
    }

    /// The same transform from a file: a JPEG is decoded only as far as the crop reaches
    /// (same random draws, and in fft mode the same pixels, as `apply(&decode_rgb(path)?,
    /// rng)`); `reduced_dct` also decodes a crop at least twice the base size at a reduced
    /// DCT scale (close to, not equal to, the exact crop: et-data's `decode_crop`). In
    /// resize mode below the base resolution the JPEG is always decoded at the DCT scale
    /// for B (`et_data::stage_crop::decode_resized`).
    pub fn apply_path(&self, path: &std::path::Path, rng: &mut Rng, reduced_dct: bool) -> Result<Vec<f32>, DataError> {
        let mut out = vec![0.0; 3 * self.resolution * self.resolution];
        self.apply_path_into(path, rng, reduced_dct, &mut out)?;
        Ok(out)
    }

    /// `apply_path` written into `out` (3 × resolution × resolution values: a batch slot).
    pub fn apply_path_into(&self, path: &std::path::Path, rng: &mut Rng, reduced_dct: bool, out: &mut [f32]) -> Result<(), DataError> {
        let img = self.stage_crop().decode_path(path, rng, reduced_dct)?.img;
        self.after_crop(img, rng, out)
    }

    /// The crop step of this stage: to B in resize mode, to the base resolution otherwise.
    pub fn stage_crop(&self) -> StageCrop {
        StageCrop::new(self.crop.clone(), self.resolution as u32, self.low_freq)
    }

    /// `apply_path_into` for a loader item (a file, or a shard member in memory).
    pub fn apply_item_into(&self, item: &Item, rng: &mut Rng, reduced_dct: bool, out: &mut [f32]) -> Result<(), DataError> {
        let bytes = item.bytes()?;
        let img = self.stage_crop().decode(&bytes, rng, reduced_dct).map_err(|reason| DataError::Decode { path: item.name.to_path_buf(), reason })?.img;
        self.after_crop(img, rng, out)
    }

    fn after_crop(&self, img: RgbImage, rng: &mut Rng, out: &mut [f32]) -> Result<(), DataError> {
        let img = random_hflip(img, self.hflip, rng);
        let img = match &self.randaugment {
            Some(ra) => ra.apply(&img, rng),
            None => img,
        };
        let (w, h) = (img.width() as usize, img.height() as usize);
        if (w, h) != (self.resolution, self.resolution) {
            // The fft mode's crop at the base resolution. Normalising after the crop is exact:
            // the crop is linear and keeps the mean (DC).
            let mut chw = lowfreq_crop_square(&to_chw_f32(&img), 3, h, w, self.resolution)?;
            normalize_chw(&mut chw, 3, &self.mean, &self.std);
            if chw.len() != out.len() {
                return Err(DataError::Invalid(format!("the low-frequency crop gave {} values for a slot of {}", chw.len(), out.len())));
            }
            out.copy_from_slice(&chw);
        } else {
            to_chw_normalized_into(&img, &self.mean, &self.std, out)?;
        }
        if self.erasing > 0.0 {
            RandomErasing { prob: self.erasing }.apply(out, 3, self.resolution, self.resolution, rng);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `magnitude` None: no RandAugment.
    fn transform(resolution: usize, low_freq: LowFreq, magnitude: Option<f64>, erasing: f64) -> TrainTransform {
        TrainTransform {
            resolution,
            crop: RandomResizedCrop::new(32),
            low_freq,
            hflip: 0.5,
            randaugment: magnitude.map(|m| RandAugment::parse(&policy(m)).unwrap()),
            mean: [0.5; 3],
            std: [0.25; 3],
            erasing,
        }
    }

    fn cifar(class: &str) -> Vec<std::path::PathBuf> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/cifar10-mini/train").join(class);
        let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        files
    }

    #[test]
    fn output_size_follows_the_stage() {
        let img = RgbImage::from_fn(40, 36, |x, y| et_data::Rgb([(x * 6) as u8, (y * 7) as u8, 90]));
        for low_freq in [LowFreq::Fft, LowFreq::Resize] {
            for (resolution, m) in [(24, 0.0), (32, 9.0)] {
                let t = transform(resolution, low_freq, Some(m), 0.25);
                let a = t.apply(&img, &mut Rng::from_keys(&[1, 2])).unwrap();
                let b = t.apply(&img, &mut Rng::from_keys(&[1, 2])).unwrap();
                assert_eq!(a.len(), 3 * resolution * resolution);
                assert_eq!(a, b, "same keys, same sample");
                assert!(a.iter().all(|v| v.is_finite()));
            }
        }
    }

    #[test]
    fn decoding_from_the_file_is_the_same_transform() {
        // 32-px files: no crop is twice 24 px, so resize mode decodes them in full too.
        for low_freq in [LowFreq::Fft, LowFreq::Resize] {
            let t = transform(24, low_freq, Some(5.0), 0.25);
            for (i, f) in cifar("cat").iter().take(8).enumerate() {
                let img = et_data::decode::decode_rgb(f).unwrap();
                let a = t.apply(&img, &mut Rng::from_keys(&[7, i as u64])).unwrap();
                let b = t.apply_path(f, &mut Rng::from_keys(&[7, i as u64]), false).unwrap();
                assert_eq!(a, b, "{low_freq}: {}", f.display());
            }
        }
    }

    /// The two modes make the same random draws in the same order (crop box, flip,
    /// RandAugment, erasing): after the whole transform the random stream is in the same
    /// state and the erased rectangle (noise from that stream) is the same. At the base
    /// resolution they are the same transform; below it, two low-passes of one picture.
    #[test]
    fn the_modes_differ_only_in_the_low_pass() {
        let mut total = 0.0;
        for (i, f) in cifar("ship").iter().take(12).enumerate() {
            let key = [11, i as u64];
            for resolution in [16, 24, 32] {
                let run = |mode, magnitude, erasing| {
                    let mut rng = Rng::from_keys(&key);
                    let x = transform(resolution, mode, magnitude, erasing).apply_path(f, &mut rng, false).unwrap();
                    (x, rng.next_u64())
                };
                let ((a, next_a), (b, next_b)) = (run(LowFreq::Fft, Some(9.0), 1.0), run(LowFreq::Resize, Some(9.0), 1.0));
                assert_eq!(next_a, next_b, "{resolution} px, {}: the same random numbers consumed", f.display());
                let same = a.iter().zip(&b).filter(|(x, y)| x == y).count();
                if resolution == 32 {
                    assert_eq!(a, b, "at the base resolution the modes are one");
                    continue;
                }
                assert!(same > 0 && same < a.len(), "{resolution} px: {same} of {} values equal (the erased noise)", a.len());
                // Without RandAugment and erasing: normalised values (std 0.25, so 1.0 is 64
                // levels) of one flipped crop, low-passed two ways.
                let ((a, _), (b, _)) = (run(LowFreq::Fft, None, 0.0), run(LowFreq::Resize, None, 0.0));
                let mad = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len() as f32;
                assert!(mad < 0.4, "{resolution} px, {}: mean difference {mad}", f.display());
                total += mad;
            }
        }
        // et-bench lowfreq-diff on the bundled images: a mean of 9 levels (0.14 here) at
        // 16 px, 4 at 24.
        assert!(total / 24.0 < 0.2, "mean difference {}", total / 24.0);
    }
}
