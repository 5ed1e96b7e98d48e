//! Launches of the softmax CUDA kernels (`cuda/softmax.cu`) for the custom ops of
//! [`super::softmax`]: a block per row of the last axis, forward and backward.

use super::cuda::{by_dtype, config, entry, row_threads, storage_dtype, view, Module};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, PushKernelArg};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{CudaStorage, Layout, Result, WithDType};

const MODULE: Module = Module { name: "et_softmax", ptx: include_str!(concat!(env!("OUT_DIR"), "/softmax.ptx")) };

/// Forward: inputs (x); backward: (y, dy). Rows of `cols`.
pub(crate) fn launch(backward: bool, cols: usize, inputs: &[(&CudaStorage, &Layout)]) -> Result<CudaStorage> {
    let dtype = storage_dtype("softmax", &inputs.iter().map(|(s, _)| *s).collect::<Vec<_>>())?;
    by_dtype!(dtype, run(backward, cols, inputs))
}

fn run<T: CudaDType + DeviceRepr + WithDType>(backward: bool, cols: usize, inputs: &[(&CudaStorage, &Layout)]) -> Result<CudaStorage> {
    let dev = inputs[0].0.device().clone();
    let len = inputs[0].1.shape().elem_count();
    let views = inputs.iter().map(|(s, l)| view::<T>(s, l, "softmax")).collect::<Result<Vec<_>>>()?;
    // SAFETY: the kernel writes every element.
    let out = unsafe { dev.alloc::<T>(len)? };
    let (rows, cols32) = ((len / cols.max(1)) as i64, cols as i32);
    let func = dev.get_or_load_custom_func(&entry::<T>(if backward { "et_softmax_bwd" } else { "et_softmax_fwd" }), MODULE.name, MODULE.ptx)?;
    let mut l = func.builder();
    for v in &views {
        l.arg(v);
    }
    l.arg(&out).arg(&rows).arg(&cols32);
    // SAFETY: argument types and count match et_softmax_{fwd,bwd} in softmax.cu.
    unsafe { l.launch(config((rows as usize).clamp(1, 1 << 20) as u32, row_threads(cols))) }.w()?;
    Ok(CudaStorage::wrap_cuda_slice(out, dev))
}
