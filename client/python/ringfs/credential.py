"""Credentials and the control plane's challenge-response authentication
(docs/protocol.md, "Authentication"): a user name and a 32-byte key, never
sent; the client answers the challenge of `hello` with
HMAC-SHA256(key, b"ringfs auth v1\\0" + challenge + user)."""

import dataclasses
import hmac
import hashlib
import os
import stat
import tomllib

from . import errors

KEY_LABEL = b"ringfs user key v1"
PROOF_LABEL = b"ringfs auth v1"


@dataclasses.dataclass(frozen=True)
class Credential:
    """A user and its key. `repr` never shows the key."""

    user: str
    key: bytes = dataclasses.field(repr=False)

    @classmethod
    def derive(cls, secret, user, salt=b""):
        """The credential of `user` (registered with `salt`; empty for the
        built-in `admin` and `@cluster`) in the cluster whose secret is
        `secret` (bytes)."""
        msg = KEY_LABEL + b"\0" + user.encode() + b"\0" + bytes(salt)
        return cls(user, hmac.new(secret, msg, hashlib.sha256).digest())

    @classmethod
    def load(cls, path):
        """Reads a credential file (`user = "..."`, `key = "<64 hex>"`),
        refusing one that group or others may access."""
        mode = stat.S_IMODE(os.stat(path).st_mode)
        if mode & 0o077:
            raise errors.InvalidArgument(
                f"{path} is accessible by group or others (mode {mode:04o}); "
                "it holds a secret: chmod 600 it")
        with open(path, "rb") as f:
            try:
                doc = tomllib.load(f)
                key = bytes.fromhex(doc["key"])
                user = doc["user"]
            except (tomllib.TOMLDecodeError, KeyError, ValueError, TypeError):
                # Never echo the file: it holds the key.
                raise errors.InvalidArgument(
                    f"credential file {path}: not a credential (TOML with `user` and `key`)"
                ) from None
        if len(key) != 32 or not user:
            raise errors.InvalidArgument(f"credential file {path}: the key is not 32 bytes in hex")
        return cls(user, key)

    @classmethod
    def default(cls):
        """`$RINGFS_CREDENTIAL`, else `~/.config/ringfs/credential`."""
        path = os.environ.get("RINGFS_CREDENTIAL") or os.path.expanduser(
            "~/.config/ringfs/credential")
        if not os.path.exists(path):
            raise errors.Unauthenticated(
                "no credential: pass one, set RINGFS_CREDENTIAL or keep one at "
                "~/.config/ringfs/credential (the administrator issues them)")
        return cls.load(path)

    def proof(self, challenge):
        """The answer to a `hello` challenge."""
        msg = PROOF_LABEL + b"\0" + bytes(challenge) + self.user.encode()
        return hmac.new(self.key, msg, hashlib.sha256).digest()
