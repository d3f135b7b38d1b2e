@0xc14fd208eb12c200;
# Types shared by the control RPC (control.capnp) and the data plane (data.capnp).

const protocolVersion :UInt32 = 3;
# Bumped on any incompatible change of the wire contract.

struct ChunkId {
  # 128-bit chunk id: the node id that minted it in `hi`, that node's
  # persistent counter in `lo`. Unique cluster-wide without coordination.
  hi @0 :UInt64;
  lo @1 :UInt64;
}

struct Capacity {
  # A storage node's capacity report. All sizes in bytes.
  totalBytes @0 :UInt64;
  usedBytes @1 :UInt64;
  reservedBytes @2 :UInt64;
  # Space promised to outstanding reservations, not yet written.
  chunkCount @3 :UInt64;
}
