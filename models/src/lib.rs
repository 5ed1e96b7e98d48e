//! The model zoo of efficienttrain-rs: seven backbone families written once against the
//! `Ops` trait (et-ops) with timm's weight names, their registry, parameters and weight I/O,
//! and the `config.json` of a run.

pub mod caformer;
pub mod cast;
pub mod convnext;
pub mod cswin;
pub mod error;
pub mod family;
pub mod layers;
pub mod params;
pub mod pvt_v2;
pub mod registry;
pub mod resnet;
pub mod run_config;
pub mod swin;
#[cfg(test)]
mod test_support;
#[cfg(feature = "testing")]
pub mod testing;
pub mod vit;

pub use cast::CastModel;
pub use error::ModelError;
pub use family::Family;
pub use et_ops::Ops;
pub use params::ParamStore;
pub use registry::{create_model, Model, ModelOptions};
pub use run_config::RunConfig;
