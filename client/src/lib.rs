//! ringfs client library.
//!
//! [`control::ControlClient`] speaks the control server's Cap'n Proto RPC:
//! namespace operations, open handles and their chunk maps, membership and
//! the cluster map. It runs on a tokio `LocalSet` (capnp-rpc is
//! single-threaded).

pub mod control;
pub mod error;

pub use control::{
    Attr, ChunkRecord, ClusterMap, ControlClient, CreateOptions, FileHandle, Kind, NodeInfo,
};
pub use error::{Error, Result};
