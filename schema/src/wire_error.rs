//! How typed errors cross the control RPC: a Cap'n Proto exception whose
//! description contains `[code] message`, `code` being the snake_case name of
//! an [`ErrorCode`]. Any language can parse it; Rust uses [`encode`] and
//! [`decode`].
//!
//! The codes and their wire names are one list, [`with_error_codes!`]: this
//! module, the control server's error type and the client's error type all
//! generate their mappings from it, so a code cannot be added to one side
//! and forgotten on another (a missing variant or name fails to compile).

use crate::control_capnp::ErrorCode;

/// Hands the one list of wire error codes to `$callback!`, as
/// `Variant => "wire_name",` entries in schema order, where `Variant` is
/// both the [`ErrorCode`] variant and the name of the error variant each
/// side maps it to.
///
/// A code added to `control.capnp` must be added here: [`code_name`] is an
/// exhaustive `match` generated from this list and fails to compile
/// otherwise. Once it is here, the control server's `ControlError::code`
/// and the client's `Error` mapping are generated from the same entry and
/// fail to compile until both have a variant of that name.
#[macro_export]
macro_rules! with_error_codes {
    ($callback:ident) => {
        $callback! {
            Internal => "internal",
            NotFound => "not_found",
            Exists => "exists",
            NotDirectory => "not_directory",
            IsDirectory => "is_directory",
            NotEmpty => "not_empty",
            InvalidArgument => "invalid_argument",
            Busy => "busy",
            PermissionDenied => "permission_denied",
            NoLease => "no_lease",
            Unavailable => "unavailable",
            StaleHandle => "stale_handle",
            VersionMismatch => "version_mismatch",
            NotLeader => "not_leader",
            Unauthenticated => "unauthenticated",
        }
    };
}

macro_rules! name_table {
    ($($code:ident => $name:literal,)*) => {
        /// Every code with its wire name, in schema order.
        pub const CODES: [(ErrorCode, &str); [$($name),*].len()] =
            [$((ErrorCode::$code, $name)),*];

        /// The wire name of `code`, e.g. `not_found`.
        pub fn code_name(code: ErrorCode) -> &'static str {
            match code {
                $(ErrorCode::$code => $name,)*
            }
        }
    };
}
with_error_codes!(name_table);

/// A Cap'n Proto exception carrying `code` and `message`.
pub fn encode(code: ErrorCode, message: &str) -> capnp::Error {
    capnp::Error::failed(format!("[{}] {message}", code_name(code)))
}

/// A Cap'n Proto exception carrying `code` and `err` with its whole chain of
/// sources as the message (see [`describe`]): the peer sees the cause, not
/// only the outermost context.
pub fn encode_error(code: ErrorCode, err: &dyn std::error::Error) -> capnp::Error {
    encode(code, &describe(err))
}

/// `err` and each of its sources, joined by `": "`: the one-line form for
/// wire messages and logs, where only a string travels.
pub fn describe(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut next = err.source();
    while let Some(e) = next {
        out.push_str(": ");
        out.push_str(&e.to_string());
        next = e.source();
    }
    out
}

/// A parsed exception: see [`parse`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decoded {
    /// The error code.
    pub code: ErrorCode,
    /// The message: the peer's own for a coded exception, else the whole
    /// description.
    pub message: String,
    /// Whether the exception carried a `[code]` (false for transport
    /// failures, disconnects and peers that do not use the convention).
    pub coded: bool,
}

/// The code and message of an exception made by [`encode`]. Exceptions
/// without a code (transport failures, disconnects) map to
/// [`ErrorCode::Unavailable`] when the peer is gone and
/// [`ErrorCode::Internal`] otherwise, with the whole description as message.
pub fn decode(err: &capnp::Error) -> (ErrorCode, String) {
    let d = parse(err);
    (d.code, d.message)
}

/// Like [`decode`], and says whether the exception carried a code: one
/// without (`coded` false) is a transport failure whose `err` is worth
/// keeping as the source of the caller's error.
pub fn parse(err: &capnp::Error) -> Decoded {
    let desc = err.extra.as_str();
    if let Some(start) = desc.find('[') {
        if let Some(len) = desc[start + 1..].find("] ") {
            let name = &desc[start + 1..start + 1 + len];
            if let Some((code, _)) = CODES.iter().find(|(_, n)| *n == name) {
                return Decoded {
                    code: *code,
                    message: desc[start + len + 3..].to_string(),
                    coded: true,
                };
            }
        }
    }
    let code = match err.kind {
        capnp::ErrorKind::Disconnected | capnp::ErrorKind::Overloaded => ErrorCode::Unavailable,
        _ => ErrorCode::Internal,
    };
    Decoded {
        code,
        message: desc.to_string(),
        coded: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every value of the generated enum, found without the list above.
    fn schema_codes() -> Vec<ErrorCode> {
        (0..=u16::MAX)
            .filter_map(|v| ErrorCode::try_from(v).ok())
            .collect()
    }

    #[test]
    fn the_list_holds_every_schema_code_once() {
        let listed: Vec<ErrorCode> = CODES.iter().map(|(c, _)| *c).collect();
        assert_eq!(listed, schema_codes());
        for (i, (_, name)) in CODES.iter().enumerate() {
            assert!(CODES[..i].iter().all(|(_, n)| n != name), "{name} twice");
        }
    }

    #[test]
    fn round_trips_every_code() {
        for code in schema_codes() {
            let d = parse(&encode(code, "a [b] message"));
            assert_eq!(
                d,
                Decoded {
                    code,
                    message: "a [b] message".into(),
                    coded: true
                }
            );
        }
    }

    #[test]
    fn survives_the_remote_prefix_capnp_rpc_adds() {
        let mut err = encode(ErrorCode::Busy, "file is open for writing");
        err.extra = format!("remote exception: {}", err.extra);
        let d = parse(&err);
        assert_eq!(
            (d.code, d.message.as_str(), d.coded),
            (ErrorCode::Busy, "file is open for writing", true)
        );
        assert_eq!(
            decode(&err),
            (ErrorCode::Busy, "file is open for writing".to_string())
        );
    }

    #[test]
    fn uncoded_disconnect_is_unavailable() {
        let err = capnp::Error::disconnected("connection reset".into());
        let d = parse(&err);
        assert_eq!((d.code, d.coded), (ErrorCode::Unavailable, false));
        assert_eq!(d.message, "connection reset");
    }

    #[test]
    fn an_unknown_code_is_not_taken_for_a_code() {
        let d = parse(&capnp::Error::failed("[no_such_code] x".into()));
        assert_eq!((d.code, d.coded), (ErrorCode::Internal, false));
    }

    #[test]
    fn encode_error_sends_the_sources() {
        #[derive(Debug, thiserror::Error)]
        #[error("metadata store")]
        struct Outer(#[source] std::io::Error);
        let e = Outer(std::io::Error::other("disk on fire"));
        let (_, message) = decode(&encode_error(ErrorCode::Internal, &e));
        assert_eq!(message, "metadata store: disk on fire");
    }
}
