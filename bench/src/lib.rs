//! ringfs-bench: the load generator and local-cluster launcher.
//!
//! - [`process`]: starting ringfs servers as child processes on loopback.
//! - [`stats`]: latency histograms and CPU time from /proc.
//! - [`metadata`]: the metadata workload (durable creates, stats, unlinks).
//! - [`node_bench`]: one storage node over loopback against the raw disk
//!   ([`raw_disk`]: io_uring + O_DIRECT baseline).

pub mod metadata;
pub mod node_bench;
pub mod process;
pub mod raw_disk;
pub mod stats;

/// Runs `f` on a current-thread runtime inside a `LocalSet`, as the
/// client's RPC needs.
pub fn local<F: std::future::Future>(f: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    tokio::task::LocalSet::new().block_on(&rt, f)
}
