//! What the ranks of a data-parallel run exchange, and when (docs/distributed.md):
//! settings checked and weights, EMA and optimiser state broadcast from rank 0 at the start;
//! gradients (with the step's loss) averaged every optimiser step in a few flat buckets;
//! BatchNorm statistics averaged and validation counts summed at every stage end.

use crate::optim::{Grads, Optimizer};
use crate::TrainError;
use candle_core::{Tensor, Var};
use et_dist::Collective;
use et_models::params::is_buffer;
use et_models::ParamStore;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Floats per all-reduce: large enough that a ResNet-50's gradients take two calls, small
/// enough that the flat copy stays a modest buffer.
const BUCKET: usize = 16 << 20;

/// Rank 0's `value` on every rank (`value` is read on rank 0 only).
pub fn broadcast_json<T: Serialize + DeserializeOwned>(comm: &dyn Collective, value: Option<&T>) -> Result<T, TrainError> {
    let mut bytes = match (comm.is_root(), value) {
        (true, Some(v)) => serde_json::to_vec(v).map_err(|e| TrainError::Internal(e.to_string()))?,
        (true, None) => return Err(TrainError::Internal("rank 0 has nothing to broadcast".into())),
        _ => Vec::new(),
    };
    comm.broadcast(&mut bytes, 0)?;
    serde_json::from_slice(&bytes).map_err(|e| TrainError::Internal(format!("a broadcast value did not parse: {e}")))
}

/// Refuses to start when this rank's resolved settings differ from rank 0's, naming the first
/// setting that differs (a job must run one recipe on every rank).
pub fn check_same_settings<T: Serialize>(comm: &dyn Collective, settings: &T) -> Result<(), TrainError> {
    let mine = serde_json::to_value(settings).map_err(|e| TrainError::Internal(e.to_string()))?;
    let root: serde_json::Value = broadcast_json(comm, Some(&mine))?;
    let (a, b) = (mine.as_object(), root.as_object());
    let keys = a.into_iter().flatten().map(|(k, _)| k).chain(b.into_iter().flatten().map(|(k, _)| k));
    for k in keys {
        let (ours, theirs) = (mine.get(k), root.get(k));
        if ours != theirs {
            let show = |v: Option<&serde_json::Value>| v.map_or("(unset)".to_string(), |v| v.to_string());
            return Err(TrainError::Config(format!(
                "rank {} was started with other settings than rank 0: {k} is {} here and {} on rank 0 (every rank must get the same command line)",
                comm.rank(),
                show(ours),
                show(theirs)
            )));
        }
    }
    Ok(())
}

fn to_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn from_bytes(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// Rank 0's values of `vars` (every tensor of a store, in name order) on every rank.
pub fn broadcast_vars(comm: &dyn Collective, vars: &[(String, Var)]) -> Result<(), TrainError> {
    if comm.world() == 1 {
        return Ok(());
    }
    for (_, var) in vars {
        let mut bytes = if comm.is_root() { to_bytes(&var.as_tensor().flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1()?) } else { Vec::new() };
        comm.broadcast(&mut bytes, 0)?;
        let t = Tensor::from_vec(from_bytes(&bytes), var.shape(), var.device())?.to_dtype(var.dtype())?;
        var.set(&t)?;
    }
    Ok(())
}

/// Rank 0's optimiser moments and step count on every rank.
pub fn broadcast_optimizer(comm: &dyn Collective, opt: &mut Optimizer) -> Result<(), TrainError> {
    if comm.world() == 1 {
        return Ok(());
    }
    for p in &mut opt.params {
        for m in [&mut p.m, &mut p.v] {
            let mut bytes = if comm.is_root() { to_bytes(&m.to_vec()?) } else { Vec::new() };
            comm.broadcast(&mut bytes, 0)?;
            m.set(from_bytes(&bytes))?;
        }
    }
    let mut step = opt.step.to_le_bytes().to_vec();
    comm.broadcast(&mut step, 0)?;
    opt.step = u64::from_le_bytes(step.try_into().map_err(|_| TrainError::Internal("optimiser step".into()))?);
    Ok(())
}

/// The step's gradients and loss over the global batch: each rank's mean-loss gradient
/// weighted by its share of the step's `images` (equal shares: the plain average), summed in
/// flat buckets. Returns the global mean loss and the step's images over all ranks.
/// Sums a flat f32 device tensor over the ranks in place: NCCL, GPU to GPU.
pub type DeviceSum<'a> = &'a dyn Fn(&Tensor) -> Result<(), TrainError>;

/// Averages the step's gradients over the ranks, weighted by each rank's images, and returns
/// the global mean loss and image count. Gradients on a GPU go through `device_sum` where the
/// job has one (NCCL), else through host copies and `comm`.
pub fn average_grads(comm: &dyn Collective, device_sum: Option<DeviceSum>, grads: &mut Grads, loss: f64, images: usize) -> Result<(f64, usize), TrainError> {
    if comm.world() == 1 {
        return Ok((loss, images));
    }
    // Shares can differ: a replayed chunk may be empty, an unreadable image skipped.
    let [total] = sum_counts(comm, [images as f64])?;
    let share = (images as f64 / total.max(1.0)) as f32;
    match (&mut *grads, device_sum) {
        (Grads::Device(ts), Some(sum)) => reduce_device_buckets(ts, share, BUCKET, sum)?,
        // MPI exchanges host buffers: device gradients go through host copies.
        (grads, _) => grads.with_host(|grads| reduce_buckets(comm, grads, share))?,
    }
    // The loss in f64, so that the logged loss of a world of n equals a world of one's to
    // rounding.
    let [loss_sum] = sum_counts(comm, [loss * images as f64])?;
    Ok((loss_sum / total.max(1.0), total as usize))
}

/// Sums `share`-weighted gradients over the ranks in flat buckets of at most [`BUCKET`].
fn reduce_buckets(comm: &dyn Collective, grads: &mut [Vec<f32>], share: f32) -> Result<(), TrainError> {
    let mut flat: Vec<f32> = Vec::with_capacity(BUCKET.min(grads.iter().map(Vec::len).sum::<usize>()));
    let mut members: Vec<usize> = Vec::new();
    let flush = |flat: &mut Vec<f32>, members: &mut Vec<usize>, grads: &mut [Vec<f32>]| -> Result<(), TrainError> {
        comm.sum_f32(flat)?;
        let mut at = 0;
        for &i in members.iter() {
            let len = grads[i].len();
            grads[i].copy_from_slice(&flat[at..at + len]);
            at += len;
        }
        flat.clear();
        members.clear();
        Ok(())
    };
    for i in 0..grads.len() {
        if !flat.is_empty() && flat.len() + grads[i].len() > BUCKET {
            flush(&mut flat, &mut members, grads)?;
        }
        flat.extend(grads[i].iter().map(|g| g * share));
        members.push(i);
    }
    if !flat.is_empty() {
        flush(&mut flat, &mut members, grads)?;
    }
    Ok(())
}

/// GPU-to-GPU sums for gradients that stay on the device: NCCL, in builds with the `nccl`
/// feature, when the job runs on several GPUs. Without it device gradients go through MPI on
/// the host (correct, slower).
pub struct GpuComm(#[cfg(feature = "nccl")] et_dist::nccl::Nccl);

impl GpuComm {
    /// Every rank must call it at the same point; ranks run one device type (their settings
    /// were checked to be equal first).
    pub fn open(comm: &dyn Collective, device: &candle_core::Device) -> Result<Option<GpuComm>, TrainError> {
        #[cfg(feature = "nccl")]
        if comm.world() > 1 && device.is_cuda() {
            return Ok(Some(GpuComm(et_dist::nccl::Nccl::new(comm, device)?)));
        }
        let _ = (comm, device);
        Ok(None)
    }

    /// Replaces `t` (flat f32, on this rank's GPU) by its sum over the ranks.
    pub fn sum(&self, t: &Tensor) -> Result<(), TrainError> {
        #[cfg(feature = "nccl")]
        return Ok(self.0.sum(t)?);
        #[cfg(not(feature = "nccl"))]
        {
            let _ = t;
            Err(TrainError::Internal("a GPU sum in a build without NCCL".into()))
        }
    }
}

/// [`reduce_buckets`] for gradients that stay on their device: each bucket of at most
/// `bucket` floats is one flat tensor, weighted, summed in place by `sum`, and the gradients
/// become views of it (the optimiser only reads them).
fn reduce_device_buckets(grads: &mut [Tensor], share: f32, bucket: usize, sum: DeviceSum) -> Result<(), TrainError> {
    let mut start = 0;
    while start < grads.len() {
        let (mut end, mut floats) = (start, 0);
        while end < grads.len() && (end == start || floats + grads[end].elem_count() <= bucket) {
            floats += grads[end].elem_count();
            end += 1;
        }
        let parts = grads[start..end].iter().map(|g| g.flatten_all()).collect::<candle_core::Result<Vec<_>>>()?;
        let flat = (Tensor::cat(&parts, 0)? * share as f64)?;
        sum(&flat)?;
        let mut at = 0;
        for g in &mut grads[start..end] {
            let n = g.elem_count();
            *g = flat.narrow(0, at, n)?.reshape(g.shape())?;
            at += n;
        }
        start = end;
    }
    Ok(())
}

/// timm's `--dist-bn reduce`: every BatchNorm running statistic of `store` replaced by its
/// mean over the ranks (each rank's batches moved them differently).
pub fn average_buffers(comm: &dyn Collective, store: &ParamStore) -> Result<(), TrainError> {
    if comm.world() == 1 {
        return Ok(());
    }
    for (name, var) in store.all() {
        if !is_buffer(&name) || name.ends_with("num_batches_tracked") {
            continue;
        }
        let mut v: Vec<f32> = var.as_tensor().flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1()?;
        et_dist::mean_f32(comm, &mut v)?;
        var.set(&Tensor::from_vec(v, var.shape(), var.device())?.to_dtype(var.dtype())?)?;
    }
    Ok(())
}

/// Sums counters over the ranks.
pub fn sum_counts<const N: usize>(comm: &dyn Collective, counts: [f64; N]) -> Result<[f64; N], TrainError> {
    let mut c = counts;
    comm.sum_f64(&mut c)?;
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{CpuStorage, Device, InplaceOp1, Layout};

    /// Doubles a tensor in place: what an all-reduce of two equal ranks does.
    struct Double;
    impl InplaceOp1 for Double {
        fn name(&self) -> &'static str {
            "double"
        }
        fn cpu_fwd(&self, s: &mut CpuStorage, _: &Layout) -> candle_core::Result<()> {
            match s {
                CpuStorage::F32(v) => v.iter_mut().for_each(|x| *x *= 2.0),
                _ => candle_core::bail!("f32 only"),
            }
            Ok(())
        }
    }

    #[test]
    fn device_buckets_equal_the_host_buckets() -> Result<(), TrainError> {
        let shapes: [&[usize]; 5] = [&[3, 4], &[7], &[2, 2, 5], &[11], &[1]];
        let host: Vec<Vec<f32>> = shapes.iter().enumerate().map(|(i, s)| (0..s.iter().product::<usize>()).map(|j| (i * 31 + j) as f32 * 0.37 - 3.0).collect()).collect();
        let mut expect = host.clone();
        reduce_buckets(&et_dist::Solo, &mut expect, 0.3)?;
        // Buckets of 12 floats: some tensors share one, the 20-float one gets its own.
        for (sum, factor) in [(&(|_: &Tensor| Ok(())) as DeviceSum, 1.0f32), (&|t: &Tensor| Ok(t.inplace_op1(&Double)?), 2.0)] {
            let mut dev = shapes.iter().zip(&host).map(|(s, v)| Tensor::from_vec(v.clone(), *s, &Device::Cpu)).collect::<candle_core::Result<Vec<_>>>()?;
            reduce_device_buckets(&mut dev, 0.3, 12, sum)?;
            for ((g, want), s) in dev.iter().zip(&expect).zip(shapes) {
                assert_eq!(g.dims(), s);
                assert_eq!(g.flatten_all()?.to_vec1::<f32>()?, want.iter().map(|w| w * factor).collect::<Vec<_>>());
            }
        }
        Ok(())
    }
}
