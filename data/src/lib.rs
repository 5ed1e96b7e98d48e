//! Data side of efficienttrain-rs: ImageFolder datasets, decoding, the timm-style
//! train / eval transforms, RandAugment, low-frequency cropping and a deterministic,
//! multi-threaded loader. Images are `image::RgbImage` until they become CHW `f32`.

/// Calls `$name` compiled for AVX2 when the CPU has it (the crate is built for baseline
/// x86-64, whose SSE2 has no 32-bit integer multiply, so the fixed-point loops vectorise
/// poorly there). Results are identical either way: the integer loops are exact, and
/// Rust never fuses float multiply-adds (FMA is not enabled here).
macro_rules! avx2_dispatch {
    ($name:ident($($arg:ident: $ty:ty),*) -> $ret:ty) => {{
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx2")]
            unsafe fn fast($($arg: $ty),*) -> $ret {
                $name($($arg),*)
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU supports AVX2 (checked just above).
                return unsafe { fast($($arg),*) };
            }
        }
        $name($($arg),*)
    }};
}

pub mod error;
pub mod pixels;
pub mod folder;
pub mod tar;
pub mod shards;
pub mod shard_index;
pub mod stream;
pub mod stream_reader;
pub mod dataset;
pub mod decode;
#[cfg(et_libjpeg)]
pub mod jpeg;
pub mod resample;
pub mod transform;
pub mod augment_ops;
pub mod geometric;
pub mod randaugment;
pub mod lowfreq;
pub mod stage_crop;
pub mod loader;
pub mod metrics;
pub mod evaluation;
pub mod mixup;
pub mod replay;
pub mod rng;

pub use error::DataError;
pub use image::{Rgb, RgbImage};
pub use rng::Rng;
