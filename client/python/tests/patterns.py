"""Test data shared by the package's cluster tests."""

import hashlib


def pattern(n, seed):
    """Deterministic bytes, different for every seed and offset."""
    out = bytearray()
    i = 0
    while len(out) < n:
        out += hashlib.sha256(f"{seed}:{i}".encode()).digest()
        i += 1
    return bytes(out[:n])
