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
