"""The replica protocol with the storage nodes, as the Rust client does it
(docs/protocol.md, "What a client must do"; docs/client.md):

- a new chunk is reserved on up to R distinct live nodes, most free space
  first; the primary mints the id, the others reserve it; a node that
  refuses is skipped; fewer than W reserved is an error;
- a write goes down the chain with `expected` = the version the replicas
  hold and a fresh `(writeEpoch, seq)`; the replicas the answer's
  `durableMask` names are the ones that hold it, at least W or it failed;
  every lock is released after the answer;
- before its first overwrite of a chunk a writer asks every replica of the
  record for its version; `n - W + 1` must answer; it writes on top of the
  highest, to the replicas at it;
- a read fails over between replicas, refuses a replica behind the record,
  and checks every block against the CRC the node stored.
"""

import asyncio
import os
import time

import crc32c

from . import errors, frames
from ._schema import BLOCK
from .control import ChunkRecord

_M64 = (1 << 64) - 1
NONE = (0, 0)
#: Chunk writes or reads of one call in flight at once.
PIPELINE = 4
# Votes a verified read takes before it gives up on replicas that stay at
# different versions (a write in flight).
VERIFY_ATTEMPTS = 5
#: Capabilities kept at most (the records of the next call bring theirs).
MAX_CAPS = 1 << 16


def mix64(z):
    """The SplitMix64 finalizer (docs/protocol.md, "Endpoints and routing")."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def shard_of(chunk_id, shards):
    """The shard of a node with `shards` shards that owns `chunk_id`."""
    hi, lo = chunk_id
    return mix64(hi ^ mix64(lo)) % shards


def piece_crcs(offset, payload):
    """One CRC32C per piece of `payload` (at chunk `offset`) cut at the
    4 KiB grid."""
    mv = memoryview(payload)
    out = []
    at = 0
    first = min(len(mv), BLOCK - offset % BLOCK)
    if first:
        out.append(crc32c.crc32c(mv[:first]))
        at = first
    while at < len(mv):
        out.append(crc32c.crc32c(mv[at:at + BLOCK]))
        at += BLOCK
    return out


def blocks_ok(start, payload, crcs):
    """Whether every block of a read answer (from chunk offset `start`)
    matches the CRC the node stored for it."""
    if start % BLOCK:
        return False
    mv = memoryview(payload)
    n = (len(mv) + BLOCK - 1) // BLOCK
    if len(crcs) < n:
        return False
    return all(crc32c.crc32c(mv[i * BLOCK:(i + 1) * BLOCK]) == crcs[i] for i in range(n))


def new_client_id():
    """A random non-zero id for this client's locks."""
    return int.from_bytes(os.urandom(8), "little") | 1


class Locked:
    """A replica with our write lock (or reservation) on it."""

    __slots__ = ("node_id", "address", "conn", "token")

    def __init__(self, node_id, address, conn, token):
        self.node_id, self.address, self.conn, self.token = node_id, address, conn, token


class ChunkState:
    """A writer's view of one chunk: the version its in-sync replicas hold
    (chain order, primary first) and the chunk's length there."""

    __slots__ = ("chunk_id", "base", "length", "in_sync")

    def __init__(self, chunk_id, base, length, in_sync):
        self.chunk_id, self.base, self.length, self.in_sync = chunk_id, base, length, in_sync


class Writer:
    """What a write lease knows: its epoch, one seq counter (a version is
    never used twice, not even after a write whose outcome is unknown), and
    per chunk index the state after its last write."""

    def __init__(self, epoch):
        self.epoch = epoch
        self._seq = 0
        self.chunks = {}
        #: The lease's reserve capability (set before each write): what
        #: the nodes mint new chunk ids with.
        self.reserve = None

    def next_version(self):
        self._seq += 1
        return (self.epoch, self._seq)


class ChunkIO:
    """The data-plane side of a client."""

    def __init__(self, control, request_timeout=30.0, lock_wait=10.0):
        self.control = control
        self.pool = frames.NodePool(ssl=control.ssl)
        self.client_id = new_client_id()
        self.request_timeout = request_timeout
        self.lock_wait = lock_wait
        self._nodes = {}
        self._map_at = 0.0
        self._next_shard = 0
        #: chunk id -> the capability every request for it carries (from
        #: its record, or from the node that minted it).
        self._caps = {}

    def remember(self, records):
        """Keeps the capabilities of `records` (a read handle's does not
        replace a write handle's)."""
        for r in records:
            if r.capability:
                old = self._caps.get(r.chunk_id)
                if old is None or r.capability[4] & old[4] == old[4]:
                    self._caps[r.chunk_id] = r.capability
        if len(self._caps) > MAX_CAPS:
            self._caps.clear()
            self.remember(records)

    def cap(self, chunk_id):
        return self._caps.get(chunk_id)

    # ---------------------------------------------------------- the map

    async def nodes(self, max_age=1.0):
        """The cluster map's nodes, fetched again when older than `max_age` s."""
        if time.monotonic() - self._map_at > max_age or not self._nodes:
            _, self._nodes = await self.control.cluster_map()
            self._map_at = time.monotonic()
        return self._nodes

    def endpoint(self, chunk_id, node_id):
        n = self._nodes.get(node_id)
        if n is None or not n.shards:
            raise errors.Unavailable(f"node {node_id} is not in the cluster map")
        return n.shards[shard_of(chunk_id, len(n.shards))]

    def is_up(self, node_id):
        n = self._nodes.get(node_id)
        return n is not None and n.up

    # ------------------------------------------------------- single requests

    async def call(self, address, header, payload=b"", wait=False):
        conn = await self.pool.get(address)
        timeout = self.request_timeout + (self.lock_wait if wait else 0)
        return await conn.call(header, payload, timeout)

    async def call_ok(self, address, header, payload=b"", wait=False):
        r = await self.call(address, header, payload, wait)
        if r.status != "ok":
            raise errors.from_status(r.status, r.message, address)
        return r

    async def reserve(self, address, chunk_id, nbytes, mint=None):
        """Reserves `chunk_id` on `address` (a fresh id for `(0, 0)`, with
        `mint`, the lease's reserve capability: the minted chunk's
        capability is kept)."""
        cap = mint if chunk_id == NONE else self.cap(chunk_id)
        h = frames.request("reserve", chunk_id, capability=cap, clientId=self.client_id,
                           reserveBytes=nbytes)
        r = await self.call_ok(address, h)
        if chunk_id == NONE:
            if not r.capability:
                raise errors.Internal(f"{address} minted chunk {r.chunk_id} without a capability")
            self._caps[r.chunk_id] = r.capability
        return r

    async def lock(self, chunk_id, node_id):
        address = self.endpoint(chunk_id, node_id)
        h = frames.request("lock", chunk_id, capability=self.cap(chunk_id),
                           clientId=self.client_id, lockMode="write",
                           timeoutMs=int(self.lock_wait * 1000))
        r = await self.call_ok(address, h, wait=True)
        return Locked(node_id, address, await self.pool.get(address), r.token)

    async def unlock_all(self, chunk_id, locked):
        """Releases our locks (best effort: a lost unlock is released when
        its lease lapses or its connection closes)."""
        async def one(l):
            try:
                await l.conn.call(frames.request("unlock", chunk_id, token=l.token), b"",
                                  self.request_timeout)
            except errors.RingfsError:
                pass
        await asyncio.gather(*(one(l) for l in locked))

    async def delete_all(self, chunk_id, locked, version):
        async def one(l):
            try:
                await l.conn.call(frames.request("delete", chunk_id, token=l.token, version=version,
                                                 capability=self.cap(chunk_id)),
                                  b"", self.request_timeout)
            except errors.RingfsError:
                pass
        await asyncio.gather(*(one(l) for l in locked))

    async def info(self, chunk_id, node_id):
        """`(version, length)` of `node_id`'s replica; `((0, 0), 0)` for a
        node without the chunk (it holds no write of it)."""
        try:
            r = await self.call_ok(self.endpoint(chunk_id, node_id),
                                   frames.request("chunkInfo", chunk_id,
                                                  capability=self.cap(chunk_id)))
        except errors.NotFound:
            return NONE, 0
        return r.version, r.chunk_length

    async def chain_write(self, layout, chunk_id, locked, offset, payload, expected, version):
        """The primary's answer to the chain write (whatever its status)."""
        primary = locked[0]
        h = frames.request(
            "write", chunk_id, token=primary.token, version=version, expected=expected,
            capability=self.cap(chunk_id),
            chain=[(l.node_id, l.address, l.token) for l in locked[1:]],
            offset=offset, writeQuorum=layout.write_quorum, crcs=piece_crcs(offset, payload))
        return await primary.conn.call(h, payload, self.request_timeout)

    # ------------------------------------------------------------ writes

    async def place(self, layout, writer):
        """Reserves a new chunk on up to R distinct live nodes, most free
        space first, skipping refusals; `(chunk_id, [Locked])`, primary first."""
        nodes = await self.nodes()
        candidates = sorted((n for n in nodes.values() if n.up and n.shards),
                            key=lambda n: (-n.free, n.node_id))
        locked, refusals, no_space = [], [], False
        chunk_id = NONE
        for n in candidates:
            if len(locked) == layout.replication:
                break
            if not locked:
                self._next_shard += 1
                address = n.shards[self._next_shard % len(n.shards)]
            else:
                address = n.shards[shard_of(chunk_id, len(n.shards))]
            try:
                r = await self.reserve(address, chunk_id, layout.chunk_size, writer.reserve)
            except errors.RingfsError as e:
                no_space |= isinstance(e, errors.NoSpace)
                refusals.append(f"node {n.node_id}: {e}")
                continue
            if not locked:
                chunk_id = r.chunk_id
            n.free = max(0, n.free - layout.chunk_size)
            locked.append(Locked(n.node_id, address, await self.pool.get(address), r.token))
        if len(locked) < layout.quorum:
            await self.unlock_all(chunk_id, locked)
            live = sum(1 for n in nodes.values() if n.up)
            msg = (f"{len(locked)} of the {layout.quorum} replicas a write needs could be reserved "
                   f"({live} live nodes){': ' if refusals else ''}{'; '.join(refusals)}")
            raise (errors.NoSpace if no_space else errors.Unavailable)(msg)
        return chunk_id, locked

    async def write_new_chunk(self, layout, index, offset, payload, writer):
        for attempt in range(2):
            chunk_id, locked = await self.place(layout, writer)
            version = writer.next_version()
            try:
                r = await self.chain_write(layout, chunk_id, locked, offset, payload, NONE, version)
                durable = _durable(locked, r.durable_mask)
                err = None if len(durable) >= layout.quorum else _short(r, locked, durable, layout)
            except errors.RingfsError as e:
                err = e
            if err is not None:
                # Nobody will commit this chunk: drop what reached the nodes.
                self._nodes = {}
                await self.delete_all(chunk_id, locked, version)
            await self.unlock_all(chunk_id, locked)
            if err is None:
                length = offset + len(payload)
                writer.chunks[index] = ChunkState(chunk_id, version, length, durable)
                return ChunkRecord(index, chunk_id, durable, length, version, self.cap(chunk_id))
            if attempt == 1 or not isinstance(err, (errors.Unavailable, errors.Quorum, errors.Timeout)):
                raise err

    async def first_touch(self, rec, layout):
        """Asks every replica of `rec` for its version: `n - W + 1` must
        answer; the highest is the base, the replicas at it are in sync."""
        await self.nodes()

        async def ask(node):
            if not self.is_up(node):
                return node, errors.Unavailable(f"node {node} is down")
            try:
                return node, await self.info(rec.chunk_id, node)
            except errors.RingfsError as e:
                return node, e

        answers = await asyncio.gather(*(ask(n) for n in rec.replicas))
        ok = [(n, a[0], a[1]) for n, a in answers if not isinstance(a, Exception)]
        need = len(rec.replicas) - layout.quorum + 1
        if len(ok) < need:
            why = "; ".join(f"node {n}: {a}" for n, a in answers if isinstance(a, Exception))
            raise errors.Quorum(f"chunk {rec.chunk_id}: {len(ok)} of its {len(rec.replicas)} replicas "
                                f"answered, {need} must (write quorum {layout.quorum}): {why}")
        base = max(v for _, v, _ in ok)
        if base < rec.version:
            raise errors.Quorum(f"chunk {rec.chunk_id}: no replica that answered holds the committed "
                                f"version {rec.version} (newest: {base})")
        in_sync = [n for n, v, _ in ok if v == base]
        length = max(l for _, v, l in ok if v == base)
        return ChunkState(rec.chunk_id, base, length, in_sync)

    async def overwrite_chunk(self, layout, rec, offset, payload, writer):
        state = writer.chunks.pop(rec.index, None)
        if state is None or state.chunk_id != rec.chunk_id:
            state = await self.first_touch(rec, layout)
        if len(state.in_sync) < layout.quorum:
            raise errors.Quorum(f"chunk {rec.chunk_id}: {len(state.in_sync)} replicas in sync at "
                                f"version {state.base}, the file needs {layout.quorum} (this client "
                                f"does not catch replicas up; the control server repairs them)")
        locked = []
        try:
            for node in sorted(state.in_sync):
                try:
                    locked.append(await self.lock(rec.chunk_id, node))
                except (errors.Busy, errors.Timeout):
                    raise
                except errors.RingfsError:
                    pass  # unreachable: left out of this write
            if len(locked) < layout.quorum:
                raise errors.Quorum(f"chunk {rec.chunk_id}: {len(locked)} of {len(rec.replicas)} "
                                    f"replicas reachable, the file needs {layout.quorum}")
            locked.sort(key=lambda l: state.in_sync.index(l.node_id))
            # Past the recorded length, fill the gap with zeros: bytes a
            # truncate left on the nodes must not reappear.
            gap = max(0, offset - rec.length)
            at = offset - gap
            if gap:
                payload = bytes(gap) + bytes(payload)
            version = writer.next_version()
            r = await self.chain_write(layout, rec.chunk_id, locked, at, payload, state.base, version)
        finally:
            await self.unlock_all(rec.chunk_id, locked)
        durable = _durable(locked, r.durable_mask)
        if len(durable) < layout.quorum:
            # Whatever applied it is now ahead of the others: ask again next time.
            raise _short(r, locked, durable, layout)
        state.base, state.in_sync = version, durable
        state.length = max(state.length, at + len(payload))
        writer.chunks[rec.index] = state
        return ChunkRecord(rec.index, rec.chunk_id, durable, max(rec.length, at + len(payload)),
                           version, rec.capability)

    async def write_range(self, layout, existing, offset, data, writer):
        """Writes `data` at file `offset` into the chunks it covers (the
        record of `existing[index]`, else a new chunk): the records to commit."""
        self.remember(existing.values())
        jobs = []
        for index, in_chunk, piece in split(offset, memoryview(data), layout.chunk_size):
            rec = existing.get(index)
            if rec is not None:
                jobs.append(lambda rec=rec, o=in_chunk, p=piece:
                            self.overwrite_chunk(layout, rec, o, p, writer))
            else:
                jobs.append(lambda i=index, o=in_chunk, p=piece:
                            self.write_new_chunk(layout, i, o, p, writer))
        return await _bounded(jobs)

    # ------------------------------------------------------------- reads

    async def read_range(self, records, cs, offset, buf, verify=False):
        """Fills `buf` (a writable memoryview) with the file bytes at
        `offset`, from the chunks in `records` (by index; holes absent);
        with `verify`, from what a majority of each chunk's replicas hold."""
        self.remember(records.values())
        piece_reader = self.read_verified if verify else self.read_piece
        jobs = [lambda r=records.get(index), o=in_chunk, b=piece: piece_reader(r, o, b)
                for index, in_chunk, piece in split(offset, buf, cs)]
        await self.nodes()
        await _bounded(jobs)

    async def read_piece(self, rec, offset, buf):
        valid = 0 if rec is None else max(0, min(rec.length - offset, len(buf)))
        buf[valid:] = bytes(len(buf) - valid)
        if valid == 0:
            return
        n = len(rec.replicas)
        order = sorted(range(n), key=lambda i: (
            not self.is_up(rec.replicas[i]),
            self._load(rec.chunk_id, rec.replicas[i]),
            (i + rec.index) % n))
        failures, corrupt = [], []
        for i in order:
            node = rec.replicas[i]
            try:
                await self.read_replica(rec, node, offset, buf[:valid])
            except errors.RingfsError as e:
                if isinstance(e, errors.Corrupt):
                    corrupt.append(node)
                failures.append(e)
                continue
            break
        for bad in corrupt:
            try:
                await self.control.report_bad_replica(rec.chunk_id, bad, False)
            except errors.RingfsError:
                pass
        if len(failures) == n:
            msg = (f"chunk {rec.chunk_id} (index {rec.index}): no replica could be read: "
                   + "; ".join(str(e) for e in failures))
            all_corrupt = all(isinstance(e, errors.Corrupt) for e in failures)
            raise (errors.Corrupt if all_corrupt else errors.Unavailable)(msg)

    async def digest(self, chunk_id, node):
        """`node`'s (version, length, digest of stored CRCs) of `chunk_id`."""
        address = self.endpoint(chunk_id, node)
        r = await self.call_ok(address, frames.request("digest", chunk_id,
                                                      capability=self.cap(chunk_id)))
        return (r.version, r.chunk_length, r.digest)

    async def read_verified(self, rec, offset, buf):
        """A verified read (as the Rust library's, docs/client.md "Verified
        reads"): every replica's digest is asked; the content a strict
        majority of the record's replicas hold at the committed version or
        newer is read from one of them at exactly that version; replicas
        with another content at that version, or behind the record, are
        reported to the control server, which repairs them. Replicas at
        different versions past the record (a write in flight) are asked
        again, up to 5 times; with no majority: `Corrupt` naming the chunk."""
        valid = 0 if rec is None else max(0, min(rec.length - offset, len(buf)))
        buf[valid:] = bytes(len(buf) - valid)
        if valid == 0:
            return
        n = len(rec.replicas)
        seen = ""
        for attempt in range(VERIFY_ATTEMPTS):
            if attempt:
                await asyncio.sleep(0.02 * attempt)
            answers = await asyncio.gather(*(self.digest(rec.chunk_id, node)
                                             for node in rec.replicas), return_exceptions=True)
            held = [(node, a) for node, a in zip(rec.replicas, answers)
                    if not isinstance(a, BaseException)]
            seen = "; ".join(
                f"node {node}: {a}" if isinstance(a, BaseException) else
                f"node {node}: version {a[0][0]}.{a[0][1]} length {a[1]} digest {a[2][:8].hex()}"
                for node, a in zip(rec.replicas, answers))
            current = [a for _, a in held if a[0] >= rec.version]
            winner = max(current, key=lambda a: sum(1 for _, o in held if o == a), default=None)
            agree = [node for node, a in held if a == winner]
            if winner is None or 2 * len(agree) <= n:
                if any(a[0] > rec.version and a[0] != b[0] for _, a in held for _, b in held):
                    continue  # a write in flight: ask again
                break
            version = winner[0]
            for node in agree:
                try:
                    got = await self.read_replica(rec, node, offset, buf[:valid], exact=version)
                except errors.RingfsError:
                    continue
                if got == version:
                    break
            else:
                continue
            for node, a in held:
                if (a[0] == version and a != winner) or a[0] < rec.version:
                    try:
                        await self.control.report_bad_replica(rec.chunk_id, node, False)
                    except errors.RingfsError:
                        pass
            return
        buf[:] = bytes(len(buf))
        raise errors.Corrupt(f"chunk {rec.chunk_id} (index {rec.index}): verified read: no majority "
                             f"of its {n} replicas holds one content at version "
                             f"{rec.version[0]}.{rec.version[1]} or newer: {seen}")

    def _load(self, chunk_id, node):
        try:
            return self.pool.in_flight(self.endpoint(chunk_id, node))
        except errors.RingfsError:
            return 0

    async def read_replica(self, rec, node, offset, out, exact=None):
        """Reads `out` at `offset` of `node`'s replica, which must be at the
        record's version or newer (with `exact`: at exactly that version,
        else nothing is copied); returns the replica's version."""
        address = self.endpoint(rec.chunk_id, node)
        h = frames.request("read", rec.chunk_id, offset=offset, length=len(out),
                           capability=self.cap(rec.chunk_id),
                           clientId=self.client_id, implicitLock="read",
                           timeoutMs=int(self.lock_wait * 1000))
        r = await self.call_ok(address, h, wait=True)
        skip = offset - r.offset
        got = len(r.payload) - skip if skip >= 0 else 0
        # A replica behind the committed record (it missed a write) or
        # short of bytes must not be served.
        if r.version < rec.version or got < len(out):
            raise errors.Unavailable(
                f"storage node {address}: replica of chunk {rec.chunk_id} is stale (version "
                f"{r.version} < {rec.version} or {got} of {len(out)} bytes)")
        if not blocks_ok(r.offset, r.payload, r.crcs):
            raise errors.Corrupt(f"storage node {address}: chunk {rec.chunk_id}: a block does not "
                                 f"match the CRC the node stored")
        if exact is None or r.version == exact:
            out[:] = memoryview(r.payload)[skip:skip + len(out)]
        return r.version


def split(offset, view, chunk_size):
    """`view` (at file `offset`) cut at chunk boundaries: `(index, offset in
    the chunk, piece)` for each chunk it covers."""
    at = 0
    while at < len(view):
        index, in_chunk = divmod(offset + at, chunk_size)
        take = min(chunk_size - in_chunk, len(view) - at)
        yield index, in_chunk, view[at:at + take]
        at += take


def _durable(locked, mask):
    return [l.node_id for i, l in enumerate(locked) if i < 16 and mask & (1 << i)]


def _short(r, locked, durable, layout):
    if not durable and r.status != "quorum":
        return errors.from_status(r.status, r.message, locked[0].address)
    return errors.Quorum(f"{len(durable)} durable replicas, the file needs {layout.quorum}: "
                         f"{r.message}")


async def _bounded(jobs):
    """Runs the coroutine factories `jobs`, at most PIPELINE at once; their
    results in order. After a failure no further job starts; those running
    finish; then the first failure is raised."""
    results = [None] * len(jobs)
    failure = []
    it = iter(enumerate(jobs))

    async def worker():
        for i, job in it:
            if failure:
                return
            try:
                results[i] = await job()
            except BaseException as e:
                failure.append(e)
                return

    await asyncio.gather(*(worker() for _ in range(min(PIPELINE, len(jobs)))))
    if failure:
        raise failure[0]
    return results
