@0xd51569722059bb99;
# Data-plane frame header between clients and storage nodes (and node to
# node). A frame on the wire is:
#
#   u32 little-endian   header length H in bytes (8 <= H <= 65536, H % 8 == 0)
#   H bytes             one FrameHeader in the standard Cap'n Proto
#                       serialization (segment table included, unpacked)
#   payloadLength bytes raw payload (write data, read data), no padding
#
# Requests are pipelined; a node answers each request with one response frame
# carrying the same requestId (out of order), except `lock` answered `wait`,
# which is later followed by a second frame (op lockGranted, same requestId)
# with status ok or timeout. The exact framing is in docs/protocol-data.md.

using Common = import "common.capnp";

enum Op {
  lock @0;
  # Take (or, with a valid token of the caller, renew) a lock on chunkId.
  unlock @1;
  reserve @2;
  # New chunk: reserveBytes of space, a new chunk id, and its write lock.
  write @3;
  read @4;
  chunkInfo @5;
  delete @6;
  copyTo @7;
  # Copy the whole chunk to chain[0] (which must hold a reservation for it).
  lockGranted @8;
  # Pushed by the node when a waiting lock request is granted (or times out).
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
  exists @12;
  busy @13;
  # The lock is held and the request asked not to wait (timeoutMs 0).
  malformed @14;
  # The frame could not be decoded; the node closes the connection after it.
  wrongShard @15;
  # The chunk belongs to another shard of this node (see docs).
  quorum @16;
  # A chain write reached fewer durable replicas than writeQuorum.
}

struct LockToken {
  # Issued by the node with a lock grant. mac = BLAKE3 keyed hash over
  # (chunkId, clientId, generation) with the node's secret key.
  clientId @0 :UInt64;
  generation @1 :UInt64;
  mac @2 :Data;
}

struct ChainHop {
  # A further replica of a chain write: its data-plane address ("ip:port" of
  # the owning shard) and the caller's write token for that replica.
  nodeId @0 :UInt64;
  address @1 :Text;
  token @2 :LockToken;
}

struct FrameHeader {
  requestId @0 :UInt64;
  op @1 :Op;
  status @2 :Status;
  # Requests: ok. Responses: the outcome.
  message @3 :Text;
  # Responses: human-readable error detail (empty on success).
  chunkId @4 :Common.ChunkId;
  offset @5 :UInt64;
  # Byte offset in the chunk (read, write).
  length @6 :UInt32;
  # Bytes to read (read requests).
  payloadLength @7 :UInt32;
  # Bytes of raw payload following the header.
  version @8 :UInt64;
  # Write requests: 0 = node assigns current+1, else must exceed the
  # current version. Responses: the chunk's version.
  clientId @9 :UInt64;
  # Lock, reserve and implicit-lock requests: who the lock is for.
  token @10 :LockToken;
  # Requests: the caller's lock token. lock/reserve responses: the new token.
  lockMode @11 :LockMode;
  # Lock requests: the mode wanted. Grants: the mode granted.
  implicitLock @12 :LockMode;
  # Read/write/delete/chunkInfo/copyTo without a token: take this lock for
  # clientId around the single operation.
  leaseMs @13 :UInt32;
  # Lease of a lock/reservation (0 = node default). Grants: lease granted.
  timeoutMs @14 :UInt32;
  # How long a lock (or implicit lock) may wait; 0 = do not wait (busy).
  chain @15 :List(ChainHop);
  # Write requests: the remaining replicas, next hop first.
  writeQuorum @16 :UInt8;
  # Write requests: durable replicas needed for ok (0 = all of the chain).
  durableReplicas @17 :UInt8;
  # Write responses: replicas (this node and downstream) holding the write durably.
  reserveBytes @18 :UInt64;
  # Reserve requests: bytes to reserve.
  chunkLength @19 :UInt64;
  # Responses: the chunk's length in bytes.
}
