//! NCCL between the GPUs of a job, for tensors that live on the device (gradients, weights):
//! the sums then run GPU to GPU (NVLink, InfiniBand) instead of through host memory and MPI.
//! MPI still starts the job and carries everything small; it hands NCCL its unique id.
//!
//! NCCL has no timeouts: a rank that stops leaves the others waiting inside the collective.
//! Each call here therefore waits for its stream under the same watchdog as MPI's calls.

use crate::watchdog::Watchdog;
use crate::{Collective, DistError, Result};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CudaStorage, DType, Device, InplaceOp1, Layout, Tensor};
use cudarc::driver::CudaStream;
use cudarc::nccl::safe::{Comm, Id, ReduceOp};
use std::sync::Arc;

/// The NCCL versions whose symbols the build binds (cudarc's `nccl-02028`): older libraries
/// lack some and fail at load time.
pub const MIN_VERSION: &str = "2.28";

fn nccl_error(call: &'static str, e: impl std::fmt::Debug) -> DistError {
    DistError::Nccl { call, reason: format!("{e:?}") }
}

/// This rank's NCCL communicator on its GPU. Not `Send`: only the training thread uses it.
pub struct Nccl {
    comm: Comm,
    stream: Arc<CudaStream>,
    watchdog: Arc<Watchdog>,
    rank: usize,
    world: usize,
}

impl Nccl {
    /// Joins every rank of `job` in one communicator on `device` (this rank's GPU). Every rank
    /// must call it at the same point: rank 0 creates the id and `job` broadcasts it.
    pub fn new(job: &dyn Collective, device: &Device) -> Result<Nccl> {
        let Device::Cuda(cuda) = device else {
            return Err(DistError::Protocol(format!("NCCL needs a CUDA device, not {device:?}")));
        };
        let mut bytes = if job.is_root() { Id::new().map_err(|e| nccl_error("ncclGetUniqueId", e))?.internal().iter().map(|&c| c as u8).collect() } else { Vec::new() };
        job.broadcast(&mut bytes, 0)?;
        let internal: [std::ffi::c_char; 128] = bytes
            .iter()
            .map(|&b| b as std::ffi::c_char)
            .collect::<Vec<_>>()
            .try_into()
            .map_err(|_| DistError::Protocol(format!("the NCCL id from rank 0 has {} bytes, not 128", bytes.len())))?;
        let stream = cuda.cuda_stream();
        stream.context().bind_to_thread().map_err(|e| nccl_error("cuCtxSetCurrent", e))?;
        let watchdog = Watchdog::start(job.rank(), crate::watchdog::timeout());
        let comm = {
            let _g = watchdog.enter();
            Comm::from_rank(stream.clone(), job.rank(), job.world(), Id::uninit(internal)).map_err(|e| nccl_error("ncclCommInitRank", e))?
        };
        Ok(Nccl { comm, stream, watchdog, rank: job.rank(), world: job.world() })
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world(&self) -> usize {
        self.world
    }

    /// Replaces `t` (f32 or bf16, contiguous, on this rank's GPU) by its sum over all ranks.
    pub fn sum(&self, t: &Tensor) -> Result<()> {
        self.run(t, Op::Sum)
    }

    /// Gives every rank `root`'s values of `t` (same shape and dtype on every rank).
    pub fn broadcast(&self, t: &Tensor, root: usize) -> Result<()> {
        self.run(t, Op::Broadcast(root))
    }

    fn run(&self, t: &Tensor, op: Op) -> Result<()> {
        let _g = self.watchdog.enter();
        t.inplace_op1(&InPlace { nccl: self, op }).map_err(|e| nccl_error(op.call(), e))?;
        self.stream.synchronize().map_err(|e| nccl_error("cuStreamSynchronize", e))
    }
}

#[derive(Clone, Copy)]
enum Op {
    Sum,
    Broadcast(usize),
}

impl Op {
    fn call(self) -> &'static str {
        match self {
            Op::Sum => "ncclAllReduce",
            Op::Broadcast(_) => "ncclBroadcast",
        }
    }
}

struct InPlace<'a> {
    nccl: &'a Nccl,
    op: Op,
}

impl InPlace<'_> {
    fn apply<T: cudarc::nccl::NcclType + candle_core::cuda::CudaDType>(&self, storage: &mut CudaStorage, range: std::ops::Range<usize>) -> candle_core::Result<()> {
        let slice = storage.as_cuda_slice_mut::<T>()?;
        let mut view = slice.slice_mut(range);
        let done = match self.op {
            Op::Sum => self.nccl.comm.all_reduce_in_place(&mut view, &ReduceOp::Sum),
            Op::Broadcast(root) => self.nccl.comm.broadcast_in_place(&mut view, root as i32),
        };
        done.map(|_| ()).map_err(|e| candle_core::Error::Msg(format!("{e:?}")))
    }
}

impl InplaceOp1 for InPlace<'_> {
    fn name(&self) -> &'static str {
        self.op.call()
    }

    fn cpu_fwd(&self, _: &mut CpuStorage, _: &Layout) -> candle_core::Result<()> {
        candle_core::bail!("NCCL works on CUDA tensors: reduce CPU tensors through MPI")
    }

    fn cuda_fwd(&self, storage: &mut CudaStorage, layout: &Layout) -> candle_core::Result<()> {
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("NCCL needs a contiguous tensor")
        };
        match storage.dtype() {
            DType::F32 => self.apply::<f32>(storage, start..end),
            DType::BF16 => self.apply::<half::bf16>(storage, start..end),
            dt => candle_core::bail!("NCCL sums f32 or bf16 tensors here, not {dt:?}"),
        }
    }
}
