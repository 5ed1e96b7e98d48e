//! Setting up the CPU side of a run: the compute threads and the allocator's memory
//! retention. Two thread pools do the work: rayon's global pool (our kernels, gemm) and
//! candle's own barrier pool (its element-wise ops, sized from `RAYON_NUM_THREADS`).

/// mimalloc's `mi_option_purge_delay` (15 in every mimalloc since 1.x, where it was
/// `reset_delay`; the Rust bindings have no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Sizes both pools to `n` threads (all cores when `None`), stops candle's idle workers from
/// spinning, and keeps freed memory in the allocator. Call before any candle op runs: both
/// pools start on first use. Values the user exported are left alone.
///
/// - candle 0.11's pool workers spin 25,000 `pause`s after every element-wise op before
///   they sleep; with one thread per core that spinning takes the cores from the rayon
///   kernel that runs next (7 % of a ConvNeXt training step's samples).
/// - A training step frees and re-allocates the same activation and gradient buffers
///   every step; mimalloc returns freed memory to the OS after a delay and then takes the
///   page faults and kernel page zeroing again (8 % of the 32-px ConvNeXt step, with the
///   peak RSS unchanged when it keeps the memory: docs/performance.md).
pub fn configure(n: Option<usize>) -> Result<(), rayon::ThreadPoolBuildError> {
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "0");
    }
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one integer option; mimalloc reads it on each purge decision.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
    match n {
        Some(n) => {
            std::env::set_var("RAYON_NUM_THREADS", n.to_string());
            rayon::ThreadPoolBuilder::new().num_threads(n).build_global()
        }
        None => Ok(()),
    }
}
