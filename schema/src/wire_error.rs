//! How typed errors cross the control RPC: a Cap'n Proto exception whose
//! description contains `[code] message`, `code` being the snake_case name of
//! an [`ErrorCode`]. Any language can parse it; Rust uses [`encode`] and
//! [`decode`].

use crate::control_capnp::ErrorCode;

/// Every code with its wire name, in schema order.
const NAMES: [(ErrorCode, &str); 13] = [
    (ErrorCode::Internal, "internal"),
    (ErrorCode::NotFound, "not_found"),
    (ErrorCode::Exists, "exists"),
    (ErrorCode::NotDirectory, "not_directory"),
    (ErrorCode::IsDirectory, "is_directory"),
    (ErrorCode::NotEmpty, "not_empty"),
    (ErrorCode::InvalidArgument, "invalid_argument"),
    (ErrorCode::Busy, "busy"),
    (ErrorCode::PermissionDenied, "permission_denied"),
    (ErrorCode::NoLease, "no_lease"),
    (ErrorCode::Unavailable, "unavailable"),
    (ErrorCode::StaleHandle, "stale_handle"),
    (ErrorCode::VersionMismatch, "version_mismatch"),
];

/// The wire name of `code`, e.g. `not_found`.
pub fn code_name(code: ErrorCode) -> &'static str {
    NAMES
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, n)| *n)
        .unwrap_or("internal")
}

/// A Cap'n Proto exception carrying `code` and `message`.
pub fn encode(code: ErrorCode, message: &str) -> capnp::Error {
    capnp::Error::failed(format!("[{}] {message}", code_name(code)))
}

/// The code and message of an exception made by [`encode`]. Exceptions
/// without a code (transport failures, disconnects) map to
/// [`ErrorCode::Unavailable`] when the peer is gone and
/// [`ErrorCode::Internal`] otherwise, with the whole description as message.
pub fn decode(err: &capnp::Error) -> (ErrorCode, String) {
    let desc = err.extra.as_str();
    if let Some(start) = desc.find('[') {
        if let Some(len) = desc[start + 1..].find("] ") {
            let name = &desc[start + 1..start + 1 + len];
            if let Some((code, _)) = NAMES.iter().find(|(_, n)| *n == name) {
                return (*code, desc[start + len + 3..].to_string());
            }
        }
    }
    let code = match err.kind {
        capnp::ErrorKind::Disconnected | capnp::ErrorKind::Overloaded => ErrorCode::Unavailable,
        _ => ErrorCode::Internal,
    };
    (code, desc.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_code() {
        for (code, _) in NAMES {
            let (back, msg) = decode(&encode(code, "a [b] message"));
            assert_eq!(back, code);
            assert_eq!(msg, "a [b] message");
        }
    }

    #[test]
    fn survives_the_remote_prefix_capnp_rpc_adds() {
        let mut err = encode(ErrorCode::Busy, "file is open for writing");
        err.extra = format!("remote exception: {}", err.extra);
        assert_eq!(
            decode(&err),
            (ErrorCode::Busy, "file is open for writing".to_string())
        );
    }

    #[test]
    fn uncoded_disconnect_is_unavailable() {
        let err = capnp::Error::disconnected("connection reset".into());
        assert_eq!(decode(&err).0, ErrorCode::Unavailable);
    }
}
