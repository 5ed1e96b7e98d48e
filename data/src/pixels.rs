//! Pixel-level helpers that decoding, resampling and the transforms all build on.

use image::RgbImage;

/// Copies the `height x width` window at (`top`, `left`), filling what falls outside
/// the image with black, like PIL's `Image.crop`.
pub fn crop(img: &RgbImage, top: i64, left: i64, height: u32, width: u32) -> RgbImage {
    let (w, h) = (img.width() as i64, img.height() as i64);
    if top >= 0 && left >= 0 && top + height as i64 <= h && left + width as i64 <= w {
        // Inside the image (always, for RandomResizedCrop): copy rows.
        let (src, rw, cw) = (img.as_raw(), 3 * w as usize, 3 * width as usize);
        let mut out = Vec::with_capacity(cw * height as usize);
        for y in top as usize..top as usize + height as usize {
            let o = y * rw + 3 * left as usize;
            out.extend_from_slice(&src[o..o + cw]);
        }
        return RgbImage::from_raw(width, height, out).expect("sized by construction");
    }
    RgbImage::from_fn(width, height, |x, y| {
        let (sx, sy) = (left + x as i64, top + y as i64);
        if (0..w).contains(&sx) && (0..h).contains(&sy) {
            *img.get_pixel(sx as u32, sy as u32)
        } else {
            image::Rgb([0, 0, 0])
        }
    })
}
