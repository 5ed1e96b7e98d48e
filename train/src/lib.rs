//! et-train: EfficientTrain / EfficientTrain++ curriculum training in candle.

pub mod engine;
pub mod loss;
pub mod lr;
pub mod optim;
pub mod pipeline;
pub mod schedule;

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Data(#[from] et_data::DataError),
    #[error(transparent)]
    Model(#[from] et_models::ModelError),
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Output(String),
    #[error("loss became {loss} at step {step} (stage {stage}): training stopped; {}; lower --lr or check the data", match .last_checkpoint { Some(p) => format!("the last good weights are in {}", p.display()), None => "no stage had finished, so no weights were saved".to_string() })]
    NonFinite { step: usize, stage: usize, loss: f64, last_checkpoint: Option<PathBuf> },
    #[error("internal error: {0}")]
    Internal(String),
    #[error("computation failed: {0}")]
    Candle(#[from] candle_core::Error),
}
