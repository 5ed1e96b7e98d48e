//! What the launches of our CUDA kernels (`cuda/*.cu`, PTX from build.rs) share: contiguous
//! views of candle's storages, one storage dtype per launch (f32 or bf16: the kernels compute
//! in f32), launch shapes, and the functions of each PTX module.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, DeviceRepr, LaunchConfig};
use candle_core::cuda_backend::CudaDType;
use candle_core::{CudaStorage, DType, Layout, Result, WithDType};

/// Threads of a grid-stride launch, and the most of a block reduction (the kernels' shared
/// buffers hold 256).
pub(crate) const THREADS: u32 = 256;

/// A PTX module of ours: its name in candle's module cache and its text.
pub(crate) struct Module {
    pub name: &'static str,
    pub ptx: &'static str,
}

pub(crate) fn view<'a, T: CudaDType + DeviceRepr>(s: &'a CudaStorage, l: &Layout, op: &str) -> Result<CudaView<'a, T>> {
    let slice: &CudaSlice<T> = s.as_cuda_slice::<T>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(slice.slice(a..b)),
        None => candle_core::bail!("{op} (cuda): inputs must be contiguous"),
    }
}

/// The dtype all `inputs` share, which must be one the kernels are built for.
pub(crate) fn storage_dtype(op: &str, inputs: &[&CudaStorage]) -> Result<DType> {
    let dtype = inputs[0].dtype();
    if inputs.iter().any(|s| s.dtype() != dtype) {
        candle_core::bail!("{op} (cuda): mixed dtypes")
    }
    match dtype {
        DType::F32 | DType::BF16 => Ok(dtype),
        dt => candle_core::bail!("{op} (cuda): unsupported dtype {dt:?}"),
    }
}

/// The entry point of kernel `name` for storage `T` (`name_f32` or `name_bf16`).
pub(crate) fn entry<T: WithDType>(name: &str) -> String {
    let suffix = match T::DTYPE {
        DType::BF16 => "bf16",
        _ => "f32",
    };
    format!("{name}_{suffix}")
}

/// Blocks of [`THREADS`] for a grid-stride loop over `n` elements.
pub(crate) fn grid_blocks(n: usize) -> u32 {
    n.div_ceil(THREADS as usize).clamp(1, 65_535) as u32
}

/// Threads of a block that reduces rows of `len`: a power of two from 32 to [`THREADS`].
pub(crate) fn row_threads(len: usize) -> u32 {
    (len.next_power_of_two() as u32).clamp(32, THREADS)
}

pub(crate) fn config(blocks: u32, threads: u32) -> LaunchConfig {
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 }
}

/// Calls `$run::<T>($args)` with T the Rust type of the storage `$dtype` (f32 or bf16).
macro_rules! by_dtype {
    ($dtype:expr, $run:ident($($arg:expr),* $(,)?)) => {
        match $dtype {
            candle_core::DType::BF16 => $run::<half::bf16>($($arg),*),
            _ => $run::<f32>($($arg),*),
        }
    };
}
pub(crate) use by_dtype;
