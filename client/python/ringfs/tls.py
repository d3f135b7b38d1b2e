"""TLS to a cluster that requires it (docs/operations.md, "TLS"): mutual
TLS with the cluster CA, as the Rust client does it (ops/src/tls.rs,
ops/src/transport.rs). The server's certificate must be issued by the
cluster CA and name the host dialled (an IP address or DNS name among its
subject alternative names); this client presents its own certificate
(`ringfs admin cert issue --client`), without which the servers refuse
it. Python's standard `ssl` module only: no other dependency."""

import os
import ssl
import stat

from . import errors


def context(ca, cert, key):
    """The `ssl.SSLContext` for connections to the cluster: trusts only the
    CA certificate in file `ca` (PEM), checks the server's host name,
    presents the certificate chain `cert` with its private key `key`
    (PEM). The key file is refused if group or others may access it (as
    the Rust side refuses it). Raises `InvalidArgument` naming the file
    that is missing, unreadable or wrong; never shows the key."""
    _check_private(key)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # TLS_CLIENT already verifies the peer and its name; say it anyway:
    # these two lines are the whole of the server's authentication.
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = True
    # What rustls speaks (its safe defaults): 1.2 and 1.3.
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_verify_locations(cafile=ca)
    except (OSError, ssl.SSLError) as e:
        raise errors.InvalidArgument(f"TLS CA file {ca}: {_why(e)}") from None
    try:
        ctx.load_cert_chain(certfile=cert, keyfile=key)
    except (OSError, ssl.SSLError) as e:
        raise errors.InvalidArgument(
            f"TLS certificate {cert} with key {key}: {_why(e)}") from None
    return ctx


def resolve(tls_ca=None, tls_cert=None, tls_key=None):
    """The context for the files given, else for `$RINGFS_TLS_CA`,
    `$RINGFS_TLS_CERT`, `$RINGFS_TLS_KEY` (the Rust CLI's environment);
    None (plaintext) when none of them is set. All three or none."""
    files = (tls_ca, tls_cert, tls_key)
    if files == (None, None, None):
        files = tuple(os.environ.get(v) or None
                      for v in ("RINGFS_TLS_CA", "RINGFS_TLS_CERT", "RINGFS_TLS_KEY"))
    if files == (None, None, None):
        return None
    if None in files:
        raise errors.InvalidArgument(
            "tls_ca, tls_cert and tls_key go together: give all three (or none)")
    return context(*files)


def server_hostname(host):
    """The name TLS checks the server certificate against: the host
    dialled, an IP address (`[v6]` without brackets) or a DNS name."""
    return host.strip("[]")


def _check_private(path):
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError as e:
        raise errors.InvalidArgument(f"TLS key file {path}: {_why(e)}") from None
    if mode & 0o077:
        raise errors.InvalidArgument(
            f"{path} is accessible by group or others (mode {mode:04o}); "
            "it holds a secret: chmod 600 it")


def _why(e):
    # OSError's str() names the file; SSLError's its reason. Neither ever
    # holds the key's bytes.
    return e.strerror if isinstance(e, OSError) and e.strerror else str(e)
