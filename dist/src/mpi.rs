//! The job through the system's MPI, called through the small C shim in `csrc/et_mpi.c`.

use crate::watchdog::Watchdog;
use crate::{Collective, DistError, Result};
use std::ffi::{c_char, c_int, c_void};
use std::sync::Arc;

extern "C" {
    fn et_mpi_init(rank: *mut c_int, world: *mut c_int, local_rank: *mut c_int, local_size: *mut c_int) -> c_int;
    fn et_mpi_allreduce_f32(buf: *mut f32, n: i64) -> c_int;
    fn et_mpi_allreduce_f64(buf: *mut f64, n: i64) -> c_int;
    fn et_mpi_bcast(buf: *mut c_void, n: i64, root: c_int) -> c_int;
    fn et_mpi_barrier() -> c_int;
    fn et_mpi_abort(code: c_int);
    fn et_mpi_finalize() -> c_int;
    fn et_mpi_error_string(code: c_int, out: *mut c_char, len: c_int);
    fn et_mpi_library_version(out: *mut c_char, len: c_int);
}

fn text(fill: impl FnOnce(*mut c_char, c_int)) -> String {
    let mut buf = vec![0 as c_char; 512];
    fill(buf.as_mut_ptr(), buf.len() as c_int);
    let bytes: Vec<u8> = buf.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn check(call: &'static str, rc: c_int) -> Result<()> {
    if rc == 0 {
        return Ok(());
    }
    // SAFETY: the shim writes at most `len` bytes, NUL-terminated.
    let reason = text(|p, n| unsafe { et_mpi_error_string(rc, p, n) });
    Err(DistError::Mpi { call, reason })
}

pub struct Mpi {
    rank: usize,
    world: usize,
    local_rank: usize,
    library: String,
    watchdog: Arc<Watchdog>,
}

impl Mpi {
    /// `MPI_Init_thread` (funneled: only the training thread calls MPI), this rank's place.
    pub fn init() -> Result<Mpi> {
        let (mut rank, mut world, mut local_rank, mut local_size) = (0, 0, 0, 0);
        // SAFETY: four valid out-pointers; called once per process (`crate::init`).
        check("MPI_Init_thread", unsafe { et_mpi_init(&mut rank, &mut world, &mut local_rank, &mut local_size) })?;
        // SAFETY: as in `check`.
        let library = text(|p, n| unsafe { et_mpi_library_version(p, n) });
        let watchdog = Watchdog::start(rank as usize, crate::watchdog::timeout());
        Ok(Mpi { rank: rank as usize, world: world as usize, local_rank: local_rank as usize, library, watchdog })
    }
}

impl Collective for Mpi {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world(&self) -> usize {
        self.world
    }
    fn local_rank(&self) -> usize {
        self.local_rank
    }
    fn sum_f32(&self, buf: &mut [f32]) -> Result<()> {
        let _g = self.watchdog.enter();
        // SAFETY: `buf` is valid for `len` elements for the call.
        check("MPI_Allreduce", unsafe { et_mpi_allreduce_f32(buf.as_mut_ptr(), buf.len() as i64) })
    }
    fn sum_f64(&self, buf: &mut [f64]) -> Result<()> {
        let _g = self.watchdog.enter();
        // SAFETY: as above.
        check("MPI_Allreduce", unsafe { et_mpi_allreduce_f64(buf.as_mut_ptr(), buf.len() as i64) })
    }
    fn broadcast(&self, buf: &mut Vec<u8>, root: usize) -> Result<()> {
        let _g = self.watchdog.enter();
        let mut len = (buf.len() as u64).to_le_bytes();
        // SAFETY: 8 valid bytes, then `len` valid bytes once resized.
        check("MPI_Bcast", unsafe { et_mpi_bcast(len.as_mut_ptr().cast(), 8, root as c_int) })?;
        buf.resize(u64::from_le_bytes(len) as usize, 0);
        check("MPI_Bcast", unsafe { et_mpi_bcast(buf.as_mut_ptr().cast(), buf.len() as i64, root as c_int) })
    }
    fn barrier(&self) -> Result<()> {
        let _g = self.watchdog.enter();
        // SAFETY: no arguments.
        check("MPI_Barrier", unsafe { et_mpi_barrier() })
    }
    fn abort(&self, code: i32) -> ! {
        // SAFETY: ends the job; MPI_Abort does not return.
        unsafe { et_mpi_abort(code) };
        std::process::exit(code)
    }
    fn describe(&self) -> String {
        format!("MPI ({}), {} ranks", self.library.split(',').next().unwrap_or("").trim(), self.world)
    }
}

impl Drop for Mpi {
    fn drop(&mut self) {
        // SAFETY: the last MPI call of the process.
        unsafe { et_mpi_finalize() };
    }
}
