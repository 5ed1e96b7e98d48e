//! Input batches moved to the training device off the training thread, so that the copy of
//! the next micro-batch overlaps the current one's compute.
//!
//! candle gives each host thread its own CUDA stream (the per-thread default stream). The
//! uploader thread's copies therefore run on a stream of their own, beside the training
//! stream's kernels; the thread waits for its stream before handing a batch over, so the
//! training stream never reads a batch still in flight (candle's tensors carry no
//! cross-stream events). On the CPU a "copy" is a move: no thread, the batch is ready at once.

use candle_core::{Device, Result, Tensor};
use std::sync::mpsc;
use std::thread::JoinHandle;

/// A micro-batch as the host prepared it: NCHW images and soft targets (N × classes).
pub struct HostBatch {
    pub images: Vec<f32>,
    pub shape: Vec<usize>,
    pub targets: Vec<f32>,
    pub classes: usize,
}

/// The same on the device.
pub struct DeviceBatch {
    pub x: Tensor,
    pub targets: Tensor,
}

fn to_device(b: HostBatch, device: &Device) -> Result<DeviceBatch> {
    let n = b.targets.len() / b.classes.max(1);
    let x = Tensor::from_vec(b.images, b.shape, device)?;
    let targets = Tensor::from_vec(b.targets, (n, b.classes), device)?;
    Ok(DeviceBatch { x, targets })
}

/// A batch on its way to the device.
pub enum Pending {
    Ready(Box<Result<DeviceBatch>>),
    InFlight(mpsc::Receiver<Result<DeviceBatch>>),
}

impl Pending {
    /// The batch, once on the device.
    pub fn wait(self) -> Result<DeviceBatch> {
        match self {
            Pending::Ready(b) => *b,
            Pending::InFlight(rx) => rx.recv().map_err(|_| candle_core::Error::Msg("the upload thread stopped".into()))?,
        }
    }
}

type Job = (HostBatch, mpsc::Sender<Result<DeviceBatch>>);

pub struct Uploader {
    device: Device,
    worker: Option<(mpsc::Sender<Job>, JoinHandle<()>)>,
}

impl Uploader {
    /// Copies to `device` on a thread of their own when `threaded` (CUDA; the CPU only in
    /// tests), on the caller's thread otherwise.
    pub fn new(device: &Device, threaded: bool) -> std::io::Result<Uploader> {
        let worker = if threaded {
            let (tx, rx) = mpsc::channel::<Job>();
            let dev = device.clone();
            let handle = std::thread::Builder::new().name("et-upload".into()).spawn(move || {
                for (batch, reply) in rx {
                    // Waiting for this thread's stream: the batch is on the device when sent.
                    let r = to_device(batch, &dev).and_then(|b| dev.synchronize().map(|_| b));
                    // A dropped receiver is a step that stopped early: nothing to report to.
                    let _ = reply.send(r);
                }
            })?;
            Some((tx, handle))
        } else {
            None
        };
        Ok(Uploader { device: device.clone(), worker })
    }

    /// Starts moving `batch` to the device.
    pub fn upload(&self, batch: HostBatch) -> Pending {
        match &self.worker {
            None => Pending::Ready(Box::new(to_device(batch, &self.device))),
            Some((tx, _)) => {
                let (reply, rx) = mpsc::channel();
                if let Err(mpsc::SendError((batch, _))) = tx.send((batch, reply)) {
                    // The thread is gone (it cannot panic short of an allocation failure):
                    // copy here instead.
                    return Pending::Ready(Box::new(to_device(batch, &self.device)));
                }
                Pending::InFlight(rx)
            }
        }
    }
}

impl Drop for Uploader {
    fn drop(&mut self) {
        if let Some((tx, handle)) = self.worker.take() {
            drop(tx);
            let _ = handle.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;

    fn batch(i: usize) -> HostBatch {
        let images: Vec<f32> = (0..2 * 3 * 4 * 5).map(|v| (v * (i + 1)) as f32).collect();
        HostBatch { images, shape: vec![2, 3, 4, 5], targets: vec![i as f32, 1.0, 0.5, 0.25], classes: 2 }
    }

    /// Through the thread, batches arrive as the inline copy makes them, in the order sent,
    /// also when several are in flight.
    #[test]
    fn threaded_uploads_equal_inline_ones_in_order() -> Result<()> {
        let dev = Device::Cpu;
        let (inline, threaded) = (Uploader::new(&dev, false)?, Uploader::new(&dev, true)?);
        let pending: Vec<Pending> = (0..5).map(|i| threaded.upload(batch(i))).collect();
        for (i, p) in pending.into_iter().enumerate() {
            let (a, b) = (inline.upload(batch(i)).wait()?, p.wait()?);
            assert_eq!(a.x.dims(), b.x.dims());
            assert_eq!(a.x.flatten_all()?.to_vec1::<f32>()?, b.x.flatten_all()?.to_vec1::<f32>()?);
            assert_eq!((b.targets.dims(), b.targets.dtype()), (&[2usize, 2][..], DType::F32));
            assert_eq!(a.targets.flatten_all()?.to_vec1::<f32>()?, b.targets.flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(())
    }
}
