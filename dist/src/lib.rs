//! Collectives for data-parallel training. A job is `world` processes (ranks) started by
//! an MPI launcher (`mpirun`, `srun`); each trains on its share of every batch and the ranks
//! agree through the few operations here: sums over all ranks (gradients, statistics,
//! counts), broadcasts from one rank (weights, settings, checkpoint contents), barriers.
//!
//! A plain start is a world of one ([`Solo`]) and needs no MPI at run time. With the `mpi`
//! feature, a process started by a launcher joins the job through the system's MPI
//! ([`mpi::Mpi`]: Open MPI or MPICH). A collective that waits longer than the watchdog's
//! timeout (`ET_DIST_TIMEOUT_S`, default 1800 s) ends the process, so that a stalled rank
//! cannot leave the others waiting forever; a rank that dies is seen by the launcher, which
//! ends the job.

#[cfg(feature = "mpi")]
pub mod mpi;
#[cfg(feature = "nccl")]
pub mod nccl;
#[cfg(feature = "mpi")]
mod watchdog;

use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum DistError {
    #[error("this process is one of {world} started by an MPI launcher, but this et-train was built without MPI: rebuild with `cargo build --release --features et-train/distributed` (docs/distributed.md)")]
    NotBuilt { world: usize },
    #[error("MPI {call} failed: {reason}")]
    Mpi { call: &'static str, reason: String },
    #[error("NCCL {call} failed: {reason} (NCCL_DEBUG=WARN shows why)")]
    Nccl { call: &'static str, reason: String },
    #[error("{0}")]
    Protocol(String),
}

pub type Result<T> = std::result::Result<T, DistError>;

/// The operations ranks perform together. Every rank must make the same calls in the same
/// order; only the training thread calls them.
pub trait Collective: Send + Sync {
    fn rank(&self) -> usize;
    fn world(&self) -> usize;
    /// The rank among those on this machine (which GPU the rank takes).
    fn local_rank(&self) -> usize;
    /// Replaces `buf` by its element-wise sum over all ranks.
    fn sum_f32(&self, buf: &mut [f32]) -> Result<()>;
    fn sum_f64(&self, buf: &mut [f64]) -> Result<()>;
    /// Gives every rank `root`'s `buf` (whose length the others need not know).
    fn broadcast(&self, buf: &mut Vec<u8>, root: usize) -> Result<()>;
    fn barrier(&self) -> Result<()>;
    /// Ends every process of the job with exit status `code` (after the caller said why).
    fn abort(&self, code: i32) -> !;
    /// How the job was started, for the log ("1 process", "MPI: Open MPI v4.1.4, 2 ranks").
    fn describe(&self) -> String;
    fn is_root(&self) -> bool {
        self.rank() == 0
    }
}

/// A world of one: every collective is the identity.
pub struct Solo;

impl Collective for Solo {
    fn rank(&self) -> usize {
        0
    }
    fn world(&self) -> usize {
        1
    }
    fn local_rank(&self) -> usize {
        0
    }
    fn sum_f32(&self, _: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn sum_f64(&self, _: &mut [f64]) -> Result<()> {
        Ok(())
    }
    fn broadcast(&self, _: &mut Vec<u8>, _: usize) -> Result<()> {
        Ok(())
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
    fn describe(&self) -> String {
        "1 process".into()
    }
}

/// The world size an MPI launcher announced in the environment, if this process was started
/// by one (Open MPI's `OMPI_COMM_WORLD_SIZE`, MPICH's and Slurm's PMI `PMI_SIZE`, PMIx's
/// `PMIX_SIZE`, Slurm's `SLURM_NTASKS` under `srun`).
pub fn launched_world() -> Option<usize> {
    let srun = std::env::var_os("SLURM_STEP_ID").is_some();
    let vars: &[&str] = if srun { &["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "SLURM_NTASKS"] } else { &["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"] };
    vars.iter().find_map(|v| std::env::var(v).ok()?.trim().parse().ok())
}

/// Joins the job this process belongs to: MPI when a launcher started it (and this build
/// has MPI), a world of one otherwise.
pub fn init() -> Result<Arc<dyn Collective>> {
    match launched_world() {
        #[cfg(feature = "mpi")]
        Some(_) => Ok(Arc::new(mpi::Mpi::init()?)),
        #[cfg(not(feature = "mpi"))]
        Some(world) if world > 1 => Err(DistError::NotBuilt { world }),
        _ => Ok(Arc::new(Solo)),
    }
}

/// Replaces `buf` by its mean over all ranks.
pub fn mean_f32(c: &dyn Collective, buf: &mut [f32]) -> Result<()> {
    c.sum_f32(buf)?;
    if c.world() > 1 {
        let n = c.world() as f32;
        buf.iter_mut().for_each(|v| *v /= n);
    }
    Ok(())
}

/// Every rank's `mine`, in rank order, on every rank (one broadcast per rank: for small
/// pieces such as replay buffers or error reports, not for tensors).
pub fn all_gather_bytes(c: &dyn Collective, mine: &[u8]) -> Result<Vec<Vec<u8>>> {
    (0..c.world())
        .map(|r| {
            let mut buf = if r == c.rank() { mine.to_vec() } else { Vec::new() };
            c.broadcast(&mut buf, r)?;
            Ok(buf)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_world_of_one_changes_nothing() {
        let c = Solo;
        let mut v = vec![1.0, 2.0];
        mean_f32(&c, &mut v).unwrap();
        assert_eq!(v, vec![1.0, 2.0]);
        assert_eq!(all_gather_bytes(&c, b"abc").unwrap(), vec![b"abc".to_vec()]);
        assert!(c.is_root());
    }

    #[test]
    fn launchers_are_recognised_by_their_environment() {
        // Set by this test only (cargo runs tests in threads of one process: the variables
        // are read nowhere else in this crate's tests).
        std::env::remove_var("OMPI_COMM_WORLD_SIZE");
        std::env::remove_var("PMI_SIZE");
        std::env::remove_var("PMIX_SIZE");
        assert_eq!(launched_world(), None);
        std::env::set_var("PMI_SIZE", "4");
        assert_eq!(launched_world(), Some(4));
        std::env::remove_var("PMI_SIZE");
    }
}
