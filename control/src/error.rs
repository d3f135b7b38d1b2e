//! The control server's error type. Every variant maps to one wire
//! [`ErrorCode`] so clients in any language get a typed error.

use ringfs_schema::control_capnp::ErrorCode;
use ringfs_schema::wire_error;

/// Errors of the control server and its metadata store.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{0}: no such file or directory")]
    NotFound(String),
    #[error("{0}: already exists")]
    Exists(String),
    #[error("{0}: not a directory")]
    NotDirectory(String),
    #[error("{0}: is a directory")]
    IsDirectory(String),
    #[error("{0}: directory not empty")]
    NotEmpty(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("{0}")]
    Busy(String),
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    #[error("no write lease: {0}")]
    NoLease(String),
    #[error("stale handle: {0}")]
    StaleHandle(String),
    #[error("protocol version mismatch: {0}")]
    VersionMismatch(String),
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("metadata store: {0}")]
    Store(String),
    #[error("corrupt metadata record: {0}")]
    Corrupt(String),
}

impl ControlError {
    /// The wire code of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::NotFound(_) => ErrorCode::NotFound,
            Self::Exists(_) => ErrorCode::Exists,
            Self::NotDirectory(_) => ErrorCode::NotDirectory,
            Self::IsDirectory(_) => ErrorCode::IsDirectory,
            Self::NotEmpty(_) => ErrorCode::NotEmpty,
            Self::InvalidArgument(_) => ErrorCode::InvalidArgument,
            Self::Busy(_) => ErrorCode::Busy,
            Self::PermissionDenied(_) => ErrorCode::PermissionDenied,
            Self::NoLease(_) => ErrorCode::NoLease,
            Self::StaleHandle(_) => ErrorCode::StaleHandle,
            Self::VersionMismatch(_) => ErrorCode::VersionMismatch,
            Self::Unavailable(_) => ErrorCode::Unavailable,
            Self::Store(_) | Self::Corrupt(_) => ErrorCode::Internal,
        }
    }
}

impl From<ControlError> for capnp::Error {
    fn from(e: ControlError) -> Self {
        wire_error::encode(e.code(), &e.to_string())
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
                ControlError::Store(e.to_string())
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

pub type Result<T, E = ControlError> = std::result::Result<T, E>;
