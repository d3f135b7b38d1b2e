@0x99ad7a7b8afa0d68;
# Control RPC: the namespace, the file-to-chunk map and cluster membership.
#
# Errors: a failed call returns a Cap'n Proto exception whose description
# starts with `[code]`, where code is one of the snake_case names of
# `ErrorCode` below, followed by a human-readable message, e.g.
# `[not_found] /a/b: no such file or directory`. See docs/protocol.md.

using Common = import "common.capnp";

enum ErrorCode {
  internal @0;
  notFound @1;
  exists @2;
  notDirectory @3;
  isDirectory @4;
  notEmpty @5;
  invalidArgument @6;
  busy @7;
  permissionDenied @8;
  noLease @9;
  unavailable @10;
  staleHandle @11;
  versionMismatch @12;
  notLeader @13;
  # A replicated control server that is not the Raft leader refuses calls
  # that need the leader (mutations, membership, linearizable reads); the
  # message names the leader when one is known. Find it with `hello` on the
  # replicas and call again there.
  unauthenticated @14;
  # The call needs an authenticated principal and this connection has none
  # (no `authenticate` yet, or it failed, or the user was removed), or the
  # credentials presented were refused. The message never says which part
  # of a credential was wrong.
}

enum FileKind {
  file @0;
  directory @1;
}

struct Attr {
  inode @0 :UInt64;
  kind @1 :FileKind;
  size @2 :UInt64;
  # Bytes; the committed size, what readers see.
  mode @3 :UInt32;
  # Permission bits (lower 12 bits of a POSIX mode).
  mtimeNs @4 :Int64;
  # Nanoseconds since the Unix epoch.
  chunkSize @5 :UInt32;
  # Bytes per chunk; 0 for directories.
  replication @6 :UInt8;
  # Replicas per chunk (R); 0 for directories.
  writeQuorum @7 :UInt8;
  # Durable replicas a write needs (W, 1..=R); 0 for directories.
  version @8 :UInt64;
  # Bumped by every change of the inode (commit, truncate, rename into it).
  uid @9 :UInt32;
  gid @10 :UInt32;
  # Owner and group, checked with `mode` as POSIX does (docs/protocol.md).
}

struct DirEntry {
  name @0 :Text;
  attr @1 :Attr;
}

struct CreateOptions {
  # Zero in any field means "the server's default".
  mode @0 :UInt32;
  chunkSize @1 :UInt32;
  replication @2 :UInt8;
  writeQuorum @3 :UInt8;
  exclusive @4 :Bool;
  # Fail with `exists` if the path exists; otherwise an existing file is kept.
}

struct ChunkRecord {
  index @0 :UInt64;
  # Position of the chunk in the file: byte offset = index * chunkSize.
  chunkId @1 :Common.ChunkId;
  replicas @2 :List(UInt64);
  # Node ids holding the chunk, primary first.
  length @3 :UInt32;
  # Valid bytes in the chunk; bytes past it (up to chunkSize) read as zeros.
  versionSeq @4 :UInt64;
  versionEpoch @5 :UInt64;
  # The chunk version (versionEpoch, versionSeq), ordered lexicographically,
  # that every listed replica held when this record was committed: replicas
  # at one version are byte-identical. Readers accept a replica at this
  # version or newer.
  capability @6 :Data;
  # getChunks answers: the 80-byte data-plane capability for this chunk
  # (read; read+write on a write handle), valid for a few minutes
  # (docs/protocol.md "Capabilities"). commitChunks: a read+write capability
  # of this handle's lease for the chunk (from getChunks of this handle, or
  # from the node that minted the chunk under this lease's reserve
  # capability); a record without one is refused.
}

struct ReplicaHint {
  # An answer of commitChunks: the chunk at `index` has fewer replicas than
  # the file's replication; the writer should copy its current version to
  # node `nodeId` and list it in its next commit.
  index @0 :UInt64;
  nodeId @1 :UInt64;
}

enum OpenMode {
  read @0;
  # Shared: any number of readers.
  write @1;
  # Exclusive write lease: one writer per file, others queue FIFO.
}

interface FileHandle {
  # An open file. The handle (and its lease) is released by close(), by
  # dropping the capability, or when the client's connection ends.

  attr @0 () -> (attr :Attr);
  getChunks @1 (firstIndex :UInt64, count :UInt32) -> (chunks :List(ChunkRecord), more :Bool);
  # Records of the chunks with index in [firstIndex, firstIndex + count),
  # ascending, at most 4096 of them. `more` false: the answer is every
  # record of the range, and an index with no record is a hole (zeros).
  # `more` true: the range holds further records past the last one
  # returned; ask again from its index + 1 (indexes between the records
  # returned are holes either way).
  commitChunks @2 (chunks :List(ChunkRecord), fileSize :UInt64, requestId :Data)
      -> (attr :Attr, repairs :List(ReplicaHint));
  # Write handles only. At most 4096 records per call (invalid_argument
  # beyond). Atomically stores the records (replacing any with the
  # same index) and sets the file size: the commit is what makes data
  # visible. A record of the chunk already recorded at its index may not go
  # back to an older version; a record of another chunk must carry this
  # handle's write epoch (it was written under this lease) and must not be a
  # chunk the file dropped. `repairs`: replicas the writer should add.
  # requestId: as for the namespace mutations of Control.
  setSize @3 (size :UInt64, requestId :Data) -> (attr :Attr);
  # Write handles only. Truncate or extend; chunks wholly past the new size
  # are dropped from the map.
  close @4 ();
  reserveCapability @5 () -> (capability :Data);
  # Write handles only: a fresh reserve capability of this lease (what
  # `open` answered, renewed), which lets storage nodes mint new chunk ids
  # for this file.
}

struct ShardEndpoint {
  shard @0 :UInt16;
  address @1 :Text;
  # "ip:port" of the shard's data-plane listener.
}

struct NodeInfo {
  nodeId @0 :UInt64;
  up @1 :Bool;
  shards @2 :List(ShardEndpoint);
  capacity @3 :Common.Capacity;
  lastHeartbeatAgoMs @4 :UInt64;
  # Milliseconds since the last heartbeat the control server received
  # (UInt64 max if none since it started).
}

struct ClusterMap {
  epoch @0 :UInt64;
  # Strictly increasing across changes and restarts of the control server.
  nodes @1 :List(NodeInfo);
  # Ascending node id.
}

struct ChunkReport {
  chunkId @0 :Common.ChunkId;
  versionSeq @1 :UInt64;
  length @2 :UInt32;
  versionEpoch @3 :UInt64;
}

interface MapWatcher {
  update @0 (map :ClusterMap);
  # Called with the new map on every change (join, up/down, endpoints).
}

interface Subscription {
  # Dropping this capability ends the subscription.
}

interface Control {
  # The bootstrap capability of the control server.

  hello @0 (protocolVersion :UInt32)
      -> (protocolVersion :UInt32, serverVersion :Text,
          isLeader :Bool, leaderAddress :Text, replicated :Bool,
          challenge :Data);
  # Fails with `version_mismatch` if the caller speaks another protocol.
  # isLeader: this server serves every call (a single control server always
  # does; a replica only while it is the Raft leader). leaderAddress: the
  # leader's RPC address as this replica knows it (empty when unknown or
  # when this is the leader). replicated: the control plane runs Raft.
  # Must be the first call on a connection: until a hello succeeded, every
  # other method of this capability fails with `version_mismatch`.
  # challenge: 32 random bytes, fresh for every hello, that `authenticate`
  # answers (docs/protocol.md, "Authentication").

  authenticate @23 (user :Text, proof :Data)
      -> (uid :UInt32, gids :List(UInt32), admin :Bool);
  # Proves that the caller holds `user`'s key without sending it: proof is
  # HMAC-SHA256(key, context) over the challenge of this connection's last
  # hello (docs/protocol.md gives the bytes). Each challenge answers one
  # attempt: a failed one needs a new hello. Until an authenticate
  # succeeded, every call but hello fails with `unauthenticated`; after it,
  # every call runs as that principal (uid, groups; admin: may do anything).
  # Users: the built-in `admin` and `@cluster` (nodes and control replicas),
  # whose keys derive from the cluster secret, and those of addUser.

  # -- Namespace. Paths are absolute, '/'-separated, UTF-8. --
  # requestId (16 bytes, or empty): a mutation sent again with the same id
  # (after a lost answer or a leader change) is answered with the outcome
  # of its first application and not applied twice, for as long as the
  # server keeps the id (docs/protocol.md: at least 120 s).
  create @1 (path :Text, options :CreateOptions, requestId :Data) -> (attr :Attr);
  mkdir @2 (path :Text, mode :UInt32, requestId :Data) -> (attr :Attr);
  unlink @3 (path :Text, requestId :Data);
  rmdir @4 (path :Text, requestId :Data);
  rename @5 (from :Text, to :Text, requestId :Data);
  # Atomic. Replaces an existing file at `to`, or an empty directory with a
  # directory; never moves a directory inside itself.
  stat @6 (path :Text, stale :Bool) -> (attr :Attr);
  # stale: a replica that is not the leader may answer from its own,
  # possibly older, state; otherwise the answer is linearizable.
  list @7 (path :Text, after :Text, limit :UInt32, stale :Bool)
      -> (entries :List(DirEntry), more :Bool);
  # Entries with name > `after`, in byte order of the names, at most `limit`
  # (0 = server default, capped by the server). stale: as for stat.
  open @8 (path :Text, mode :OpenMode, waitMs :UInt32)
      -> (handle :FileHandle, guid :Data, attr :Attr, writeEpoch :UInt64,
          reserveCapability :Data);
  # `guid` is 16 bytes. A write open waits up to waitMs for the lease, FIFO,
  # then fails with `busy`. `writeEpoch` (write opens; 0 for reads): the
  # epoch of every chunk version this handle creates, unique to this lease
  # and above every epoch handed out before, across restarts.
  # `reserveCapability` (write opens; empty for reads): the capability
  # storage nodes need to mint chunk ids for this lease (see
  # FileHandle.reserveCapability to renew it).

  # -- Membership. --
  # `secret` parameters (join, raft, addReplica, removeReplica,
  # takeSnapshot): obsolete, must be empty (a non-empty one is refused with
  # invalid_argument, so no secret is ever sent); the caller authenticates
  # as `@cluster` (join, raft) or an administrator instead.
  join @9 (secret :Data, nodeId :UInt64, nodeKey :Data,
           shards :List(ShardEndpoint), capacity :Common.Capacity,
           commands :NodeCommands)
      -> (nodeId :UInt64, nodeKey :Data, heartbeatMs :UInt32, ttlMs :UInt32);
  # A new node passes nodeId 0 and an empty key and gets a fresh id and key;
  # a returning node passes both back and keeps its id. `commands` (may be
  # null): where the control server pushes this node's commands at once,
  # instead of waiting for its next heartbeat.
  heartbeat @10 (nodeId :UInt64, nodeKey :Data, capacity :Common.Capacity,
                 done :List(CommandResult), badChunks :List(Common.ChunkId))
      -> (epoch :UInt64, reportWanted :Bool, commands :List(NodeCommand));
  # reportWanted: the control server holds no complete chunk report from this
  # node since it started (it restarted); the node should send one.
  # done: outcomes of commands received in earlier replies, each once.
  # badChunks: chunks of this node that failed a checksum (scrubber or a
  # read) and were not replaced since; sent with every heartbeat until then.
  # commands: work for the node (garbage collection, re-replication).
  reportChunks @11 (nodeId :UInt64, nodeKey :Data, chunks :List(ChunkReport), last :Bool);
  # A node's full chunk inventory, sent in pages after every join; `last`
  # marks the final page.
  clusterMap @12 () -> (map :ClusterMap);
  subscribe @13 (watcher :MapWatcher) -> (map :ClusterMap, subscription :Subscription);

  # -- Failures and repair. --
  reportBadReplica @14 (chunkId :Common.ChunkId, nodeId :UInt64, repaired :Bool);
  # A client found node `nodeId`'s replica of the chunk damaged: a read of
  # it failed its checksum, or a verified read outvoted it (another content
  # at the version the majority holds, or behind the record). `repaired`: the client already replaced that replica with a
  # verified copy (read repair); otherwise the control server repairs it.
  chunkHealth @15 (problemLimit :UInt32) -> (health :ChunkHealth);
  # Replica health of every chunk, and up to problemLimit problems (0 = none)
  # with their paths, for `ringfs status` and `ringfs fsck`.

  # -- Leaving. --
  leave @16 (nodeId :UInt64, nodeKey :Data) -> (epoch :UInt64);
  # The node is stopping (it has drained: no request of its is in flight).
  # The control server marks it down at once rather than after the TTL and
  # returns the epoch of the map that says so. The node's replicas count as
  # down, so re-replication starts after the repair grace as for any down
  # node; a restarted node joins again with its id and key. A control
  # server older than this method answers `unimplemented`.

  # -- Attributes. --
  setAttr @17 (path :Text, setMode :Bool, mode :UInt32, setMtime :Bool, mtimeNs :Int64,
               requestId :Data, setUid :Bool, uid :UInt32, setGid :Bool, gid :UInt32)
      -> (attr :Attr);
  # chmod and utimes of a file or directory: sets the permission bits
  # (`mode`, at most 0o7777) if `setMode`, the modification time if
  # `setMtime`, both in one durable transaction, and bumps the version.
  # requestId: as for the namespace mutations (sent again with the same id,
  # it is answered with the first outcome and bumps the version once).
  # Sizes change only through a write handle (commitChunks, setSize). A
  # control server older than this method answers `unimplemented`.
  # chown: `uid` if `setUid` (the administrator only), `gid` if `setGid`
  # (the owner, to a group it is a member of, or the administrator). chmod:
  # the owner or the administrator; utimes: the owner, the administrator,
  # or (mtime now) a caller with write permission.

  # -- Replication (Raft between control replicas). --
  raft @18 (secret :Data, fromReplica :UInt64) -> (peer :RaftPeer);
  # The Raft endpoint of this replica, for another replica that knows the
  # cluster secret.
  replication @19 () -> (status :ReplicationStatus);
  # This replica's view of the group, for `ringfs status` and monitoring.
  addReplica @20 (secret :Data, replicaId :UInt64, address :Text);
  # Leader only: adds a replica (an empty one catches up, from a snapshot
  # if the log was compacted), then makes it a voter. Returns once it votes.
  removeReplica @21 (secret :Data, replicaId :UInt64);
  # Leader only: removes a replica from the voters and the group.
  takeSnapshot @22 (secret :Data) -> (path :Text, lastIndex :UInt64, bytes :UInt64);
  # Writes a consistent snapshot of the metadata to a file in this server's
  # data directory and returns its path (backup; see docs/operations.md).

  # -- Users (the administrator only). --
  addUser @24 (name :Text, uid :UInt32, gids :List(UInt32), admin :Bool)
      -> (user :UserInfo);
  # Registers a user (uid 0: the next free uid from 1000). The key is never
  # sent: it is HMAC-SHA256(cluster secret, "ringfs user key v1" 0 name 0
  # salt), computed by whoever holds the cluster secret (`ringfs admin user
  # add`), with the salt drawn here (docs/protocol.md).
  removeUser @25 (name :Text);
  # Revokes a user: its connections are refused from their next call.
  listUsers @26 () -> (users :List(UserInfo));

  # -- Transactions across files. --
  commitTransaction @27 (files :List(TransactionFile), requestId :Data,
                         unlinks :List(Text))
      -> (attrs :List(Attr));
  # Commits the chunk records and sizes of several files at once: one
  # mutation (one durable transaction, one Raft entry) applies every file
  # or none (docs/protocol.md, "Transactions"). Each file is named by a
  # write handle of this caller (its guid, as `open` or `openNew`
  # answered) that still holds the file's lease; each record obeys the
  # rules of commitChunks for that handle, and each file appears once. A
  # file opened with `openNew` names its path in `createAt` and is created
  # by the same mutation (checked again as an exclusive create). `unlinks`:
  # files removed by the same mutation (checked as `unlink`; none of
  # `files`, none created, none twice). At most 64 files, 64 unlinks and
  # 4096 records in all (invalid_argument beyond). `attrs`: the files'
  # attributes after it, in the order of `files`. requestId: as for the
  # namespace mutations.
  openNew @28 (path :Text, options :CreateOptions)
      -> (handle :FileHandle, guid :Data, attr :Attr, writeEpoch :UInt64,
          reserveCapability :Data);
  # A write handle on a file not created yet, for a transaction that
  # creates it at `path` (options as for `create`, exclusive implied):
  # checked now as an exclusive create (not_found, exists,
  # permission_denied, invalid_argument), an inode number is reserved and
  # its lease held; `attr` is what the file will be (size 0). Nothing is
  # linked: no reader sees the file until a commitTransaction naming this
  # handle with `createAt` commits. Only commitTransaction and close are
  # useful on it (the others answer stale_handle: the inode is linked
  # nowhere). A handle closed without such a commit leaves nothing.
}

struct TransactionFile {
  guid @0 :Data;
  # The write handle's 16-byte guid; its lease must still be held.
  chunks @1 :List(ChunkRecord);
  # Records to store (each replaces the one at its index), with a
  # read+write capability of the handle's lease as commitChunks demands.
  truncateTo @2 :UInt64;
  # First, chunks past this size are dropped and the chunk holding it keeps
  # only the bytes before it, as setSize does (all ones: no truncation).
  fileSize @3 :UInt64;
  # Then the file's size becomes exactly this (it may shrink); every
  # record must end within it.
  createAt @4 :Text;
  # Empty: the file exists. Otherwise the handle came from `openNew` and
  # the file is created at this path by the commit, with `createOptions`.
  createOptions @5 :CreateOptions;
}

struct UserInfo {
  name @0 :Text;
  uid @1 :UInt32;
  gids @2 :List(UInt32);
  admin @3 :Bool;
  salt @4 :Data;
  # 16 bytes, input of the key derivation; not a secret.
}

interface RaftPeer {
  # Raft messages between control replicas. Each request and response is
  # openraft's message serialized with postcard (docs/protocol.md).
  appendEntries @0 (request :Data) -> (response :Data);
  vote @1 (request :Data) -> (response :Data);
  installSnapshot @2 (request :Data) -> (response :Data);
}

struct ReplicaInfo {
  replicaId @0 :UInt64;
  address @1 :Text;
  voter @2 :Bool;
  matchedIndex @3 :UInt64;
  # Leader only: the highest log index known replicated there (0: none or
  # unknown).
}

struct ReplicationStatus {
  replicated @0 :Bool;
  replicaId @1 :UInt64;
  state @2 :Text;
  # leader, follower, candidate, learner or shutdown.
  leaderId @3 :UInt64;
  # 0 when unknown.
  leaderAddress @4 :Text;
  term @5 :UInt64;
  lastLogIndex @6 :UInt64;
  appliedIndex @7 :UInt64;
  snapshotIndex @8 :UInt64;
  replicas @9 :List(ReplicaInfo);
}

interface NodeCommands {
  # Offered by a node with its join: the control server runs commands
  # through it as soon as it plans them (heartbeat replies carry them only
  # for a node that offered none).
  run @0 (command :NodeCommand) -> (result :CommandResult);
  # Runs one command and answers its outcome when it finished.
}

enum CommandKind {
  delete @0;
  # Delete the chunk on this node (garbage collection), unless the replica
  # is newer than (versionEpoch, versionSeq).
  copy @1;
  # Copy this node's replica of the chunk, which must be at exactly
  # (versionEpoch, versionSeq), to `target`, where the chunk is at
  # (targetEpoch, targetSeq) ((0, 0): absent, reserve it, or empty at
  # (0, 0), lock it): write it aside there and swap it in, read it back and
  # compare checksums.
}

struct NodeCommand {
  id @0 :UInt64;
  # Echoed in the CommandResult.
  kind @1 :CommandKind;
  chunkId @2 :Common.ChunkId;
  versionSeq @3 :UInt64;
  # copy: the version the source replica must hold; delete: the newest
  # version the replica may hold to be deleted (all ones: any).
  targetNodeId @4 :UInt64;
  targetAddress @5 :Text;
  # copy: "ip:port" of the target shard owning the chunk.
  replace @6 :Bool;
  # copy: the target holds a stale or corrupt copy at (targetEpoch,
  # targetSeq), replaced only if it still is at that version.
  versionEpoch @7 :UInt64;
  targetEpoch @8 :UInt64;
  targetSeq @9 :UInt64;
}

struct CommandResult {
  id @0 :UInt64;
  ok @1 :Bool;
  message @2 :Text;
  # Why it failed (empty on success).
  versionSeq @3 :UInt64;
  length @4 :UInt64;
  # copy: the version and length now durable and verified on the target.
  versionEpoch @5 :UInt64;
}

enum ProblemKind {
  underReplicated @0;
  # Fewer than R live, current, verified replicas, at least one.
  lost @1;
  # No live, current, verified replica.
  beingRepaired @2;
  # Under-replicated with a copy in flight.
  unverified @3;
  # A replica's node has not sent a complete chunk report yet.
  namespace @4;
  # The namespace and the chunk map disagree (e.g. a record past the end).
}

struct ChunkProblem {
  path @0 :Text;
  index @1 :UInt64;
  chunkId @2 :Common.ChunkId;
  kind @3 :ProblemKind;
  goodReplicas @4 :UInt8;
  wanted @5 :UInt8;
  detail @6 :Text;
}

struct ChunkHealth {
  chunks @0 :UInt64;
  healthy @1 :UInt64;
  # R live, current, verified replicas.
  underReplicated @2 :UInt64;
  beingRepaired @3 :UInt64;
  lost @4 :UInt64;
  unverified @5 :UInt64;
  namespaceErrors @6 :UInt64;
  copiesInFlight @7 :UInt32;
  deletesPending @8 :UInt64;
  # Garbage chunk copies not yet confirmed deleted.
  problems @9 :List(ChunkProblem);
}
