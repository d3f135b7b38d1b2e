//! ringfs-bench: the load generator and local-cluster launcher.
//!
//! - [`cluster`]: a control server and storage nodes as child processes on
//!   loopback (each started with `ringfs_ops::launch`).
//! - [`suite`]: runs workloads one after another under a monitor, each with
//!   its raw-disk baseline ([`raw_disk`]: io_uring + O_DIRECT).
//! - [`workload`]: the workloads, through the client library or ([`posix`])
//!   file calls on any mounted file system; [`dataset`]:
//!   what they write and how reads are verified; [`metadata`]: the
//!   create/stat/unlink workload; [`live`]: progress shared with the monitor.
//! - [`report`]: figures, JSON and table; [`plot`]: the SVG picture;
//!   [`stats`]: latency histograms and CPU time from /proc.
//! - [`fio`]: fio through a ringfs mount and on the raw disk.
//! - [`node_bench`]: one storage node over its data-plane protocol against
//!   the raw disk.

pub mod cluster;
pub mod dataset;
pub mod failover;
pub mod fio;
pub mod live;
pub mod metadata;
pub mod node_bench;
pub mod plot;
pub mod posix;
pub mod raw_disk;
pub mod report;
pub mod stats;
pub mod suite;
pub mod tls;
pub mod workload;

/// Runs a future on a current-thread runtime inside a `LocalSet`, as the
/// client's RPC needs (the client library's own helper).
pub use ringfs_client::local;
