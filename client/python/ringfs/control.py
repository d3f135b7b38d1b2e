"""The control RPC (schema/control.capnp) over pycapnp's asyncio RPC: the
namespace, open files (their chunk records, commits, leases) and the
cluster map. Every failure is raised as a typed `ringfs.errors` exception."""

import dataclasses
import functools
import time

import ssl as ssl_module

import capnp

from . import errors, tls
from ._schema import PROTOCOL_VERSION, control
from .credential import Credential


@dataclasses.dataclass(frozen=True)
class Attr:
    """A file's or directory's attributes (sizes in bytes)."""

    inode: int
    is_dir: bool
    size: int
    mode: int
    mtime_ns: int
    chunk_size: int
    replication: int
    write_quorum: int
    version: int
    uid: int = 0
    gid: int = 0

    @classmethod
    def read(cls, a):
        return cls(a.inode, str(a.kind) == "directory", a.size, a.mode, a.mtimeNs, a.chunkSize,
                   a.replication, a.writeQuorum, a.version, a.uid, a.gid)


@dataclasses.dataclass
class ChunkRecord:
    """Where chunk `index` of a file lives: its id `(hi, lo)`, the nodes
    holding it (primary first), its valid length and version `(epoch, seq)`,
    and the capability (80 bytes) the storage nodes demand for it."""

    index: int
    chunk_id: tuple
    replicas: list
    length: int
    version: tuple
    capability: bytes = dataclasses.field(default=None, repr=False)


@dataclasses.dataclass
class Node:
    """A storage node in the cluster map: its shard endpoints by shard
    number, and its free bytes as last reported."""

    node_id: int
    up: bool
    shards: list
    free: int


def _typed(f):
    """Runs a control call, turning `capnp.KjException` into the typed
    exception of its `[code]`."""

    @functools.wraps(f)
    async def wrapper(*args, **kwargs):
        try:
            return await f(*args, **kwargs)
        except capnp.KjException as e:
            raise errors.from_capnp(e) from None

    return wrapper


class Control:
    """A connection to the control server (said hello to, authenticated)."""

    def __init__(self, client, cap, ssl=None):
        self._client = client  # keeps the connection alive
        self._cap = cap
        self.server_version = ""
        #: The TLS context of this client's connections (None: plaintext):
        #: the storage-node connections use it too.
        self.ssl = ssl

    @classmethod
    async def connect(cls, address, credential=None, ssl=None):
        """Connects (over TLS with `ssl`, an `ssl.SSLContext` from
        `ringfs.tls`), checks the protocol version and authenticates as
        `credential` (default: `Credential.default()`)."""
        if credential is None:
            credential = Credential.default()
        host, port = address.rsplit(":", 1)
        try:
            stream = await capnp.AsyncIoStream.create_connection(
                host=host.strip("[]"), port=int(port), ssl=ssl,
                server_hostname=tls.server_hostname(host) if ssl else None)
        except ssl_module.SSLError as e:
            # The server is not TLS, or its certificate is not from the
            # cluster CA or not for this host: retrying will not help.
            raise errors.Unauthenticated(
                f"control server {address}: TLS handshake failed: {e}") from None
        except OSError as e:
            raise errors.Unavailable(f"control server {address}: cannot connect: {e}") from e
        client = capnp.TwoPartyClient(stream)
        self = cls(client, client.bootstrap().cast_as(control.Control), ssl)
        try:
            r = await self._cap.hello(PROTOCOL_VERSION)
        except capnp.KjException as e:
            err = errors.from_capnp(e)
            if isinstance(err, errors.Unavailable):
                # A transport failure: what a TLS-only server does to a
                # plaintext hello, or a TLS server to a certificate it
                # does not trust (TLS 1.3 reports that after the handshake).
                why = ("does the cluster require TLS? see tls_ca" if ssl is None
                       else "did it refuse this client's TLS certificate?")
                raise errors.Unavailable(
                    f"control server {address} closed the connection before answering "
                    f"hello ({why})") from None
            raise err from None
        self.server_version = r.serverVersion
        try:
            await self._cap.authenticate(credential.user, credential.proof(bytes(r.challenge)))
        except capnp.KjException as e:
            raise errors.from_capnp(e) from None
        return self

    @_typed
    async def create(self, path, mode=0, chunk_size=0, replication=0, write_quorum=0, exclusive=False):
        opts = _create_options(mode, chunk_size, replication, write_quorum, exclusive)
        return Attr.read((await self._cap.create(path, opts)).attr)

    @_typed
    async def mkdir(self, path, mode=0):
        return Attr.read((await self._cap.mkdir(path, mode)).attr)

    @_typed
    async def unlink(self, path):
        await self._cap.unlink(path)

    @_typed
    async def rmdir(self, path):
        await self._cap.rmdir(path)

    @_typed
    async def rename(self, src, dst):
        await self._cap.rename(src, dst)

    @_typed
    async def set_attr(self, path, mode=None, mtime_ns=None, uid=None, gid=None):
        """chmod / utimes / chown (`None`: unchanged); the new attributes."""
        # By name: the parameters are not in the order a call would suggest
        # (requestId, which this package does not send, sits in between).
        r = await self._cap.setAttr(
            path=path, setMode=mode is not None, mode=mode or 0,
            setMtime=mtime_ns is not None, mtimeNs=mtime_ns or 0,
            setUid=uid is not None, uid=uid or 0, setGid=gid is not None, gid=gid or 0)
        return Attr.read(r.attr)

    @_typed
    async def add_user(self, name, uid=0, gids=(), admin=False):
        """Registers a user (administrators only); returns `(uid, gids,
        salt)`. Its key is `Credential.derive(secret, name, salt)`: only
        holders of the cluster secret can make it."""
        u = (await self._cap.addUser(name, uid, list(gids), admin)).user
        return u.uid, list(u.gids), bytes(u.salt)

    @_typed
    async def remove_user(self, name):
        """Revokes a user (administrators only)."""
        await self._cap.removeUser(name)

    @_typed
    async def stat(self, path):
        return Attr.read((await self._cap.stat(path)).attr)

    @_typed
    async def list_page(self, path, after="", limit=0):
        """One page of a directory: `([(name, Attr)], more)`."""
        r = await self._cap.list(path, after, limit)
        return [(e.name, Attr.read(e.attr)) for e in r.entries], r.more

    @_typed
    async def open(self, path, write, wait_ms):
        mode = "write" if write else "read"
        return Handle.read(await self._cap.open(path, mode, wait_ms))

    @_typed
    async def open_new(self, path, mode=0, chunk_size=0, replication=0, write_quorum=0):
        """A write handle on a file not created yet (`openNew`): checked
        now as an exclusive create of `path`, created only by a
        `commit_transaction` that names it with `create`; its `attr` is
        what the file will be. Closed without such a commit, it leaves
        nothing."""
        opts = _create_options(mode, chunk_size, replication, write_quorum, True)
        return Handle.read(await self._cap.openNew(path, opts))

    @_typed
    async def commit_transaction(self, files, unlinks=()):
        """Commits several files at once (`commitTransaction`): `files` is
        a list of `(guid of a write handle holding the lease, records,
        truncate_to, file_size, create)`, `create` being `None` or, for a
        handle from `open_new`, `(path, dict of open_new's layout
        options)`; the files at `unlinks` are removed by the same commit.
        Every change or none. The files' new `Attr`s, in their order."""
        req = self._cap.commitTransaction_request()
        lst = req.init("files", len(files))
        for b, (guid, records, truncate_to, file_size, create) in zip(lst, files):
            b.guid = guid
            b.truncateTo = truncate_to
            b.fileSize = file_size
            _fill_records(b.init("chunks", len(records)), records)
            if create is not None:
                path, layout = create
                b.createAt = path
                b.createOptions = _create_options(exclusive=True, **layout)
        names = req.init("unlinks", len(unlinks))
        for i, path in enumerate(unlinks):
            names[i] = path
        return [Attr.read(a) for a in (await req.send()).attrs]

    @_typed
    async def cluster_map(self):
        """`(epoch, {node_id: Node})`."""
        m = (await self._cap.clusterMap()).map
        nodes = {}
        for n in m.nodes:
            shards = sorted(n.shards, key=lambda s: s.shard)
            c = n.capacity
            free = max(0, c.totalBytes - c.usedBytes - c.reservedBytes)
            nodes[n.nodeId] = Node(n.nodeId, n.up, [s.address for s in shards], free)
        return m.epoch, nodes

    @_typed
    async def report_bad_replica(self, chunk_id, node_id, repaired=False):
        cid = {"hi": chunk_id[0], "lo": chunk_id[1]}
        await self._cap.reportBadReplica(cid, node_id, repaired)


class Handle:
    """An open file on the control server (a `FileHandle` capability):
    read handles see the committed state; a write handle holds the file's
    exclusive write lease and its `write_epoch`."""

    def __init__(self, cap, guid, attr, write_epoch, reserve_capability=None):
        self._cap = cap
        self.guid = guid
        self.attr = attr
        self.write_epoch = write_epoch
        self._reserve = reserve_capability

    @classmethod
    def read(cls, r):
        """The handle of an `open` or `openNew` answer."""
        return cls(r.handle, bytes(r.guid), Attr.read(r.attr), r.writeEpoch,
                   bytes(r.reserveCapability) or None)

    @_typed
    async def reserve_capability(self):
        """The capability storage nodes mint this write lease's new chunk
        ids with: the one `open` answered while it has a minute left, else
        a renewed one."""
        c = self._reserve
        if c is None or int.from_bytes(c[8:16], "big") < time.time() * 1000 + 60_000:
            c = self._reserve = bytes((await self._cap.reserveCapability()).capability)
        return c

    @_typed
    async def get_attr(self):
        return Attr.read((await self._cap.attr()).attr)

    @_typed
    async def chunks(self, first, count):
        """Every chunk record with index in `[first, first + count)` (holes
        absent), following `more` page after page."""
        out = []
        end = first + count
        while first < end:
            r = await self._cap.getChunks(first, min(end - first, 0xFFFFFFFF))
            page = [ChunkRecord(c.index, (c.chunkId.hi, c.chunkId.lo), list(c.replicas), c.length,
                                (c.versionEpoch, c.versionSeq), bytes(c.capability) or None)
                    for c in r.chunks]
            out += page
            if not (r.more and page):
                break
            first = page[-1].index + 1
        return out

    @_typed
    async def commit(self, records, file_size):
        """Makes `records` visible and sets the size (atomically): returns
        the new attributes."""
        req = self._cap.commitChunks_request()
        req.fileSize = file_size
        _fill_records(req.init("chunks", len(records)), records)
        return Attr.read((await req.send()).attr)

    @_typed
    async def set_size(self, size):
        return Attr.read((await self._cap.setSize(size)).attr)

    @_typed
    async def close(self):
        await self._cap.close()


def _fill_records(lst, records):
    """Fills a `List(ChunkRecord)` builder with `records` (`ChunkRecord`s)."""
    for b, r in zip(lst, records):
        b.index = r.index
        b.chunkId.hi, b.chunkId.lo = r.chunk_id
        reps = b.init("replicas", len(r.replicas))
        for i, n in enumerate(r.replicas):
            reps[i] = n
        b.length = r.length
        b.versionEpoch, b.versionSeq = r.version
        if r.capability:
            b.capability = r.capability


def _create_options(mode=0, chunk_size=0, replication=0, write_quorum=0, exclusive=False):
    return control.CreateOptions.new_message(
        mode=mode, chunkSize=chunk_size, replication=replication, writeQuorum=write_quorum,
        exclusive=exclusive)
