"""Transactions across files: writes to several files that readers see all
at once or not at all, as the Rust client's `Client::transaction` does them
(docs/client.md, "Transactions across files").

`Client.transaction` takes the write lease of every file in byte order of
the UTF-8 paths (the one global order every client uses: two transactions
never wait for each other in a cycle), within `lease_wait` seconds in all.
Writes then go to new chunks only (shadow copies no committed record
names, so no reader sees them); a write that covers part of a chunk the
file already holds first copies the rest of that chunk into the new one.
`commit` sends the records and sizes of every file in one
`commitTransaction` call, which the control server applies as one
mutation: every file or none. New chunks of a transaction that never
commits are orphans of leases that ended, which garbage collection deletes.
Files it creates (`create=True`: a write handle from `openNew` on an inode
number reserved for the file, linked nowhere) and files it unlinks
(`unlink`) change with that same commit: before it no reader sees a
created file, and every unlinked one is still there.
"""

import time

from . import errors
from .datapath import Writer, split

#: Most files in one transaction (the control server's limit).
MAX_FILES = 64
#: Most chunk records one transaction commits (the control server's limit).
MAX_RECORDS = 4096
#: `truncateTo` meaning "no truncation".
_NO_TRUNCATE = (1 << 64) - 1


def _path_key(path):
    # The Rust client sorts `&str`s: byte order of the UTF-8 encoding
    # (the same as Python's code point order for any string a path can
    # be; encoding refuses a lone surrogate before any lease is taken).
    return path.encode("utf-8")


class _TxFile:
    """One file of a transaction: its write handle and the new chunks
    written so far."""

    def __init__(self, path, handle, layout, create):
        self.path = path
        self.handle = handle
        self.layout = layout
        #: For a file the commit creates: its layout options (the handle
        #: is on a reserved inode).
        self.create = create
        #: Mints new chunks only: it never learns the file's records.
        self.writer = Writer(handle.write_epoch)
        #: index -> the record of the new chunk this transaction wrote there.
        self.shadow = {}
        #: The committed size when the lease was taken (nobody else
        #: changes the file while it is held).
        self.base_size = handle.attr.size
        #: The old content survives below this (the base size, lowered by
        #: truncations of this transaction).
        self.keep_old = self.base_size
        #: The size the commit sets.
        self.size = self.base_size


class Transaction:
    """Writes to several files, visible all at once at `commit`. Leaving
    `async with` without a commit (or by an exception) aborts it: its
    leases are released, nothing is created or unlinked, its new chunks
    become garbage."""

    def __init__(self, client):
        self._client = client
        self._io = client.io
        #: By path, in byte order of the UTF-8 paths.
        self._files = []
        #: Files the commit unlinks.
        self._unlinks = []
        self._done = False

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        if not self._done:
            await self.abort()

    @property
    def paths(self):
        """The transaction's files, in the order their leases were taken."""
        return [f.path for f in self._files]

    def _file(self, path):
        self._check()
        for f in self._files:
            if f.path == path:
                return f
        raise errors.InvalidArgument(f"{path} is not a file of this transaction")

    def _check(self):
        if self._done:
            raise ValueError("the transaction is committed or aborted")

    async def _start(self, paths, lease_wait, create):
        """Takes the write leases in order; with `create` (a dict of layout
        options), a missing file gets a reserved inode instead."""
        from .client import Layout

        control = self._client.control
        deadline = time.monotonic() + lease_wait
        for path in sorted(paths, key=_path_key):
            wait_ms = max(0, int((deadline - time.monotonic()) * 1000))
            new = None
            try:
                handle = await control.open(path, True, wait_ms)
            except errors.Busy as e:
                raise errors.Busy(
                    f"transaction aborted, nothing changed: the write lease of {path} was not "
                    f"granted within {lease_wait} s ({e.message})") from None
            except errors.NotFound:
                if create is None:
                    raise
                handle = await control.open_new(path, **create)
                new = create
            f = _TxFile(path, handle, Layout(handle.attr), new)
            self._files.append(f)
            if handle.attr.is_dir:
                raise errors.IsADirectory(path)

    async def write(self, path, offset, data):
        """Writes `data` at byte `offset` of `path` (a file of the
        transaction) into new chunks; past the end extends the file (a gap
        reads as zeros). Visible to nobody until the commit. After a failed
        write, abort the transaction."""
        f = self._file(path)
        if offset < 0:
            raise ValueError(f"negative offset {offset}")
        data = memoryview(data).cast("B")
        if not data:
            return
        cs = f.layout.chunk_size
        run_at, run_len = offset, 0
        for index, in_chunk, piece in split(offset, data, cs):
            start = index * cs
            at = start + in_chunk
            piece_end = at + len(piece)
            # Old bytes of this chunk the new chunk must carry over.
            old_end = min(f.keep_old, start + cs)
            copies_old = (index not in f.shadow and old_end > start
                          and (at > start or piece_end < old_end))
            if not copies_old:
                run_len += len(piece)
                continue
            await self._write_run(f, run_at, data[run_at - offset:run_at - offset + run_len])
            # Read-modify-write: the new chunk holds the old bytes of the
            # chunk it replaces, with this piece laid over them.
            buf = bytearray(max(old_end, piece_end) - start)
            records = {r.index: r for r in await f.handle.chunks(index, 1)}
            await self._io.read_range(records, cs, start, memoryview(buf)[:old_end - start])
            buf[at - start:piece_end - start] = piece
            await self._write_run(f, start, memoryview(buf))
            run_at, run_len = piece_end, 0
        await self._write_run(f, run_at, data[run_at - offset:run_at - offset + run_len])
        f.size = max(f.size, offset + len(data))

    async def _write_run(self, f, offset, data):
        """Writes `data` at `offset` into the file's new chunks (those this
        transaction wrote before are written on top of, others minted)."""
        if not data:
            return
        cs = f.layout.chunk_size
        first, last = offset // cs, (offset + len(data) - 1) // cs
        mine = {i: r for i, r in f.shadow.items() if first <= i <= last}
        f.writer.reserve = await f.handle.reserve_capability()
        for r in await self._io.write_range(f.layout, mine, offset, data, f.writer):
            f.shadow[r.index] = r

    async def truncate(self, path, size):
        """Sets the size of `path` to `size` bytes at the commit (truncates
        or extends; an extension reads as zeros)."""
        f = self._file(path)
        if size < 0:
            raise ValueError(f"negative size {size}")
        if size >= f.size:
            f.size = size
            return
        cs = f.layout.chunk_size
        index = size // cs
        # New chunks from the one holding the new end on are cut off. The
        # kept head of that one moves to a fresh chunk, so no byte past the
        # new end survives in a chunk that a later extension would show.
        head = None
        rec = f.shadow.get(index)
        if rec is not None and size % cs:
            head = bytearray(size % cs)
            await self._io.read_range({index: rec}, cs, index * cs, memoryview(head))
        for i in [i for i in f.shadow if i >= index]:
            del f.shadow[i]
            f.writer.chunks.pop(i, None)
        f.keep_old = min(f.keep_old, size)
        f.size = size
        if head is not None:
            await self._write_run(f, index * cs, memoryview(head))

    def unlink(self, path):
        """Unlinks `path` at the commit (a file, not one of the
        transaction's, named once). The commit checks it as an unlink: if
        it is gone by then, or the caller may not remove it, the whole
        commit is refused. Until the commit every reader still sees it."""
        self._check()
        if path in self._unlinks or any(f.path == path for f in self._files):
            raise errors.InvalidArgument(
                f"{path} is written by this transaction or already unlinked by it")
        if len(self._unlinks) == MAX_FILES:
            raise errors.InvalidArgument(f"a transaction unlinks at most {MAX_FILES} files")
        self._unlinks.append(path)

    async def replace(self, path, data):
        """Replaces the whole content of `path` with `data` at the commit."""
        await self.truncate(path, 0)
        await self.write(path, 0, data)

    async def commit(self):
        """Commits every file at once: afterwards readers see every write of
        the transaction, before it none. Returns the files' `Attr`s, in the
        order of `paths`. The leases are released either way; a failure
        means nothing was applied (nothing created, nothing unlinked),
        except a lost connection to the control server (`Unavailable`),
        after which the outcome is unknown: look before trying again."""
        self._check()
        parts = []
        for f in self._files:
            records = sorted(f.shadow.values(), key=lambda r: r.index)
            truncate_to = f.keep_old if f.keep_old < f.base_size else _NO_TRUNCATE
            create = None if f.create is None else (f.path, f.create)
            parts.append((f.handle.guid, records, truncate_to, f.size, create))
        total = sum(len(p[1]) for p in parts)
        if total > MAX_RECORDS:
            await self.abort()
            raise errors.InvalidArgument(
                f"a transaction commits at most {MAX_RECORDS} chunks, not {total}")
        try:
            return await self._client.control.commit_transaction(parts, self._unlinks)
        finally:
            # Best effort: the leases end with the handles anyway.
            await self._release()

    async def abort(self):
        """Gives up the transaction: releases its leases (nothing was
        created or unlinked). Its new chunks become garbage. Aborting twice
        is fine."""
        first = await self._release()
        if first is not None:
            raise first

    async def _release(self):
        """Closes every handle; the first failure, if any (every handle is
        tried)."""
        self._done = True
        first = None
        files, self._files = self._files, []
        for f in files:
            try:
                await f.handle.close()
            except errors.RingfsError as e:
                first = first or e
        return first
