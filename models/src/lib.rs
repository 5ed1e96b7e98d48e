//! Models of efficienttrain-rs: parameters, the `Ops` abstraction that lets one model
//! definition run in candle (training, inference) and be written out as ONNX, fast ops
//! with correct gradients, the backbones (timm weight names) and their registry.

pub mod device;
pub mod error;
pub mod params;
pub mod pvt_v2;
pub mod ops;
pub mod layers;
pub mod caformer;
pub mod convnext;
pub mod cswin;
pub mod registry;
pub mod resnet;
pub mod run_config;
pub mod swin;
pub mod cpu;
pub mod vit;

pub use error::ModelError;
pub use ops::{CandleOps, Ops};
pub use params::ParamStore;
pub use registry::{create_model, Model, ModelOptions};
pub use run_config::RunConfig;
