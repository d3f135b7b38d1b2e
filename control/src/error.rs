//! The control server's error type. Every variant maps to one wire
//! [`ErrorCode`] so clients in any language get a typed error; the mapping
//! is generated from the one list of codes in `ringfs-schema`
//! ([`ringfs_schema::with_error_codes!`]).

use std::sync::Arc;

use ringfs_schema::control_capnp::ErrorCode;
use ringfs_schema::wire_error;

/// Errors of the control server and its metadata store.
///
/// The variants named like an [`ErrorCode`] are refusals a client caused or
/// must handle, sent with that code. [`ControlError::Store`],
/// [`ControlError::Corrupt`] and [`ControlError::Io`] are failures of the
/// server itself, sent as `internal`. Cloning is cheap: sources are shared,
/// so a failed group commit can answer every caller of its batch.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ControlError {
    /// A server-side failure without a more specific kind (a broken
    /// internal expectation).
    #[error("internal error: {0}")]
    Internal(String),
    /// The path (or node, or record) does not exist.
    #[error("{0}: no such file or directory")]
    NotFound(String),
    /// The path exists (exclusive create, mkdir, ...).
    #[error("{0}: already exists")]
    Exists(String),
    /// A path component, or the target, is not a directory.
    #[error("{0}: not a directory")]
    NotDirectory(String),
    /// The target is a directory where a file is needed.
    #[error("{0}: is a directory")]
    IsDirectory(String),
    /// The directory to remove or replace has entries.
    #[error("{0}: directory not empty")]
    NotEmpty(String),
    /// A malformed or out-of-range request.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Another client holds what this call needs (the write lease).
    #[error("{0}")]
    Busy(String),
    /// The principal of the call may not do it (mode bits, ownership, an
    /// administrator's call), or a wrong node key.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The connection has no authenticated principal, or its credentials
    /// were refused (never saying which part of them was wrong).
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// A write through a handle without the file's write lease.
    #[error("no write lease: {0}")]
    NoLease(String),
    /// A handle that is closed, or whose file was removed.
    #[error("stale handle: {0}")]
    StaleHandle(String),
    /// The peer speaks another protocol version.
    #[error("protocol version mismatch: {0}")]
    VersionMismatch(String),
    /// This replica is not the Raft leader: the call needs the leader. The
    /// message names the leader when one is known.
    #[error("not the leader: {0}")]
    NotLeader(String),
    /// The server cannot serve the call now (stopping, writer gone).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// redb failed: the metadata store could not be read or written. A
    /// mutation batch that meets it is aborted as a whole. The source is
    /// the `Arc<redb::Error>`.
    #[error("metadata store")]
    Store(#[source] Arc<redb::Error>),
    /// A stored record does not decode, or the records disagree (an entry
    /// pointing to a missing inode, a missing counter).
    #[error("corrupt metadata record {record}: {problem}")]
    Corrupt {
        /// Which record, e.g. `inode 42` or `chunk (42, 3)`.
        record: String,
        /// What is wrong with it.
        problem: String,
    },
    /// An operating-system call of the server process failed (its data
    /// directory, a listening socket).
    #[error("{context}")]
    Io {
        /// What the server was doing.
        context: String,
        /// The failure.
        #[source]
        source: Arc<std::io::Error>,
    },
}

impl ControlError {
    /// A [`ControlError::Corrupt`] about `record`.
    pub fn corrupt(record: impl std::fmt::Display, problem: impl std::fmt::Display) -> Self {
        Self::Corrupt {
            record: record.to_string(),
            problem: problem.to_string(),
        }
    }

    /// A [`ControlError::Io`]: `source` failed while doing `context`.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source: Arc::new(source),
        }
    }

    /// Whether this error means the store itself failed, so that a
    /// transaction that met it may hold partial writes and must be
    /// aborted, rather than a refusal checked before any write.
    pub fn is_storage_failure(&self) -> bool {
        matches!(
            self,
            Self::Store(_) | Self::Corrupt { .. } | Self::Io { .. }
        )
    }
}

macro_rules! wire_codes {
    ($($code:ident => $name:literal,)*) => {
        impl ControlError {
            /// The wire code of this error.
            pub fn code(&self) -> ErrorCode {
                match self {
                    $(Self::$code(_) => ErrorCode::$code,)*
                    Self::Store(_) | Self::Corrupt { .. } | Self::Io { .. } => ErrorCode::Internal,
                }
            }

            /// An error of the variant named like `code`.
            pub fn with_code(code: ErrorCode, message: String) -> Self {
                match code {
                    $(ErrorCode::$code => Self::$code(message),)*
                }
            }

            /// A refusal's code and message (what [`ControlError::with_code`]
            /// rebuilds it from); `None` for failures of the server itself.
            pub fn refusal(&self) -> Option<(ErrorCode, &str)> {
                match self {
                    $(Self::$code(m) => Some((ErrorCode::$code, m.as_str())),)*
                    Self::Store(_) | Self::Corrupt { .. } | Self::Io { .. } => None,
                }
            }
        }
    };
}
ringfs_schema::with_error_codes!(wire_codes);

impl From<ControlError> for capnp::Error {
    fn from(e: ControlError) -> Self {
        wire_error::encode_error(e.code(), &e)
    }
}

impl From<capnp::Error> for ControlError {
    /// Malformed Cap'n Proto input from a peer (bad pointers, bad text).
    fn from(e: capnp::Error) -> Self {
        ControlError::InvalidArgument(e.extra)
    }
}

impl From<capnp::NotInSchema> for ControlError {
    fn from(e: capnp::NotInSchema) -> Self {
        ControlError::InvalidArgument(format!("enum value {} is not in the schema", e.0))
    }
}

macro_rules! store_error {
    ($($t:ty),*) => {$(
        impl From<$t> for ControlError {
            fn from(e: $t) -> Self {
                ControlError::Store(Arc::new(e.into()))
            }
        }
    )*};
}
store_error!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// The result type of the control server.
pub type Result<T, E = ControlError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_wire_code_has_a_variant_that_round_trips() {
        for (code, _) in wire_error::CODES {
            let e = ControlError::with_code(code, "x".into());
            assert_eq!(e.code(), code);
            let d = wire_error::parse(&capnp::Error::from(e.clone()));
            assert_eq!((d.code, d.message, d.coded), (code, e.to_string(), true));
        }
    }

    #[test]
    fn a_store_error_keeps_its_source_and_sends_it() {
        let e = ControlError::from(redb::StorageError::Io(std::io::Error::other(
            "disk on fire",
        )));
        assert_eq!(e.code(), ErrorCode::Internal);
        assert!(e.is_storage_failure());
        let source = std::error::Error::source(&e).expect("the redb error");
        assert!(source.downcast_ref::<Arc<redb::Error>>().is_some());
        let (_, message) = wire_error::decode(&capnp::Error::from(e));
        assert!(
            message.starts_with("metadata store: ") && message.contains("disk on fire"),
            "{message}"
        );
    }
}
