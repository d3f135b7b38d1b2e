//! The Cap'n Proto RPC service: the `Control` bootstrap capability
//! ([`control_impl`]), the open-file handles it returns ([`file_handle`]) and
//! cluster-map subscriptions ([`subscription`]); [`convert`] maps between
//! messages and the server's types.
//!
//! Everything here runs on one thread (capnp-rpc is single-threaded): reads
//! go straight to the store's MVCC snapshots, mutations go through the
//! group-commit writer thread and are answered once durable. The methods
//! parse and check their parameters, then call into [`State`] and the
//! store; they hold no state of their own beyond a handle's lease.

use std::rc::Rc;
use std::time::Duration;

use ringfs_schema::control_capnp::control;

use crate::cluster_state::State;

mod control_impl;
mod convert;
mod file_handle;
mod session;
mod subscription;
mod transaction;

pub use convert::now_ns;
pub(crate) use convert::{fill_command, read_command_result};

/// Most entries one `list` call returns.
pub const MAX_LIST: u32 = 10_000;
/// Entries a `list` call with limit 0 returns.
pub const DEFAULT_LIST: u32 = 1_000;
/// Most chunk records one `getChunks` or `commitChunks` call carries.
pub const MAX_CHUNKS_PER_CALL: u32 = 4_096;
/// Longest a write open may wait for the lease.
pub const MAX_WAIT: Duration = Duration::from_secs(300);
/// Most problems one `chunkHealth` call lists.
pub const MAX_PROBLEMS: u32 = 100_000;

/// The bootstrap capability to serve on one connection (each connection
/// gets its own: `hello` is per connection), with every call counted and
/// timed in `metrics` and passing the state's call gate.
pub fn bootstrap_metered(
    state: &Rc<State>,
    metrics: Rc<crate::metrics::ControlMetrics>,
) -> control::Client {
    crate::metrics::metered_client(
        control_impl::ControlImpl {
            state: state.clone(),
            session: Default::default(),
        },
        metrics,
        state.gate.clone(),
    )
}
