//! `et-bench decode-speed`: what decoding the JPEGs costs, and how much of it is entropy
//! decoding (the floor of any pipeline that reads full-size files), with et-data's
//! entropy decoder (`data/csrc/ethuff.c`) and libjpeg-turbo's own.

use anyhow::{Context, Result};
use et_data::decode::decode_jpeg_window;
use et_data::folder::ImageFolder;
use std::path::Path;
use std::time::Instant;

pub fn decode_speed(dir: &Path, passes: usize) -> Result<()> {
    let set = ImageFolder::open(&ImageFolder::split_root(dir, "train"))?;
    let files: Vec<Vec<u8>> = set.samples.iter().map(|s| std::fs::read(&s.path).with_context(|| format!("reading {}", s.path.display()))).collect::<Result<_>>()?;
    let bytes: usize = files.iter().map(Vec::len).sum();
    println!("{} files, {:.1} KiB on average", files.len(), bytes as f64 / files.len().max(1) as f64 / 1024.0);
    for denom in [1u32, 8] {
        let mut means = Vec::new();
        for (name, libjpeg) in [("et-data's entropy decoder", false), ("libjpeg's entropy decoder", true)] {
            // Best pass per image, so that a page-cache or scheduler hiccup is not counted.
            let mut best = vec![f64::INFINITY; files.len()];
            let mut decoded = 0;
            for _ in 0..passes.max(1) {
                decoded = 0;
                for (b, f) in best.iter_mut().zip(&files) {
                    let t = Instant::now();
                    let out = decode_jpeg_window(f, denom, [0, 0, u32::MAX, u32::MAX], libjpeg).map_err(anyhow::Error::msg)?;
                    *b = b.min(t.elapsed().as_secs_f64());
                    decoded += out.is_some() as usize;
                }
            }
            anyhow::ensure!(decoded > 0, "no file took the libjpeg path (built without libjpeg?)");
            let mean = best.iter().sum::<f64>() / files.len() as f64 * 1e3;
            println!("1/{denom} scale, {name}: {mean:.3} ms per image (mean of each image's best of {passes} passes; {decoded} JPEGs)");
            means.push(mean);
        }
        println!("1/{denom} scale: libjpeg / et-data = {:.2}x", means[1] / means[0]);
    }
    Ok(())
}
