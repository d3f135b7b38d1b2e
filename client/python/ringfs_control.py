"""A minimal Python client of the ringfs control server, straight from the
Cap'n Proto schema (schema/control.capnp) with pycapnp: the schema is the
contract, so any language with Cap'n Proto bindings can do this.

Usage: python3 ringfs_control.py HOST:PORT
Connects, checks the protocol version, creates /py-demo and a file entry in
it, lists and stats them, and prints what it saw. Exits non-zero on any
mismatch. Needs `pip install pycapnp` (2.x).
"""

import asyncio
import os
import sys

import capnp

SCHEMA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "schema")
common_capnp = capnp.load(os.path.join(SCHEMA_DIR, "common.capnp"), imports=[SCHEMA_DIR])
control_capnp = capnp.load(os.path.join(SCHEMA_DIR, "control.capnp"), imports=[SCHEMA_DIR])


class RingfsControl:
    """The control server's namespace calls (errors raise capnp.KjException
    whose description starts with `[code]`, see docs/protocol.md)."""

    def __init__(self, control):
        self.control = control

    @classmethod
    async def connect(cls, addr):
        host, port = addr.rsplit(":", 1)
        stream = await capnp.AsyncIoStream.create_connection(host=host, port=int(port))
        client = capnp.TwoPartyClient(stream)
        self = cls(client.bootstrap().cast_as(control_capnp.Control))
        self._client = client  # keeps the connection alive
        await self.control.hello(common_capnp.protocolVersion)
        return self

    async def mkdir(self, path, mode=0):
        return (await self.control.mkdir(path, mode)).attr

    async def create(self, path, chunk_size=0, replication=0, exclusive=False):
        opts = control_capnp.CreateOptions.new_message(
            chunkSize=chunk_size, replication=replication, exclusive=exclusive
        )
        return (await self.control.create(path, opts)).attr

    async def stat(self, path):
        return (await self.control.stat(path)).attr

    async def list(self, path):
        entries, after = [], ""
        while True:
            r = await self.control.list(path, after, 0)
            entries += [(e.name, e.attr) for e in r.entries]
            if not r.more:
                return entries
            after = entries[-1][0]


async def main(addr):
    c = await RingfsControl.connect(addr)
    d = await c.mkdir("/py-demo", 0o750)
    f = await c.create("/py-demo/hello.txt", chunk_size=1 << 20, replication=1)
    names = [(n, str(a.kind)) for n, a in await c.list("/py-demo")]
    st = await c.stat("/py-demo/hello.txt")
    print(f"mkdir /py-demo: inode {d.inode}, mode {d.mode:o}")
    print(f"create /py-demo/hello.txt: inode {f.inode}, chunk size {f.chunkSize}")
    print(f"list /py-demo: {names}")
    print(f"stat /py-demo/hello.txt: size {st.size}, replication {st.replication}")
    try:
        await c.mkdir("/py-demo")
        raise SystemExit("mkdir of an existing directory succeeded")
    except capnp.KjException as e:
        assert "[exists]" in e.description, e.description
        print("mkdir again: exists (as expected)")
    ok = (
        d.mode == 0o750
        and names == [("hello.txt", "file")]
        and st.inode == f.inode
        and st.size == 0
        and st.chunkSize == 1 << 20
        and st.replication == 1
    )
    if not ok:
        raise SystemExit("unexpected answers from the control server")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    asyncio.run(capnp.run(main(sys.argv[1])))
