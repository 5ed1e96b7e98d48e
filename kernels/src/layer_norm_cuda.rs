//! Launches of the LayerNorm CUDA kernels (`cuda/layer_norm.cu`) for the custom ops of
//! [`super::layer_norm`]: the forward, and the backward that writes [dx, dw, db] into one
//! buffer as the CPU kernel does. A last-axis norm (inner = 1) runs a block per row; a
//! channels-first one a thread per (image, position).

use super::cuda::{by_dtype, config, entry, grid_blocks, row_threads, storage_dtype, view, Module, THREADS};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, PushKernelArg};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{CudaStorage, Layout, Result, WithDType};

const MODULE: Module = Module { name: "et_layer_norm", ptx: include_str!(concat!(env!("OUT_DIR"), "/layer_norm.ptx")) };

/// The normalised axis: `c` channels, `inner` elements apart (1 for the last axis).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Axis {
    pub c: usize,
    pub inner: usize,
}

/// Rows (inner = 1) or columns (inner > 1) per block, capped: the kernels loop over the rest.
fn row_blocks(rows: usize) -> u32 {
    rows.clamp(1, 1 << 20) as u32
}

/// Slices of the columns that the weight and bias gradients are summed over in parallel:
/// enough that each thread adds some 32 columns, at most 128.
fn slices(cols: usize, per_block: usize) -> usize {
    cols.div_ceil(per_block * 32).clamp(1, 128)
}

pub(crate) fn forward(a: Axis, eps: f64, x: (&CudaStorage, &Layout), w: (&CudaStorage, &Layout), b: (&CudaStorage, &Layout)) -> Result<CudaStorage> {
    let dtype = storage_dtype("layer norm", &[x.0, w.0, b.0])?;
    by_dtype!(dtype, run_forward(a, eps, x, w, b))
}

fn run_forward<T: CudaDType + DeviceRepr + WithDType>(a: Axis, eps: f64, x: (&CudaStorage, &Layout), w: (&CudaStorage, &Layout), b: (&CudaStorage, &Layout)) -> Result<CudaStorage> {
    let dev = x.0.device().clone();
    let len = x.1.shape().elem_count();
    let (xv, wv, bv) = (view::<T>(x.0, x.1, "layer norm")?, view::<T>(w.0, w.1, "layer norm")?, view::<T>(b.0, b.1, "layer norm")?);
    // SAFETY: the kernel writes every element.
    let y = unsafe { dev.alloc::<T>(len)? };
    let (outer, c, inner, eps) = ((len / (a.c * a.inner).max(1)) as i64, a.c as i32, a.inner as i64, eps as f32);
    let cfg = if a.inner == 1 { config(row_blocks(outer as usize), row_threads(a.c)) } else { config(grid_blocks(len / a.c.max(1)), THREADS) };
    let func = dev.get_or_load_custom_func(&entry::<T>(if a.inner == 1 { "et_ln_rows_fwd" } else { "et_ln_cols_fwd" }), MODULE.name, MODULE.ptx)?;
    let mut l = func.builder();
    l.arg(&xv).arg(&wv).arg(&bv).arg(&y).arg(&outer).arg(&c);
    if a.inner > 1 {
        l.arg(&inner);
    }
    l.arg(&eps);
    // SAFETY: argument types and count match et_ln_{rows,cols}_fwd in layer_norm.cu.
    unsafe { l.launch(cfg) }.w()?;
    Ok(CudaStorage::wrap_cuda_slice(y, dev))
}

/// (x, w, dy) → [dx, dw, db] flattened.
pub(crate) fn backward(a: Axis, eps: f64, x: (&CudaStorage, &Layout), w: (&CudaStorage, &Layout), dy: (&CudaStorage, &Layout)) -> Result<CudaStorage> {
    let dtype = storage_dtype("layer norm grad", &[x.0, w.0, dy.0])?;
    by_dtype!(dtype, run_backward(a, eps, x, w, dy))
}

fn run_backward<T: CudaDType + DeviceRepr + WithDType>(a: Axis, eps: f64, x: (&CudaStorage, &Layout), w: (&CudaStorage, &Layout), dy: (&CudaStorage, &Layout)) -> Result<CudaStorage> {
    let dev = x.0.device().clone();
    let len = x.1.shape().elem_count();
    let cols = len / a.c.max(1);
    let (xv, wv, gv) = (view::<T>(x.0, x.1, "layer norm grad")?, view::<T>(w.0, w.1, "layer norm grad")?, view::<T>(dy.0, dy.1, "layer norm grad")?);
    // SAFETY: the three kernels below write every element of `out`, `stats` and `partial`.
    let mut out = unsafe { dev.alloc::<T>(len + 2 * a.c)? };
    let stats = unsafe { dev.alloc::<f32>(2 * cols)? };
    let rows = a.inner == 1;
    let (lanes, groups) = if rows { ((THREADS / 32) as usize, a.c.div_ceil(32)) } else { (THREADS as usize, a.c) };
    let p = slices(cols, lanes);
    let partial = unsafe { dev.alloc::<f32>(p * 2 * a.c)? };
    let (outer, c, inner, eps, p32, n2c) = ((cols / a.inner.max(1)) as i64, a.c as i32, a.inner as i64, eps as f32, p as i32, (2 * a.c) as i32);
    let name = |base: &str| entry::<T>(&format!("et_ln_{}_{base}", if rows { "rows" } else { "cols" }));
    {
        let func = dev.get_or_load_custom_func(&name("bwd"), MODULE.name, MODULE.ptx)?;
        let mut dx = out.slice_mut(..len);
        let mut l = func.builder();
        l.arg(&xv).arg(&wv).arg(&gv).arg(&mut dx).arg(&stats).arg(&outer).arg(&c);
        if !rows {
            l.arg(&inner);
        }
        l.arg(&eps);
        let cfg = if rows { config(row_blocks(cols), row_threads(a.c)) } else { config(grid_blocks(cols), THREADS) };
        // SAFETY: argument types and count match et_ln_{rows,cols}_bwd in layer_norm.cu.
        unsafe { l.launch(cfg) }.w()?;
    }
    {
        let func = dev.get_or_load_custom_func(&name("pgrad"), MODULE.name, MODULE.ptx)?;
        let mut l = func.builder();
        l.arg(&xv).arg(&gv).arg(&stats).arg(&partial).arg(&outer).arg(&c);
        if !rows {
            l.arg(&inner);
        }
        l.arg(&p32);
        // SAFETY: argument types and count match et_ln_{rows,cols}_pgrad in layer_norm.cu.
        unsafe { l.launch(config((groups * p) as u32, THREADS)) }.w()?;
    }
    {
        let func = dev.get_or_load_custom_func(&entry::<T>("et_ln_pgrad_sum"), MODULE.name, MODULE.ptx)?;
        let mut params = out.slice_mut(len..);
        let mut l = func.builder();
        l.arg(&partial).arg(&mut params).arg(&n2c).arg(&p32);
        // SAFETY: argument types and count match et_ln_pgrad_sum in layer_norm.cu.
        unsafe { l.launch(config(grid_blocks(2 * a.c), THREADS)) }.w()?;
    }
    Ok(CudaStorage::wrap_cuda_slice(out, dev))
}
