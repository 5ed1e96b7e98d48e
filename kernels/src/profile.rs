//! `ET_PROFILE=1`: before every backward pass, the forward ops that took the most time (by
//! the `CandleOps` method's source line and first input's shape), and after it the backward
//! ops (by their inputs' shapes), on standard error. Costs nothing when off.
//!
//! A backward step's time hides behind one number; split by op it shows where a resolution's
//! step stops scaling (this found Swin's subnormal stall: one layer's backward took ten times
//! its share at 160 px).

use std::cell::{Cell, RefCell};
use std::panic::Location;
use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Instant;

/// How many of the costliest ops each report lists.
const SHOWN: usize = 15;

fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("ET_PROFILE").is_ok_and(|v| !v.is_empty() && v != "0"))
}

thread_local! {
    /// Seconds by op signature, for the backward pass running on this thread.
    static SPENT: RefCell<HashMap<String, f64>> = RefCell::new(HashMap::new());
    /// The same for forward ops, and how deep in nested ops this thread is.
    static FORWARD: RefCell<HashMap<String, f64>> = RefCell::new(HashMap::new());
    static DEPTH: Cell<usize> = const { Cell::new(0) };
}

/// Times an outermost forward op from its creation to its drop.
pub(crate) struct Span(Option<(Instant, String)>);

/// A span for the op at `at` whose first input has shape `dims`; ops it calls in turn count
/// as part of it.
pub(crate) fn span(at: &'static Location<'static>, dims: &[usize]) -> Span {
    if !enabled() {
        return Span(None);
    }
    let depth = DEPTH.with(|d| d.replace(d.get() + 1));
    Span((depth == 0).then(|| (Instant::now(), format!("{}:{} {dims:?}", at.file().rsplit('/').next().unwrap_or(""), at.line()))))
}

impl Drop for Span {
    fn drop(&mut self) {
        if !enabled() {
            return;
        }
        DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
        if let Some((start, sig)) = self.0.take() {
            let secs = start.elapsed().as_secs_f64();
            FORWARD.with(|s| *s.borrow_mut().entry(sig).or_insert(0.0) += secs);
        }
    }
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

/// Prints this thread's forward totals, costliest first, and starts over.
pub(crate) fn report_forward() {
    if enabled() {
        print("forward profile", "by CandleOps source line, first input's shape", &FORWARD);
    }
}

/// Prints this thread's backward totals, costliest first, and starts over.
pub(crate) fn report() {
    if enabled() {
        print("backward profile", "by input shapes", &SPENT);
    }
}

fn print(title: &str, key: &str, table: &'static std::thread::LocalKey<RefCell<HashMap<String, f64>>>) {
    let mut rows: Vec<(f64, String)> = table.with(|s| s.borrow_mut().drain().map(|(k, v)| (v, k)).collect());
    rows.sort_by(|a, b| b.0.total_cmp(&a.0));
    let total: f64 = rows.iter().map(|r| r.0).sum();
    eprintln!("{title}: {total:.3} s in {} op kinds ({key})", rows.len());
    for (secs, sig) in rows.iter().take(SHOWN) {
        eprintln!("  {secs:8.4} s {:5.1} %  {sig}", 100.0 * secs / total.max(f64::MIN_POSITIVE));
    }
}
