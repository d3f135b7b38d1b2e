@0xd51569722059bb99;
# Data-plane frame header between clients and storage nodes (and node to
# node). A frame on the wire is:
#
#   u32 little-endian   header length H in bytes (8 <= H <= 98304, H % 8 == 0)
#   H bytes             one FrameHeader in the standard Cap'n Proto
#                       serialization (segment table included, unpacked)
#   payloadLength bytes raw payload (write data, read data), no padding
#
# Requests are pipelined; a node answers each request with one response frame
# carrying the same requestId (out of order), except `lock` answered `wait`,
# which is later followed by a second frame (op lockGranted, same requestId)
# with status ok or timeout. The exact framing, the routing of chunks to
# shards and the client's obligations are in docs/protocol.md ("Data plane").

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
  digest @9;
  # The chunk's version, length and a digest of its stored CRCs (fsck --verify).
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
  payloadChecksum @17;
  # A write payload does not match the CRCs of its header (corrupted in
  # flight or in a sender's memory): nothing was applied; send it again.
  denied @18;
  # The request carries no capability, or one that is forged, altered, for
  # another chunk or without the right the operation needs: nothing was
  # applied. Capabilities come with chunk records from the control server.
  capabilityExpired @19;
  # The capability was authentic but expired, or was issued under a key id
  # this node no longer accepts (rotated): fetch the chunk records again.
}

struct LockToken {
  # Issued by the node with a lock grant. mac = BLAKE3 keyed hash over
  # (chunkId, clientId, generation) with the node's secret key.
  clientId @0 :UInt64;
  generation @1 :UInt64;
  mac @2 :Data;
}

struct ChainHop {
  # A further replica of a chain write: its node id (from the cluster map;
  # a node refuses a chain that lists its own id), its data-plane address
  # ("ip:port" of the shard owning the chunk) and the caller's write token
  # for that replica.
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
  # reserve: unset or {hi 0, lo 0} mints a new id on the receiving shard.
  offset @5 :UInt64;
  # Byte offset in the chunk (read, write).
  length @6 :UInt32;
  # Bytes to read (read requests).
  payloadLength @7 :UInt32;
  # Bytes of raw payload following the header.
  versionSeq @8 :UInt64;
  # A chunk version is the pair (versionEpoch, versionSeq), ordered
  # lexicographically; (0, 0) is an empty, reserved chunk. Write requests:
  # the version the write creates. copyTo requests: the version the source
  # must hold (it is copied at that version). delete requests: the newest
  # version the replica may hold to be deleted. Responses: the chunk's
  # version (also on staleVersion: the replica's current version).
  clientId @9 :UInt64;
  # Lock, reserve and implicit-lock requests: who the lock is for (any
  # non-zero value the client picks at random once per process; see
  # docs/protocol.md). Requests carrying a token: ignored, the token's
  # clientId counts.
  token @10 :LockToken;
  # Requests: the caller's lock token. lock/reserve responses: the new token.
  lockMode @11 :LockMode;
  # Lock requests: the mode wanted. Grants: the mode granted.
  implicitLock @12 :LockMode;
  # Read/write/delete/copyTo without a token: take this lock for clientId
  # around the single operation. (chunkInfo and digest take no lock.)
  leaseMs @13 :UInt32;
  # Lease of a lock/reservation (0 = node default). Grants: lease granted.
  timeoutMs @14 :UInt32;
  # How long a lock (or implicit lock) may wait; 0 = do not wait (busy).
  chain @15 :List(ChainHop);
  # Write requests: the remaining replicas, next hop first.
  writeQuorum @16 :UInt8;
  # Write requests: durable replicas needed for ok (0 = all of the chain).
  durableReplicas @17 :UInt8;
  # Write responses: replicas (this node and downstream) holding the write
  # durably: the number of bits set in durableMask.
  reserveBytes @18 :UInt64;
  # Reserve requests: bytes to reserve, 1..=64 MiB: the file's chunk size
  # (the most the chunk can grow to).
  chunkLength @19 :UInt64;
  # Responses: the chunk's length in bytes.
  versionEpoch @20 :UInt64;
  # The epoch half of the version (see versionSeq).
  expectedEpoch @21 :UInt64;
  expectedSeq @22 :UInt64;
  # Write requests: the version the replica must hold for the write to apply
  # (compare-and-set); any other version is refused with staleVersion.
  # copyTo requests: the version the target must hold.
  crcs @23 :List(UInt32);
  # Write requests: CRC32C of each piece of the payload cut at the chunk's
  # 4 KiB block boundaries (first and last piece may be partial). Read
  # responses: the stored CRC32C of each block of the payload (the payload
  # starts at a block boundary and covers whole blocks, the last one up to
  # the chunk's length).
  replace @24 :Bool;
  # Write requests: the chunk becomes exactly this payload (offset 0) at
  # versionEpoch/versionSeq, written aside and swapped in (copy-then-swap).
  durableMask @25 :UInt16;
  # Write responses: bit i set = chain position i holds the write durably
  # (bit 0 the node answering, bit 1 chain[0], ...); durableReplicas is its
  # number of bits.
  digest @26 :Data;
  # digest responses: BLAKE3 (32 bytes) of the chunk's length and CRC table.
  capability @27 :Data;
  # Requests: the caller's capability (80 bytes, docs/protocol.md
  # "Capabilities") for chunkId and the right the operation needs; every
  # operation but unlock needs one. reserve with no chunkId: a reserve
  # capability of the file's write lease. reserve responses that minted an
  # id: a read+write capability for the new chunk (bound to the same lease).
}
