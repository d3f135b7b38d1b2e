//! Failpoints (TiKV's `fail` crate) at the node's durability points, compiled
//! only with the `failpoints` feature; without it [`failpoint!`] expands to
//! nothing and `fail` is not even a dependency (release builds and the bench
//! have none of it).
//!
//! The `ringfs-node` binary configures them from the `FAILPOINTS`
//! environment variable at start (`fail::FailScenario::setup`), e.g.
//! `FAILPOINTS='group_commit::before_fdatasync=1*off->1*return->off'` fails
//! the second fdatasync batch. The points:
//!
//! | point | where | `return` means |
//! | --- | --- | --- |
//! | `chunk_store::before_sync` | a write's data and header are written, not yet synced | the write fails unsynced |
//! | `chunk_store::before_apply` | the write is durable, its new metadata not yet applied or acknowledged | the write fails although durable |
//! | `group_commit::before_fdatasync` | a batch is about to be synced | the batch's writes fail unsynced |
//! | `group_commit::after_fdatasync` | a batch was synced | the batch's writes fail although durable |
//!
//! Any point also takes `pause` (block the shard, e.g. to kill -9 the
//! process right there), `sleep(ms)`, `panic` and the rest of `fail`'s
//! actions.

/// `fail::fail_point!` with the `failpoints` feature, nothing without it.
macro_rules! failpoint {
    ($name:expr) => {
        #[cfg(feature = "failpoints")]
        fail::fail_point!($name);
    };
    ($name:expr, $on_return:expr) => {
        #[cfg(feature = "failpoints")]
        fail::fail_point!($name, $on_return);
    };
}

/// The error a failpoint configured with `return` injects at `point`.
#[cfg(feature = "failpoints")]
pub(crate) fn injected(point: &str) -> std::io::Error {
    std::io::Error::other(format!("injected by failpoint {point}"))
}
