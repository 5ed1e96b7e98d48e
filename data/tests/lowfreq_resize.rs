//! `--low-freq resize` against Pillow: `et_data::stage_crop::decode_resized` on every case
//! of `tests/fixtures/lowfreq_resize` (written by `tools/gen_lowfreq_resize_fixture.py`):
//! JPEGs at DCT scales 1/8, 2/8, 4/8 and 8/8 (4:2:0 at odd sizes, progressive 4:4:4, grey,
//! a CIFAR photo) and a PNG. The reference is Pillow's `draft('RGB', (W // d, H // d))`,
//! a crop to the whole scaled pixels covering the box, and `resize((B, B), BICUBIC,
//! box=...)` with the box's fractional position in them (the generator's docstring).
//!
//! Through libjpeg-turbo every case is exact, DCT scale included. Without it (no
//! `jpeglib.h`, or `ET_NO_LIBJPEG=1`) nothing is DCT-scaled: every file is decoded in full,
//! and the test checks that resize mode then is exactly the full decode's crop resized to B
//! (torchvision's RandomResizedCrop at B), that the PNG cases still equal Pillow's byte for
//! byte, and that the JPEG cases at scale 8/8 stay within the pure-Rust decoder's distance
//! from Pillow's pixels.

use et_data::decode::{decode_bytes, jpeg_decoder};
use et_data::pixels::crop;
use et_data::resample::{resize, Filter};
use et_data::stage_crop::decode_resized;
use std::path::{Path, PathBuf};

struct Case {
    file: String,
    bx: (u32, u32, u32, u32),
    size: u32,
    denom: u32,
    expected: String,
}

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lowfreq_resize")
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e} (tools/gen_lowfreq_resize_fixture.py writes it)"))
}

fn cases() -> Vec<Case> {
    let text = String::from_utf8(read("manifest.txt")).unwrap();
    let cases: Vec<Case> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(f.len(), 8, "manifest line {l:?}");
            let n = |i: usize| -> u32 { f[i].parse().unwrap_or_else(|_| panic!("manifest line {l:?}")) };
            Case { file: f[0].into(), bx: (n(1), n(2), n(3), n(4)), size: n(5), denom: n(6), expected: f[7].into() }
        })
        .collect();
    // Every DCT scale, and a file with none.
    for d in [1, 2, 4, 8] {
        assert!(cases.iter().any(|c| c.denom == d && c.file.ends_with(".jpg")), "no JPEG case at 1/{d}");
    }
    assert!(cases.iter().any(|c| c.file.ends_with(".png")));
    cases
}

fn mean_and_max_diff(a: &[u8], b: &[u8]) -> (f64, u8) {
    let max = a.iter().zip(b).map(|(x, y)| x.abs_diff(*y)).max().unwrap_or(0);
    (a.iter().zip(b).map(|(x, y)| x.abs_diff(*y) as f64).sum::<f64>() / a.len() as f64, max)
}

#[test]
fn resize_mode_equals_pillows_draft_crop_and_resize() {
    let libjpeg = jpeg_decoder() == "libjpeg-turbo";
    for c in cases() {
        let bytes = read(&c.file);
        let what = format!("{} box {:?} at {} (Pillow: 1/{})", c.file, c.bx, c.size, c.denom);
        let full = decode_bytes(&bytes).unwrap();
        let got = decode_resized(&bytes, c.size, Filter::Bicubic, |w, h| {
            assert_eq!((w, h), full.dimensions(), "{what}: the box is planned on the full-resolution size");
            c.bx
        })
        .unwrap_or_else(|e| panic!("{what}: {e}"));
        let want = read(&c.expected);
        assert_eq!(got.img.dimensions(), (c.size, c.size), "{what}");
        if libjpeg || c.file.ends_with(".png") {
            assert_eq!(got.denom, c.denom, "{what}: DCT scale");
            if got.img.as_raw() != &want {
                let (mean, max) = mean_and_max_diff(got.img.as_raw(), &want);
                panic!("{what}: differs from Pillow (mean {mean:.3}, max {max} levels)");
            }
        } else {
            // The pure-Rust decoder: no DCT scaling, the full decode's crop resized to B.
            assert_eq!(got.denom, 1, "{what}");
            let (top, left, h, w) = c.bx;
            assert_eq!(got.img, resize(&crop(&full, top as i64, left as i64, h, w), c.size, c.size, Filter::Bicubic), "{what}");
            if c.denom == 1 {
                // Within the pure-Rust decoder's distance from Pillow's pixels
                // (tests/pil_formats.rs), which resizing does not grow.
                let (mean, max) = mean_and_max_diff(got.img.as_raw(), &want);
                assert!(max <= 5 && mean <= 0.5, "{what}: mean {mean:.3}, max {max} levels from Pillow");
            }
        }
    }
}
