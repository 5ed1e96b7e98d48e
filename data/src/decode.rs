//! Decoding image files to 8-bit RGB, as torchvision's `pil_loader`
//! (`Image.open(f).convert('RGB')`) does.
//!
//! The format is taken from the content, not the extension, because ImageNet-style
//! folders contain mislabelled files (PNGs and CMYK JPEGs named `.JPEG`). A file that
//! cannot be decoded completely is an error naming the path: PIL refuses truncated
//! images by default, and training on half-grey images silently would be worse than
//! stopping (or skipping, which the loader decides).

use crate::DataError;
use image::{DynamicImage, ImageFormat, ImageReader, RgbImage};
use std::io::Cursor;
use std::path::Path;

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
            "not an image (unrecognised content; JPEG and PNG are supported)".to_string()
        }
    })?;
    if format == ImageFormat::Jpeg {
        // The JPEG decoder pads a truncated scan with grey instead of failing.
        check_jpeg_complete(bytes)?;
    }
    let img = reader.decode().map_err(|e| e.to_string())?;
    Ok(into_rgb8(img))
}

/// Converts like PIL's `convert('RGB')`: grey is replicated, alpha is dropped (not
/// composited). 16-bit samples keep their high byte, which is what PIL does for
/// 16-bit RGB PNGs (for 16-bit grey PIL clips instead, which whitens the image; the
/// high byte is the faithful intent).
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
        while i < b.len() && b[i] != 0xFF {
            i += 1;
        }
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
                match (b.get(i), b.get(i + 1)) {
                    (Some(0xFF), Some(0x00 | 0xD0..=0xD7)) => i += 2,
                    (Some(0xFF), Some(0xFF)) => i += 1,
                    (Some(0xFF), Some(_)) => break,
                    (Some(_), _) => i += 1,
                    (None, _) => return Err(TRUNCATED.into()),
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
                assert!(DataError::Decode { path: p, reason }.to_string().contains(&path.display().to_string()));
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
        let missing = dir.join("missing.jpg");
        assert!(matches!(decode_rgb(&missing), Err(DataError::Io { path, .. }) if path == missing));
        let _ = std::fs::remove_dir_all(&dir);
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
}
