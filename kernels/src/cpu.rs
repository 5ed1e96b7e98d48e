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

/// Bytes of memory this process may still take: the kernel's `MemAvailable`, or less where a
/// cgroup (a container's, a batch job's) sets a lower limit. `None` where neither can be read.
pub fn available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok().and_then(|t| {
        let line = t.lines().find(|l| l.starts_with("MemAvailable:"))?;
        line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kib| kib * 1024)
    });
    let read = |p: &str| std::fs::read_to_string(p).ok().and_then(|s| s.trim().parse::<u64>().ok());
    // cgroup v2, then v1; "max" (no limit) does not parse and counts as none.
    let cgroup = match (read("/sys/fs/cgroup/memory.max"), read("/sys/fs/cgroup/memory.current")) {
        (Some(max), Some(cur)) => Some(max.saturating_sub(cur)),
        _ => match (read("/sys/fs/cgroup/memory/memory.limit_in_bytes"), read("/sys/fs/cgroup/memory/memory.usage_in_bytes")) {
            (Some(max), Some(cur)) if max < (1 << 60) => Some(max.saturating_sub(cur)),
            _ => None,
        },
    };
    match (meminfo, cgroup) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Whether a run should check its memory needs before it starts (`ET_MEMORY_CHECK=0` turns
/// the check off, for a machine whose limits the estimate misreads).
pub fn memory_check_enabled() -> bool {
    std::env::var("ET_MEMORY_CHECK").map_or(true, |v| v != "0")
}
