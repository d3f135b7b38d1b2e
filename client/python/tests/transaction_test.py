"""Transactions across files from Python, against a real cluster started by
tests/tests/python_client.rs:

    RINGFS_CONTROL=host:port RINGFS_CREDENTIAL=admin.credential \
    python3 transaction_test.py

Checks: readers running while two-file transactions commit never see a
mix of rounds; partial writes, truncation and extension inside a
transaction match a reference and stay invisible until the commit; an
abort (explicit, by an exception, or by leaving `async with`) leaves both
files unchanged and no lease held; a transaction that waits too long for a
lease raises `Busy` naming the file and leaves nothing behind (files
unchanged, the file it was to create absent, no lease held); files it
creates and unlinks change with the commit only (not before it, not
after an abort or a refused commit); the synchronous wrapper commits too. Exits non-zero on the first failure.
"""

import asyncio
import os

import ringfs
from ringfs import errors
from ringfs.sync import Client as SyncClient

from patterns import pattern

CONTROL = os.environ["RINGFS_CONTROL"]
CHUNK = 64 * 1024
FILES = ["/t/b", "/t/a"]  # not in lease order on purpose
LAYOUT = dict(chunk_size=CHUNK, replication=2, write_quorum=2)


def content(rnd):
    """Every file's content at round `rnd`: its size changes from round to
    round (some rounds shrink the files), every byte says the round."""
    return bytes([rnd]) * (CHUNK * (1 + rnd % 3) + 1000 + rnd)


def round_of(data):
    if not data:
        return None
    rnd = data[0]
    return rnd if data == content(rnd) else None


async def get(c, path):
    async with await c.open(path, "rb") as f:
        return await f.read()


async def read_whole(c, path):
    """The content of `path` as of one commit, or None if its version moved
    during the read (size and records may then be of different commits)."""
    async with await c.open(path, "rb") as f:
        first = await f.stat()
        data = await f.pread(0, first.size)
        last = await f.stat()
    return data if last.version == first.version and len(data) == first.size else None


async def commit_round(c, rnd):
    async with await c.transaction(FILES, lease_wait=10.0, create=True, **LAYOUT) as tx:
        assert tx.paths == ["/t/a", "/t/b"], tx.paths
        for f in FILES:
            await tx.replace(f, content(rnd))
        attrs = await tx.commit()
    assert [a.size for a in attrs] == [len(content(rnd))] * 2, attrs


async def readers_never_see_a_mix(c, rounds=12, most=60):
    await c.mkdir("/t")
    await commit_round(c, 1)
    done = asyncio.Event()
    decisive = 0

    async def reader():
        nonlocal decisive
        async with await ringfs.Client.connect(CONTROL) as r:
            while not done.is_set():
                a1 = await read_whole(r, "/t/a")
                b = await read_whole(r, "/t/b")
                a2 = await read_whole(r, "/t/a")
                if None in (a1, b, a2):
                    continue  # a commit during a read: read again
                a1, b, a2 = round_of(a1), round_of(b), round_of(a2)
                assert None not in (a1, b, a2), f"a file holds no single round: {a1} {b} {a2}"
                # Rounds only go up: A the same before and after B means B
                # was read while A was at that round.
                if a1 == a2:
                    assert b == a1, f"B at round {b}, A at {a1} before and after it"
                    decisive += 1

    readers = [asyncio.create_task(reader()) for _ in range(2)]
    rnd = 1
    try:
        # At least `rounds`, more (up to `most`) while the readers are too
        # slow (a loaded machine) to have judged 10 times.
        while rnd < rounds or (decisive < 10 and rnd < most):
            rnd += 1
            await commit_round(c, rnd)
            await asyncio.sleep(0.02)
    finally:
        done.set()
        await asyncio.gather(*readers)
    assert [round_of(await get(c, f)) for f in FILES] == [rnd, rnd]
    assert decisive >= 10, f"too few decisive reads ({decisive}) to judge"
    print(f"  {rnd} two-file commits, readers never saw a mix ({decisive} decisive reads)")


async def partial_writes_and_truncation(c):
    old = pattern(3 * CHUNK + 500, 1)
    for p in ("/p/a", "/p/b"):
        async with await c.open(p, "wb", **LAYOUT) as f:
            await f.write(old)
    async with await c.transaction(["/p/a", "/p/b"]) as tx:
        # /p/a: a write across a chunk boundary, in the middle of old data.
        patch = pattern(CHUNK // 2, 2)
        at = CHUNK + CHUNK * 3 // 4
        await tx.write("/p/a", at, patch)
        # /p/b: cut inside chunk 1, then extended: the cut bytes read as zeros.
        cut = CHUNK + 100
        await tx.truncate("/p/b", cut)
        await tx.write("/p/b", 2 * CHUNK, b"tail")
        assert await get(c, "/p/a") == old, "visible before the commit"
        assert await get(c, "/p/b") == old, "visible before the commit"
        await tx.commit()
    want_a = bytearray(old)
    want_a[at:at + len(patch)] = patch
    assert await get(c, "/p/a") == want_a, "/p/a after the commit"
    assert await get(c, "/p/b") == old[:cut] + bytes(2 * CHUNK - cut) + b"tail", "/p/b"
    print("  partial writes, truncation and extension: as the reference, invisible until commit")


async def no_lease_held(c, paths):
    """Every lease of `paths` is granted at once (then released)."""
    tx = await c.transaction(paths, lease_wait=0)
    await tx.abort()


async def aborts_change_nothing(c):
    before = {p: await get(c, p) for p in FILES}
    tx = await c.transaction(FILES)
    await tx.replace("/t/a", b"never")
    await tx.write("/t/b", 5, b"never")
    await tx.abort()
    async with await c.transaction(FILES) as tx:
        await tx.replace("/t/a", b"never")  # left without a commit
    try:
        async with await c.transaction(FILES) as tx:
            await tx.replace("/t/b", b"never")
            raise KeyError("boom")
    except KeyError:
        pass
    assert {p: await get(c, p) for p in FILES} == before, "an abort changed a file"
    await no_lease_held(c, FILES)
    print("  abort, exit without commit, exception: both files unchanged, no lease held")


async def lease_timeout_leaves_nothing(c):
    before = {p: await get(c, p) for p in FILES}
    holder = await c.open("/t/b", "ab")
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        await c.transaction(["/t/new", "/t/b", "/t/a"], lease_wait=0.5, create=True, **LAYOUT)
    except errors.Busy as e:
        msg = str(e)
        assert "/t/b" in msg and "nothing changed" in msg, msg
        print(f"  lease timeout: Busy: {msg}"[:200])
    else:
        raise AssertionError("the transaction got a lease another writer holds")
    finally:
        await holder.close()
    assert loop.time() - started < 5
    assert {p: await get(c, p) for p in FILES} == before, "a timed out transaction changed a file"
    try:
        await c.stat("/t/new")
    except errors.NotFound:
        pass
    else:
        raise AssertionError("a timed out transaction created its file")
    await no_lease_held(c, FILES)
    print("  lease timeout: files unchanged, the file to create absent, no lease held")


async def creates_and_unlinks(c):
    """Files a transaction creates and unlinks change with its commit: not
    before, and not at all after an abort or a refused commit."""
    async with await c.open("/c/gone", "wb", **LAYOUT) as f:
        await f.write(b"doomed")

    async def missing(path):
        try:
            await c.stat(path)
        except errors.NotFound:
            return True
        return False

    async def start():
        tx = await c.transaction(["/c/new", "/t/a"], create=True, **LAYOUT)
        await tx.replace("/c/new", pattern(CHUNK + 7, 3))
        await tx.replace("/t/a", b"new a")
        tx.unlink("/c/gone")
        return tx

    before_a = await get(c, "/t/a")
    await (await start()).abort()
    async with await start():
        pass  # left without a commit
    assert await missing("/c/new"), "an aborted transaction created its file"
    assert await get(c, "/c/gone") == b"doomed", "an aborted transaction unlinked"
    assert await get(c, "/t/a") == before_a
    tx = await start()
    for bad in ("/t/a", "/c/gone"):
        try:
            tx.unlink(bad)
        except errors.InvalidArgument:
            pass
        else:
            raise AssertionError(f"unlink of {bad} accepted twice or for a file written")
    assert await missing("/c/new"), "a created file visible before the commit"
    assert await get(c, "/c/gone") == b"doomed", "an unlinked file gone before the commit"
    await tx.commit()
    assert await get(c, "/c/new") == pattern(CHUNK + 7, 3)
    assert await get(c, "/t/a") == b"new a"
    assert await missing("/c/gone"), "the unlinked file is still there"
    # A refused commit (the file to unlink is gone) creates nothing.
    tx = await c.transaction(["/c/x"], create=True, **LAYOUT)
    await tx.replace("/c/x", b"never")
    tx.unlink("/c/gone")
    try:
        await tx.commit()
    except errors.NotFound as e:
        print(f"  refused commit: NotFound: {e}"[:160])
    else:
        raise AssertionError("a commit unlinking a missing file was applied")
    assert await missing("/c/x"), "a refused commit created its file"
    print("  creates and unlinks: with the commit only, none after abort or refusal")


def sync_transaction():
    with SyncClient(CONTROL) as c:
        with c.transaction(["/s/y", "/s/x"], create=True, **LAYOUT) as tx:
            tx.replace("/s/x", b"x" * 70000)
            tx.replace("/s/y", b"y" * 3)
            tx.commit()
        with c.transaction(["/s/y", "/s/x"]) as tx:
            tx.truncate("/s/x", 0)  # no commit: aborted
        with c.open("/s/x", "rb") as f:
            assert f.read() == b"x" * 70000
        with c.open("/s/y", "rb") as f:
            assert f.read() == b"y" * 3
    print("  sync API: committed, and aborted by leaving `with`")


async def main():
    async with await ringfs.Client.connect(CONTROL) as c:
        await c.mkdir("/p")
        await c.mkdir("/s")
        await c.mkdir("/c")
        await readers_never_see_a_mix(c)
        await partial_writes_and_truncation(c)
        await aborts_change_nothing(c)
        await lease_timeout_leaves_nothing(c)
        await creates_and_unlinks(c)
    sync_transaction()
    print("python transaction test: all ok")


if __name__ == "__main__":
    ringfs.run(main())
