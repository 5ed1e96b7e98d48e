//! Launches of the depthwise-convolution CUDA kernels (`cuda/depthwise.cu`, compiled to
//! PTX by build.rs) for the custom ops of [`super::depthwise`]: forward, input gradient,
//! and weight + bias gradients, on contiguous f32 or bf16 storages.

use super::cuda::{by_dtype, config, entry, grid_blocks, storage_dtype, view, Module, THREADS};
use super::kernel::WindowGeom as Geom;
use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, PushKernelArg};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::backend::BackendStorage;
use candle_core::{CudaStorage, Layout, Result, WithDType};

const MODULE: Module = Module { name: "et_depthwise", ptx: include_str!(concat!(env!("OUT_DIR"), "/depthwise.ptx")) };

#[derive(Clone, Copy)]
pub(crate) enum Kind {
    Forward,
    GradInput,
    GradWeight,
}

/// Runs one kernel on `inputs` (forward: x, w, b; grad input: dy, w; grad weight: dy, x)
/// and returns its output storage (`out_len` elements).
pub(crate) fn launch(kind: Kind, g: Geom, inputs: &[(&CudaStorage, &Layout)], out_len: usize) -> Result<CudaStorage> {
    let dtype = storage_dtype("depthwise conv", &inputs.iter().map(|(s, _)| *s).collect::<Vec<_>>())?;
    by_dtype!(dtype, run(kind, g, inputs, out_len))
}

fn run<T: CudaDType + DeviceRepr + WithDType>(kind: Kind, g: Geom, inputs: &[(&CudaStorage, &Layout)], out_len: usize) -> Result<CudaStorage> {
    let dev = inputs[0].0.device().clone();
    let name = match kind {
        Kind::Forward => "et_dw_fwd",
        Kind::GradInput => "et_dw_gin",
        Kind::GradWeight => "et_dw_gw",
    };
    let func = dev.get_or_load_custom_func(&entry::<T>(name), MODULE.name, MODULE.ptx)?;
    let views = inputs.iter().map(|(s, l)| view::<T>(s, l, "depthwise conv")).collect::<Result<Vec<_>>>()?;
    // SAFETY: every element is written by the kernel before it is read.
    let out = unsafe { dev.alloc::<T>(out_len)? };
    let blocks = match kind {
        // One block per (channel, tap) reduction, taps k² + 1 with the bias.
        Kind::GradWeight => (g.c * (g.k * g.k + 1)) as u32,
        _ => grid_blocks(out_len),
    };
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
    unsafe { b.launch(config(blocks, THREADS)) }.w()?;
    Ok(CudaStorage::wrap_cuda_slice(out, dev))
}
