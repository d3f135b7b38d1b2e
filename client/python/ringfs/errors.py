"""Typed exceptions: one class per error code of the control RPC and per
data-plane status, all subclasses of `RingfsError` (an `OSError` with the
matching errno), and of the builtin exception Python code already catches
(`FileNotFoundError`, `FileExistsError`, `TimeoutError`, ...)."""

import errno
import re


class RingfsError(OSError):
    """A failed ringfs call. `code` is the protocol's error code (the
    control RPC's snake_case name, or a data-plane status)."""

    code = "internal"
    errno_value = errno.EIO

    def __init__(self, message):
        super().__init__(self.errno_value, message)
        self.message = message

    def __str__(self):
        return f"[{self.code}] {self.message}"


def _error(name, code, base=(), err=errno.EIO, doc=""):
    cls = type(name, (RingfsError,) + base, {"code": code, "errno_value": err, "__doc__": doc})
    return cls


NotFound = _error("NotFound", "not_found", (FileNotFoundError,), errno.ENOENT, "No such path, node or chunk.")
Exists = _error("Exists", "exists", (FileExistsError,), errno.EEXIST, "The name is taken.")
NotADirectory = _error("NotADirectory", "not_directory", (NotADirectoryError,), errno.ENOTDIR)
IsADirectory = _error("IsADirectory", "is_directory", (IsADirectoryError,), errno.EISDIR)
NotEmpty = _error("NotEmpty", "not_empty", (), errno.ENOTEMPTY, "The directory is not empty.")
InvalidArgument = _error("InvalidArgument", "invalid_argument", (ValueError,), errno.EINVAL,
                         "A malformed path, a bad layout, a bad record or request.")
Busy = _error("Busy", "busy", (), errno.EBUSY, "A lock or write lease is held by someone else.")
PermissionDenied = _error("PermissionDenied", "permission_denied", (PermissionError,), errno.EACCES)
NoLease = _error("NoLease", "no_lease", (), errno.EBADF, "A write call on a read handle or a handle that lost its lease.")
StaleHandle = _error("StaleHandle", "stale_handle", (), errno.ESTALE, "The handle is closed or its file was removed.")
Unavailable = _error("Unavailable", "unavailable", (ConnectionError,), errno.EAGAIN,
                     "The server or node cannot serve now (down, unreachable, shutting down).")
Internal = _error("Internal", "internal", (), errno.EIO, "A bug or a storage failure on the server.")
Unauthenticated = _error("Unauthenticated", "unauthenticated", (PermissionError,), errno.EACCES,
                         "No valid credentials: the connection is not authenticated.")
VersionMismatch = _error("VersionMismatch", "version_mismatch", (), errno.EPROTO, "The peer speaks another protocol version.")
NoSpace = _error("NoSpace", "no_space", (), errno.ENOSPC, "No node could reserve the space.")
Corrupt = _error("Corrupt", "checksum", (), errno.EIO, "Data failed its CRC32C on every replica tried.")
Quorum = _error("Quorum", "quorum", (), errno.EIO, "Fewer replicas than the write quorum answered or hold the write.")
Timeout = _error("Timeout", "timeout", (TimeoutError,), errno.ETIMEDOUT)
BadToken = _error("BadToken", "bad_token", (), errno.EIO,
                  "A lock token is missing, stale or lapsed before the operation applied.")
StaleVersion = _error("StaleVersion", "stale_version", (), errno.EIO, "A replica is not at the version a request expected.")

__all__ = ["RingfsError", "NotFound", "Exists", "NotADirectory", "IsADirectory", "NotEmpty",
           "InvalidArgument", "Busy", "PermissionDenied", "NoLease", "StaleHandle", "Unavailable",
           "Internal", "Unauthenticated", "VersionMismatch", "NoSpace", "Corrupt", "Quorum", "Timeout", "BadToken",
           "StaleVersion"]

# Control RPC: the `[code]` prefix of a Cap'n Proto exception's description.
_CONTROL_CODES = {cls.code: cls for cls in (
    NotFound, Exists, NotADirectory, IsADirectory, NotEmpty, InvalidArgument, Busy,
    PermissionDenied, NoLease, StaleHandle, Unavailable, Internal, VersionMismatch,
    Unauthenticated,
)}

# Data plane: FrameHeader.status.
_STATUSES = {
    "notFound": NotFound, "badToken": BadToken, "timeout": Timeout, "noSpace": NoSpace,
    "checksum": Corrupt, "invalidArgument": InvalidArgument, "staleVersion": StaleVersion,
    "io": Internal, "unavailable": Unavailable, "internal": Internal, "exists": Exists,
    "busy": Busy, "malformed": InvalidArgument, "wrongShard": InvalidArgument,
    "quorum": Quorum, "payloadChecksum": Corrupt, "denied": PermissionDenied,
    "capabilityExpired": PermissionDenied,
}

_CODE_RE = re.compile(r"\[([a-z_]+)\] ?(.*)", re.S)


def from_capnp(exc):
    """The typed exception of a failed control call (a `capnp.KjException`):
    its description holds `[code] message`; without a code it is a
    transport failure (`Unavailable`)."""
    desc = getattr(exc, "description", None) or str(exc)
    m = _CODE_RE.search(desc)
    if m and m.group(1) in _CONTROL_CODES:
        return _CONTROL_CODES[m.group(1)](m.group(2).strip())
    return Unavailable(f"control connection: {desc}")


def from_status(status, message, where):
    """The typed exception of a data-plane response with `status`."""
    cls = _STATUSES.get(status, Internal)
    return cls(f"storage node {where}: {status}: {message}")
