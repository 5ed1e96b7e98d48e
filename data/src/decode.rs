//! Decoding image files to 8-bit RGB, as torchvision's `pil_loader`
//! (`Image.open(f).convert('RGB')`) does, for every extension torchvision lists: JPEG,
//! PNG, WebP, BMP, TIFF, PPM and PGM (docs/training.md, "Image files", says how each
//! converts; data/tests/pil_formats.rs compares every form with PIL's pixels).
//!
//! The format is taken from the content, not the extension, because ImageNet-style
//! folders contain mislabelled files (PNGs and CMYK JPEGs named `.JPEG`). A file that
//! cannot be decoded completely is an error naming the path: PIL refuses truncated
//! images by default, and training on half-grey images silently would be worse than
//! stopping (or skipping, which the loader decides).
//!
//! JPEGs go through the system libjpeg-turbo when the crate was built with it (the
//! decoder inside Pillow, so pixels match PIL's), otherwise through the `image` crate.
//! `decode_crop` serves RandomResizedCrop: it decodes only the rows down to the crop's
//! bottom and, if asked, at a reduced DCT scale (PIL's `draft()` mechanism).

use crate::DataError;
use image::{DynamicImage, ImageFormat, ImageReader, RgbImage};
use std::io::Cursor;
use std::path::Path;

/// Which decoder takes YCbCr and grey JPEGs in this build: "libjpeg-turbo" (the system
/// library, as in Pillow: pixels equal PIL's) or "image (pure Rust)" (the fallback when the
/// build found no `jpeglib.h`, or `ET_NO_LIBJPEG=1`: another IDCT and upsampler, so pixels
/// may differ from PIL's by a few levels). CMYK and YCCK JPEGs take the `image` crate in
/// both.
pub fn jpeg_decoder() -> &'static str {
    if cfg!(et_libjpeg) {
        "libjpeg-turbo"
    } else {
        "image (pure Rust)"
    }
}

/// Reads and decodes `path` to RGB8.
pub fn decode_rgb(path: &Path) -> Result<RgbImage, DataError> {
    let bytes = std::fs::read(path).map_err(|source| DataError::Io { path: path.to_path_buf(), source })?;
    decode_bytes(&bytes).map_err(|reason| DataError::Decode { path: path.to_path_buf(), reason })
}

/// Decodes an in-memory file; the error is the reason only, the caller adds the path.
pub fn decode_bytes(bytes: &[u8]) -> Result<RgbImage, String> {
    let reader = ImageReader::new(Cursor::new(bytes)).with_guessed_format().map_err(|e| e.to_string())?;
    let format = reader.format().ok_or_else(|| {
        if bytes.is_empty() {
            "empty file".to_string()
        } else {
            "not an image (unrecognised content; JPEG, PNG, WebP, BMP, TIFF, PPM and PGM are supported)".to_string()
        }
    })?;
    if format == ImageFormat::Jpeg {
        // The JPEG decoders pad a truncated scan with grey instead of failing.
        check_jpeg_complete(bytes)?;
        #[cfg(et_libjpeg)]
        {
            let j = crate::jpeg::Jpeg::open(bytes)?;
            {
                let (w, h) = (j.width, j.height);
                let d = j.decode_window(1, [0, 0, w, h])?;
                let (sw, sh, columns) = (d.width, d.height, d.columns);
                let span = RgbImage::from_raw(sw, sh, d.rgb).ok_or_else(|| "JPEG decoder returned a short image".to_string())?;
                return Ok(if columns == (0, sw) { span } else { crate::pixels::crop(&span, 0, columns.0 as i64, sh, columns.1) });
            }
        }
    }
    let img = reader.decode().map_err(|e| describe(format, e))?;
    Ok(into_rgb8(img))
}

/// The `image` crate's error as one line that names the format: a file that ends early
/// reads "truncated", not the bare "failed to fill whole buffer".
fn describe(format: ImageFormat, e: image::ImageError) -> String {
    let name = match format {
        ImageFormat::Jpeg => "JPEG",
        ImageFormat::Png => "PNG",
        ImageFormat::WebP => "WebP",
        ImageFormat::Bmp => "BMP",
        ImageFormat::Tiff => "TIFF",
        ImageFormat::Pnm => "PNM",
        _ => "image",
    };
    let line = e.to_string().replace(['\n', '\r'], " ");
    match &e {
        image::ImageError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => format!("truncated {name} (the data ends before the image does)"),
        image::ImageError::Unsupported(_) => format!("unsupported {name} ({line})"),
        _ => format!("corrupt {name} ({line})"),
    }
}

/// A crop decoded for resampling: columns `columns.0..columns.0 + columns.1` of `img`
/// (the decoder may return a few more columns around them, to save a copy) are the whole
/// pixels covering the crop at 1/`denom` scale — the window — and `region` is the crop
/// itself in the window's coordinates (`[x0, y0, x1, y1]`, fractional when `denom > 1`).
#[derive(Clone, Debug)]
pub struct Cropped {
    pub img: RgbImage,
    pub columns: (u32, u32),
    pub region: [f64; 4],
    pub denom: u32,
}

impl Cropped {
    /// The window as an image of its own.
    pub fn window(&self) -> RgbImage {
        if self.columns == (0, self.img.width()) {
            return self.img.clone();
        }
        crate::pixels::crop(&self.img, 0, self.columns.0 as i64, self.img.height(), self.columns.1)
    }

    /// `resize_box(&self.window(), self.region, width, height, filter)` without copying
    /// the window out.
    pub fn resize(&self, width: u32, height: u32, filter: crate::resample::Filter) -> RgbImage {
        crate::resample::resize_window(&self.img, self.columns, self.region, width, height, filter)
    }
}

/// The largest DCT scale-down (1, 2, 4 or 8) that keeps a `crop_w x crop_h` crop at
/// least `out` pixels on each side, so that the resize after it never up-samples more
/// than a full-size decode would.
pub fn choose_denom(crop_w: u32, crop_h: u32, out: u32) -> u32 {
    [8u32, 4, 2].into_iter().find(|&d| crop_w as u64 >= d as u64 * out as u64 && crop_h as u64 >= d as u64 * out as u64).unwrap_or(1)
}

/// Maps the full-resolution crop `(top, left, height, width)` to an image decoded at
/// 1/`denom` scale of size `sw x sh`: returns the integer window `[x0, y0, x1, y1]` of
/// scaled pixels that covers it and the crop's fractional position inside that window.
/// Scaled pixel `i` covers full-resolution pixels `[i * denom, (i + 1) * denom)`.
pub fn scaled_window(crop: (u32, u32, u32, u32), denom: u32, sw: u32, sh: u32) -> ([u32; 4], [f64; 4]) {
    let (top, left, height, width) = crop;
    let d = denom.max(1) as f64;
    let f = [left as f64 / d, top as f64 / d, (left + width) as f64 / d, (top + height) as f64 / d];
    let x0 = (f[0].floor() as u32).min(sw);
    let y0 = (f[1].floor() as u32).min(sh);
    let x1 = (f[2].ceil() as u32).clamp(x0, sw);
    let y1 = (f[3].ceil() as u32).clamp(y0, sh);
    let (ww, wh) = ((x1 - x0) as f64, (y1 - y0) as f64);
    let region = [(f[0] - x0 as f64).clamp(0.0, ww), (f[1] - y0 as f64).clamp(0.0, wh), (f[2] - x0 as f64).clamp(0.0, ww), (f[3] - y0 as f64).clamp(0.0, wh)];
    ([x0, y0, x1, y1], region)
}

/// Decodes the crop that `plan` picks from the image size (`(top, left, height,
/// width)`, as `RandomResizedCrop::params`). With `reduce_to = Some(s)`, a JPEG whose
/// crop is at least twice `s` on both sides is decoded at the matching reduced DCT
/// scale (`choose_denom`); otherwise (and for other formats, or without libjpeg) the
/// crop is exact: `region` is then whole pixels covering all of `img`.
pub fn decode_crop(bytes: &[u8], reduce_to: Option<u32>, plan: impl FnOnce(u32, u32) -> (u32, u32, u32, u32)) -> Result<Cropped, String> {
    #[cfg(et_libjpeg)]
    if bytes.starts_with(&[0xFF, 0xD8]) {
        check_jpeg_complete(bytes)?;
        let j = crate::jpeg::Jpeg::open(bytes)?;
        {
            let (w, h) = (j.width, j.height);
            let crop = plan(w, h);
            let denom = reduce_to.map_or(1, |s| choose_denom(crop.3, crop.2, s));
            let (sw, sh) = (w.div_ceil(denom), h.div_ceil(denom));
            let (window, region) = scaled_window(crop, denom, sw, sh);
            let d = j.decode_window(denom, window)?;
            let img = RgbImage::from_raw(d.width, d.height, d.rgb).ok_or_else(|| "JPEG decoder returned a short image".to_string())?;
            return Ok(Cropped { img, columns: d.columns, region, denom });
        }
    }
    let _ = reduce_to;
    let full = decode_bytes(bytes)?;
    let (top, left, height, width) = plan(full.width(), full.height());
    let img = crate::pixels::crop(&full, top as i64, left as i64, height, width);
    Ok(Cropped { columns: (0, img.width()), img, region: [0.0, 0.0, width as f64, height as f64], denom: 1 })
}

/// Decodes the window `[x0, y0, x1, y1]` (clamped to the image) of a JPEG at 1/`denom`
/// scale through libjpeg, entropy-decoding with `csrc/ethuff.c` or, with
/// `libjpeg_entropy`, libjpeg's own decoder (to compare or time the two). Returns the
/// decoded span's RGB and whether `ethuff.c` decoded it (it takes only baseline scans);
/// `None` for files the libjpeg path does not take, or without libjpeg.
pub fn decode_jpeg_window(bytes: &[u8], denom: u32, window: [u32; 4], libjpeg_entropy: bool) -> Result<Option<(Vec<u8>, bool)>, String> {
    #[cfg(et_libjpeg)]
    if bytes.starts_with(&[0xFF, 0xD8]) {
        let j = crate::jpeg::Jpeg::open(bytes)?;
        {
            let j = if libjpeg_entropy { j.with_libjpeg_entropy() } else { j };
            let d = j.decode_window(denom, window)?;
            return Ok(Some((d.rgb, d.fast_entropy)));
        }
    }
    let _ = (bytes, denom, window, libjpeg_entropy);
    Ok(None)
}

/// Converts like PIL's `convert('RGB')`: grey is replicated, alpha is dropped (not
/// composited), palettes are expanded ignoring their transparency. 16-bit samples keep
/// their high byte, which is what PIL does for 16-bit RGB, RGBA and grey+alpha PNGs. For
/// 16-bit grey (PNG, TIFF, PGM) PIL's convert clips the values to 255 instead, which
/// whitens the image; the high byte is the faithful intent (and exactly what torchvision's
/// `decode_image` then `to_dtype(torch.uint8, scale=True)` gives), so there et-data
/// deliberately differs from PIL.
fn into_rgb8(img: DynamicImage) -> RgbImage {
    let high = |v: u16| (v >> 8) as u8;
    match img {
        DynamicImage::ImageRgb8(rgb) => rgb,
        DynamicImage::ImageLuma16(g) => {
            RgbImage::from_fn(g.width(), g.height(), |x, y| image::Rgb([high(g.get_pixel(x, y).0[0]); 3]))
        }
        DynamicImage::ImageLumaA16(g) => {
            RgbImage::from_fn(g.width(), g.height(), |x, y| image::Rgb([high(g.get_pixel(x, y).0[0]); 3]))
        }
        DynamicImage::ImageRgb16(c) => RgbImage::from_fn(c.width(), c.height(), |x, y| {
            let p = c.get_pixel(x, y).0;
            image::Rgb([high(p[0]), high(p[1]), high(p[2])])
        }),
        DynamicImage::ImageRgba16(c) => RgbImage::from_fn(c.width(), c.height(), |x, y| {
            let p = c.get_pixel(x, y).0;
            image::Rgb([high(p[0]), high(p[1]), high(p[2])])
        }),
        // 8-bit grey / alpha conversions are exact; floats are clamped and rounded.
        other => other.to_rgb8(),
    }
}

/// Walks the JPEG marker structure and requires an end-of-image marker after the
/// last scan. Bytes after EOI (camera trailers, padding) are allowed, as in libjpeg;
/// an EOI byte pair inside an embedded EXIF thumbnail is skipped with its segment.
fn check_jpeg_complete(b: &[u8]) -> Result<(), String> {
    const TRUNCATED: &str = "truncated JPEG (the data ends before the end-of-image marker)";
    if b.len() < 4 || b[0] != 0xFF || b[1] != 0xD8 {
        return Err("corrupt JPEG (no start-of-image marker)".into());
    }
    let mut i = 2;
    loop {
        // Skip anything up to the next marker prefix (libjpeg tolerates stray bytes),
        // then the fill bytes.
        i += memchr::memchr(0xFF, &b[i.min(b.len())..]).unwrap_or(b.len() - i.min(b.len()));
        while i < b.len() && b[i] == 0xFF {
            i += 1;
        }
        let Some(&marker) = b.get(i) else { return Err(TRUNCATED.into()) };
        i += 1;
        match marker {
            0xD9 => return Ok(()),
            // Stand-alone markers carry no length.
            0x00 | 0x01 | 0xD0..=0xD8 => continue,
            _ => {}
        }
        let len = match b.get(i..i + 2) {
            Some(l) => u16::from_be_bytes([l[0], l[1]]) as usize,
            None => return Err(TRUNCATED.into()),
        };
        if len < 2 || i + len > b.len() {
            return Err(TRUNCATED.into());
        }
        i += len;
        if marker == 0xDA {
            // Entropy-coded data runs until a marker other than a stuffed 0xFF00 or a
            // restart marker.
            loop {
                // memchr: the scan is most of the file, and 0xFF is rare in it.
                match memchr::memchr(0xFF, &b[i.min(b.len())..]) {
                    Some(k) => i += k,
                    None => return Err(TRUNCATED.into()),
                }
                match b.get(i + 1) {
                    Some(0x00 | 0xD0..=0xD7) => i += 2,
                    Some(0xFF) => i += 1,
                    Some(_) => break,
                    None => return Err(TRUNCATED.into()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("et-data-decode-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn sample(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 7) as u8, (y * 5) as u8, ((x ^ y) * 3) as u8]))
    }

    fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut buf = Cursor::new(Vec::new());
        img.write_to(&mut buf, format).unwrap();
        buf.into_inner()
    }

    fn assert_decode_error(r: Result<RgbImage, DataError>, path: &Path) {
        match r {
            Err(DataError::Decode { path: p, reason }) => {
                assert_eq!(p, path);
                let line = DataError::Decode { path: p, reason }.to_string();
                assert!(line.contains(&path.display().to_string()), "{line}");
                assert!(!line.contains(['\n', '\r']), "one line: {line:?}");
            }
            other => panic!("expected a decode error for {}, got {other:?}", path.display()),
        }
    }

    #[test]
    fn decodes_by_content_and_converts_to_rgb() {
        let dir = tempdir("ok");
        let img = sample(40, 30);
        // A PNG named .jpg decodes as PNG, losslessly.
        let p = dir.join("actually_png.jpg");
        std::fs::write(&p, encode(&DynamicImage::ImageRgb8(img.clone()), ImageFormat::Png)).unwrap();
        assert_eq!(decode_rgb(&p).unwrap(), img);
        // RGBA drops alpha; grey replicates.
        let rgba = DynamicImage::ImageRgba8(image::RgbaImage::from_pixel(3, 2, image::Rgba([10, 20, 30, 0])));
        let p = dir.join("rgba.png");
        std::fs::write(&p, encode(&rgba, ImageFormat::Png)).unwrap();
        assert!(decode_rgb(&p).unwrap().pixels().all(|q| q.0 == [10, 20, 30]));
        let grey = DynamicImage::ImageLuma8(image::GrayImage::from_pixel(3, 2, image::Luma([77])));
        let p = dir.join("grey.jpeg");
        std::fs::write(&p, encode(&grey, ImageFormat::Png)).unwrap();
        assert!(decode_rgb(&p).unwrap().pixels().all(|q| q.0 == [77, 77, 77]));
        let g16 = DynamicImage::ImageLuma16(image::ImageBuffer::from_pixel(2, 2, image::Luma([0x1234u16])));
        let p = dir.join("grey16.png");
        std::fs::write(&p, encode(&g16, ImageFormat::Png)).unwrap();
        assert!(decode_rgb(&p).unwrap().pixels().all(|q| q.0 == [0x12; 3]));
        // A complete JPEG, with trailing junk after EOI, is accepted.
        let mut jpg = encode(&DynamicImage::ImageRgb8(img), ImageFormat::Jpeg);
        jpg.extend_from_slice(&[0, 0, 0, 1, 2]);
        let p = dir.join("ok.JPEG");
        std::fs::write(&p, &jpg).unwrap();
        assert_eq!(decode_rgb(&p).unwrap().dimensions(), (40, 30));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn corrupt_files_name_their_path() {
        let dir = tempdir("bad");
        let jpg = encode(&DynamicImage::ImageRgb8(sample(64, 48)), ImageFormat::Jpeg);
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("half.jpg", jpg[..jpg.len() / 2].to_vec()),
            ("no_eoi.jpg", jpg[..jpg.len() - 2].to_vec()),
            ("zero_padded.jpg", [&jpg[..jpg.len() / 2], &[0u8; 512][..]].concat()),
            ("header_only.jpg", jpg[..20].to_vec()),
            ("text.jpg", b"this is not an image\n".to_vec()),
            ("empty.png", Vec::new()),
        ];
        let png = encode(&DynamicImage::ImageRgb8(sample(64, 48)), ImageFormat::Png);
        let cases = cases.into_iter().chain([("half.png", png[..png.len() / 2].to_vec())]);
        for (name, bytes) in cases {
            let p = dir.join(name);
            std::fs::write(&p, bytes).unwrap();
            assert_decode_error(decode_rgb(&p), &p);
        }
        // Every other listed format: garbage behind the right signature, and files cut
        // short, are errors naming the file (never a panic, never a padded image).
        let img = DynamicImage::ImageRgb8(sample(37, 21));
        let mut cases: Vec<(String, Vec<u8>)> = vec![
            ("garbage.webp".into(), b"this is not an image at all, only text\n".to_vec()),
            ("riff_garbage.webp".into(), [&b"RIFF\x40\x00\x00\x00WEBPVP8L"[..], &[0x5Au8; 52][..]].concat()),
            ("riff_lossy_garbage.webp".into(), [&b"RIFF\x40\x00\x00\x00WEBPVP8 "[..], &[0xA5u8; 52][..]].concat()),
            ("garbage.bmp".into(), [&b"BM"[..], &[0xFFu8; 60][..]].concat()),
            ("garbage.tif".into(), [&b"II*\x00\x08\x00\x00\x00"[..], &[0xFFu8; 60][..]].concat()),
            ("garbage.ppm".into(), b"P6\n99999999 99999999\n255\n\x01\x02".to_vec()),
            ("garbage.pgm".into(), b"P5\n-3 x\n255\n".to_vec()),
        ];
        for (ext, format) in [("webp", ImageFormat::WebP), ("bmp", ImageFormat::Bmp), ("tiff", ImageFormat::Tiff), ("ppm", ImageFormat::Pnm)] {
            let full = encode(&img, format);
            assert_eq!(decode_bytes(&full).unwrap(), img.to_rgb8(), "{ext} round trip");
            cases.push((format!("half.{ext}"), full[..full.len() / 2].to_vec()));
            cases.push((format!("one_byte_short.{ext}"), full[..full.len() - 1].to_vec()));
        }
        for (name, bytes) in cases {
            let p = dir.join(&name);
            std::fs::write(&p, bytes).unwrap();
            assert_decode_error(decode_rgb(&p), &p);
        }
        let missing = dir.join("missing.jpg");
        assert!(matches!(decode_rgb(&missing), Err(DataError::Io { path, .. }) if path == missing));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn every_proper_prefix_of_a_jpeg_is_incomplete() {
        let encoded = encode(&DynamicImage::ImageRgb8(sample(64, 48)), ImageFormat::Jpeg);
        let asset = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../assets/cifar10-mini/train/airplane/0000.jpg")).unwrap();
        for jpg in [encoded, asset] {
            assert!(check_jpeg_complete(&jpg).is_ok());
            for n in 0..jpg.len() {
                assert!(check_jpeg_complete(&jpg[..n]).is_err(), "prefix of {n} of {} bytes", jpg.len());
            }
            // Trailing bytes after the end-of-image marker are allowed, as in libjpeg.
            assert!(check_jpeg_complete(&[&jpg[..], &[0u8, 0xFF, 7][..]].concat()).is_ok());
        }
    }

    #[test]
    fn jpeg_structure_check_skips_embedded_eoi() {
        let jpg = encode(&DynamicImage::ImageRgb8(sample(16, 16)), ImageFormat::Jpeg);
        // An APP1 segment holding FF D9 (as an EXIF thumbnail would) before the frame.
        let app1 = [0xFF, 0xE1, 0x00, 0x06, 0xFF, 0xD9, 0xFF, 0xD9];
        let with_thumb = [&jpg[..2], &app1[..], &jpg[2..]].concat();
        assert!(check_jpeg_complete(&with_thumb).is_ok());
        let cut = [&jpg[..2], &app1[..], &jpg[2..jpg.len() / 2]].concat();
        assert!(check_jpeg_complete(&cut).is_err());
    }

    /// The training crop read straight from the file (windowed decode, resampled in
    /// place) equals the crop of the full decode, over many random boxes.
    #[test]
    fn decode_apply_equals_apply_on_the_full_decode() {
        let img = RgbImage::from_fn(300, 217, |x, y| {
            let v = |f: f64| (127.5 + 120.0 * f.sin()) as u8;
            image::Rgb([v(x as f64 / 5.0), v(y as f64 / 3.0), v((x * y) as f64 / 170.0)])
        });
        let dir = tempdir("rrc");
        let path = dir.join("a.jpg");
        std::fs::write(&path, encode(&DynamicImage::ImageRgb8(img), ImageFormat::Jpeg)).unwrap();
        let full = decode_rgb(&path).unwrap();
        for size in [224, 64] {
            let crop = crate::transform::RandomResizedCrop::new(size);
            for k in 0..40 {
                let want = crop.apply(&full, &mut crate::Rng::from_keys(&[k, size as u64]));
                let got = crop.decode_apply(&path, &mut crate::Rng::from_keys(&[k, size as u64]), false).unwrap();
                assert!(got == want, "size {size}, seed {k}");
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn denominator_keeps_the_crop_at_least_the_output_size() {
        assert_eq!(choose_denom(500, 375, 224), 1);
        assert_eq!(choose_denom(448, 448, 224), 2);
        assert_eq!(choose_denom(447, 900, 224), 1);
        assert_eq!(choose_denom(400, 390, 96), 4);
        assert_eq!(choose_denom(800, 768, 96), 8);
        assert_eq!(choose_denom(5000, 5000, 96), 8);
        assert_eq!(choose_denom(0, 0, 0), 8);
    }

    #[test]
    fn scaled_window_covers_the_crop() {
        // Exact scale: the window is the crop and the region all of it.
        assert_eq!(scaled_window((10, 20, 30, 40), 1, 100, 100), ([20, 10, 60, 40], [0.0, 0.0, 40.0, 30.0]));
        // Half scale: [21, 63) x [10, 41) full -> [10.5, 31.5) x [5, 20.5) scaled.
        let (win, r) = scaled_window((10, 21, 31, 42), 2, 50, 50);
        assert_eq!(win, [10, 5, 32, 21]);
        assert_eq!(r, [0.5, 0.0, 21.5, 15.5]);
        // A crop reaching the edge of an odd-sized image stays inside the scaled image.
        let (win, r) = scaled_window((0, 0, 101, 101), 4, 26, 26);
        assert_eq!(win, [0, 0, 26, 26]);
        assert_eq!(r, [0.0, 0.0, 25.25, 25.25]);
    }

    #[test]
    fn crop_decode_is_exact_without_reduction_and_close_with_it() {
        let img = RgbImage::from_fn(256, 192, |x, y| {
            let v = |f: f64| (127.5 + 120.0 * f.sin()) as u8;
            image::Rgb([v(x as f64 / 9.0), v(y as f64 / 7.0), v((x + y) as f64 / 13.0)])
        });
        let jpg = encode(&DynamicImage::ImageRgb8(img), ImageFormat::Jpeg);
        let full = decode_bytes(&jpg).unwrap();
        let box_ = (17, 33, 150, 161);
        let c = decode_crop(&jpg, None, |w, h| {
            assert_eq!((w, h), (256, 192));
            box_
        })
        .unwrap();
        assert_eq!(c.window(), crate::pixels::crop(&full, 17, 33, 150, 161));
        assert_eq!((c.denom, c.region), (1, [0.0, 0.0, 161.0, 150.0]));
        // Windows at image edges, iMCU boundaries and odd offsets (libjpeg decodes only
        // the columns around them): every pixel as in the full decode.
        for (top, left, h, w) in [(0, 0, 192, 256), (0, 0, 5, 7), (3, 1, 40, 16), (8, 16, 16, 16), (50, 100, 142, 156), (100, 240, 92, 16), (7, 15, 33, 17), (191, 255, 1, 1)] {
            let c = decode_crop(&jpg, None, |_, _| (top, left, h, w)).unwrap();
            assert_eq!(c.window(), crate::pixels::crop(&full, top as i64, left as i64, h, w), "window {top},{left} {h}x{w}");
            // Resampling the window in place equals resampling it copied out.
            let copied = crate::resample::resize_box(&c.window(), c.region, 37, 23, crate::resample::Filter::Bicubic);
            assert_eq!(c.resize(37, 23, crate::resample::Filter::Bicubic), copied, "window {top},{left} {h}x{w}");
        }
        // Output 32 from a 161x150 crop: 1/4 scale where libjpeg is available.
        let c = decode_crop(&jpg, Some(32), |_, _| box_).unwrap();
        let fast = c.resize(32, 32, crate::resample::Filter::Bicubic);
        let exact = crate::resample::resize(&crate::pixels::crop(&full, 17, 33, 150, 161), 32, 32, crate::resample::Filter::Bicubic);
        let mad = fast.as_raw().iter().zip(exact.as_raw()).map(|(&a, &b)| a.abs_diff(b) as f64).sum::<f64>() / fast.as_raw().len() as f64;
        assert!(mad < 3.0, "mean abs diff {mad} (denominator {})", c.denom);
        #[cfg(et_libjpeg)]
        assert_eq!(c.denom, 4);
    }
}
