"""The ringfs Python package against a real cluster, driven by
tests/tests/python_client.rs (which starts the control server, the nodes
and passes their addresses and pids):

    RINGFS_CONTROL=host:port RINGFS_CREDENTIAL=admin.credential \
    RINGFS_SECRET_FILE=secret RINGFS_CLI=/path/to/ringfs \
    RINGFS_NODES=id:pid:datadir,... python3 cluster_test.py [bench]

Exits non-zero on the first failure. `bench` also prints (`bench-only`:
only prints) the sequential
1 MiB-block write and read throughput of this package and of the Rust
`ringfs` CLI on the same cluster.
"""

import io
import os
import signal
import subprocess
import sys
import tempfile
import time

import ringfs
from ringfs import errors
from ringfs.sync import Client as SyncClient

from patterns import pattern

CONTROL = os.environ["RINGFS_CONTROL"]
CLI = os.environ["RINGFS_CLI"]
# node id -> (the pid of that storage node's process, its data directory)
NODES = {int(i): (int(pid), d) for i, pid, d in
         (n.split(":", 2) for n in os.environ["RINGFS_NODES"].split(","))}
CHUNK = 64 * 1024


def cli(*args, stdin=None):
    r = subprocess.run([CLI, "--control", CONTROL, *args], capture_output=True, input=stdin)
    if r.returncode != 0:
        raise AssertionError(f"ringfs {' '.join(args)} failed: {r.stderr.decode()}")
    return r.stdout


def expect(exc, f, what):
    try:
        f()
    except exc as e:
        print(f"  {what}: {type(e).__name__}: {e}")
        return e
    raise AssertionError(f"{what}: no {exc.__name__} raised")


async def round_trips(c):
    await c.mkdir("/rt")
    sizes = [0, 1, 4095, 4096, CHUNK, CHUNK + 1, 5 * CHUNK + 123]
    for n in sizes:
        data = pattern(n, n)
        path = f"/rt/f{n}"
        async with await c.open(path, "wb", chunk_size=CHUNK, replication=3, write_quorum=2) as f:
            assert await f.write(data) == n
        a = await c.stat(path)
        assert a.size == n and a.chunk_size == CHUNK and a.replication == 3, a
        async with await c.open(path, "rb") as f:
            got = await f.read()
            assert got == data, f"{n}: read back {len(got)} bytes, differing"
            # Reads into a buffer, at offsets across chunk edges.
            for off in {0, n // 2, max(0, n - 1), CHUNK - 1}:
                buf = bytearray(4097)
                k = await f.preadinto(off, buf)
                assert bytes(buf[:k]) == data[off:off + 4097], (n, off)
        print(f"  round trip of {n} bytes: ok")
    names = [n async for n, _ in c.list("/rt")]
    assert names == sorted(f"f{n}" for n in sizes), names


async def overwrites_and_appends(c):
    ref = bytearray(pattern(3 * CHUNK, 7))
    async with await c.open("/rt/ow", "w+b", chunk_size=CHUNK, replication=3, write_quorum=2) as f:
        await f.write(ref)
        for off, n in [(10, 5), (CHUNK - 3, 9), (2 * CHUNK, CHUNK + 500), (4 * CHUNK + 7, 10)]:
            d = pattern(n, off)
            await f.pwrite(off, d)
            ref.extend(bytes(max(0, off - len(ref))))
            ref[off:off + n] = d
        f.seek(0)
        assert await f.read() == ref
        await f.truncate(1000)
        del ref[1000:]
        await f.pwrite(5000, b"x")  # the gap past a truncate reads zeros
        ref += bytes(4000) + b"x"
    async with await c.open("/rt/ow", "ab") as f:
        await f.write(b"tail")
        ref += b"tail"
    async with await c.open("/rt/ow", "rb") as f:
        assert b"".join([p async for p in f.chunks(777)]) == ref
    print(f"  overwrites, truncate, append: ok ({len(ref)} bytes)")


def sync_api_and_bad_input():
    with SyncClient(CONTROL) as c:
        data = pattern(3 * CHUNK + 5, 11)
        with c.open("/rt/sync", "wb", chunk_size=CHUNK, replication=2) as f:
            f.write(data)
        with c.open("/rt/sync", "rb") as f:
            assert io.BufferedReader(f, 10_000).read() == data
        with c.open("/rt/sync", "rb") as f:
            assert b"".join(f.chunks(CHUNK)) == data
        print("  sync API, io.BufferedReader, chunks(): ok")
        expect(errors.NotFound, lambda: c.stat("/rt/none"), "stat of a missing file")
        e = expect(errors.InvalidArgument, lambda: c.mkdir("relative"), "a relative path")
        assert isinstance(e, ValueError)
        expect(errors.InvalidArgument, lambda: c.stat("/rt//x"), "an empty component")
        expect(errors.Exists, lambda: c.mkdir("/rt"), "mkdir of an existing directory")
        expect(FileExistsError, lambda: c.open("/rt/sync", "xb"), "exclusive create of a file")
        expect(errors.NotADirectory, lambda: c.stat("/rt/sync/x"), "a file as a directory")
        expect(errors.IsADirectory, lambda: c.open("/rt", "rb"), "open of a directory")
        expect(errors.NotEmpty, lambda: c.rmdir("/rt"), "rmdir of a non-empty directory")
        expect(errors.InvalidArgument, lambda: c.create("/rt/big", chunk_size=128 << 20),
               "a chunk size no node stores")
        expect(ValueError, lambda: c.open("/rt/sync", "rw"), "a bad mode")
        with c.open("/rt/sync", "rb") as f:
            expect(io.UnsupportedOperation, lambda: f.write(b"x"), "write on a read handle")
            expect(ValueError, lambda: f.seek(-1), "a negative seek")
        expect(ValueError, lambda: f.read(), "read of a closed file")
        w = c.open("/rt/sync", "ab", wait=0)
        expect(errors.Busy, lambda: c.open("/rt/sync", "ab", wait=0.2), "a second writer")
        w.close()
    expect(ValueError, lambda: c.stat("/"), "a call on a closed client")


async def credentials_and_permissions(c):
    """A wrong key is refused with Unauthenticated; a user issued by the
    administrator may not read another's private file until it is chmodded;
    chown is the administrator's."""
    me = ringfs.Credential.default()
    wrong = ringfs.Credential(me.user, bytes(32))
    try:
        await ringfs.Client.connect(CONTROL, credential=wrong)
    except errors.Unauthenticated as e:
        print(f"  wrong key: {type(e).__name__}: {e}")
    else:
        raise AssertionError("a wrong key was accepted")
    secret = open(os.environ["RINGFS_SECRET_FILE"], "rb").read().strip()
    uid, _, salt = await c.control.add_user("pyuser")
    dave = ringfs.Credential.derive(secret, "pyuser", salt)
    await c.mkdir("/py-private", 0o700)
    await c.create("/py-private/f", mode=0o600)
    d = await ringfs.Client.connect(CONTROL, credential=dave)
    try:
        try:
            await d.stat("/py-private/f")
        except errors.PermissionDenied as e:
            print(f"  another user's directory: {type(e).__name__}: {e}")
        else:
            raise AssertionError("searched a 0700 directory of another user")
        try:
            await d.chown("/py-private", uid=uid)
        except errors.PermissionDenied:
            pass
        else:
            raise AssertionError("a user gave itself a directory")
        await c.chmod("/py-private", 0o711)
        await c.chmod("/py-private/f", 0o644)
        a = await d.stat("/py-private/f")
        assert a.mode == 0o644 and a.uid == 0, a
        owned = await c.chown("/py-private/f", uid=uid)
        assert owned.uid == uid, owned
    finally:
        await d.close()


async def interop(c):
    data = pattern(2 * CHUNK + 99, 21)
    async with await c.open("/rt/from-python", "wb", chunk_size=CHUNK, replication=3,
                            write_quorum=2) as f:
        await f.write(data)
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "got")
        cli("get", "/rt/from-python", out)
        with open(out, "rb") as g:
            assert g.read() == data, "ringfs get read other bytes than Python wrote"
        src = os.path.join(d, "src")
        data2 = pattern(3 * CHUNK + 1, 22)
        with open(src, "wb") as g:
            g.write(data2)
        cli("put", "--chunk-size", str(CHUNK), "-r", "3", "-w", "2", src, "/rt/from-rust")
    async with await c.open("/rt/from-rust", "rb") as f:
        assert await f.read() == data2, "Python read other bytes than ringfs put wrote"
    print("  interop with the ringfs CLI both ways: ok")


def corrupt(node_id, chunk_id, marker, at):
    """Flips a byte `at` bytes into the data of `node_id`'s file of the
    chunk (found by its first bytes `marker`), as silent disk corruption
    would. The nodes in this test have one shard each."""
    path = os.path.join(NODES[node_id][1], "shard-0", "%016x%016x.chunk" % chunk_id)
    with open(path, "r+b") as g:
        content = g.read()
        start = content.index(marker)
        g.seek(start + at)
        g.write(bytes([content[start + at] ^ 0x5A]))
        g.flush()
        os.fsync(g.fileno())


async def corrupt_replicas_are_never_served(c):
    data = pattern(3 * 4096 + 100, 51)
    async with await c.open("/rt/crc", "wb", chunk_size=CHUNK, replication=2) as f:
        await f.write(data)
    async with await c.open("/rt/crc", "rb") as f:
        (rec,) = await f._handle.chunks(0, 1)
        # The replica chunk 0 is read from first, then the other.
        first, second = rec.replicas
        corrupt(first, rec.chunk_id, data[:64], 5000)
        assert await f.pread(0, len(data)) == data, "a corrupt replica's bytes were served"
        corrupt(second, rec.chunk_id, data[:64], 9000)
        try:
            got = await f.pread(4096, 8192)
        except errors.Corrupt as e:
            print(f"  every replica corrupt: Corrupt: {e}"[:160])
        else:
            raise AssertionError(f"no error with every replica corrupt (got {got == data[4096:12288]})")
    print("  a corrupt replica: failed over to the good one, never served")


async def node_killed_during_read(c):
    n = 6 * CHUNK
    data = pattern(n, 31)
    async with await c.open("/rt/kill", "wb", chunk_size=CHUNK, replication=3,
                            write_quorum=2) as f:
        await f.write(data)
    async with await c.open("/rt/kill", "rb") as f:
        first = await f.read(2 * CHUNK)
        recs = await f._handle.chunks(2, 1)
        # The replica the client reads chunk 2 from first (the rotation of
        # datapath.read_piece): kill it between two reads.
        rec = recs[0]
        victim = rec.replicas[(-rec.index) % len(rec.replicas)]
        os.kill(NODES[victim][0], signal.SIGKILL)
        rest = await f.read()
    assert first + rest == data, "read across a killed node returned other bytes"
    print(f"  node {victim} killed during a read: the read failed over, bytes intact")


async def bench(c, mib=64):
    block = pattern(1 << 20, 41)
    path = "/bench/py"
    await c.mkdir("/bench")
    t = time.perf_counter()
    async with await c.open(path, "wb", replication=3, write_quorum=3) as f:
        for _ in range(mib):
            await f.write(block)
    w = mib / (time.perf_counter() - t)
    t = time.perf_counter()
    async with await c.open(path, "rb") as f:
        buf = bytearray(1 << 20)
        while await f.readinto(buf):
            pass
    r = mib / (time.perf_counter() - t)
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "src")
        with open(src, "wb") as g:
            for _ in range(mib):
                g.write(block)
        t = time.perf_counter()
        cli("put", "-r", "3", "-w", "3", src, "/bench/rust")
        rw = mib / (time.perf_counter() - t)
        t = time.perf_counter()
        cli("get", "/bench/rust", os.path.join(d, "dst"))
        rr = mib / (time.perf_counter() - t)
    print(f"BENCH {mib} MiB, 1 MiB blocks, R=3 W=3, default chunk size: "
          f"python write {w:.1f} MiB/s read {r:.1f} MiB/s; "
          f"rust CLI put {rw:.1f} MiB/s get {rr:.1f} MiB/s")


async def bits_flipped_in_flight_are_caught():
    """Run against two nodes, one of which flips a bit in every read answer
    after its own check (failpoint `ops::read::flip_bit`): only this
    client's CRC check can catch it."""
    async with await ringfs.Client.connect(CONTROL) as c:
        data = pattern(4 * CHUNK, 61)
        async with await c.open("/flip", "wb", chunk_size=CHUNK, replication=2) as f:
            await f.write(data)
        async with await c.open("/flip", "rb") as f:
            # Chunk by chunk: the replica read first rotates with the
            # index, so the flipping node is asked first for half of them.
            for i in range(4):
                got = await f.pread(i * CHUNK, CHUNK)
                assert got == data[i * CHUNK:(i + 1) * CHUNK], f"chunk {i}: flipped bytes served"
    print("python flip test: all ok")


async def verified_reads(expected_path):
    """Run against /v3 (three replicas, one differing from the others at the
    same version with valid checksums) and /v2 (two replicas that differ),
    both holding the bytes of `expected_path` on their good replicas."""
    with open(expected_path, "rb") as g:
        expected = g.read()
    async with await ringfs.Client.connect(CONTROL) as c:
        async with await c.open("/v3", "rb", verify_replicas=True) as f:
            assert await f.read() == expected, "a verified read served the odd replica"
        async with await c.open("/v2", "rb", verify_replicas=True) as f:
            try:
                await f.read()
            except errors.Corrupt as e:
                assert "no majority" in str(e), str(e)
                print(f"  two replicas that disagree: Corrupt: {e}"[:200])
            else:
                raise AssertionError("a verified read of two disagreeing replicas succeeded")
    print("python verify test: all ok")


async def main():
    if sys.argv[1:2] == ["verify"]:
        return await verified_reads(sys.argv[2])
    if sys.argv[1:] == ["flip"]:
        return await bits_flipped_in_flight_are_caught()
    if sys.argv[1:] == ["bench-only"]:
        async with await ringfs.Client.connect(CONTROL) as c:
            return await bench(c, int(os.environ.get("RINGFS_BENCH_MIB", "64")))
    async with await ringfs.Client.connect(CONTROL) as c:
        await round_trips(c)
        await overwrites_and_appends(c)
        await interop(c)
        await credentials_and_permissions(c)
        await corrupt_replicas_are_never_served(c)
        if "bench" in sys.argv[1:]:
            await bench(c, int(os.environ.get("RINGFS_BENCH_MIB", "64")))
    sync_api_and_bad_input()
    async with await ringfs.Client.connect(CONTROL) as c:
        # Last: it leaves the cluster a node short.
        await node_killed_during_read(c)
    print("python cluster test: all ok")


if __name__ == "__main__":
    ringfs.run(main())
