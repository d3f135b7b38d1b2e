"""The Cap'n Proto schema, loaded from the copies shipped in the package
(`ringfs/schema`, kept identical to the repository's `schema/` by
`scripts/gen-schema`), so no checkout is needed."""

import os

import capnp

_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "schema")

common = capnp.load(os.path.join(_DIR, "common.capnp"), imports=[_DIR])
control = capnp.load(os.path.join(_DIR, "control.capnp"), imports=[_DIR])
data = capnp.load(os.path.join(_DIR, "data.capnp"), imports=[_DIR])

#: The wire protocol this package speaks (checked at `hello`).
PROTOCOL_VERSION = common.protocolVersion
#: The largest chunk a storage node stores, and the largest payload.
MAX_CHUNK_SIZE = 64 * 1024 * 1024
#: The CRC grid of chunk data.
BLOCK = 4096
