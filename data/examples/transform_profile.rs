//! Times the per-image operations of the training transform on a 224×224 photo-sized input
//! (fastest and median of 31 runs; on a shared machine the fastest is the steadier figure),
//! so that a change to one op can be measured on its own:
//! `cargo run --release -p et-data --example transform_profile [-- [PATH.jpg] [NAME...]]`.
//! Without a path the input is a smooth synthetic image; names (substrings) pick the ops.

use et_data::augment_ops::*;
use et_data::resample::{resize_box, Filter};
use et_data::transform::{hflip, to_chw_f32};
use et_data::RgbImage;
use std::hint::black_box;
use std::time::Instant;

const ROUNDS: usize = 31;

fn min_median_us(mut f: impl FnMut()) -> (f64, f64) {
    f();
    let mut t: Vec<f64> = (0..ROUNDS)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    t.sort_by(f64::total_cmp);
    (t[0], t[t.len() / 2])
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (paths, names): (Vec<String>, Vec<String>) =
        std::env::args().skip(1).partition(|a| std::path::Path::new(a).is_file());
    let src = match paths.first() {
        Some(p) => et_data::decode::decode_rgb(std::path::Path::new(p))?,
        None => RgbImage::from_fn(500, 375, |x, y| {
            et_data::Rgb([(x / 2) as u8, (y / 2) as u8, ((x + y) / 4) as u8])
        }),
    };
    let (w, h) = (src.width() as f64, src.height() as f64);
    let img = resize_box(&src, [0.0, 0.0, w, h], 224, 224, Filter::Bicubic);
    let fill = [124, 116, 104];
    let b = Interp::Bicubic;
    let rows: Vec<(&str, Box<dyn FnMut()>)> = vec![
        ("rrc resize (full image -> 224)", Box::new(|| drop(black_box(resize_box(&src, [0.0, 0.0, w, h], 224, 224, Filter::Bicubic))))),
        ("rrc resize (60% box -> 224)", Box::new(|| drop(black_box(resize_box(&src, [w * 0.2, h * 0.2, w * 0.8, h * 0.8], 224, 224, Filter::Bicubic))))),
        ("hflip", Box::new(|| drop(black_box(hflip(&img))))),
        ("rotate 9.3 bicubic", Box::new(|| drop(black_box(rotate(&img, 9.3, b, fill))))),
        ("shear_x 0.09 bicubic", Box::new(|| drop(black_box(shear_x(&img, 0.09, b, fill))))),
        ("shear_y 0.09 bicubic", Box::new(|| drop(black_box(shear_y(&img, 0.09, b, fill))))),
        ("translate_x 18.1 bicubic", Box::new(|| drop(black_box(translate_x(&img, 18.1, b, fill))))),
        ("translate_y -18.1 bicubic", Box::new(|| drop(black_box(translate_y(&img, -18.1, b, fill))))),
        ("auto_contrast", Box::new(|| drop(black_box(auto_contrast(&img))))),
        ("equalize", Box::new(|| drop(black_box(equalize(&img))))),
        ("posterize 2", Box::new(|| drop(black_box(posterize(&img, 2))))),
        ("color 1.4", Box::new(|| drop(black_box(color(&img, 1.4))))),
        ("contrast 1.4", Box::new(|| drop(black_box(contrast(&img, 1.4))))),
        ("brightness 1.4", Box::new(|| drop(black_box(brightness(&img, 1.4))))),
        ("sharpness 1.4", Box::new(|| drop(black_box(sharpness(&img, 1.4))))),
        ("to_chw_f32", Box::new(|| drop(black_box(to_chw_f32(&img))))),
    ];
    for (name, mut f) in rows {
        if !names.is_empty() && !names.iter().any(|n| name.contains(n.as_str())) {
            continue;
        }
        let (min, med) = min_median_us(&mut f);
        println!("{name:32} {min:8.1} us (median {med:.1})");
    }
    Ok(())
}
