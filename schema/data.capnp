@0xd51569722059bb99;
# Data-plane frame header between clients and storage nodes (and node to
# node). A frame on the wire is:
#
#   u32 little-endian  header length H in bytes
#   H bytes            a single-segment Cap'n Proto message (unpacked) of FrameHeader,
#                      without the segment table
#   payloadLength bytes raw payload (write data, read data)
#
# The exact framing is documented in docs/protocol.md.

using Common = import "common.capnp";

enum Op {
  lock @0;
  unlock @1;
  reserve @2;
  write @3;
  read @4;
  chunkInfo @5;
  delete @6;
  copyTo @7;
  lockGranted @8;
  # Pushed by the node when a waiting lock request is granted.
}

enum LockMode {
  none @0;
  read @1;
  write @2;
}

enum Status {
  ok @0;
  wait @1;
  # The lock is not free; a `lockGranted` frame with the same requestId follows.
  notFound @2;
  badToken @3;
  timeout @4;
  noSpace @5;
  checksum @6;
  invalidArgument @7;
  staleVersion @8;
  io @9;
  unavailable @10;
  internal @11;
}

struct LockToken {
  # Issued by the node with a lock grant. mac = keyed MAC over
  # (chunkId, clientId, generation) with the node's secret.
  clientId @0 :UInt64;
  generation @1 :UInt64;
  mac @2 :Data;
}

struct ChainHop {
  nodeId @0 :UInt64;
  address @1 :Text;
  token @2 :LockToken;
}

struct FrameHeader {
  requestId @0 :UInt64;
  op @1 :Op;
  status @2 :Status;
  message @3 :Text;
  chunkId @4 :Common.ChunkId;
  offset @5 :UInt64;
  length @6 :UInt32;
  payloadLength @7 :UInt32;
  version @8 :UInt64;
  token @9 :LockToken;
  lockMode @10 :LockMode;
  implicitLock @11 :LockMode;
  leaseMs @12 :UInt32;
  timeoutMs @13 :UInt32;
  chain @14 :List(ChainHop);
  writeQuorum @15 :UInt8;
  reserveBytes @16 :UInt64;
  crc32c @17 :UInt32;
}
