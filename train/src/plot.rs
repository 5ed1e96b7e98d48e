//! A PNG of one or more runs' curves against compute progress: training loss, validation
//! top-1 and learning rate, one panel each. Drawn pixel by pixel with a built-in 3×5 font,
//! so it needs no system fonts and no plotting crate.

use crate::TrainError;
use image::{Rgb, RgbImage};
use std::path::Path;

/// One run's series, read from its metrics.jsonl.
#[derive(Clone, Debug, Default)]
pub struct Curves {
    pub name: String,
    /// (progress, value)
    pub loss: Vec<(f64, f64)>,
    pub val_top1: Vec<(f64, f64)>,
    pub lr: Vec<(f64, f64)>,
}

/// Reads `step` and `stage_end` records (a resumed run's repeated records are harmless:
/// the log is cut back to the checkpoint).
pub fn read_metrics(path: &Path, name: &str) -> Result<Curves, TrainError> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::Output(format!("cannot read {}: {e}", path.display())))?;
    let mut c = Curves { name: name.to_string(), ..Default::default() };
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let p = v["progress"].as_f64();
        match (v["event"].as_str(), p) {
            (Some("step"), Some(p)) => {
                if let Some(l) = v["loss"].as_f64() {
                    c.loss.push((p, l));
                }
                if let Some(lr) = v["lr"].as_f64() {
                    c.lr.push((p, lr));
                }
            }
            (Some("stage_end"), Some(p)) => {
                if let Some(t) = v["val_top1"].as_f64() {
                    c.val_top1.push((p, 100.0 * t));
                }
            }
            _ => {}
        }
    }
    Ok(c)
}

const COLORS: [[u8; 3]; 6] = [[31, 119, 180], [214, 39, 40], [44, 160, 44], [148, 103, 189], [255, 127, 14], [23, 190, 207]];

/// 3×5 glyphs, one row of 3 bits per line, top first.
fn glyph(c: char) -> [u8; 5] {
    match c.to_ascii_lowercase() {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 1, 1],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        'a' => [2, 5, 7, 5, 5],
        'b' => [6, 5, 6, 5, 6],
        'c' => [3, 4, 4, 4, 3],
        'd' => [6, 5, 5, 5, 6],
        'e' => [7, 4, 6, 4, 7],
        'f' => [7, 4, 6, 4, 4],
        'g' => [3, 4, 5, 5, 3],
        'h' => [5, 5, 7, 5, 5],
        'i' => [7, 2, 2, 2, 7],
        'j' => [1, 1, 1, 5, 2],
        'k' => [5, 5, 6, 5, 5],
        'l' => [4, 4, 4, 4, 7],
        'm' => [5, 7, 7, 5, 5],
        'n' => [6, 5, 5, 5, 5],
        'o' => [2, 5, 5, 5, 2],
        'p' => [6, 5, 6, 4, 4],
        'q' => [2, 5, 5, 6, 3],
        'r' => [6, 5, 6, 5, 5],
        's' => [3, 4, 2, 1, 6],
        't' => [7, 2, 2, 2, 2],
        'u' => [5, 5, 5, 5, 7],
        'v' => [5, 5, 5, 5, 2],
        'w' => [5, 5, 7, 7, 5],
        'x' => [5, 5, 2, 5, 5],
        'y' => [5, 5, 2, 2, 2],
        'z' => [7, 1, 2, 4, 7],
        '.' => [0, 0, 0, 0, 2],
        '-' => [0, 0, 7, 0, 0],
        '+' => [0, 2, 7, 2, 0],
        '%' => [5, 1, 2, 4, 5],
        '_' => [0, 0, 0, 0, 7],
        '/' => [1, 1, 2, 4, 4],
        '(' => [2, 4, 4, 4, 2],
        ')' => [2, 1, 1, 1, 2],
        ':' => [0, 2, 0, 2, 0],
        _ => [0; 5],
    }
}

const SCALE: u32 = 2;

fn text(img: &mut RgbImage, x: i64, y: i64, s: &str, color: [u8; 3]) {
    for (i, ch) in s.chars().enumerate() {
        let g = glyph(ch);
        for (row, bits) in g.iter().enumerate() {
            for col in 0..3 {
                if bits >> (2 - col) & 1 == 1 {
                    for dy in 0..SCALE as i64 {
                        for dx in 0..SCALE as i64 {
                            put(img, x + (i as i64 * 4 + col) * SCALE as i64 + dx, y + row as i64 * SCALE as i64 + dy, color);
                        }
                    }
                }
            }
        }
    }
}

fn put(img: &mut RgbImage, x: i64, y: i64, c: [u8; 3]) {
    if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
        img.put_pixel(x as u32, y as u32, Rgb(c));
    }
}

fn line(img: &mut RgbImage, (x0, y0): (i64, i64), (x1, y1): (i64, i64), c: [u8; 3]) {
    let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
    let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
    let (mut x, mut y, mut err) = (x0, y0, dx + dy);
    loop {
        put(img, x, y, c);
        put(img, x, y + 1, c);
        if x == x1 && y == y1 {
            break;
        }
        let e2 = 2 * err;
        if e2 >= dy {
            err += dy;
            x += sx;
        }
        if e2 <= dx {
            err += dx;
            y += sy;
        }
    }
}

fn label(v: f64, span: f64) -> String {
    if v != 0.0 && (v.abs() < 1e-2 || v.abs() >= 1e4) {
        format!("{v:.1e}")
    } else if span < 0.5 {
        format!("{v:.3}")
    } else {
        format!("{v:.2}")
    }
}

/// Draws the panels for `runs` into a PNG at `path`.
pub fn write_png(runs: &[Curves], path: &Path) -> Result<(), TrainError> {
    let (w, panel_h, left, right, top) = (960u32, 230u32, 90i64, 20i64, 40i64);
    let panels: [(&str, fn(&Curves) -> &Vec<(f64, f64)>); 3] = [("train loss", |c| &c.loss), ("val top-1 %", |c| &c.val_top1), ("learning rate", |c| &c.lr)];
    let h = top as u32 + panels.len() as u32 * panel_h + 30;
    let mut img = RgbImage::from_pixel(w, h, Rgb([255, 255, 255]));
    let (black, grey) = ([0, 0, 0], [215, 215, 215]);
    // Legend.
    let mut lx = left;
    for (i, r) in runs.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        for dy in 0..8 {
            for dx in 0..14 {
                put(&mut img, lx + dx, 14 + dy, c);
            }
        }
        text(&mut img, lx + 20, 13, &r.name, black);
        lx += 20 + r.name.len() as i64 * 8 + 30;
    }
    for (pi, (title, series)) in panels.iter().enumerate() {
        let y0 = top + pi as i64 * panel_h as i64;
        let (px0, px1, py0, py1) = (left, w as i64 - right, y0 + 18, y0 + panel_h as i64 - 30);
        let pts: Vec<(f64, f64)> = runs.iter().flat_map(|r| series(r).iter().copied()).filter(|p| p.1.is_finite()).collect();
        let (mut lo, mut hi) = pts.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.1), b.max(p.1)));
        if pts.is_empty() {
            (lo, hi) = (0.0, 1.0);
        }
        if *title != "train loss" {
            lo = lo.min(0.0);
        }
        if hi - lo < 1e-12 {
            hi = lo + 1.0;
        }
        let xmax = pts.iter().map(|p| p.0).fold(1.0f64, f64::max);
        let sx = |p: f64| px0 + ((p / xmax) * (px1 - px0) as f64).round() as i64;
        let sy = |v: f64| py1 - (((v - lo) / (hi - lo)) * (py1 - py0) as f64).round() as i64;
        text(&mut img, px0, y0 + 4, title, black);
        for k in 0..=4 {
            let v = lo + (hi - lo) * k as f64 / 4.0;
            let y = sy(v);
            line(&mut img, (px0, y), (px1, y), grey);
            let l = label(v, hi - lo);
            text(&mut img, px0 - 8 - l.len() as i64 * 8, y - 4, &l, black);
            let p = xmax * k as f64 / 4.0;
            let x = sx(p);
            line(&mut img, (x, py0), (x, py1), grey);
            text(&mut img, x - if k == 4 { 30 } else { 8 }, py1 + 6, &format!("{p:.2}"), black);
        }
        line(&mut img, (px0, py0), (px0, py1), black);
        line(&mut img, (px0, py1), (px1, py1), black);
        for (i, r) in runs.iter().enumerate() {
            let c = COLORS[i % COLORS.len()];
            let s: Vec<(i64, i64)> = series(r).iter().filter(|p| p.1.is_finite()).map(|&(p, v)| (sx(p), sy(v))).collect();
            for pair in s.windows(2) {
                line(&mut img, pair[0], pair[1], c);
            }
            for &(x, y) in &s {
                if series(r).len() < 40 {
                    for d in -2..=2 {
                        put(&mut img, x + d, y, c);
                        put(&mut img, x, y + d, c);
                    }
                }
            }
        }
    }
    text(&mut img, w as i64 / 2 - 120, h as i64 - 14, "compute progress (share of the budget)", black);
    et_runfiles::write_with(path, |tmp| img.save_with_format(tmp, image::ImageFormat::Png).map_err(std::io::Error::other)).map_err(|e| TrainError::Output(format!("cannot write {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_the_curves_in_each_panel() {
        let dir = std::env::temp_dir().join(format!("et-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let m = dir.join("metrics.jsonl");
        std::fs::write(&m, "{\"event\":\"plan\"}\n{\"event\":\"step\",\"progress\":0.1,\"loss\":2.0,\"lr\":0.001}\n{\"event\":\"step\",\"progress\":0.9,\"loss\":1.0,\"lr\":0.0001}\n{\"event\":\"stage_end\",\"progress\":1.0,\"val_top1\":0.5}\n").unwrap();
        let c = read_metrics(&m, "run").unwrap();
        assert_eq!(c.loss, vec![(0.1, 2.0), (0.9, 1.0)]);
        assert_eq!(c.val_top1, vec![(1.0, 50.0)]);
        let png = dir.join("p.png");
        write_png(&[c], &png).unwrap();
        let img = image::open(&png).unwrap().to_rgb8();
        let blue = img.pixels().filter(|p| p.0 == COLORS[0]).count();
        assert!(blue > 200, "the run's colour is drawn ({blue} pixels)");
        std::fs::remove_dir_all(&dir).ok();
    }
}
