"""The data plane's framing (docs/protocol.md, "Framing") and one pipelined
connection to a storage-node shard, on asyncio streams.

A frame is a u32 little-endian header length H, one `FrameHeader` in the
standard Cap'n Proto serialization, then `payloadLength` raw bytes. Requests
are pipelined and answered in any order, matched by `requestId`; a `lock`
answered `wait` completes with the later `lockGranted` frame.
"""

import asyncio
import itertools
import ssl as ssl_module
import struct

from . import errors, tls
from ._schema import MAX_CHUNK_SIZE, data

#: Largest header a node sends or accepts (room for a whole chunk's CRCs).
MAX_HEADER = 98304


class Frame:
    """A decoded response header (the fields this client uses) and its
    payload. `version` and `expected` are `(epoch, seq)` pairs; `token` is
    `(clientId, generation, mac)`, or None."""

    __slots__ = ("request_id", "op", "status", "message", "chunk_id", "offset", "version",
                 "chunk_length", "durable_mask", "token", "crcs", "lease_ms", "digest",
                 "payload_length", "payload", "capability")

    @classmethod
    def decode(cls, header):
        """The frame of `header` (its payload still to be read)."""
        f = cls()
        with data.FrameHeader.from_bytes(header, traversal_limit_in_words=MAX_HEADER) as h:
            f.payload_length = h.payloadLength
            f.request_id = h.requestId
            f.op = str(h.op)
            f.status = str(h.status)
            f.message = h.message
            f.chunk_id = (h.chunkId.hi, h.chunkId.lo)
            f.offset = h.offset
            f.version = (h.versionEpoch, h.versionSeq)
            f.chunk_length = h.chunkLength
            f.durable_mask = h.durableMask
            t = h.token
            f.token = (t.clientId, t.generation, bytes(t.mac)) if len(t.mac) else None
            f.crcs = list(h.crcs)
            f.lease_ms = h.leaseMs
            f.digest = bytes(h.digest)
            f.capability = bytes(h.capability) or None
        f.payload = b""
        return f


def request(op, chunk_id=(0, 0), token=None, version=None, expected=None, chain=(),
            capability=None, **fields):
    """A request header (a `FrameHeader` builder): `op` by name, the chunk
    id as `(hi, lo)`, versions as `(epoch, seq)`, `token` as returned in a
    frame, `chain` as `(nodeId, address, token)` triples, `capability` the
    80 bytes the control server (or the minting node) gave for the chunk;
    other fields by their schema names."""
    h = data.FrameHeader.new_message(op=op, **fields)
    h.chunkId.hi, h.chunkId.lo = chunk_id
    if capability:
        h.capability = capability
    if token is not None:
        _set_token(h.init("token"), token)
    if version is not None:
        h.versionEpoch, h.versionSeq = version
    if expected is not None:
        h.expectedEpoch, h.expectedSeq = expected
    if chain:
        hops = h.init("chain", len(chain))
        for hop, (node_id, address, tok) in zip(hops, chain):
            hop.nodeId = node_id
            hop.address = address
            _set_token(hop.init("token"), tok)
    return h


def _set_token(b, token):
    b.clientId, b.generation, b.mac = token


class NodeConn:
    """One TCP connection to a shard endpoint, requests pipelined over it.
    A connection that fails (reset, a malformed frame, a bad answer) fails
    every request in flight with `Unavailable` and is not used again."""

    def __init__(self, address, reader, writer):
        self.address = address
        self._reader = reader
        self._writer = writer
        self._ids = itertools.count(1)
        self._pending = {}
        self._broken = None
        self._reading = asyncio.ensure_future(self._read_loop())

    @classmethod
    async def open(cls, address, timeout, ssl=None):
        """Connects to `address` within `timeout` seconds, over TLS with
        `ssl` (an `ssl.SSLContext` from `ringfs.tls`: the node's
        certificate is checked against the cluster CA and the host)."""
        host, port = address.rsplit(":", 1)
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    host.strip("[]"), int(port), limit=1 << 20, ssl=ssl,
                    server_hostname=tls.server_hostname(host) if ssl else None),
                timeout)
        except ssl_module.SSLError as e:
            raise errors.Unauthenticated(
                f"storage node {address}: TLS handshake failed: {e}") from None
        except (OSError, asyncio.TimeoutError) as e:
            raise errors.Unavailable(f"storage node {address}: cannot connect: {e}") from e
        return cls(address, reader, writer)

    @property
    def usable(self):
        return self._broken is None

    @property
    def in_flight(self):
        return len(self._pending)

    async def call(self, header, payload=b"", timeout=30.0):
        """Sends `header` (a builder from `request`) with `payload` and
        returns the answer (a `Frame`, whatever its status)."""
        if self._broken is not None:
            raise errors.Unavailable(f"storage node {self.address}: {self._broken}")
        rid = next(self._ids)
        header.requestId = rid
        header.payloadLength = len(payload)
        hb = header.to_bytes()
        fut = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        try:
            # The frame is handed to the transport whole, before any await:
            # a cancelled call never leaves half a frame behind.
            self._writer.write(struct.pack("<I", len(hb)) + hb)
            if payload:
                self._writer.write(payload)
            await asyncio.wait_for(self._drain_and_wait(fut), timeout)
            return fut.result()
        except asyncio.TimeoutError:
            raise errors.Timeout(f"storage node {self.address}: no answer within {timeout} s") from None
        except OSError as e:
            if isinstance(e, errors.RingfsError):
                raise
            self._fail(f"connection lost: {e}")
            raise errors.Unavailable(f"storage node {self.address}: connection lost: {e}") from None
        finally:
            self._pending.pop(rid, None)
            if fut.done() and not fut.cancelled():
                fut.exception()  # retrieved: the caller got the failure

    async def _drain_and_wait(self, fut):
        await self._writer.drain()
        await asyncio.shield(fut)

    async def _read_loop(self):
        why = "connection closed by the node"
        try:
            while True:
                (n,) = struct.unpack("<I", await self._reader.readexactly(4))
                if n < 8 or n > MAX_HEADER or n % 8:
                    why = f"bad header length {n}"
                    break
                f = Frame.decode(await self._reader.readexactly(n))
                if f.payload_length > MAX_CHUNK_SIZE:
                    why = f"payload length {f.payload_length} above {MAX_CHUNK_SIZE}"
                    break
                if f.payload_length:
                    f.payload = await self._reader.readexactly(f.payload_length)
                if f.status == "wait":
                    continue  # the grant (op lockGranted) follows with this id
                fut = self._pending.get(f.request_id)
                if fut is not None and not fut.done():
                    fut.set_result(f)
                elif f.status == "malformed":
                    why = f"the node could not decode a frame: {f.message}"
                    break
        except (asyncio.IncompleteReadError, OSError) as e:
            why = f"connection lost: {e}"
        except Exception as e:  # a header pycapnp cannot decode
            why = f"undecodable answer: {e}"
        self._fail(why)

    def _fail(self, why):
        if self._broken is not None:
            return
        self._broken = why
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(errors.Unavailable(f"storage node {self.address}: {why}"))
        self._writer.close()

    async def close(self):
        self._fail("closed")
        # Closing the transport ends the read loop (its read fails).
        await asyncio.wait({self._reading}, timeout=1.0)
        self._reading.cancel()


class NodePool:
    """One connection per shard endpoint, reopened after it failed."""

    def __init__(self, connect_timeout=10.0, ssl=None):
        self._conns = {}
        self._opening = {}
        self._timeout = connect_timeout
        self._ssl = ssl

    async def get(self, address):
        c = self._conns.get(address)
        if c is not None and c.usable:
            return c
        # Concurrent callers share one connection attempt: a second one
        # would be orphaned, its read loop never closed.
        opening = self._opening.get(address)
        if opening is None:
            opening = asyncio.ensure_future(NodeConn.open(address, self._timeout, self._ssl))
            self._opening[address] = opening
            try:
                c = await opening
            finally:
                del self._opening[address]
            if address in self._conns:
                await self._conns[address].close()
            self._conns[address] = c
            return c
        return await asyncio.shield(opening)

    def in_flight(self, address):
        c = self._conns.get(address)
        return c.in_flight if c is not None and c.usable else 0

    async def close(self):
        conns, self._conns = list(self._conns.values()), {}
        await asyncio.gather(*(c.close() for c in conns))
