//! State shared between the load threads and the monitor of a running
//! workload: completed operations and bytes (for the per-second timeline
//! and the progress line), the op budget, and the stop flag.
//!
//! Counters are relaxed atomics: they are read for progress, never for
//! correctness. Final figures come from each thread's own histogram.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// When a timed workload ends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Limit {
    /// This many operations in total, over all threads.
    Ops(u64),
    /// Operations stop being started after this long.
    Duration(Duration),
}

/// Progress of the running workload.
#[derive(Debug)]
pub struct Live {
    ops: AtomicU64,
    bytes: AtomicU64,
    started_ops: AtomicU64,
    stop: AtomicBool,
    limit: Limit,
    t0: Instant,
}

impl Live {
    pub fn new(limit: Limit) -> Self {
        Live {
            ops: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            started_ops: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            limit,
            t0: Instant::now(),
        }
    }

    /// Records a completed operation of `bytes` bytes.
    pub fn done(&self, bytes: u64) {
        self.ops.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// (operations, bytes) completed so far.
    pub fn totals(&self) -> (u64, u64) {
        (
            self.ops.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }

    /// Whether another operation may start: the budget is not spent and
    /// nobody asked to stop.
    pub fn claim(&self) -> bool {
        if self.stop.load(Ordering::Relaxed) {
            return false;
        }
        match self.limit {
            Limit::Ops(n) => self.started_ops.fetch_add(1, Ordering::Relaxed) < n,
            Limit::Duration(d) => self.t0.elapsed() < d,
        }
    }

    /// Asks every load thread to stop after its current operation.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> Limit {
        self.limit
    }
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// From now on SIGINT and SIGTERM only set a flag ([`interrupted`]), so the
/// launcher can stop the load and tear the cluster down itself.
pub fn catch_interrupts() {
    let handler = on_interrupt as extern "C" fn(libc::c_int);
    // SAFETY: the handler only stores to an atomic, which is
    // async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
        libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
    }
}

/// Whether SIGINT or SIGTERM arrived since [`catch_interrupts`].
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_op_budget_is_shared_and_exact() {
        let live = Live::new(Limit::Ops(5));
        assert_eq!((0..10).filter(|_| live.claim()).count(), 5);
    }

    #[test]
    fn stop_ends_claims() {
        let live = Live::new(Limit::Duration(Duration::from_secs(60)));
        assert!(live.claim());
        live.stop();
        assert!(!live.claim());
    }
}
