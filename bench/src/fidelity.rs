//! `et-bench decode-check`: how far the fast decoding paths are from the exact ones.

use anyhow::{Context, Result};
use et_data::folder::ImageFolder;
use et_data::transform::RandomResizedCrop;
use et_data::Rng;
use std::path::Path;

fn mean_max_abs(a: &[u8], b: &[u8]) -> (f64, u8) {
    let (mut sum, mut max) = (0u64, 0u8);
    for (&x, &y) in a.iter().zip(b) {
        let d = x.abs_diff(y);
        sum += d as u64;
        max = max.max(d);
    }
    (sum as f64 / a.len().max(1) as f64, max)
}

pub fn decode_check(dir: &Path, size: u32, dump: Option<&Path>) -> Result<()> {
    let set = ImageFolder::open(&ImageFolder::split_root(dir, "train"))?;
    if let Some(d) = dump {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let crop = RandomResizedCrop::new(size);
    let (mut full_diff, mut crop_diff, mut crop_max) = (Vec::new(), Vec::new(), 0u8);
    let mut by_denom = [0usize; 9];
    let (mut window_checks, mut window_mismatch) = (0usize, 0usize);
    // The fast entropy decoder (csrc/ethuff.c) against libjpeg's, full and cropped.
    let (mut entropy_checks, mut entropy_mismatch, mut entropy_fast) = (0usize, 0usize, 0usize);
    for (i, s) in set.samples.iter().enumerate() {
        let bytes = std::fs::read(&s.path).with_context(|| format!("reading {}", s.path.display()))?;
        let ours = et_data::decode::decode_rgb(&s.path)?;
        if let Some(d) = dump {
            std::fs::write(d.join(format!("{i}.rgb")), ours.as_raw())?;
        }
        for (k, denom) in [1u32, 1, 2, 4, 8].into_iter().enumerate() {
            let (sw, sh) = (ours.width().div_ceil(denom), ours.height().div_ceil(denom));
            let window = if k == 0 {
                [0, 0, sw, sh]
            } else {
                let (top, left, hh, ww) = crop.params(sw, sh, &mut Rng::from_keys(&[i as u64, k as u64, 11]));
                [left, top, left + ww, top + hh]
            };
            let decode = |libjpeg| et_data::decode::decode_jpeg_window(&bytes, denom, window, libjpeg).map_err(anyhow::Error::msg);
            if let (Some((a, fast)), Some((b, _))) = (decode(false)?, decode(true)?) {
                entropy_checks += 1;
                entropy_fast += fast as usize;
                if a != b {
                    entropy_mismatch += 1;
                    eprintln!("entropy decoders differ: {} at 1/{denom}, window {window:?}", s.path.display());
                }
            }
        }
        // The pure-Rust decoder, for reference.
        if let Ok(img) = image::load_from_memory(&bytes) {
            let pure = img.to_rgb8();
            if pure.dimensions() == ours.dimensions() {
                full_diff.push(mean_max_abs(pure.as_raw(), ours.as_raw()).0);
            }
        }
        // Exact windowed decode (rows below and columns beside the crop never decoded)
        // against the same window of the full decode.
        for k in 0..4u64 {
            let c = et_data::decode::decode_crop(&bytes, None, |w, h| crop.params(w, h, &mut Rng::from_keys(&[i as u64, k, 7])))
                .map_err(anyhow::Error::msg)?;
            let (top, left, hh, ww) = crop.params(ours.width(), ours.height(), &mut Rng::from_keys(&[i as u64, k, 7]));
            let want = et_data::transform::crop(&ours, top as i64, left as i64, hh, ww);
            window_checks += 1;
            if c.window() != want {
                window_mismatch += 1;
            }
        }
        for k in 0..4u64 {
            let key = [i as u64, k];
            let exact = crop.decode_apply(&s.path, &mut Rng::from_keys(&key), false)?;
            let fast = crop.decode_apply(&s.path, &mut Rng::from_keys(&key), true)?;
            let c = et_data::decode::decode_crop(&bytes, Some(size), |w, h| crop.params(w, h, &mut Rng::from_keys(&key)))
                .map_err(anyhow::Error::msg)?;
            by_denom[c.denom as usize] += 1;
            if c.denom > 1 {
                let (m, x) = mean_max_abs(exact.as_raw(), fast.as_raw());
                crop_diff.push(m);
                crop_max = crop_max.max(x);
            }
        }
    }
    let avg = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    println!("{} images; full decode, libjpeg vs pure-Rust decoder: mean abs diff {:.3} levels", set.samples.len(), avg(&full_diff));
    println!(
        "RandomResizedCrop({size}), 4 crops per image: DCT scale 1/1: {}, 1/2: {}, 1/4: {}, 1/8: {}",
        by_denom[1], by_denom[2], by_denom[4], by_denom[8]
    );
    println!(
        "fast entropy decoder (csrc/ethuff.c, took {entropy_fast} of {entropy_checks}) vs libjpeg's, full images and windows at DCT scales 1-1/8: {entropy_mismatch} of {entropy_checks} decodes differ"
    );
    println!("windowed exact decode vs the full decode: {window_mismatch} of {window_checks} crops differ");
    println!("reduced vs exact decode, over the {} reduced crops: mean abs diff {:.3} levels, max {crop_max}", crop_diff.len(), avg(&crop_diff));
    Ok(())
}
