//! Mixed precision without rebuilding the model: a model built once from half-precision
//! casts of the f32 masters, whose casts are rewritten in place when the masters change.
//!
//! Each cast is a candle `to_dtype` of its master, so a backward pass through the model
//! still delivers f32 gradients to the masters; rewriting a cast's storage keeps that graph
//! edge. Building the model anew for every micro-batch (as `var_builder_cast` alone would)
//! also re-created every module, re-looked-up every parameter by name and dropped the
//! models' caches (Swin's relative position index and shifted-window masks): none of that
//! depends on the weights.

use crate::error::Result;
use crate::params::ParamStore;
use crate::registry::{Model, ModelConfig};
use candle_core::{DType, Device, Tensor, Var};
use std::sync::{Arc, Mutex};

pub struct CastModel {
    pub model: Model,
    /// Every cast the model holds, with its master.
    casts: Vec<(Var, Tensor)>,
    compute: DType,
}

impl CastModel {
    /// `cfg`'s model on `device` computing in `compute`, from casts of `store`'s masters
    /// (buffers uncast, as [`ParamStore::var_builder_cast`]).
    pub fn new(cfg: &ModelConfig, store: &Arc<ParamStore>, compute: DType, device: &Device) -> Result<CastModel> {
        let record = Arc::new(Mutex::new(Vec::new()));
        let model = Model::new(cfg, store.var_builder_cast_recorded(compute, device, record.clone()))?;
        let casts = std::mem::take(&mut *record.lock().unwrap_or_else(|e| e.into_inner()));
        Ok(CastModel { model, casts, compute })
    }

    /// Rewrites every cast from its master's current value (after an optimiser step, or
    /// any other change of the masters).
    pub fn refresh(&self) -> candle_core::Result<()> {
        for (master, cast) in &self.casts {
            // Flat views share the storage and make any rank (even 0-d) one slice.
            cast.flatten_all()?.slice_set(&master.as_tensor().detach().to_dtype(self.compute)?.flatten_all()?, 0, 0)?;
        }
        Ok(())
    }

    /// How many casts a refresh rewrites.
    pub fn len(&self) -> usize {
        self.casts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.casts.is_empty()
    }
}
