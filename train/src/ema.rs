//! Exponential moving average of the weights (timm `ModelEmaV2`, as ConvNeXt and CSWin
//! train with): after every optimiser step, `ema ← decay·ema + (1 − decay)·w` for every
//! tensor of the model, BatchNorm statistics included. The average lives in its own
//! `ParamStore` with its own `Model`, so it is evaluated and saved like the live weights.
//! As the optimiser, it runs on the host for CPU weights and as device ops elsewhere, with
//! one rule (`optim::rules::ema`).

use crate::optim::rules;
use crate::optim::Residence;
use candle_core::{Result, Tensor, Var};
use et_models::ParamStore;
use rayon::prelude::*;
use std::sync::Arc;

pub struct Ema {
    pub decay: f64,
    pub store: Arc<ParamStore>,
    /// (live, average) pairs, by name.
    pairs: Vec<(Var, Var)>,
    residence: Residence,
}

impl Ema {
    /// `store` must hold the same tensors as `live` (a second model built from the same
    /// config); it starts as a copy of the live weights.
    pub fn new(live: &ParamStore, store: Arc<ParamStore>, decay: f64) -> Result<Ema> {
        let avg = store.all();
        let src = live.all();
        if avg.len() != src.len() || avg.iter().zip(&src).any(|(a, s)| a.0 != s.0 || a.1.dims() != s.1.dims()) {
            candle_core::bail!("the EMA model does not have the live model's tensors");
        }
        let pairs: Vec<(Var, Var)> = src.into_iter().zip(avg).map(|((_, s), (_, a))| (s, a)).collect();
        for (s, a) in &pairs {
            a.set(&s.as_tensor().copy()?)?;
        }
        let on_cpu = pairs.first().is_none_or(|(s, _)| s.device().is_cpu());
        Ok(Ema { decay, store, pairs, residence: if on_cpu { Residence::Host } else { Residence::Device } })
    }

    /// Where the update runs: the device path on CPU tensors is how tests compare the two.
    pub fn set_residence(&mut self, residence: Residence) {
        self.residence = residence;
    }

    /// Restarts the average from the live weights (after they were loaded from elsewhere).
    pub fn reset_to_live(&self) -> Result<()> {
        for (s, a) in &self.pairs {
            a.set(&s.as_tensor().copy()?)?;
        }
        Ok(())
    }

    pub fn update(&self) -> Result<()> {
        let d = self.decay as f32;
        for (s, a) in &self.pairs {
            if self.residence == Residence::Device {
                a.set(&rules::ema(&a.as_tensor().detach(), &s.as_tensor().detach(), d)?)?;
                continue;
            }
            let w: Vec<f32> = s.as_tensor().flatten_all()?.to_vec1()?;
            let mut e: Vec<f32> = a.as_tensor().flatten_all()?.to_vec1()?;
            e.par_iter_mut().zip(w.par_iter()).for_each(|(e, w)| {
                let Ok(v) = rules::ema(&*e, w, d);
                *e = v;
            });
            a.set(&Tensor::from_vec(e, a.shape(), a.device())?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::Init;

    fn store(seed: u64) -> Arc<ParamStore> {
        let ps = ParamStore::new(seed);
        let vb = ps.var_builder(DType::F32, &Device::Cpu);
        vb.get_with_hints(3, "w", Init::Randn { mean: 0.0, stdev: 1.0 }).unwrap();
        vb.get_with_hints(3, "bn.running_mean", Init::Const(0.0)).unwrap();
        ps
    }

    #[test]
    fn averages_every_tensor() -> Result<()> {
        let live = store(1);
        let ema = Ema::new(&live, store(2), 0.75)?;
        let w0: Vec<f32> = live.get("w").unwrap().as_tensor().to_vec1()?;
        assert_eq!(ema.store.get("w").unwrap().as_tensor().to_vec1::<f32>()?, w0, "starts as a copy");
        live.get("w").unwrap().set(&Tensor::new(&[1f32, 2.0, 3.0], &Device::Cpu)?)?;
        live.get("bn.running_mean").unwrap().set(&Tensor::new(&[4f32, 4.0, 4.0], &Device::Cpu)?)?;
        ema.update()?;
        let got: Vec<f32> = ema.store.get("w").unwrap().as_tensor().to_vec1()?;
        for i in 0..3 {
            assert!((got[i] - (0.75 * w0[i] + 0.25 * (i as f32 + 1.0))).abs() < 1e-6);
        }
        assert_eq!(ema.store.get("bn.running_mean").unwrap().as_tensor().to_vec1::<f32>()?, vec![1.0; 3]);
        Ok(())
    }

    /// The device update (forced onto CPU tensors) is the host's, bit for bit: the same f32
    /// operations in the same order.
    #[test]
    fn device_update_equals_host_update() -> Result<()> {
        let live = store(1);
        let (host, mut device) = (Ema::new(&live, store(2), 0.9)?, Ema::new(&live, store(3), 0.9)?);
        device.set_residence(Residence::Device);
        for step in 0..3 {
            let w = (live.get("w").unwrap().as_tensor() * 1.7)?.affine(1.0, step as f64)?;
            live.get("w").unwrap().set(&w)?;
            host.update()?;
            device.update()?;
        }
        for name in ["w", "bn.running_mean"] {
            let (a, b) = (host.store.get(name).unwrap(), device.store.get(name).unwrap());
            assert_eq!(a.as_tensor().to_vec1::<f32>()?, b.as_tensor().to_vec1::<f32>()?, "{name}");
        }
        Ok(())
    }
}
