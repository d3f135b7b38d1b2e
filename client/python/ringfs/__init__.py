"""ringfs: a Python client of the ringfs distributed file system.

    import ringfs

    async def main():
        async with await ringfs.Client.connect("127.0.0.1:7700") as c:
            async with await c.open("/data/a.bin", "wb", replication=3) as f:
                await f.write(b"hello")
            async with await c.open("/data/a.bin", "rb") as f:
                assert await f.read() == b"hello"

    ringfs.run(main())

or, from synchronous code, `ringfs.sync.Client` (see its docs).
"""

import asyncio

import capnp

from . import errors, sync
from .client import Client, File
from .control import Attr
from .credential import Credential
from .errors import *  # noqa: F401,F403  (the exception classes, errors.__all__)


def run(coro):
    """Runs `coro` on a fresh asyncio loop with pycapnp's event loop
    (what every coroutine of this package needs around it)."""
    return asyncio.run(capnp.run(coro))


__all__ = ["Client", "File", "Attr", "Credential", "run", "sync", "errors"] + errors.__all__
