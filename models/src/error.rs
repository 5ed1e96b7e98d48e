use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("unknown model '{name}': available models are {available}")]
    UnknownModel { name: String, available: String },
    #[error("{model} cannot take {height}x{width} inputs: {reason}")]
    BadResolution { model: String, height: usize, width: usize, reason: String },
    #[error("{model} does not support {option}: {reason}")]
    UnsupportedOption { model: String, option: String, reason: String },
    #[error("weights {path} do not fit the model: {detail}")]
    WeightsMismatch { path: PathBuf, detail: String },
    #[error("cannot read weights {path}: {reason}")]
    WeightsRead { path: PathBuf, reason: String },
    #[error("cannot write {path}: {reason}")]
    Write { path: PathBuf, reason: String },
    #[error("invalid run config {path}: {reason}")]
    BadConfig { path: PathBuf, reason: String },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, ModelError>;
