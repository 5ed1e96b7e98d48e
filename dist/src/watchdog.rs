//! Ends the process when a collective waits too long: another rank stopped or stalled, and
//! MPI itself would wait forever. Exiting (not aborting through MPI, which only the training
//! thread may call) is enough: the launcher sees a rank end and ends the job.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub(crate) struct Watchdog {
    /// Milliseconds since the epoch when the current collective started; 0 when none runs.
    since_ms: AtomicU64,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The timeout from `ET_DIST_TIMEOUT_S` (seconds), else 30 minutes.
pub(crate) fn timeout() -> Duration {
    let s = std::env::var("ET_DIST_TIMEOUT_S").ok().and_then(|v| v.trim().parse::<f64>().ok()).filter(|s| *s > 0.0).unwrap_or(1800.0);
    Duration::from_secs_f64(s)
}

impl Watchdog {
    /// Starts the watching thread for rank `rank`.
    pub(crate) fn start(rank: usize, timeout: Duration) -> Arc<Watchdog> {
        let w = Arc::new(Watchdog { since_ms: AtomicU64::new(0) });
        let watched = w.clone();
        let limit = timeout.as_millis() as u64;
        let spawned = std::thread::Builder::new().name("et-dist-watchdog".into()).spawn(move || loop {
            std::thread::sleep(Duration::from_millis(250.min(limit.max(1))));
            let since = watched.since_ms.load(Ordering::Relaxed);
            if since != 0 && now_ms().saturating_sub(since) > limit {
                eprintln!(
                    "et-train: rank {rank}: a collective operation waited more than {:.0} s for the other ranks (one stopped or stalled; ET_DIST_TIMEOUT_S sets the limit): ending the job",
                    limit as f64 / 1000.0
                );
                // SAFETY: ends the process at once; nothing of ours needs flushing.
                unsafe { libc::_exit(3) };
            }
        });
        if let Err(e) = spawned {
            eprintln!("et-train: rank {rank}: no watchdog for collectives ({e}): a stalled rank will not end the job");
        }
        w
    }

    /// Marks a collective as running until the guard drops.
    pub(crate) fn enter(&self) -> Guard<'_> {
        self.since_ms.store(now_ms().max(1), Ordering::Relaxed);
        Guard(self)
    }
}

pub(crate) struct Guard<'a>(&'a Watchdog);

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        self.0.since_ms.store(0, Ordering::Relaxed);
    }
}
