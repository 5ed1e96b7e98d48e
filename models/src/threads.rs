//! The CPU compute threads. Two pools do the work: rayon's global pool (our kernels, gemm)
//! and candle's own barrier pool (its element-wise ops, sized from `RAYON_NUM_THREADS`).

/// Sizes both pools to `n` threads (all cores when `None`) and stops candle's idle workers
/// from spinning. candle 0.11's pool workers spin 25,000 `pause`s after every element-wise
/// op before they sleep; with one thread per core that spinning takes the cores from the
/// rayon kernel that runs next (7 % of a ConvNeXt training step's samples, and ~7 % more
/// img/s without it, docs/performance.md). A value the user exported is left alone.
/// Call before any candle op runs: both pools start on first use.
pub fn configure(n: Option<usize>) -> Result<(), rayon::ThreadPoolBuildError> {
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "0");
    }
    match n {
        Some(n) => {
            std::env::set_var("RAYON_NUM_THREADS", n.to_string());
            rayon::ThreadPoolBuilder::new().num_threads(n).build_global()
        }
        None => Ok(()),
    }
}
