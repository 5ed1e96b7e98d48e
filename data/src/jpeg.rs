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
    fn et_jpeg_start(j: *mut Handle, denom: c_uint, ow: *mut c_uint, oh: *mut c_uint, err: *mut c_char, errlen: usize) -> c_int;
    fn et_jpeg_crop(j: *mut Handle, x0: c_uint, x1: c_uint, span_w: *mut c_uint, x_in_span: *mut c_uint, err: *mut c_char, errlen: usize) -> c_int;
    fn et_jpeg_read_into(j: *mut Handle, y0: c_uint, y1: c_uint, dst: *mut u8, stride: usize, err: *mut c_char, errlen: usize) -> c_int;
    fn et_jpeg_close(j: *mut Handle);
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
    /// CMYK or YCCK: libjpeg cannot convert these to RGB; the caller does.
    Cmyk,
}

/// A JPEG whose header has been read; the borrowed bytes must outlive it.
pub struct Jpeg<'a> {
    handle: *mut Handle,
    pub width: u32,
    pub height: u32,
    pub model: Model,
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
        Ok(Jpeg { handle, width: w, height: h, model, _bytes: std::marker::PhantomData })
    }

    /// Decodes at 1/`denom` scale (1, 2, 4 or 8) the window `[x0, x1) x [y0, y1)` of the
    /// scaled image (clamped to it). libjpeg writes the rows straight into the returned
    /// buffer, which holds the decoded span: the window's rows, each as wide as the
    /// columns libjpeg decoded around it. Returns the span as `(width, height, RGB)` and
    /// the window's columns in it, `(first, count)`. Rows below the window are never
    /// decoded; rows above it are only entropy-decoded.
    pub fn decode_window(self, denom: u32, window: [u32; 4]) -> Result<(u32, u32, Vec<u8>, (u32, u32)), String> {
        let mut err = [0 as c_char; ERR_LEN];
        let (mut ow, mut oh) = (0, 0);
        // SAFETY: `handle` is a live handle from `open`, used by one thread at a time.
        if unsafe { et_jpeg_start(self.handle, denom, &mut ow, &mut oh, err.as_mut_ptr(), ERR_LEN) } != 0 {
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
        let stride = span_w as usize * 3;
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
        Ok((span_w, rows, out, (x_in_span, x1 - x0)))
    }
}

impl Drop for Jpeg<'_> {
    fn drop(&mut self) {
        // SAFETY: the handle came from `open` and is closed exactly once.
        unsafe { et_jpeg_close(self.handle) }
    }
}

// The handle owns libjpeg state that is not shared with anything else.
unsafe impl Send for Jpeg<'_> {}
