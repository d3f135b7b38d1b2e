//! ringfs-ops: what the ringfs binaries share for operations, kept out of
//! `ringfs-schema` so that client libraries do not build it. Only
//! [`auth`], [`flag_file`] and [`config_file`] are built without the `server`
//! feature (the `ringfs` CLI needs nothing else).
//!
//! - [`auth`]: credentials (user and key), their files and the proofs of
//!   the control plane's challenge-response authentication.
//! - [`flag_file`]: a TOML config file for the command-line tools, its
//!   keys being their long flags.
//! - [`args`]: command-line parsing with the usual exit codes.
//! - [`config_file`]: parsing a config file, checking the data directory.
//! - [`logging`]: `tracing` to stderr as text or JSON, level from
//!   `RUST_LOG` or the `log-level` setting.
//! - [`http`]: the minimal GET-only HTTP responder behind `--metrics`
//!   (`/metrics`, `/healthz`, `/readyz`).
//! - [`tls`] (feature `tls`): the cluster CA, certificates and keys, and
//!   the rustls configurations built from them.
//! - [`transport`] (feature `tls`): the one place connections are made
//!   and accepted (plaintext or TLS) and Cap'n Proto RPC runs over them.
//! - [`launch`] (feature `launch`): starting the servers as child
//!   processes, for the bench's local cluster and the test kit.

#[cfg(feature = "server")]
pub mod args;
pub mod auth;
pub mod capability;
pub mod config_file;
pub mod flag_file;
#[cfg(feature = "server")]
pub mod http;
#[cfg(feature = "launch")]
pub mod launch;
#[cfg(feature = "server")]
pub mod logging;
#[cfg(feature = "tls")]
pub mod tls;
#[cfg(feature = "tls")]
pub mod transport;
