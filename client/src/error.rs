//! The client's one error type.

use std::sync::Arc;

use ringfs_schema::control_capnp::ErrorCode;
use ringfs_schema::wire_error;

/// Every failure a ringfs client can see, each with a message for people.
///
/// The variants named like a control-protocol error code carry the server's
/// message (storage nodes' refusals map to the same kinds); the others are
/// the client's own findings. Failures with an underlying Rust error (I/O,
/// RPC transport) keep it as their [`std::error::Error::source`]: their
/// message says what failed, the source why, so print the whole chain (as
/// `anyhow`'s `{:#}` does) to see both. Errors are cheap to clone and
/// compare (sources are shared, see [`Cause`]).
///
/// New variants may be added: match with a wildcard arm.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The path (or chunk, on a storage node) does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The path exists (exclusive create, mkdir).
    #[error("already exists: {0}")]
    Exists(String),
    /// A path component, or the target, is not a directory.
    #[error("not a directory: {0}")]
    NotDirectory(String),
    /// The target is a directory where a file is needed.
    #[error("is a directory: {0}")]
    IsDirectory(String),
    /// The directory to remove or replace has entries.
    #[error("directory not empty: {0}")]
    NotEmpty(String),
    /// A malformed or out-of-range argument, refused before anything changed.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Someone else holds what the call needs: the file's write lease (after
    /// waiting as long as asked) or a chunk's lock.
    #[error("busy: {0}")]
    Busy(String),
    /// The caller may not do this: mode bits or ownership refuse it, or it
    /// is the administrator's (or a wrong node key).
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The connection is not authenticated, or its credentials were
    /// refused (the message never says which part was wrong).
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// A write through a handle without the file's write lease (lost when
    /// the control server restarted).
    #[error("no write lease: {0}")]
    NoLease(String),
    /// A handle that is closed, or whose file was removed meanwhile.
    #[error("stale handle: {0}")]
    StaleHandle(String),
    /// The control server speaks another protocol version.
    #[error("protocol version mismatch: {0}")]
    VersionMismatch(String),
    /// The control replica asked is not the Raft leader (the message names
    /// the leader when known). The client finds the leader and calls again
    /// by itself; an application sees this only when no leader could be
    /// found in time, or from a write handle opened under an earlier
    /// leader (reopen the file).
    #[error("not the leader: {0}")]
    NotLeader(String),
    /// The control server or a storage node could not be reached, its
    /// connection broke, or it refused for now (stopping, not joined). The
    /// call did not take effect, except as documented for chunk writes.
    #[error("unavailable: {message}")]
    Unavailable {
        /// What could not be done.
        message: String,
        /// The I/O or RPC failure behind it, if one was seen here.
        #[source]
        source: Option<Cause>,
    },
    /// A broken expectation: a malformed reply, a server-side failure.
    #[error("internal error: {message}")]
    Internal {
        /// What went wrong.
        message: String,
        /// The failure behind it, if one was seen here.
        #[source]
        source: Option<Cause>,
    },
    /// No storage node has room (every reservation was refused).
    #[error("no space: {0}")]
    NoSpace(String),
    /// Stored data failed its checksum on every replica tried.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// A storage node did not answer in time (or a lock was not granted in
    /// time).
    #[error("timed out: {0}")]
    Timeout(String),
    /// A write reached fewer durable replicas than the file's write quorum.
    #[error("write quorum not reached: {0}")]
    Quorum(String),
    /// A replica is not at the chunk version a write or copy expected (it
    /// missed a write, or another one got there first): nothing was
    /// applied on it.
    #[error("stale replica: {0}")]
    StaleVersion(String),
    /// A storage node refused a request's capability as expired (or issued
    /// under a rotated key): the chunk records are fetched again, once,
    /// before an application sees this.
    #[error("capability expired: {0}")]
    CapabilityExpired(String),
    /// An integer descriptor that is not open (or not open for this).
    #[error("bad file descriptor: {0}")]
    BadDescriptor(String),
    /// The control-server connection dropped while a call that is not safe
    /// to repeat (mkdir, rmdir, unlink, rename, exclusive create) was in
    /// flight: it may or may not have taken effect. Look (`stat`) before
    /// trying again. The client has reconnected for later calls.
    #[error("outcome unknown: {message}")]
    OutcomeUnknown {
        /// Which call.
        message: String,
        /// The failure the call ended with.
        #[source]
        source: Box<Error>,
    },
}

impl Error {
    /// [`Error::Unavailable`] without a source.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::Unavailable {
            message: message.into(),
            source: None,
        }
    }

    /// [`Error::Unavailable`] caused by `source`.
    pub fn unavailable_from(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Unavailable {
            message: message.into(),
            source: Some(Cause::new(source)),
        }
    }

    /// Whether this is the control connection seen dropping by the RPC
    /// layer.
    pub(crate) fn is_disconnect(&self) -> bool {
        matches!(self, Error::Unavailable { source: Some(c), .. }
            if c.downcast_ref::<capnp::Error>()
                .is_some_and(|e| e.kind == capnp::ErrorKind::Disconnected))
    }

    /// [`Error::Internal`] without a source.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::Internal {
            message: message.into(),
            source: None,
        }
    }

    /// [`Error::Internal`] caused by `source`.
    pub fn internal_from(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Internal {
            message: message.into(),
            source: Some(Cause::new(source)),
        }
    }

    /// This error and its sources on one line (`a: b: c`), for messages
    /// that gather several failures.
    pub fn describe(&self) -> String {
        wire_error::describe(self)
    }
}

/// The underlying failure of an [`Error`] (an `std::io::Error`, a
/// `capnp::Error`, ...), shared so that errors stay cheap to clone. It is
/// the error's [`std::error::Error::source`], displays as the original and
/// continues its chain; [`Cause::downcast_ref`] reaches the original type.
/// Two causes are equal when they are the same or say the same.
#[derive(Clone)]
pub struct Cause(Arc<dyn std::error::Error + Send + Sync>);

impl Cause {
    /// Wraps `err`.
    pub fn new(err: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self(Arc::new(err))
    }

    /// The original error, if it is a `T`.
    pub fn downcast_ref<T: std::error::Error + 'static>(&self) -> Option<&T> {
        self.0.downcast_ref()
    }
}

impl std::fmt::Debug for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Cause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl PartialEq for Cause {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0.to_string() == other.0.to_string()
    }
}

impl Eq for Cause {}

macro_rules! wire_codes {
    ($($code:ident => $name:literal,)*) => {
        impl Error {
            /// The error the control server sent as `code` with `message`.
            fn from_wire(code: ErrorCode, message: String) -> Self {
                match code {
                    $(ErrorCode::$code => wire_codes!(@variant $code message),)*
                }
            }

            /// The wire code of the variant, if it is one named like a code.
            #[cfg(test)]
            fn wire_code(&self) -> Option<ErrorCode> {
                match self {
                    $(wire_codes!(@pattern $code) => Some(ErrorCode::$code),)*
                    _ => None,
                }
            }
        }
    };
    (@variant Unavailable $message:ident) => { Error::unavailable($message) };
    (@variant Internal $message:ident) => { Error::internal($message) };
    (@variant $code:ident $message:ident) => { Error::$code($message) };
    (@pattern Unavailable) => { Error::Unavailable { .. } };
    (@pattern Internal) => { Error::Internal { .. } };
    (@pattern $code:ident) => { Error::$code(_) };
}
ringfs_schema::with_error_codes!(wire_codes);

impl From<capnp::Error> for Error {
    /// A typed error the control server sent, or a transport failure (kept
    /// as the source).
    fn from(e: capnp::Error) -> Self {
        let d = wire_error::parse(&e);
        if d.coded {
            return Error::from_wire(d.code, d.message);
        }
        match d.code {
            ErrorCode::Unavailable => {
                Error::unavailable_from("the control-server connection failed", e)
            }
            _ => Error::internal_from("a control-server call failed", e),
        }
    }
}

impl From<capnp::NotInSchema> for Error {
    fn from(e: capnp::NotInSchema) -> Self {
        Error::internal(format!(
            "the server sent enum value {} unknown to this client",
            e.0
        ))
    }
}

impl From<std::str::Utf8Error> for Error {
    fn from(e: std::str::Utf8Error) -> Self {
        Error::internal_from("the server sent text that is not UTF-8", e)
    }
}

/// The result type of the client.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_wire_code_round_trips() {
        for (code, _) in wire_error::CODES {
            let e = Error::from(wire_error::encode(code, "the [server]'s words"));
            assert_eq!(e.wire_code(), Some(code), "{e:?}");
            assert!(e.to_string().ends_with(": the [server]'s words"), "{e}");
            assert!(std::error::Error::source(&e).is_none(), "{e:?}");
        }
    }

    #[test]
    fn a_transport_failure_keeps_its_source() {
        let e = Error::from(capnp::Error::disconnected("connection reset".into()));
        assert!(matches!(e, Error::Unavailable { .. }), "{e:?}");
        let source = std::error::Error::source(&e).unwrap();
        let cause = source.downcast_ref::<Cause>().unwrap();
        assert_eq!(
            cause.downcast_ref::<capnp::Error>().unwrap().kind,
            capnp::ErrorKind::Disconnected
        );
        assert_eq!(
            e.describe(),
            "unavailable: the control-server connection failed: Disconnected: connection reset"
        );
        assert!(e.is_disconnect());
        let failed = Error::from(capnp::Error::failed("no majority".into()));
        assert!(!failed.is_disconnect(), "{failed:?}");
        assert!(!Error::unavailable("stopping").is_disconnect());
    }

    #[test]
    fn errors_clone_and_compare_with_their_sources() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = Error::unavailable_from("cannot connect to storage node 10.0.0.1:7000", io);
        let unknown = Error::OutcomeUnknown {
            message: "mkdir /a".into(),
            source: Box::new(e.clone()),
        };
        assert_eq!(unknown.clone(), unknown);
        assert_ne!(
            e,
            Error::unavailable("cannot connect to storage node 10.0.0.1:7000")
        );
        assert_eq!(
            unknown.describe(),
            "outcome unknown: mkdir /a: unavailable: cannot connect to storage node \
             10.0.0.1:7000: refused"
        );
    }
}
