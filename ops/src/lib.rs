//! ringfs-ops: what the control server and the storage node share for
//! operations, kept out of `ringfs-schema` so that clients do not build it.
//!
//! - [`args`]: command-line parsing with the usual exit codes.
//! - [`config_file`]: parsing a config file, checking the data directory.
//! - [`logging`]: `tracing` to stderr as text or JSON, level from
//!   `RUST_LOG` or the `log-level` setting.
//! - [`http`]: the minimal GET-only HTTP responder behind `--metrics`
//!   (`/metrics`, `/healthz`, `/readyz`).

pub mod args;
pub mod config_file;
pub mod http;
pub mod logging;
