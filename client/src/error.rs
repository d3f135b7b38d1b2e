//! The client's one error type.

use ringfs_schema::control_capnp::ErrorCode;
use ringfs_schema::wire_error;

/// Every failure a ringfs client can see, each with a message for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("not found: {0}")]
    NotFound(String),
    #[error("already exists: {0}")]
    Exists(String),
    #[error("not a directory: {0}")]
    NotDirectory(String),
    #[error("is a directory: {0}")]
    IsDirectory(String),
    #[error("directory not empty: {0}")]
    NotEmpty(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("busy: {0}")]
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
    #[error("internal error: {0}")]
    Internal(String),
    /// No storage node has room (every reservation was refused).
    #[error("no space: {0}")]
    NoSpace(String),
    /// Stored data failed its checksum on every replica tried.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    #[error("timed out: {0}")]
    Timeout(String),
    /// A write reached fewer durable replicas than the file's write quorum.
    #[error("write quorum not reached: {0}")]
    Quorum(String),
    /// An integer descriptor that is not open (or not open for this).
    #[error("bad file descriptor: {0}")]
    BadDescriptor(String),
}

impl From<capnp::Error> for Error {
    fn from(e: capnp::Error) -> Self {
        let (code, message) = wire_error::decode(&e);
        match code {
            ErrorCode::NotFound => Error::NotFound(message),
            ErrorCode::Exists => Error::Exists(message),
            ErrorCode::NotDirectory => Error::NotDirectory(message),
            ErrorCode::IsDirectory => Error::IsDirectory(message),
            ErrorCode::NotEmpty => Error::NotEmpty(message),
            ErrorCode::InvalidArgument => Error::InvalidArgument(message),
            ErrorCode::Busy => Error::Busy(message),
            ErrorCode::PermissionDenied => Error::PermissionDenied(message),
            ErrorCode::NoLease => Error::NoLease(message),
            ErrorCode::StaleHandle => Error::StaleHandle(message),
            ErrorCode::VersionMismatch => Error::VersionMismatch(message),
            ErrorCode::Unavailable => Error::Unavailable(message),
            ErrorCode::Internal => Error::Internal(message),
        }
    }
}

impl From<capnp::NotInSchema> for Error {
    fn from(e: capnp::NotInSchema) -> Self {
        Error::Internal(format!(
            "the server sent enum value {} unknown to this client",
            e.0
        ))
    }
}

impl From<std::str::Utf8Error> for Error {
    fn from(_: std::str::Utf8Error) -> Self {
        Error::Internal("the server sent text that is not UTF-8".into())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
