//! Launches of the GELU CUDA kernels (`cuda/gelu.cu`) for the custom ops of [`super::gelu`]:
//! element-wise forward (x) and backward (x, dy).

use super::cuda::{by_dtype, config, entry, grid_blocks, storage_dtype, view, Module, THREADS};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, PushKernelArg};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{CudaStorage, Layout, Result, WithDType};

const MODULE: Module = Module { name: "et_gelu", ptx: include_str!(concat!(env!("OUT_DIR"), "/gelu.ptx")) };

pub(crate) fn launch(backward: bool, inputs: &[(&CudaStorage, &Layout)]) -> Result<CudaStorage> {
    let dtype = storage_dtype("gelu", &inputs.iter().map(|(s, _)| *s).collect::<Vec<_>>())?;
    by_dtype!(dtype, run(backward, inputs))
}

fn run<T: CudaDType + DeviceRepr + WithDType>(backward: bool, inputs: &[(&CudaStorage, &Layout)]) -> Result<CudaStorage> {
    let dev = inputs[0].0.device().clone();
    let len = inputs[0].1.shape().elem_count();
    let views = inputs.iter().map(|(s, l)| view::<T>(s, l, "gelu")).collect::<Result<Vec<_>>>()?;
    // SAFETY: the kernel writes every element.
    let out = unsafe { dev.alloc::<T>(len)? };
    let n = len as i64;
    let func = dev.get_or_load_custom_func(&entry::<T>(if backward { "et_gelu_bwd" } else { "et_gelu_fwd" }), MODULE.name, MODULE.ptx)?;
    let mut l = func.builder();
    for v in &views {
        l.arg(v);
    }
    l.arg(&out).arg(&n);
    // SAFETY: argument types and count match et_gelu_{fwd,bwd} in gelu.cu.
    unsafe { l.launch(config(grid_blocks(len), THREADS)) }.w()?;
    Ok(CudaStorage::wrap_cuda_slice(out, dev))
}
