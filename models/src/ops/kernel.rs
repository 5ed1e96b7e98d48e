//! What every CPU custom op here shares: contiguous f32/f64 views of candle storages and
//! one dtype dispatch, so each op only writes its generic kernel.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, DType, Layout, Result, WithDType};

pub(crate) fn contiguous<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s.as_slice::<T>()?[a..b]),
        None => candle_core::bail!("{op}: inputs must be contiguous"),
    }
}

/// A kernel generic over the float type, applied to contiguous inputs of one dtype.
pub(crate) trait Kernel {
    const NAME: &'static str;
    fn run<T: WithDType>(&self, inputs: &[&[T]]) -> Vec<T>;
}

/// Runs `k` on the f32 or f64 data of `inputs` (the first input decides the dtype).
pub(crate) fn dispatch<K: Kernel>(k: &K, inputs: &[(&CpuStorage, &Layout)]) -> Result<CpuStorage> {
    fn views<'a, T: WithDType>(inputs: &[(&'a CpuStorage, &Layout)], op: &str) -> Result<Vec<&'a [T]>> {
        inputs.iter().map(|(s, l)| contiguous::<T>(s, l, op)).collect()
    }
    Ok(match inputs[0].0.dtype() {
        DType::F32 => f32::to_cpu_storage_owned(k.run(&views::<f32>(inputs, K::NAME)?)),
        DType::F64 => f64::to_cpu_storage_owned(k.run(&views::<f64>(inputs, K::NAME)?)),
        dt => candle_core::bail!("{}: unsupported dtype {dt:?}", K::NAME),
    })
}

/// A k×k window sliding over (n, c) planes of h×w with stride and symmetric padding: the
/// geometry of depthwise convolution and pooling.
#[derive(Clone, Copy, Debug)]
pub(crate) struct WindowGeom {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
    pub ho: usize,
    pub wo: usize,
}

impl WindowGeom {
    /// Output columns `ox` for which input column `ox*stride + kx - pad` lies inside the row.
    pub fn valid_cols(&self, kx: usize) -> (usize, usize) {
        let lo = if self.pad > kx { (self.pad - kx).div_ceil(self.stride) } else { 0 };
        let hi = if self.w + self.pad > kx { (self.w + self.pad - kx - 1) / self.stride + 1 } else { 0 };
        (lo, hi.min(self.wo))
    }

    /// Input row for output row `oy` and kernel row `ky`, if inside the image.
    pub fn input_row(&self, oy: usize, ky: usize) -> Option<usize> {
        let iy = (oy * self.stride + ky) as isize - self.pad as isize;
        (iy >= 0 && (iy as usize) < self.h).then_some(iy as usize)
    }
}
