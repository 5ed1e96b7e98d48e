//! Setting up the CPU side of a run: the compute threads and the allocator's memory
//! retention. Two thread pools do the work: rayon's global pool (our kernels, gemm) and
//! candle's own barrier pool (its element-wise ops, sized from `RAYON_NUM_THREADS`).

/// mimalloc's `mi_option_purge_delay` (15 in every mimalloc since 1.x, where it was
/// `reset_delay`; the Rust bindings have no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Sizes both pools to `n` threads (all cores when `None`), stops candle's idle workers from
/// spinning, keeps freed memory in the allocator and flushes subnormal floats to zero
/// ([`flush_subnormals`]). Call before any candle op runs: both pools start on first use,
/// and their threads inherit the calling thread's floating-point mode. Values the user
/// exported are left alone.
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
    if std::env::var("ET_KEEP_SUBNORMALS").map_or(true, |v| v.is_empty() || v == "0") {
        flush_subnormals();
    }
    match n {
        Some(n) => {
            std::env::set_var("RAYON_NUM_THREADS", n.to_string());
            rayon::ThreadPoolBuilder::new().num_threads(n).build_global()
        }
        None => Ok(()),
    }
}

/// Makes this thread, and every thread it starts from now on, treat subnormal floats (below
/// 1.2e-38 in f32) as zero, as inputs and as results: x86's FTZ and DAZ bits, aarch64's FZ.
///
/// x86 cores take a microcode assist of about a hundred cycles for every subnormal operand
/// or result. Swin's shifted-window mask (−100) leaves softmax probabilities of e^−100 ≈
/// 4e-44 — subnormal — and their gradients carry on into the qkv layer's matrix products:
/// at 160 px a Swin-T backward step spent half its time in those assists. Flushed, the
/// values become 0, as they would in any sum they take part in; TensorFlow runs its CPU
/// threads the same way. `ET_KEEP_SUBNORMALS=1` turns it off.
pub fn flush_subnormals() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: reads MXCSR into a local and writes it back with two control bits set.
    unsafe {
        let mut csr: u32 = 0;
        std::arch::asm!("stmxcsr [{}]", in(reg) &mut csr, options(nostack, preserves_flags));
        csr |= FTZ_DAZ;
        std::arch::asm!("ldmxcsr [{}]", in(reg) &csr, options(nostack, readonly, preserves_flags));
    }
    #[cfg(target_arch = "aarch64")]
    // SAFETY: reads FPCR and writes it back with the flush-to-zero bit set.
    unsafe {
        let fpcr: u64;
        std::arch::asm!("mrs {}, fpcr", out(reg) fpcr, options(nomem, nostack, preserves_flags));
        std::arch::asm!("msr fpcr, {}", in(reg) fpcr | (1 << 24), options(nomem, nostack, preserves_flags));
    }
}

/// MXCSR's flush-to-zero (results) and denormals-are-zero (inputs) bits.
#[cfg(target_arch = "x86_64")]
const FTZ_DAZ: u32 = (1 << 15) | (1 << 6);

/// Whether subnormal results are flushed to zero on this thread: computes one at run time.
pub fn subnormals_flushed() -> bool {
    let tiny = std::hint::black_box(f32::MIN_POSITIVE);
    std::hint::black_box(tiny) / 4.0 == 0.0
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Threads started after the switch inherit it: rayon's and candle's pools start later.
    #[test]
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    fn flushing_reaches_threads_started_afterwards() {
        std::thread::spawn(|| {
            assert!(!subnormals_flushed(), "a fresh thread keeps subnormals by default");
            flush_subnormals();
            assert!(subnormals_flushed());
            let child = std::thread::spawn(subnormals_flushed).join().unwrap();
            assert!(child, "a thread started after flush_subnormals() must inherit it");
        })
        .join()
        .unwrap();
    }
}
