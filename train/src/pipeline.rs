//! The per-image training transform of one curriculum stage (docs/algorithm.md): random
//! resized crop at the base resolution, flip, RandAugment of the stage's magnitude, then
//! the exact low-frequency crop down to the stage's resolution, normalisation and
//! (optionally) random erasing.

use et_data::loader::Item;
use et_data::lowfreq::lowfreq_crop_square;
use et_data::randaugment::RandAugment;
use et_data::transform::{normalize_chw, random_hflip, to_chw_f32, to_chw_normalized_into, RandomErasing, RandomResizedCrop};
use et_data::{DataError, Rng};
use et_data::RgbImage;

#[derive(Clone, Debug)]
pub struct TrainTransform {
    pub base: usize,
    pub resolution: usize,
    pub crop: RandomResizedCrop,
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
        let img = self.crop.apply(img, rng);
        let mut out = vec![0.0; 3 * self.resolution * self.resolution];
        self.after_crop(img, rng, &mut out)?;
        Ok(out)
    }

    /// The same transform from a file: a JPEG is decoded only as far as the crop reaches
    /// (same random draws and pixels as `apply(&decode_rgb(path)?, rng)`); `reduced_dct`
    /// also decodes a crop at least twice the base size at a reduced DCT scale (close to,
    /// not equal to, the exact crop: et-data's `decode_crop`).
    pub fn apply_path(&self, path: &std::path::Path, rng: &mut Rng, reduced_dct: bool) -> Result<Vec<f32>, DataError> {
        let mut out = vec![0.0; 3 * self.resolution * self.resolution];
        self.apply_path_into(path, rng, reduced_dct, &mut out)?;
        Ok(out)
    }

    /// `apply_path` written into `out` (3 × resolution × resolution values: a batch slot).
    pub fn apply_path_into(&self, path: &std::path::Path, rng: &mut Rng, reduced_dct: bool, out: &mut [f32]) -> Result<(), DataError> {
        let img = self.crop.decode_apply(path, rng, reduced_dct)?;
        self.after_crop(img, rng, out)
    }

    /// `apply_path_into` for a loader item (a file, or a shard member in memory).
    pub fn apply_item_into(&self, item: &Item, rng: &mut Rng, reduced_dct: bool, out: &mut [f32]) -> Result<(), DataError> {
        let img = self.crop.decode_apply_bytes(&item.bytes()?, item.name, rng, reduced_dct)?;
        self.after_crop(img, rng, out)
    }

    fn after_crop(&self, img: RgbImage, rng: &mut Rng, out: &mut [f32]) -> Result<(), DataError> {
        let img = random_hflip(img, self.hflip, rng);
        let img = match &self.randaugment {
            Some(ra) => ra.apply(&img, rng),
            None => img,
        };
        if self.resolution < self.base {
            // Normalising after the crop is exact: the crop is linear and keeps the mean (DC).
            let mut chw = lowfreq_crop_square(&to_chw_f32(&img), 3, self.base, self.base, self.resolution)?;
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

    #[test]
    fn output_size_follows_the_stage() {
        let img = RgbImage::from_fn(40, 36, |x, y| et_data::Rgb([(x * 6) as u8, (y * 7) as u8, 90]));
        for (resolution, m) in [(24, 0.0), (32, 9.0)] {
            let t = TrainTransform {
                base: 32,
                resolution,
                crop: RandomResizedCrop::new(32),
                hflip: 0.5,
                randaugment: Some(RandAugment::parse(&policy(m)).unwrap()),
                mean: [0.5; 3],
                std: [0.25; 3],
                erasing: 0.25,
            };
            let a = t.apply(&img, &mut Rng::from_keys(&[1, 2])).unwrap();
            let b = t.apply(&img, &mut Rng::from_keys(&[1, 2])).unwrap();
            assert_eq!(a.len(), 3 * resolution * resolution);
            assert_eq!(a, b, "same keys, same sample");
            assert!(a.iter().all(|v| v.is_finite()));
        }
    }

    #[test]
    fn decoding_from_the_file_is_the_same_transform() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/cifar10-mini/train/cat");
        let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        let t = TrainTransform {
            base: 32,
            resolution: 24,
            crop: RandomResizedCrop::new(32),
            hflip: 0.5,
            randaugment: Some(RandAugment::parse(&policy(5.0)).unwrap()),
            mean: [0.5; 3],
            std: [0.25; 3],
            erasing: 0.25,
        };
        for (i, f) in files.iter().take(8).enumerate() {
            let img = et_data::decode::decode_rgb(f).unwrap();
            let a = t.apply(&img, &mut Rng::from_keys(&[7, i as u64])).unwrap();
            let b = t.apply_path(f, &mut Rng::from_keys(&[7, i as u64]), false).unwrap();
            assert_eq!(a, b, "{}", f.display());
        }
    }
}
