//! Launches of the depthwise-convolution CUDA kernels (`cuda/depthwise.cu`, compiled to
//! PTX by build.rs) for the custom ops of [`super::depthwise`]: forward, input gradient,
//! and weight + bias gradients, on contiguous f32 or bf16 storages.

use super::kernel::WindowGeom as Geom;
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{CudaDevice, CudaStorage, DType, Layout, Result};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/depthwise.ptx"));
const MODULE: &str = "et_depthwise";
const THREADS: u32 = 256;

#[derive(Clone, Copy)]
pub(crate) enum Kind {
    Forward,
    GradInput,
    GradWeight,
}

fn view<'a, T: CudaDType + DeviceRepr>(s: &'a CudaStorage, l: &Layout, what: &str) -> Result<candle_core::cuda_backend::cudarc::driver::CudaView<'a, T>> {
    let slice: &CudaSlice<T> = s.as_cuda_slice::<T>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(slice.slice(a..b)),
        None => candle_core::bail!("depthwise conv (cuda): {what} must be contiguous"),
    }
}

/// Runs one kernel on `inputs` (forward: x, w, b; grad input: dy, w; grad weight: dy, x)
/// and returns its output storage (`out_len` elements).
pub(crate) fn launch(kind: Kind, g: Geom, inputs: &[(&CudaStorage, &Layout)], out_len: usize) -> Result<CudaStorage> {
    let dtype = inputs[0].0.dtype();
    if inputs.iter().any(|(s, _)| s.dtype() != dtype) {
        candle_core::bail!("depthwise conv (cuda): mixed dtypes")
    }
    let dev = inputs[0].0.device().clone();
    match dtype {
        DType::F32 => run::<f32>(kind, g, inputs, out_len, &dev, "f32"),
        DType::BF16 => run::<half::bf16>(kind, g, inputs, out_len, &dev, "bf16"),
        dt => candle_core::bail!("depthwise conv (cuda): unsupported dtype {dt:?}"),
    }
}

fn run<T: CudaDType + DeviceRepr>(kind: Kind, g: Geom, inputs: &[(&CudaStorage, &Layout)], out_len: usize, dev: &CudaDevice, suffix: &str) -> Result<CudaStorage> {
    let name = match kind {
        Kind::Forward => "et_dw_fwd",
        Kind::GradInput => "et_dw_gin",
        Kind::GradWeight => "et_dw_gw",
    };
    let func = dev.get_or_load_custom_func(&format!("{name}_{suffix}"), MODULE, PTX)?;
    let views = inputs.iter().enumerate().map(|(i, (s, l))| view::<T>(s, l, &format!("input {i}"))).collect::<Result<Vec<_>>>()?;
    // SAFETY: every element is written by the kernel before it is read.
    let out = unsafe { dev.alloc::<T>(out_len)? };
    let blocks = match kind {
        // One block per (channel, tap) reduction, taps k² + 1 with the bias.
        Kind::GradWeight => (g.c * (g.k * g.k + 1)) as u32,
        // Grid-stride loops: enough blocks to fill the GPU, capped.
        _ => out_len.div_ceil(THREADS as usize).clamp(1, 65_535) as u32,
    };
    let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
    let dims: [i32; 9] = [g.n, g.c, g.h, g.w, g.k, g.stride, g.pad, g.ho, g.wo].map(|v| v as i32);
    let mut b = func.builder();
    for v in &views {
        b.arg(v);
    }
    b.arg(&out);
    for d in &dims {
        b.arg(d);
    }
    // SAFETY: argument types and count match the kernel signatures of depthwise.cu.
    unsafe { b.launch(cfg) }.w()?;
    Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
}
