"""The asyncio client: the namespace and files, with the data path of
`ringfs.datapath`. Run it inside `ringfs.run(main())` (pycapnp's event loop
on top of asyncio), or use `ringfs.sync.Client` from synchronous code."""

import asyncio
import io

from . import errors, tls
from .control import Control
from .datapath import ChunkIO, Writer
from .transaction import MAX_FILES, Transaction

#: Records one `commitChunks` may carry.
COMMIT_BATCH = 4096


class Layout:
    """What the data path needs of a file."""

    __slots__ = ("chunk_size", "replication", "write_quorum")

    def __init__(self, attr):
        self.chunk_size = attr.chunk_size
        self.replication = max(1, attr.replication)
        self.write_quorum = attr.write_quorum

    @property
    def quorum(self):
        return max(1, self.write_quorum)


def _parse_mode(mode):
    """`(read, write, create, truncate, append, exclusive)` of an `open` mode
    string as for Python's `open` (`b` is accepted and ignored: files are
    binary)."""
    m = set(mode.replace("b", ""))
    base = m & set("rwax")
    if len(base) != 1 or not m <= set("rwax+") or len(mode.replace("b", "")) != len(m):
        raise ValueError(f"invalid mode: {mode!r}")
    (b,) = base
    plus = "+" in m
    return (b == "r" or plus, b != "r" or plus, b != "r", b == "w", b == "a", b == "x")


class Client:
    """A connection to a ringfs cluster (its control server's address)."""

    def __init__(self, ctl, **options):
        self.control = ctl
        self.io = ChunkIO(ctl, **options)

    @classmethod
    async def connect(cls, address, credential=None, request_timeout=30.0, lock_wait=10.0,
                      tls_ca=None, tls_cert=None, tls_key=None):
        """Connects to the control server at `"host:port"`, checks the
        protocol version and authenticates as `credential` (a
        `ringfs.Credential`; default: `$RINGFS_CREDENTIAL`, else
        `~/.config/ringfs/credential`). With `tls_ca`, `tls_cert` and
        `tls_key` (default: `$RINGFS_TLS_CA`, `$RINGFS_TLS_CERT`,
        `$RINGFS_TLS_KEY`), every connection is mutual TLS with the
        cluster CA (see `ringfs.tls`)."""
        ctl = await Control.connect(address, credential, tls.resolve(tls_ca, tls_cert, tls_key))
        return cls(ctl, request_timeout=request_timeout, lock_wait=lock_wait)

    async def close(self):
        """Closes the connections to the nodes (open files' handles end
        with the control connection, when the client is dropped)."""
        await self.io.pool.close()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()

    # ------------------------------------------------------- namespace

    async def mkdir(self, path, mode=0o755):
        return await self.control.mkdir(path, mode)

    async def rmdir(self, path):
        await self.control.rmdir(path)

    async def unlink(self, path):
        await self.control.unlink(path)

    async def rename(self, src, dst):
        await self.control.rename(src, dst)

    async def chmod(self, path, mode):
        """Sets the permission bits (the owner or an administrator)."""
        return await self.control.set_attr(path, mode=mode)

    async def chown(self, path, uid=None, gid=None):
        """Sets the owner (administrators only) and/or the group (the
        owner, to one of its groups, or an administrator)."""
        return await self.control.set_attr(path, uid=uid, gid=gid)

    async def stat(self, path):
        return await self.control.stat(path)

    async def list(self, path, page=1000):
        """`(name, Attr)` of every entry of directory `path`, in name order,
        fetched page by page."""
        after = ""
        while True:
            entries, more = await self.control.list_page(path, after, page)
            for e in entries:
                yield e
            if not more or not entries:
                return
            after = entries[-1][0]

    async def create(self, path, mode=0o644, chunk_size=0, replication=0, write_quorum=0,
                     exclusive=False):
        """Creates a file entry (0 = the server's default); without
        `exclusive` an existing file is returned unchanged."""
        return await self.control.create(path, mode, chunk_size, replication, write_quorum, exclusive)

    # ----------------------------------------------------------- files

    async def open(self, path, mode="rb", chunk_size=0, replication=0, write_quorum=0,
                   wait=30.0, verify_replicas=False):
        """Opens a file (`mode` as Python's `open`: r, w, a, x, with +).
        Write modes take the file's exclusive write lease, waiting up to
        `wait` s (then `Busy`); `w`/`a`/`x` create the file with the given
        layout (0 = the server's default). With `verify_replicas`, every
        read compares the digests of all replicas of each chunk it reads
        and serves only what a strict majority holds (the others are
        reported for repair); with no majority it raises `Corrupt` naming
        the chunk."""
        read, write, create, truncate, append, exclusive = _parse_mode(mode)
        if create:
            await self.control.create(path, 0o644, chunk_size, replication, write_quorum, exclusive)
        handle = await self.control.open(path, write, int(wait * 1000) if write else 0)
        f = File(self, path, handle, read, write, append, verify_replicas)
        if truncate and handle.attr.size:
            await f.truncate(0)
        return f

    async def transaction(self, paths, lease_wait=30.0, create=False, mode=0o644, chunk_size=0,
                          replication=0, write_quorum=0):
        """Starts a transaction on `paths` (1 to 64 distinct files): takes
        their write leases in byte order of the UTF-8 paths, waiting
        `lease_wait` seconds at most in all. With `create`, a missing file
        is created by the commit with the given mode and layout (0 = the
        server's default; nobody sees it before, and it is checked now as
        an exclusive create); without, it is `NotFound`. `Busy` naming the
        file if a lease was not granted in time; then every lease taken is
        released: nothing is left behind. Use it as
        `async with await c.transaction([...]) as tx:` (see
        `ringfs.transaction.Transaction`)."""
        paths = list(paths)
        if not 0 < len(paths) <= MAX_FILES or len(set(paths)) != len(paths):
            raise errors.InvalidArgument(f"a transaction takes 1 to {MAX_FILES} distinct files")
        layout = None
        if create:
            layout = dict(mode=mode, chunk_size=chunk_size, replication=replication,
                          write_quorum=write_quorum)
        tx = Transaction(self)
        try:
            await tx._start(paths, lease_wait, layout)
        except BaseException:
            await tx._release()
            raise
        return tx


class File:
    """An open ringfs file (binary), with Python's file conventions as
    coroutines: `read`, `readinto`, `write`, `seek`, `tell`, `truncate`,
    `pread`, `pwrite`, `fsync`, `close`; `async with` closes it, and
    `chunks(size)` iterates over a big file in pieces.

    Every `write` is durable on at least the write quorum of replicas and
    committed (visible to readers) when it returns."""

    def __init__(self, client, path, handle, readable, writable, append, verify=False):
        self._client = client
        self._io = client.io
        self.name = path
        self._handle = handle
        self._readable = readable
        self._writable = writable
        self._append = append
        self._verify = verify
        self._layout = Layout(handle.attr)
        self._size = handle.attr.size
        self._pos = 0
        self._writer = Writer(handle.write_epoch) if writable else None
        self._lock = asyncio.Lock()
        self.closed = False

    def __repr__(self):
        return f"<ringfs.File {self.name!r} closed={self.closed}>"

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()

    def readable(self):
        return self._readable

    def writable(self):
        return self._writable

    def seekable(self):
        return True

    def _check(self, reading=False, writing=False):
        if self.closed:
            raise ValueError("I/O operation on closed file")
        if reading and not self._readable:
            raise io.UnsupportedOperation("file not open for reading")
        if writing and not self._writable:
            raise io.UnsupportedOperation("file not open for writing")

    @property
    def size(self):
        """The size as this handle knows it (its own writes included)."""
        return self._size

    async def stat(self):
        self._check()
        a = await self._handle.get_attr()
        if not self._writable:
            self._size = a.size
        return a

    def tell(self):
        self._check()
        return self._pos

    def seek(self, offset, whence=io.SEEK_SET):
        """Moves the position (not a coroutine: no I/O); returns it."""
        self._check()
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self._size + offset
        else:
            raise ValueError(f"invalid whence ({whence})")
        if pos < 0:
            raise ValueError(f"negative seek position {pos}")
        self._pos = pos
        return pos

    async def pread(self, offset, n):
        """Up to `n` bytes at `offset` (fewer at the end of the file)."""
        buf = bytearray(max(0, n))
        got = await self.preadinto(offset, buf)
        del buf[got:]
        return bytes(buf)

    async def preadinto(self, offset, buf):
        """Reads into `buf` at `offset`; the number of bytes read (0 at
        the end of the file)."""
        self._check(reading=True)
        if offset < 0:
            raise ValueError(f"negative offset {offset}")
        if not self._writable and offset + len(buf) > self._size:
            # Another client's commit may have grown the file since.
            self._size = (await self._handle.get_attr()).size
        n = max(0, min(len(buf), self._size - offset))
        if n == 0:
            return 0
        cs = self._layout.chunk_size
        first, last = offset // cs, (offset + n - 1) // cs
        records = {r.index: r for r in await self._handle.chunks(first, last - first + 1)}
        await self._io.read_range(records, cs, offset, memoryview(buf).cast("B")[:n],
                                  self._verify)
        return n

    async def read(self, n=-1):
        """Up to `n` bytes from the position (all to the end if `n` < 0)."""
        self._check(reading=True)
        if n is None or n < 0:
            if not self._writable:
                self._size = (await self._handle.get_attr()).size
            n = max(0, self._size - self._pos)
        data = await self.pread(self._pos, n)
        self._pos += len(data)
        return data

    async def readinto(self, buf):
        got = await self.preadinto(self._pos, buf)
        self._pos += got
        return got

    async def chunks(self, size=1 << 20):
        """Iterates from the position to the end in pieces of `size` bytes."""
        while True:
            piece = await self.read(size)
            if not piece:
                return
            yield piece

    async def pwrite(self, offset, data):
        """Writes `data` at `offset` (the position is unchanged); returns
        the number of bytes written, all of them."""
        self._check(writing=True)
        if offset < 0:
            raise ValueError(f"negative offset {offset}")
        data = memoryview(data).cast("B")
        if not data:
            return 0
        async with self._lock:
            cs = self._layout.chunk_size
            first, last = offset // cs, (offset + len(data) - 1) // cs
            self._writer.reserve = await self._handle.reserve_capability()
            existing = {r.index: r for r in await self._handle.chunks(first, last - first + 1)}
            records = await self._io.write_range(self._layout, existing, offset, data, self._writer)
            size = max(self._size, offset + len(data))
            for i in range(0, max(1, len(records)), COMMIT_BATCH):
                a = await self._handle.commit(records[i:i + COMMIT_BATCH], size)
            self._size = a.size
        return len(data)

    async def write(self, data):
        """Writes `data` at the position (at the end in append mode) and
        moves past it; returns the number of bytes written."""
        self._check(writing=True)
        at = self._size if self._append else self._pos
        n = await self.pwrite(at, data)
        self._pos = at + n
        return n

    async def truncate(self, size=None):
        """Sets the size (the position by default): drops chunks past it,
        or extends with a hole; returns the new size."""
        self._check(writing=True)
        size = self._pos if size is None else size
        if size < 0:
            raise ValueError(f"negative size {size}")
        async with self._lock:
            a = await self._handle.set_size(size)
            self._writer.chunks.clear()
            self._size = a.size
        return size

    async def fsync(self):
        """Nothing left to do: every write is committed when it returns."""
        self._check()

    async def close(self):
        """Releases the handle (and a write lease). Closing twice is fine."""
        if self.closed:
            return
        self.closed = True
        await self._handle.close()

