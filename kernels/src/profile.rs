//! `ET_PROFILE_BACKWARD=1`: after every backward pass, the ops that took the most time,
//! named by their input shapes, on standard error. Costs nothing when off.
//!
//! A backward step's time hides behind one number; split by op it shows where a resolution's
//! step stops scaling (this found Swin's subnormal stall: one layer's backward took ten times
//! its share at 160 px).

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Instant;

/// How many of the costliest ops each report lists.
const SHOWN: usize = 15;

fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("ET_PROFILE_BACKWARD").is_ok_and(|v| !v.is_empty() && v != "0"))
}

thread_local! {
    /// Seconds by op signature, for the backward pass running on this thread.
    static SPENT: RefCell<HashMap<String, f64>> = RefCell::new(HashMap::new());
}

/// Times `f` under `signature()` when profiling is on; otherwise just runs it.
pub(crate) fn timed<R>(signature: impl FnOnce() -> String, f: impl FnOnce() -> R) -> R {
    if !enabled() {
        return f();
    }
    let start = Instant::now();
    let r = f();
    let secs = start.elapsed().as_secs_f64();
    SPENT.with(|s| *s.borrow_mut().entry(signature()).or_insert(0.0) += secs);
    r
}

/// Prints this thread's totals, costliest first, and starts over.
pub(crate) fn report() {
    if !enabled() {
        return;
    }
    let mut rows: Vec<(f64, String)> = SPENT.with(|s| s.borrow_mut().drain().map(|(k, v)| (v, k)).collect());
    rows.sort_by(|a, b| b.0.total_cmp(&a.0));
    let total: f64 = rows.iter().map(|r| r.0).sum();
    eprintln!("backward profile: {total:.3} s in {} op kinds (by input shapes)", rows.len());
    for (secs, sig) in rows.iter().take(SHOWN) {
        eprintln!("  {secs:8.4} s {:5.1} %  {sig}", 100.0 * secs / total.max(f64::MIN_POSITIVE));
    }
}
