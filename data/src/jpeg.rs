//! Safe wrapper over `csrc/etjpeg.c`, the bridge to the system libjpeg-turbo (the decoder
//! Pillow ships), used for its bit-compatibility with PIL and its reduced-DCT decode.
//! Every call into the bridge reports libjpeg's fatal errors as a message instead of
//! exiting; nothing here panics on bad input.

use std::ffi::{c_char, c_int, c_uint, c_ulong};

#[repr(C)]
struct Handle {
    _opaque: [u8; 0],
}

extern "C" {
    fn et_jpeg_open(buf: *const u8, len: c_ulong, out: *mut *mut Handle, w: *mut c_uint, h: *mut c_uint, model: *mut c_int, err: *mut c_char, errlen: usize) -> c_int;
    fn et_jpeg_start(j: *mut Handle, denom: c_uint, fast_entropy: c_int, fast_used: *mut c_int, ow: *mut c_uint, oh: *mut c_uint, err: *mut c_char, errlen: usize) -> c_int;
    fn et_jpeg_crop(j: *mut Handle, x0: c_uint, x1: c_uint, span_w: *mut c_uint, x_in_span: *mut c_uint, err: *mut c_char, errlen: usize) -> c_int;
    fn et_jpeg_read_into(j: *mut Handle, y0: c_uint, y1: c_uint, dst: *mut u8, stride: usize, err: *mut c_char, errlen: usize) -> c_int;
    fn et_jpeg_close(j: *mut Handle);
    fn et_jpeg_encode(px: *const u8, w: c_uint, h: c_uint, ncomp: c_int, quality: c_int, h_samp: c_int, v_samp: c_int, restart: c_uint, optimize: c_int, progressive: c_int, out: *mut *mut u8, outlen: *mut c_ulong, err: *mut c_char, errlen: usize) -> c_int;
    fn et_jpeg_free(p: *mut u8);
}

const ERR_LEN: usize = 200;

fn message(buf: &[c_char; ERR_LEN]) -> String {
    let bytes: Vec<u8> = buf.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
    format!("corrupt JPEG ({})", String::from_utf8_lossy(&bytes))
}

/// Colour model of the coded data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Model {
    Grey,
    Rgb,
    /// CMYK or YCCK: decoded to CMYK (4 bytes a pixel, Adobe's inverted convention), which
    /// [`cmyk_to_rgb`] converts as PIL does.
    Cmyk,
}

/// PIL's reading of a CMYK JPEG (`CMYK;I`: libjpeg gives Adobe's inverted samples) and its
/// `convert('RGB')` (`cmyk2rgb`): each channel is (255 − k) − round(c·(255 − k)/255) with
/// c, k the un-inverted values, rounded as PIL's `MULDIV255`.
pub fn cmyk_to_rgb(cmyk: &[u8]) -> Vec<u8> {
    let muldiv255 = |a: u32, b: u32| {
        let t = a * b + 128;
        ((t >> 8) + t) >> 8
    };
    let mut rgb = Vec::with_capacity(cmyk.len() / 4 * 3);
    for px in cmyk.chunks_exact(4) {
        let nk = px[3] as u32; // 255 − k: the inverted sample is already that
        for &c in &px[..3] {
            rgb.push((nk - muldiv255(255 - c as u32, nk)) as u8);
        }
    }
    rgb
}

/// A decoded window: `width x height` RGB rows (the decoded span), of which columns
/// `columns.0 .. columns.0 + columns.1` are the window asked for.
pub struct Window {
    pub width: u32,
    pub height: u32,
    pub rgb: Vec<u8>,
    pub columns: (u32, u32),
    /// Whether `csrc/ethuff.c` entropy-decoded it (baseline scans) rather than libjpeg.
    pub fast_entropy: bool,
}

/// A JPEG whose header has been read; the borrowed bytes must outlive it.
pub struct Jpeg<'a> {
    handle: *mut Handle,
    pub width: u32,
    pub height: u32,
    pub model: Model,
    fast_entropy: bool,
    _bytes: std::marker::PhantomData<&'a [u8]>,
}

impl<'a> Jpeg<'a> {
    pub fn open(bytes: &'a [u8]) -> Result<Jpeg<'a>, String> {
        let (mut handle, mut w, mut h, mut model) = (std::ptr::null_mut(), 0, 0, 0);
        let mut err = [0 as c_char; ERR_LEN];
        // SAFETY: the bridge only reads `bytes` (kept alive by the lifetime) and writes
        // the out-parameters; on failure it frees what it allocated and returns -1.
        let rc = unsafe { et_jpeg_open(bytes.as_ptr(), bytes.len() as c_ulong, &mut handle, &mut w, &mut h, &mut model, err.as_mut_ptr(), ERR_LEN) };
        if rc != 0 || handle.is_null() {
            return Err(message(&err));
        }
        let model = match model {
            1 => Model::Grey,
            3 => Model::Rgb,
            _ => Model::Cmyk,
        };
        Ok(Jpeg { handle, width: w, height: h, model, fast_entropy: fast_entropy_default(), _bytes: std::marker::PhantomData })
    }

    /// Entropy-decodes with libjpeg's own Huffman decoder instead of `csrc/ethuff.c` (to
    /// compare the two: their coefficients, hence pixels, are the same).
    pub fn with_libjpeg_entropy(mut self) -> Self {
        self.fast_entropy = false;
        self
    }

    /// Decodes at 1/`denom` scale (1, 2, 4 or 8) the window `[x0, x1) x [y0, y1)` of the
    /// scaled image (clamped to it). libjpeg writes the rows straight into the returned
    /// buffer, which holds the decoded span: the window's rows, each as wide as the
    /// columns libjpeg decoded around it. Rows below the window are never decoded; rows
    /// above it are only entropy-decoded.
    pub fn decode_window(self, denom: u32, window: [u32; 4]) -> Result<Window, String> {
        let mut err = [0 as c_char; ERR_LEN];
        let (mut ow, mut oh, mut fast_used) = (0, 0, 0);
        // SAFETY: `handle` is a live handle from `open`, used by one thread at a time.
        if unsafe { et_jpeg_start(self.handle, denom, self.fast_entropy as c_int, &mut fast_used, &mut ow, &mut oh, err.as_mut_ptr(), ERR_LEN) } != 0 {
            return Err(message(&err));
        }
        let [x0, y0, x1, y1] = window;
        let (x1, y1) = (x1.min(ow), y1.min(oh));
        let (x0, y0) = (x0.min(x1), y0.min(y1));
        let (mut span_w, mut x_in_span) = (0, 0);
        // SAFETY: as above; the bridge only writes the two out-parameters.
        if unsafe { et_jpeg_crop(self.handle, x0, x1, &mut span_w, &mut x_in_span, err.as_mut_ptr(), ERR_LEN) } != 0 {
            return Err(message(&err));
        }
        if x_in_span + (x1 - x0) > span_w {
            return Err(format!("corrupt JPEG (decoder span of {span_w} columns misses the window)"));
        }
        let rows = y1 - y0;
        let stride = span_w as usize * if self.model == Model::Cmyk { 4 } else { 3 };
        let len = stride * rows as usize;
        let mut out: Vec<u8> = Vec::with_capacity(len);
        // SAFETY: the bridge writes exactly `rows` rows of `stride` bytes into `out`'s
        // capacity before returning 0; only then is the length set.
        unsafe {
            if et_jpeg_read_into(self.handle, y0, y1, out.as_mut_ptr(), stride, err.as_mut_ptr(), ERR_LEN) != 0 {
                return Err(message(&err));
            }
            out.set_len(len);
        }
        let rgb = if self.model == Model::Cmyk { cmyk_to_rgb(&out) } else { out };
        Ok(Window { width: span_w, height: rows, rgb, columns: (x_in_span, x1 - x0), fast_entropy: fast_used != 0 })
    }
}

/// Test images for the decoders, encoded by libjpeg: `px` holds `w x h` samples of
/// `ncomp` (1 or 3) channels; `samp` is luma's (h, v) sampling factor; `restart` the
/// restart interval in MCUs (0: none).
#[doc(hidden)]
pub fn encode(px: &[u8], w: u32, h: u32, ncomp: u32, quality: i32, samp: (i32, i32), restart: u32, optimize: bool, progressive: bool) -> Result<Vec<u8>, String> {
    if px.len() != (w as usize) * (h as usize) * (ncomp as usize) || !(ncomp == 1 || ncomp == 3) {
        return Err(format!("{} samples for {w}x{h}x{ncomp}", px.len()));
    }
    let (mut out, mut len) = (std::ptr::null_mut(), 0 as c_ulong);
    let mut err = [0 as c_char; ERR_LEN];
    // SAFETY: `px` holds the w*h*ncomp samples libjpeg reads; on success `out` is a
    // malloc'd buffer of `len` bytes, copied and then freed once.
    unsafe {
        if et_jpeg_encode(px.as_ptr(), w, h, ncomp as c_int, quality, samp.0, samp.1, restart, optimize as c_int, progressive as c_int, &mut out, &mut len, err.as_mut_ptr(), ERR_LEN) != 0 {
            return Err(message(&err));
        }
        let v = std::slice::from_raw_parts(out, len as usize).to_vec();
        et_jpeg_free(out);
        Ok(v)
    }
}

/// `ET_JPEG_ENTROPY=libjpeg` makes every decode use libjpeg's Huffman decoder (for A/B
/// timing and as an escape hatch); read once.
fn fast_entropy_default() -> bool {
    static FAST: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FAST.get_or_init(|| std::env::var("ET_JPEG_ENTROPY").map_or(true, |v| v != "libjpeg"))
}

impl Drop for Jpeg<'_> {
    fn drop(&mut self) {
        // SAFETY: the handle came from `open` and is closed exactly once.
        unsafe { et_jpeg_close(self.handle) }
    }
}

// The handle owns libjpeg state that is not shared with anything else.
unsafe impl Send for Jpeg<'_> {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Rng;

    /// Gradients, hard edges and a patch of noise: short and long Huffman codes, runs and
    /// (at high quality) coefficients whose values do not fit the fast tables.
    fn picture(w: u32, h: u32, ncomp: u32, seed: u64) -> Vec<u8> {
        let mut rng = Rng::from_keys(&[seed]);
        let mut v = Vec::with_capacity((w * h * ncomp) as usize);
        for y in 0..h {
            for x in 0..w {
                for c in 0..ncomp {
                    let smooth = ((x * 3 + y * 2 + c * 40) % 256) as u8;
                    v.push(if x > w / 2 && y > h / 3 {
                        rng.next_u64() as u8
                    } else if (x / 7 + y / 5) % 2 == 0 {
                        smooth
                    } else {
                        255 - smooth
                    });
                }
            }
        }
        v
    }

    fn both(bytes: &[u8], denom: u32, window: [u32; 4]) -> (Window, Window) {
        let fast = Jpeg::open(bytes).unwrap().decode_window(denom, window).unwrap();
        let reference = Jpeg::open(bytes).unwrap().with_libjpeg_entropy().decode_window(denom, window).unwrap();
        assert!(!reference.fast_entropy);
        (fast, reference)
    }

    /// csrc/ethuff.c yields libjpeg's coefficients, hence its pixels bit for bit: grey and
    /// colour, every chroma subsampling, restart intervals (one MCU, odd counts), standard
    /// and optimised tables, qualities up to 100, odd sizes, full decodes and windows at
    /// every DCT scale (rows above a window go through the discarding path).
    #[test]
    fn fast_entropy_decoder_equals_libjpegs() {
        let mut cases = 0;
        for (k, &(w, h)) in [(1u32, 1u32), (17, 9), (64, 48), (203, 157)].iter().enumerate() {
            for ncomp in [1u32, 3] {
                let px = picture(w, h, ncomp, k as u64);
                let samplings: &[(i32, i32)] = if ncomp == 1 { &[(1, 1)] } else { &[(1, 1), (2, 1), (1, 2), (2, 2)] };
                for &samp in samplings {
                    for (restart, optimize, quality) in [(0u32, false, 75), (1, true, 100), (7, false, 95), (0, true, 30)] {
                        let jpg = encode(&px, w, h, ncomp, quality, samp, restart, optimize, false).unwrap();
                        for denom in [1u32, 2, 4, 8] {
                            let (sw, sh) = (w.div_ceil(denom), h.div_ceil(denom));
                            for window in [[0, 0, sw, sh], [sw / 3, sh / 2, sw, sh], [sw / 4, sh / 5, sw / 2 + 1, sh / 2 + 1]] {
                                let (a, b) = both(&jpg, denom, window);
                                assert!(a.fast_entropy, "baseline scans take the fast decoder");
                                let what = format!("{w}x{h}x{ncomp} sampling {samp:?} restart {restart} optimised {optimize} q{quality} 1/{denom} window {window:?}");
                                assert_eq!((a.width, a.height, a.columns), (b.width, b.height, b.columns), "{what}");
                                assert!(a.rgb == b.rgb, "{what}");
                                cases += 1;
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(cases, 4 * 5 * 4 * 4 * 3);
    }

    /// Progressive files stay with libjpeg's decoder (the fast one is baseline only).
    #[test]
    fn progressive_files_keep_libjpegs_decoder() {
        let px = picture(40, 30, 3, 5);
        let jpg = encode(&px, 40, 30, 3, 90, (2, 2), 0, false, true).unwrap();
        let (a, b) = both(&jpg, 1, [0, 0, 40, 30]);
        assert!(!a.fast_entropy);
        assert!(a.rgb == b.rgb);
    }

    /// Damaged scans: never a crash or a read past the data, and the same recovery as
    /// libjpeg's decoder: a scan cut short (the rest of the file intact), a restart
    /// marker with the wrong number, flipped bytes (invalid codes, runs past the block,
    /// stray markers).
    #[test]
    fn damaged_scans_are_survived() {
        let (w, h) = (96u32, 64u32);
        let px = picture(w, h, 3, 9);
        for restart in [0u32, 2] {
            let jpg = encode(&px, w, h, 3, 95, (2, 2), restart, true, false).unwrap();
            let sos = jpg.windows(2).position(|m| m == [0xFF, 0xDA]).unwrap();
            let scan = sos + 2 + u16::from_be_bytes([jpg[sos + 2], jpg[sos + 3]]) as usize;
            let eoi = jpg.len() - 2;
            // Cut: the scan's first half, then EOI.
            let cut = [&jpg[..scan + (eoi - scan) / 2], &[0xFF, 0xD9][..]].concat();
            let (a, b) = both(&cut, 1, [0, 0, w, h]);
            assert!(a.fast_entropy && a.rgb == b.rgb, "cut scan, restart {restart}");
            if restart > 0 {
                // The second restart marker renumbered: libjpeg's resynchronisation.
                let mut bad = jpg.clone();
                let rst: Vec<usize> = (scan..eoi).filter(|&i| bad[i] == 0xFF && (0xD0..=0xD7).contains(&bad[i + 1])).collect();
                assert!(rst.len() > 3);
                bad[rst[1] + 1] = 0xD0 + (bad[rst[1] + 1] - 0xD0 + 3) % 8;
                let (a, b) = both(&bad, 1, [0, 0, w, h]);
                assert!(a.fast_entropy && a.rgb == b.rgb, "renumbered restart marker");
            }
            let mut rng = Rng::from_keys(&[restart as u64]);
            for trial in 0..200 {
                let mut bad = jpg.clone();
                for _ in 0..1 + trial % 4 {
                    let i = scan + rng.below(eoi - scan);
                    bad[i] = rng.next_u64() as u8;
                }
                for denom in [1, 4] {
                    let (sw, sh) = (w.div_ceil(denom), h.div_ceil(denom));
                    let a = Jpeg::open(&bad).and_then(|j| j.decode_window(denom, [0, 0, sw, sh]));
                    let b = Jpeg::open(&bad).and_then(|j| j.with_libjpeg_entropy().decode_window(denom, [0, 0, sw, sh]));
                    match (a, b) {
                        (Ok(a), Ok(b)) => {
                            assert_eq!((a.width, a.height, a.rgb.len()), (sw, sh, (sw * sh * 3) as usize));
                            assert!(a.rgb == b.rgb, "restart {restart}, trial {trial}, 1/{denom}");
                        }
                        (Err(_), Err(_)) => {}
                        (a, b) => panic!("restart {restart}, trial {trial}: {:?} vs {:?}", a.map(|w| w.width), b.map(|w| w.width)),
                    }
                }
            }
        }
    }
}
