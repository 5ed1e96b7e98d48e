//! The op layer of efficienttrain-rs: [`CandleOps`], the candle back-end of the `Ops` trait
//! that every model is written against (et-ops), with its hand-written CPU kernels and their
//! own gradient tape, CUDA kernels (depthwise convolution, LayerNorm, softmax, GELU), the
//! portable compositions of candle ops that run on CUDA and in bf16, and where a run computes
//! (`--device`, `--precision`, the compute threads).
//!
//! Every kernel's gradient is checked against f64 central differences in its own tests.

pub mod add;
mod candle;
pub mod attention;
pub mod attention_packed;
pub mod batch_norm;
pub mod conv;
pub mod cpu;
#[cfg(feature = "cuda")]
mod cuda;
pub mod depthwise;
#[cfg(feature = "cuda")]
mod depthwise_cuda;
pub mod depthwise_nhwc;
pub mod device;
pub mod gelu;
#[cfg(feature = "cuda")]
mod gelu_cuda;
mod kernel;
pub mod layer_norm;
#[cfg(feature = "cuda")]
mod layer_norm_cuda;
pub mod linear;
pub mod max_pool;
pub mod pointwise;
pub mod portable;
mod profile;
pub mod relu;
pub mod scale;
mod simd;
pub mod softmax;
#[cfg(feature = "cuda")]
mod softmax_cuda;
pub mod star_relu;
pub mod tape;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod transpose;
pub mod window;

pub use self::candle::CandleOps;
pub use et_ops::{conv2d_tokens_via_map, window_partition_composed, window_reverse_composed, ConvGeom, Ops};
