//! What a program sees when a ringfs call fails: [`Error`] to errno.

use fuser::Errno;

use crate::error::Error;

/// The errno for a failed client call. Failures of the cluster itself
/// (unavailable, quorum, corrupt, internal) are `EIO`, as NFS reports a
/// failed server; the mount logs their message, which errno cannot carry.
pub fn errno(e: &Error) -> Errno {
    match e {
        Error::NotFound(_) => Errno::ENOENT,
        Error::Exists(_) => Errno::EEXIST,
        Error::NotDirectory(_) => Errno::ENOTDIR,
        Error::IsDirectory(_) => Errno::EISDIR,
        Error::NotEmpty(_) => Errno::ENOTEMPTY,
        Error::InvalidArgument(_) => Errno::EINVAL,
        // Another mount holds the write lease (or a node lock) past the wait.
        Error::Busy(_) => Errno::EBUSY,
        Error::PermissionDenied(_) => Errno::EACCES,
        Error::CapabilityExpired(_) => Errno::EACCES,
        Error::StaleHandle(_) => Errno::ESTALE,
        Error::NoSpace(_) => Errno::ENOSPC,
        Error::Timeout(_) => Errno::ETIMEDOUT,
        Error::BadDescriptor(_) => Errno::EBADF,
        // Lost leases, unreachable or failing servers, corrupt data, a
        // missed quorum, a call whose outcome is unknown, and whatever
        // kinds are added later.
        _ => Errno::EIO,
    }
}

/// `e` with its sources, as one line (`a: b: c`).
pub fn chain(e: &Error) -> String {
    let mut s = e.to_string();
    let mut cur = std::error::Error::source(e);
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Whether the failure is the cluster's rather than the caller's (worth a
/// line in the log: the errno alone does not say what happened).
pub fn is_cluster_failure(e: &Error) -> bool {
    errno(e) == Errno::EIO || matches!(e, Error::Timeout(_))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caller_errors_keep_their_meaning_and_cluster_failures_are_eio() {
        let m = String::new;
        assert_eq!(errno(&Error::NotFound(m())), Errno::ENOENT);
        assert_eq!(errno(&Error::unavailable("x")), Errno::EIO);
        assert_eq!(errno(&Error::NotEmpty(m())), Errno::ENOTEMPTY);
        assert_eq!(errno(&Error::Busy(m())), Errno::EBUSY);
        assert_eq!(errno(&Error::NoSpace(m())), Errno::ENOSPC);
        assert!(!is_cluster_failure(&Error::Exists(m())));
        for e in [
            Error::unavailable("down"),
            Error::Quorum(m()),
            Error::Corrupt(m()),
            Error::StaleVersion(m()),
        ] {
            assert_eq!(errno(&e), Errno::EIO);
            assert!(is_cluster_failure(&e));
        }
    }
}
