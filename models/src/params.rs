//! The parameters of one model: created through a `VarBuilder` with seeded initialisation,
//! listed by timm name, saved and loaded as safetensors with strict name/shape checks.

use crate::error::{ModelError, Result};
use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::{Init, VarBuilder};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Names of non-trainable state saved with the weights (BatchNorm statistics, as in timm).
pub fn is_buffer(name: &str) -> bool {
    name.ends_with("running_mean") || name.ends_with("running_var") || name.ends_with("num_batches_tracked")
}

#[derive(Default)]
pub struct ParamStore {
    vars: Mutex<BTreeMap<String, Var>>,
    /// Names in the order the model created them (PyTorch's registration order).
    created: Mutex<Vec<String>>,
    seed: u64,
    /// Zeros instead of random values: for counting parameters and FLOPs quickly.
    zeros: bool,
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

/// A SplitMix64 stream; initial values depend only on (seed, parameter name), so adding a
/// layer does not change the initialisation of the others.
struct InitRng(u64);

impl InitRng {
    fn uniform(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(f64::MIN_POSITIVE);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

fn init_tensor(shape: &Shape, init: Init, seed: u64, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
    let n = shape.elem_count();
    let mut rng = InitRng(seed ^ fnv1a(name));
    let values: Vec<f64> = match init {
        Init::Const(c) => vec![c; n],
        // timm's trunc_normal_(std=.02) truncates at ±2 (absolute), i.e. at ±100σ: a normal.
        Init::Randn { mean, stdev } => (0..n).map(|_| mean + stdev * rng.normal()).collect(),
        Init::Uniform { lo, up } => (0..n).map(|_| lo + (up - lo) * rng.uniform()).collect(),
        kaiming @ Init::Kaiming { .. } => return Ok(kaiming.var(shape.clone(), dtype, dev)?.as_tensor().clone()),
    };
    Tensor::from_vec(values, shape.clone(), dev)?.to_dtype(dtype)
}

/// What `ParamStore::load` did with a checkpoint.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub loaded: usize,
    /// Parameters left at their initial value because `reinit_head` allowed it.
    pub reinitialised: Vec<String>,
}

impl ParamStore {
    pub fn new(seed: u64) -> Arc<Self> {
        Arc::new(ParamStore { vars: Mutex::new(BTreeMap::new()), created: Mutex::new(Vec::new()), seed, zeros: false })
    }

    /// A store whose parameters are all zero: shapes without the cost of random init.
    pub fn zeros() -> Arc<Self> {
        Arc::new(ParamStore { vars: Mutex::new(BTreeMap::new()), created: Mutex::new(Vec::new()), seed: 0, zeros: true })
    }

    pub fn var_builder(self: &Arc<Self>, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(Backend(self.clone())), dtype, device.clone())
    }

    /// Mixed precision: parameters are created (and stay) f32 masters, but the model gets
    /// them cast to `compute`. The cast is an op with a gradient, so a backward pass through
    /// a model built per step from this builder reaches the f32 `Var`s. Buffers (BatchNorm
    /// running statistics) are handed out uncast, so their updates land on the masters.
    pub fn var_builder_cast(self: &Arc<Self>, compute: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(CastBackend { store: Backend(self.clone()), compute, record: None }), DType::F32, device.clone())
    }

    /// [`ParamStore::var_builder_cast`] that also lists every cast it hands out with its
    /// master (in `record`), so that the casts can be refreshed in place (`CastModel`).
    pub(crate) fn var_builder_cast_recorded(self: &Arc<Self>, compute: DType, device: &Device, record: CastRecord) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(CastBackend { store: Backend(self.clone()), compute, record: Some(record) }), DType::F32, device.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Var>> {
        // A panic while holding the lock cannot leave the map half-updated (single inserts).
        self.vars.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// All parameters and buffers, sorted by name.
    pub fn all(&self) -> Vec<(String, Var)> {
        self.lock().iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Parameters the optimiser updates (buffers excluded), sorted by name.
    pub fn trainable(&self) -> Vec<(String, Var)> {
        self.all().into_iter().filter(|(k, _)| !is_buffer(k)).collect()
    }

    /// Names of the trainable parameters in the order the model created them (as PyTorch's
    /// `named_parameters` lists them for the same module structure).
    pub fn trainable_in_creation_order(&self) -> Vec<String> {
        self.created.lock().unwrap_or_else(|e| e.into_inner()).iter().filter(|n| !is_buffer(n)).cloned().collect()
    }

    pub fn num_trainable(&self) -> usize {
        self.trainable().iter().map(|(_, v)| v.elem_count()).sum()
    }

    pub fn get(&self, name: &str) -> Option<Var> {
        self.lock().get(name).cloned()
    }

    /// Writes new buffer values (BatchNorm running statistics from `CandleOps`) in place.
    pub fn apply_buffer_updates(&self, updates: Vec<(candle_core::TensorId, Tensor)>) -> Result<()> {
        if updates.is_empty() {
            return Ok(());
        }
        let by_id: HashMap<_, Var> = self.all().into_iter().map(|(_, v)| (v.as_tensor().id(), v)).collect();
        for (id, value) in updates {
            match by_id.get(&id) {
                Some(var) => var.set(&value.to_dtype(var.dtype())?)?,
                None => return Err(ModelError::Candle(candle_core::Error::Msg("buffer update for a tensor that is not a parameter".into()))),
            }
        }
        Ok(())
    }

    pub fn tensors(&self) -> HashMap<String, Tensor> {
        self.all().into_iter().map(|(k, v)| (k, v.as_tensor().clone())).collect()
    }

    /// Writes all tensors (f32 as trained) to `path` atomically: a crash never leaves a
    /// half-written checkpoint under the final name.
    pub fn save(&self, path: &Path) -> Result<()> {
        save_tensors(&self.tensors(), path)
    }

    /// Loads a safetensors file strictly: every model tensor must be present with the same
    /// shape, and the file must hold nothing else. With `reinit_head`, tensors named in it
    /// whose shapes differ (a new number of classes) keep their fresh initialisation.
    pub fn load(&self, path: &Path, reinit_head: &[&str]) -> Result<LoadReport> {
        let file = candle_core::safetensors::load(path, &Device::Cpu)
            .map_err(|e| ModelError::WeightsRead { path: path.to_path_buf(), reason: e.to_string() })?;
        let vars = self.lock();
        let mut missing = Vec::new();
        let mut mismatched = Vec::new();
        let mut report = LoadReport::default();
        for (name, var) in vars.iter() {
            match file.get(name) {
                None => missing.push(name.clone()),
                Some(t) if t.dims() != var.dims() => {
                    if reinit_head.contains(&name.as_str()) {
                        report.reinitialised.push(name.clone());
                    } else {
                        mismatched.push(format!("{name} (file {:?}, model {:?})", t.dims(), var.dims()));
                    }
                }
                Some(_) => {}
            }
        }
        // PyTorch's BatchNorm counter: timm checkpoints carry it, our momentum is fixed.
        let mut unexpected: Vec<&String> = file.keys().filter(|k| !vars.contains_key(*k) && !k.ends_with("num_batches_tracked")).collect();
        unexpected.sort();
        if !missing.is_empty() || !mismatched.is_empty() || !unexpected.is_empty() {
            let list = |v: Vec<String>| if v.len() > 8 { format!("{}, ... ({} in all)", v[..8].join(", "), v.len()) } else { v.join(", ") };
            let mut parts = Vec::new();
            if !missing.is_empty() {
                parts.push(format!("missing: {}", list(missing)));
            }
            if !unexpected.is_empty() {
                parts.push(format!("unexpected: {}", list(unexpected.into_iter().cloned().collect())));
            }
            if !mismatched.is_empty() {
                parts.push(format!("shape mismatch: {}", list(mismatched)));
            }
            return Err(ModelError::WeightsMismatch { path: path.to_path_buf(), detail: parts.join("; ") });
        }
        for (name, var) in vars.iter() {
            if report.reinitialised.contains(name) {
                continue;
            }
            let t = &file[name];
            var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
            report.loaded += 1;
        }
        Ok(report)
    }
}

/// Writes tensors as safetensors, atomically (et-runfiles).
pub fn save_tensors(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    et_runfiles::write_with(path, |tmp| candle_core::safetensors::save(tensors, tmp).map_err(std::io::Error::other))
        .map_err(|e| ModelError::Write { path: path.to_path_buf(), reason: e.to_string() })
}

struct Backend(Arc<ParamStore>);

impl candle_nn::var_builder::SimpleBackend for Backend {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let mut vars = self.0.lock();
        if let Some(v) = vars.get(name) {
            if v.shape() != &s {
                candle_core::bail!("parameter {name} requested as {s:?} but exists as {:?}", v.shape())
            }
            return Ok(v.as_tensor().clone());
        }
        let init = if self.0.zeros { Tensor::zeros(s.clone(), dtype, dev)? } else { init_tensor(&s, h, self.0.seed, name, dtype, dev)? };
        let var = Var::from_tensor(&init)?;
        let t = var.as_tensor().clone();
        vars.insert(name.to_string(), var);
        self.0.created.lock().unwrap_or_else(|e| e.into_inner()).push(name.to_string());
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> candle_core::Result<Tensor> {
        match self.0.lock().get(name) {
            Some(v) => Ok(v.as_tensor().clone()),
            None => candle_core::bail!("parameter {name} not created yet"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.lock().contains_key(name)
    }
}

/// The casts a builder handed out, with their masters.
pub(crate) type CastRecord = Arc<Mutex<Vec<(Var, Tensor)>>>;

struct CastBackend {
    store: Backend,
    compute: DType,
    record: Option<CastRecord>,
}

impl CastBackend {
    fn cast(&self, name: &str, t: Tensor) -> candle_core::Result<Tensor> {
        if is_buffer(name) || t.dtype() == self.compute {
            return Ok(t);
        }
        let cast = t.to_dtype(self.compute)?;
        if let (Some(record), Some(var)) = (&self.record, self.store.0.get(name)) {
            record.lock().unwrap_or_else(|e| e.into_inner()).push((var, cast.clone()));
        }
        Ok(cast)
    }
}

impl candle_nn::var_builder::SimpleBackend for CastBackend {
    fn get(&self, s: Shape, name: &str, h: Init, _dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let t = self.store.get(s, name, h, DType::F32, dev)?;
        self.cast(name, t)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let t = self.store.get_unchecked(name, DType::F32, dev)?;
        self.cast(name, t)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.store.contains_tensor(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(seed: u64, classes: usize) -> Arc<ParamStore> {
        let ps = ParamStore::new(seed);
        let vb = ps.var_builder(DType::F32, &Device::Cpu);
        vb.get_with_hints((4, 3), "body.weight", Init::Randn { mean: 0.0, stdev: 0.02 }).unwrap();
        vb.get_with_hints((classes, 4), "head.fc.weight", Init::Randn { mean: 0.0, stdev: 0.02 }).unwrap();
        vb.get_with_hints(4, "bn.running_mean", Init::Const(0.0)).unwrap();
        ps
    }

    #[test]
    fn init_is_seeded_and_buffers_are_not_trainable() {
        let a = store(1, 2).get("body.weight").unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = store(1, 2).get("body.weight").unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let c = store(2, 2).get("body.weight").unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(store(1, 2).num_trainable(), 12 + 8);
    }

    #[test]
    fn strict_load_names_what_does_not_fit() {
        let dir = std::env::temp_dir().join(format!("et-params-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("w.safetensors");
        store(1, 2).save(&path).unwrap();
        let target = store(5, 2);
        target.load(&path, &[]).unwrap();
        assert_eq!(target.get("body.weight").unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                   store(1, 2).get("body.weight").unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap());
        let err = store(5, 3).load(&path, &[]).unwrap_err().to_string();
        assert!(err.contains("shape mismatch: head.fc.weight"), "{err}");
        let report = store(5, 3).load(&path, &["head.fc.weight"]).unwrap();
        assert_eq!(report.reinitialised, vec!["head.fc.weight".to_string()]);
        let extra = store(1, 2);
        extra.var_builder(DType::F32, &Device::Cpu).get_with_hints(1, "extra", Init::Const(0.0)).unwrap();
        let err = extra.load(&path, &[]).unwrap_err().to_string();
        assert!(err.contains("missing: extra"), "{err}");
        let mut t = store(1, 2).tensors();
        t.insert("stray".into(), Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap());
        save_tensors(&t, &path).unwrap();
        let err = store(1, 2).load(&path, &[]).unwrap_err().to_string();
        assert!(err.contains("unexpected: stray"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
