//! et-train: EfficientTrain / EfficientTrain++ curriculum training in candle.
//!
//! A run is resolved from its settings (`config`, `presets`), planned (`schedule`, `plan`)
//! and executed by the [`trainer::Trainer`], whose optimiser steps are a [`step::Learner`]'s;
//! checkpoints (`checkpoint`) make it resumable bit for bit.

pub mod checkpoint;
pub mod config;
pub mod dist_sync;
pub mod dry_run;
pub mod ema;
pub mod layer_decay;
pub mod loss;
pub mod lr;
pub mod optim;
pub mod pipeline;
pub mod plan;
pub mod plot;
pub mod presets;
pub mod replay_io;
pub mod run_io;
pub mod schedule;
pub mod settings;
pub mod setup;
pub mod step;
pub mod trainer;
pub mod upload;

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
    #[error("loss became {loss} at step {step} (stage {}): training stopped; {}; lower --lr (or add --clip-grad) or check the data", .stage + 1, match .last_checkpoint { Some(p) => format!("the last good checkpoint is {}", p.display()), None => "no checkpoint had been written yet".to_string() })]
    NonFinite { step: usize, stage: usize, loss: f64, last_checkpoint: Option<PathBuf> },
    #[error("internal error: {0}")]
    Internal(String),
    #[error("computation failed: {0}")]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Dist(#[from] et_dist::DistError),
}
