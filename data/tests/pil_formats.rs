//! Every image form in `tests/fixtures/images` (written by `tools/gen_image_fixtures.py`)
//! decodes to the pixels torchvision's `pil_loader` (`Image.open(f).convert('RGB')`)
//! gives, byte for byte, except where the manifest says otherwise:
//!
//! - `high-byte`: 16-bit grey keeps each sample's high byte, where PIL clips to 255
//!   (deliberate; docs/training.md, "Image files");
//! - `pil-near`: forms the `image` crate converts to RGB itself (CMYK and JPEG-compressed
//!   TIFF, a PGM maxval other than 255), within 1 level of PIL;
//! - JPEGs decoded by the `image` crate (all of them with `ET_NO_LIBJPEG=1` or without
//!   `jpeglib.h`) within `IMAGE_CRATE_JPEG`, since its IDCT, upsampling and CMYK conversion
//!   are not libjpeg's. Through libjpeg-turbo every JPEG is exact: YCbCr, grey, and CMYK /
//!   YCCK (libjpeg returns the stored CMYK, converted to RGB with PIL's rounding).

use et_data::decode::{decode_bytes, decode_rgb, jpeg_decoder};
use std::path::{Path, PathBuf};

/// The largest difference, and the largest mean difference, allowed between PIL's pixels
/// and a JPEG decoded by the `image` crate (zune-jpeg). Measured on these fixtures (odd
/// widths): at most 3 levels (mean 0.38) for YCbCr and grey, 2 (mean 0.03) for CMYK and
/// YCCK. Over 2,572 JPEGs (the 2,500 of assets/cifar10-mini and 72 synthetic ones: every
/// chroma subsampling, quality 30-100, progressive, grey, CMYK): 99.97% of values within 2
/// levels, at most 5 away from the last column and a mean of at most 0.45 per image; in the
/// last column of an even-width image with horizontally subsampled chroma (4:2:0, 4:2:2)
/// up to 20, where zune-jpeg ends its chroma upsampling differently from libjpeg.
const IMAGE_CRATE_JPEG: Tolerance = Tolerance { max: 5, mean: 0.5 };
/// The `pil-near` forms: the image crate rounds its own conversion differently (for CMYK
/// TIFF it truncates where PIL rounds, so about half the values are 1 lower).
const NEAR: Tolerance = Tolerance { max: 1, mean: 1.0 };
const EXACT: Tolerance = Tolerance { max: 0, mean: 0.0 };

#[derive(Clone, Copy, Debug)]
struct Tolerance {
    max: u8,
    mean: f64,
}

struct Fixture {
    file: String,
    width: u32,
    height: u32,
    rule: String,
}

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/images")
}

fn fixtures() -> Vec<Fixture> {
    let text = std::fs::read_to_string(dir().join("manifest.txt")).expect("tests/fixtures/images/manifest.txt (tools/gen_image_fixtures.py)");
    let list: Vec<Fixture> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(f.len(), 4, "manifest line {l:?}");
            Fixture { file: f[0].into(), width: f[1].parse().unwrap(), height: f[2].parse().unwrap(), rule: f[3].into() }
        })
        .collect();
    assert!(list.len() >= 30, "{} fixtures", list.len());
    list
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The number of colour components in a JPEG's frame header; `None` for other files.
fn jpeg_components(b: &[u8]) -> Option<u8> {
    if !b.starts_with(&[0xFF, 0xD8]) {
        return None;
    }
    let mut i = 2;
    while i + 4 <= b.len() {
        assert_eq!(b[i], 0xFF, "marker expected at {i}");
        let marker = b[i + 1];
        let len = u16::from_be_bytes([b[i + 2], b[i + 3]]) as usize;
        // SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC).
        if (0xC0..=0xCF).contains(&marker) && ![0xC4, 0xC8, 0xCC].contains(&marker) {
            return Some(b[i + 9]);
        }
        i += 2 + len;
    }
    panic!("JPEG without a frame header");
}

fn libjpeg() -> bool {
    jpeg_decoder() == "libjpeg-turbo"
}

/// What a fixture must meet on this build, and why.
fn tolerance(f: &Fixture, bytes: &[u8]) -> (Tolerance, &'static str) {
    match (f.rule.as_str(), jpeg_components(bytes)) {
        ("pil-near", _) => (NEAR, "the image crate's own conversion"),
        (_, Some(_)) if !libjpeg() => (IMAGE_CRATE_JPEG, "JPEG through the pure-Rust fallback"),
        _ => (EXACT, "exact"),
    }
}

struct Diff {
    max: u8,
    mean: f64,
    count: usize,
    first: Option<(u32, u32, [u8; 3], [u8; 3])>,
}

fn diff(got: &[u8], want: &[u8], width: u32) -> Diff {
    assert_eq!(got.len(), want.len());
    let (mut max, mut sum, mut count, mut first) = (0u8, 0u64, 0usize, None);
    for (i, (g, w)) in got.chunks_exact(3).zip(want.chunks_exact(3)).enumerate() {
        if g != w {
            count += 1;
            if first.is_none() {
                let (x, y) = (i as u32 % width, i as u32 / width);
                first = Some((x, y, [g[0], g[1], g[2]], [w[0], w[1], w[2]]));
            }
        }
        for (a, b) in g.iter().zip(w) {
            max = max.max(a.abs_diff(*b));
            sum += a.abs_diff(*b) as u64;
        }
    }
    Diff { max, mean: sum as f64 / got.len().max(1) as f64, count, first }
}

#[test]
fn every_format_decodes_to_pils_pixels() {
    let mut report = Vec::new();
    let mut failed = false;
    for f in fixtures() {
        let bytes = read(&f.file);
        let (tol, why) = tolerance(&f, &bytes);
        let want = read(&format!("{}.rgb", f.file));
        assert_eq!(want.len(), (f.width * f.height * 3) as usize, "{}.rgb", f.file);
        let line = match decode_rgb(&dir().join(&f.file)) {
            Err(e) => {
                failed = true;
                format!("{}: {e}", f.file)
            }
            Ok(img) if img.dimensions() != (f.width, f.height) => {
                failed = true;
                format!("{}: {:?}, PIL {}x{}", f.file, img.dimensions(), f.width, f.height)
            }
            Ok(img) => {
                let d = diff(img.as_raw(), &want, f.width);
                let ok = d.max <= tol.max && d.mean <= tol.mean;
                failed |= !ok;
                let first = d.first.map_or(String::new(), |(x, y, g, w)| format!(", first at ({x}, {y}): {g:?} vs PIL {w:?}"));
                format!(
                    "{} {:18} {:9} max {} mean {:.3} ({} of {} pixels differ{first}); allowed max {} mean {} ({why})",
                    if ok { "ok  " } else { "FAIL" },
                    f.file,
                    f.rule,
                    d.max,
                    d.mean,
                    d.count,
                    f.width * f.height,
                    tol.max,
                    tol.mean
                )
            }
        };
        report.push(line);
    }
    let report = report.join("\n");
    println!("JPEG decoder: {}\n{report}", jpeg_decoder());
    assert!(!failed, "decoded pixels differ from PIL's (JPEG decoder: {}): see the FAIL lines above", jpeg_decoder());
}

/// 16-bit grey: the high byte of every sample (checked against numpy in the generator),
/// where PIL's convert('RGB') clips to 255 — a difference the fixtures really show.
#[test]
fn sixteen_bit_grey_keeps_the_high_byte_where_pil_clips() {
    let sixteen: Vec<Fixture> = fixtures().into_iter().filter(|f| f.rule == "high-byte").collect();
    let exts: Vec<&str> = sixteen.iter().filter_map(|f| f.file.rsplit('.').next()).collect();
    assert_eq!(exts, ["png", "tif", "pgm"]);
    for f in &sixteen {
        let got = decode_rgb(&dir().join(&f.file)).unwrap();
        assert!(got.as_raw() == &read(&format!("{}.rgb", f.file))[..], "{}: not the high byte", f.file);
        let pil = read(&format!("{}.pil.rgb", f.file));
        let white = pil.iter().filter(|&&v| v == 255).count();
        assert!(white * 10 > pil.len() * 9, "{}: PIL's clipped result is mostly white ({white} of {})", f.file, pil.len());
        let distinct: std::collections::BTreeSet<u8> = got.as_raw().iter().copied().collect();
        assert!(distinct.len() > 100, "{}: the high bytes span the range ({} levels)", f.file, distinct.len());
    }
}

/// Every extension torchvision lists has fixtures, and every fixture file is listed.
#[test]
fn fixtures_cover_every_listed_extension() {
    let list = fixtures();
    for ext in et_data::folder::IMG_EXTENSIONS {
        assert!(list.iter().any(|f| f.file.ends_with(ext)), "no fixture for {ext}");
    }
    for entry in std::fs::read_dir(dir()).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let base = name.trim_end_matches(".pil.rgb").trim_end_matches(".rgb");
        assert!(name == "manifest.txt" || list.iter().any(|f| f.file == base), "{name} is not in manifest.txt");
        if name != base || name == "manifest.txt" {
            continue;
        }
        assert!(et_data::folder::is_image_file(std::ffi::OsStr::new(&name)), "{name} has no listed extension");
    }
}

/// Cutting any fixture short never panics and never pads: every proper prefix is an error
/// or (a few trailing bytes after the pixel data, such as a PNG's IEND chunk) the same
/// pixels as the whole file. In a plain (ASCII) PNM, a cut inside the last number reads
/// as a shorter number, as it does in PIL: only the last pixel may differ there.
#[test]
fn truncated_files_are_errors_not_padded_images() {
    for f in fixtures() {
        let bytes = read(&f.file);
        let whole = decode_bytes(&bytes).unwrap();
        let mut accepted = 0;
        for n in 0..bytes.len() {
            let got = std::panic::catch_unwind(|| decode_bytes(&bytes[..n])).unwrap_or_else(|_| panic!("{}: decoding its first {n} bytes panicked", f.file));
            match got {
                Ok(img) => {
                    let plain_pnm = bytes.starts_with(b"P2") || bytes.starts_with(b"P3");
                    let same = if plain_pnm { img.dimensions() == whole.dimensions() && img.as_raw()[..img.as_raw().len() - 3] == whole.as_raw()[..whole.as_raw().len() - 3] } else { img == whole };
                    assert!(same, "{}: its first {n} of {} bytes decode to other pixels", f.file, bytes.len());
                    accepted += 1;
                }
                Err(e) => assert!(!e.is_empty() && !e.contains('\n'), "{}: {e:?}", f.file),
            }
        }
        assert!(accepted <= 8, "{}: {accepted} prefixes decode", f.file);
        assert!(decode_bytes(&bytes[..bytes.len() / 2]).is_err(), "{}: half the file decodes", f.file);
    }
}

/// The decoder name says which path this build took: the fallback when built with
/// `ET_NO_LIBJPEG=1`.
#[test]
fn jpeg_decoder_names_the_build() {
    let forced = option_env!("ET_NO_LIBJPEG").is_some_and(|v| v != "0");
    if forced {
        assert_eq!(jpeg_decoder(), "image (pure Rust)");
    }
    assert!(["libjpeg-turbo", "image (pure Rust)"].contains(&jpeg_decoder()));
    eprintln!("JPEG decoder: {}", jpeg_decoder());
}
