"""The ringfs Python package against a TLS cluster, driven by
tests/tests/python_client.rs (which starts a control server and a node
that speak TLS only, with certificates of the cluster CA):

    RINGFS_CONTROL=host:port RINGFS_CREDENTIAL=admin.credential \
    TLS_CA=ca.pem TLS_CERT=client.pem TLS_KEY=client.key \
    OTHER_CA=other-ca.pem INTRUDER_CERT=... INTRUDER_KEY=... \
    python3 tls_test.py

(TLS_* and not RINGFS_TLS_*: the plaintext checks must not pick the
files up from the environment.) Checks: a file written and read back byte
for byte over TLS (control RPC and storage-node frames), also with the
files from $RINGFS_TLS_*; a plaintext client refused with a message that
names TLS; a CA that did not issue the server's certificate refused
(the server is verified); a client certificate of another CA refused by
the server; a key file others may read refused. Exits non-zero on the
first failure.
"""

import os
import shutil
import tempfile
import time

import ringfs
from ringfs import errors
from ringfs.sync import Client as SyncClient

from patterns import pattern

CONTROL = os.environ["RINGFS_CONTROL"]
CA, CERT, KEY = os.environ["TLS_CA"], os.environ["TLS_CERT"], os.environ["TLS_KEY"]
TLS = dict(tls_ca=CA, tls_cert=CERT, tls_key=KEY)
CHUNK = 64 * 1024


async def refused(exc, what, **kwargs):
    """Connecting with `kwargs` raises `exc` within 5 s; its message."""
    start = time.monotonic()
    try:
        c = await ringfs.Client.connect(CONTROL, **kwargs)
    except exc as e:
        took = time.monotonic() - start
        assert took < 5, f"{what}: refused only after {took:.1f} s"
        print(f"  {what}: {type(e).__name__}: {e}"[:300])
        return str(e)
    await c.close()
    raise AssertionError(f"{what}: connected (no {exc.__name__})")


async def main():
    data = pattern(3 * CHUNK + 4321, 5)
    async with await ringfs.Client.connect(CONTROL, **TLS) as c:
        async with await c.open("/tls", "wb", chunk_size=CHUNK, replication=1) as f:
            assert await f.write(data) == len(data)
        async with await c.open("/tls", "rb") as f:
            assert await f.read() == data, "read back over TLS differs"
    print(f"  {len(data)} bytes written and read back over TLS: ok")

    # Plaintext against a TLS-only cluster: refused, saying why.
    msg = await refused(errors.Unavailable, "plaintext client")
    assert "TLS" in msg, msg

    # The server is verified: trusting another CA, its certificate fails.
    msg = await refused(errors.Unauthenticated, "server certificate of another CA",
                        tls_ca=os.environ["OTHER_CA"], tls_cert=CERT, tls_key=KEY)
    assert "certificate" in msg, msg

    # The server verifies this client: a certificate of another CA is refused.
    await refused(errors.RingfsError, "client certificate of another CA", tls_ca=CA,
                  tls_cert=os.environ["INTRUDER_CERT"], tls_key=os.environ["INTRUDER_KEY"])

    # A key file others may read is refused before anything is sent.
    with tempfile.TemporaryDirectory() as d:
        key = os.path.join(d, "client.key")
        shutil.copy(KEY, key)
        os.chmod(key, 0o644)
        msg = await refused(errors.InvalidArgument, "key file readable by others",
                            tls_ca=CA, tls_cert=CERT, tls_key=key)
        assert "chmod 600" in msg, msg

    # Only some of the three files: refused.
    await refused(errors.InvalidArgument, "tls_ca alone", tls_ca=CA)

    # The files from the environment, as the Rust CLI takes them; the
    # synchronous client passes them on too.
    os.environ.update(RINGFS_TLS_CA=CA, RINGFS_TLS_CERT=CERT, RINGFS_TLS_KEY=KEY)
    with SyncClient(CONTROL) as c:
        with c.open("/tls", "rb") as f:
            assert f.read() == data, "read back over TLS (sync, environment) differs"
    print("  sync client with $RINGFS_TLS_*: ok")
    print("python tls test: all ok")


if __name__ == "__main__":
    ringfs.run(main())
