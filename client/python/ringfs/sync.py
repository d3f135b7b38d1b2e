"""A synchronous wrapper: the asyncio client on its own event-loop thread.

    from ringfs.sync import Client

    with Client("127.0.0.1:7700") as c:
        with c.open("/a.bin", "wb") as f:
            f.write(b"hello")
        with c.open("/a.bin", "rb") as f:
            data = f.read()

Files are `io.RawIOBase` objects: `read`, `readinto`, `readall`, `write`,
`seek`, `tell`, `truncate`, `with`, and `io.BufferedReader(f)` work as for
a local file; `chunks(size)` iterates over a big file in pieces.
"""

import asyncio
import io
import threading
import weakref

import capnp

from . import client as aclient


class _Loop:
    """An asyncio loop with pycapnp's event loop, on a daemon thread."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._stop = None

        async def serve():
            self._stop = asyncio.Event()
            ready.set()
            await self._stop.wait()

        def main():
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(capnp.run(serve()))

        self.thread = threading.Thread(target=main, name="ringfs-loop", daemon=True)
        self.thread.start()
        ready.wait()

    def run(self, coro):
        """Runs `coro` on the loop thread and returns its result or raises
        its exception."""
        if not self.thread.is_alive():
            coro.close()
            raise ValueError("the ringfs client is closed")
        return asyncio.run_coroutine_threadsafe(_on_loop(coro), self.loop).result()

    def stop(self):
        self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join()


async def _on_loop(coro):
    # pycapnp objects must die on the thread of their event loop: an
    # exception leaves here without the frames (and their capnp objects)
    # its traceback and context would carry to the caller's thread.
    try:
        return await coro
    except BaseException as e:
        e.__traceback__ = e.__context__ = e.__cause__ = None
        raise e from None


class Client:
    """A synchronous ringfs client (see the module doc). Every method is
    the asyncio client's, run to completion."""

    def __init__(self, address, **options):
        self._files = weakref.WeakSet()
        self._c = None
        self._loop = _Loop()
        try:
            self._c = self._loop.run(aclient.Client.connect(address, **options))
        except BaseException:
            self._loop.stop()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _do(self, call):
        """Runs `call(asyncio client)` (a coroutine) on the loop thread."""
        if self._c is None:
            raise ValueError("the ringfs client is closed")
        return self._loop.run(call(self._c))

    def close(self):
        """Closes the client's open files, then the connections. Closing
        twice is fine."""
        if self._c is not None:
            for f in list(self._files):
                f.close()
            self._loop.run(self._close())
            self._loop.stop()

    async def _close(self):
        await self._c.close()
        # Dropped here, on the loop's thread (see `_on_loop`).
        self._c = None

    def mkdir(self, path, mode=0o755):
        return self._do(lambda c: c.mkdir(path, mode))

    def rmdir(self, path):
        self._do(lambda c: c.rmdir(path))

    def unlink(self, path):
        self._do(lambda c: c.unlink(path))

    def rename(self, src, dst):
        self._do(lambda c: c.rename(src, dst))

    def stat(self, path):
        return self._do(lambda c: c.stat(path))

    def chmod(self, path, mode):
        return self._do(lambda c: c.chmod(path, mode))

    def chown(self, path, uid=None, gid=None):
        return self._do(lambda c: c.chown(path, uid, gid))

    def create(self, path, **layout):
        return self._do(lambda c: c.create(path, **layout))

    def list(self, path):
        """`[(name, Attr)]` of every entry of the directory."""
        async def collect():
            return [e async for e in self._c.list(path)]

        return self._do(lambda c: collect())

    def open(self, path, mode="rb", **options):
        f = File(self._loop, self._do(lambda c: c.open(path, mode, **options)))
        self._files.add(f)
        return f

    def transaction(self, paths, **options):
        """A `Transaction` on `paths` (options as the asyncio client's
        `transaction`): `with c.transaction([...]) as tx:` aborts unless
        `tx.commit()` ran."""
        return Transaction(self._loop, self._do(lambda c: c.transaction(paths, **options)))


class Transaction:
    """A synchronous transaction across files (see
    `ringfs.transaction.Transaction`): `write`, `truncate`, `replace`,
    `unlink`, `commit`, `abort`; leaving `with` without a commit aborts it."""

    def __init__(self, loop, tx):
        self._loop = loop
        self._tx = tx

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._loop.run(self._tx.__aexit__(*exc))

    @property
    def paths(self):
        return self._tx.paths

    def write(self, path, offset, data):
        self._loop.run(self._tx.write(path, offset, data))

    def truncate(self, path, size):
        self._loop.run(self._tx.truncate(path, size))

    def replace(self, path, data):
        self._loop.run(self._tx.replace(path, data))

    def unlink(self, path):
        self._tx.unlink(path)

    def commit(self):
        return self._loop.run(self._tx.commit())

    def abort(self):
        self._loop.run(self._tx.abort())


class File(io.RawIOBase):
    """A synchronous ringfs file: an `io.RawIOBase` (binary, unbuffered)."""

    def __init__(self, loop, f):
        super().__init__()
        self._loop = loop
        self._f = f
        self.name = f.name
        self.mode = ("r" if f.readable() else "") + ("w" if f.writable() else "")

    def readable(self):
        return self._f.readable()

    def writable(self):
        return self._f.writable()

    def seekable(self):
        return True

    def readinto(self, b):
        return self._loop.run(self._f.readinto(b))

    def readall(self):
        return self._loop.run(self._f.read())

    def read(self, size=-1):
        return self._loop.run(self._f.read(size))

    def write(self, b):
        return self._loop.run(self._f.write(b))

    def pread(self, offset, n):
        return self._loop.run(self._f.pread(offset, n))

    def pwrite(self, offset, data):
        return self._loop.run(self._f.pwrite(offset, data))

    def seek(self, offset, whence=io.SEEK_SET):
        return self._f.seek(offset, whence)

    def tell(self):
        return self._f.tell()

    def truncate(self, size=None):
        return self._loop.run(self._f.truncate(size))

    def fileno(self):
        raise io.UnsupportedOperation("a ringfs file has no file descriptor")

    def flush(self):
        if self.closed:
            raise ValueError("I/O operation on closed file.")

    def fsync(self):
        self._loop.run(self._f.fsync())

    def stat(self):
        return self._loop.run(self._f.stat())

    def chunks(self, size=1 << 20):
        """Iterates from the position to the end in pieces of `size` bytes."""
        while True:
            piece = self.read(size)
            if not piece:
                return
            yield piece

    def close(self):
        if not self.closed:
            try:
                self._loop.run(self._close())
            finally:
                super().close()

    async def _close(self):
        try:
            await self._f.close()
        finally:
            # The handle's capability dies here, on the loop's thread.
            self._f = _Closed(self._f)


class _Closed:
    """What a closed file keeps of its asyncio file: nothing of pycapnp."""

    def __init__(self, f):
        self.name = f.name
        self._readable, self._writable = f.readable(), f.writable()

    def readable(self):
        return self._readable

    def writable(self):
        return self._writable

    def __getattr__(self, name):
        raise ValueError("I/O operation on closed file")
