//! Data side of efficienttrain-rs: ImageFolder datasets, decoding, the timm-style
//! train / eval transforms, RandAugment, low-frequency cropping and a deterministic,
//! multi-threaded loader. Images are `image::RgbImage` until they become CHW `f32`.

pub mod error;
pub mod folder;
pub mod decode;
#[cfg(et_libjpeg)]
pub mod jpeg;
pub mod resample;
pub mod transform;
pub mod augment_ops;
pub mod randaugment;
pub mod lowfreq;
pub mod loader;
pub mod metrics;
pub mod evaluation;
pub mod mixup;
pub mod replay;
pub mod rng;

pub use error::DataError;
pub use image::{Rgb, RgbImage};
pub use rng::Rng;
