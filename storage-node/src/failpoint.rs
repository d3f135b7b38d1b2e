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
//! | `journal::before_write` | a write's journal record is about to be written | the write fails, nothing written; the journal refuses every later write until a restart |
//! | `journal::before_fdatasync` | a batch of journal records is about to be synced | the batch's writes fail unsynced; the journal refuses every later write until a restart |
//! | `chunk_store::before_apply` | a write's journal record is durable, its blocks not yet in place | the write fails although durable (a restart replays it); the chunk refuses later writes until a restart or a copy |
//! | `chunk_store::before_sync` | a direct write's blocks (past the chunk's end) are written, not yet synced | the write fails unsynced; the chunk refuses later writes until a restart or a copy |
//! | `group_commit::before_fdatasync` | a batch of direct writes' chunk files is about to be synced | the batch's writes fail unsynced |
//! | `group_commit::after_fdatasync` | a batch of direct writes' chunk files was synced | the batch's writes fail although durable |
//! | `journal::checkpoint_before_headers` | a checkpoint synced the chunk data, no header written yet | the checkpoint fails; the journal refuses every later write until a restart |
//! | `chunk_store::before_persist` | a write is checked and merged, nothing written | the write fails before writing anything (still forwarded) |
//! | `chunk_store::before_swap` | a replace's copy is written aside and synced, not swapped in | the replace fails; the old replica stays |
//! | `ops::fence` | an operation's lock is checked right before its disk I/O | the operation is refused as if its lock had lapsed |
//!
//! Points that take a number (`name=return(N)`):
//!
//! | point | N |
//! | --- | --- |
//! | `ops::write::after_authorize` | ms a write waits between its lock check and its store write (its lock may lapse meanwhile) |
//! | `chunk_store::slow_persist` | ms a write's local persist takes longer (its forward is not held up) |
//! | `replicate::before_send` | ms a copy command waits after reading its source, before sending |
//! | `peer::stall_send` | bytes of a forwarded frame sent before the send stalls for good (the forward timeout cuts it) |
//! | `ops::read::flip_bit` | (no number) a read's answer has a bit flipped after the node checked it |
//!
//! Any point also takes `pause` (block the shard, e.g. to kill -9 the
//! process right there), `sleep(ms)` (blocking the shard), `panic` and the
//! rest of `fail`'s actions; `3%return` fires on a share of the hits.

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

/// Sleeps (without blocking the shard) as long as failpoint `name` says:
/// `name=return(MS)`; nothing when it is off or without the feature.
pub(crate) async fn delay(name: &str) {
    #[cfg(feature = "failpoints")]
    if let Some(Some(ms)) = fail::eval(name, |arg| arg.and_then(|a| a.parse::<u64>().ok())) {
        glommio::timer::sleep(std::time::Duration::from_millis(ms)).await;
    }
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
}

/// The number failpoint `name` returns (`name=return(N)`), if it is on.
#[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
pub(crate) fn value(name: &str) -> Option<u64> {
    #[cfg(feature = "failpoints")]
    return fail::eval(name, |arg| arg.and_then(|a| a.parse::<u64>().ok())).flatten();
    #[cfg(not(feature = "failpoints"))]
    {
        let _ = name;
        None
    }
}
