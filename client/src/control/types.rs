//! The plain values the control server's calls take and answer: users,
//! attributes, chunk records, the cluster map, health.

use super::*;

/// Who a connection authenticated as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// Its user id.
    pub uid: u32,
    /// Its groups, the primary one first.
    pub gids: Vec<u32>,
    /// An administrator: may do everything.
    pub admin: bool,
}

/// A user registered by the administrator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserInfo {
    /// Its name.
    pub name: String,
    /// Its user id.
    pub uid: u32,
    /// Its groups, the primary one first.
    pub gids: Vec<u32>,
    /// An administrator.
    pub admin: bool,
    /// The salt of its key derivation (not a secret).
    pub salt: Vec<u8>,
}

/// Kind of a namespace entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Directory,
}

/// Attributes of a file or directory (see `Attr` in control.capnp).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attr {
    /// Inode number: stable across renames, never reused while the file
    /// exists.
    pub inode: u64,
    /// File or directory.
    pub kind: Kind,
    /// Committed size in bytes (files; 0 for directories).
    pub size: u64,
    /// Permission bits (the lower 12).
    pub mode: u32,
    /// Last change of the content or the entries, nanoseconds since the
    /// Unix epoch (the control server's clock).
    pub mtime_ns: i64,
    /// Bytes per chunk (files; 0 for directories).
    pub chunk_size: u32,
    /// Replicas per chunk (files; 0 for directories).
    pub replication: u8,
    /// Durable replicas a write needs, 1..=replication (files).
    pub write_quorum: u8,
    /// Bumped on every change of the inode.
    pub version: u64,
    /// Owner's user id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// Options of a new file; zero means the server's default.
#[derive(Clone, Copy, Debug, Default)]
pub struct CreateOptions {
    /// Permission bits (the lower 12).
    pub mode: u32,
    /// Bytes per chunk: a multiple of 4096, at most 64 MiB (the storage
    /// nodes' limit).
    pub chunk_size: u32,
    /// Replicas per chunk, at most 16.
    pub replication: u8,
    /// Durable replicas a write needs, at most `replication`.
    pub write_quorum: u8,
    /// Fail with [`Error::Exists`] if the path exists.
    pub exclusive: bool,
}

/// Where one chunk of a file lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkRecord {
    /// The chunk's index in the file (it covers bytes
    /// `index * chunk_size ..`).
    pub index: u64,
    /// The id the storage nodes know it by.
    pub chunk_id: u128,
    /// Node ids, primary first.
    pub replicas: Vec<u64>,
    /// Valid bytes in the chunk; bytes past it read as zeros.
    pub length: u32,
    /// The version of its last committed write, which every listed
    /// replica held at the commit (replicas at one version are
    /// byte-identical); a replica below it missed a write and is not read
    /// from.
    pub version: Version,
    /// What the storage nodes demand to serve this chunk (read; read and
    /// write through a write handle), valid for a few minutes: from the
    /// control server with the record, or from the node that minted a new
    /// chunk. `None`: the nodes refuse every request for it.
    pub capability: Option<Capability>,
}

/// A commit's answer: the file's attributes and the replicas its writer
/// should add (chunks that list fewer than the file's replication).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    /// The attributes after the commit.
    pub attr: Attr,
    /// (chunk index, node id): copy that chunk's current version to that
    /// node and list it in the next commit.
    pub repairs: Vec<(u64, u64)>,
}

/// One file of [`ControlClient::commit_transaction_as`].
#[derive(Clone, Copy, Debug)]
pub struct TransactionPart<'a> {
    /// The guid of a write handle of this connection's user that holds
    /// the file's lease.
    pub guid: [u8; 16],
    /// Records to store, each with a write capability of that lease.
    pub chunks: &'a [ChunkRecord],
    /// First truncate to this size (`u64::MAX`: no truncation).
    pub truncate_to: u64,
    /// Then the file's size, exactly.
    pub file_size: u64,
    /// The file does not exist yet (its handle came from
    /// [`ControlClient::open_new`]): the commit creates it at this path
    /// with these options.
    pub create: Option<(&'a str, CreateOptions)>,
}

/// A node's capacity report, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capacity {
    /// Bytes the node may store.
    pub total: u64,
    /// Bytes its chunk files take.
    pub used: u64,
    /// Bytes reserved for chunks being written.
    pub reserved: u64,
    /// Chunks it holds (a count, not bytes).
    pub chunks: u64,
}

/// One node of the cluster map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    /// The node's id.
    pub node_id: u64,
    /// Whether it heartbeats (false: missed its TTL, or left). A control
    /// server that just took over (started, or elected leader) presumes
    /// every registered node up for one TTL, until it hears from it.
    pub up: bool,
    /// Data-plane endpoint of each shard, index = shard.
    pub shards: Vec<String>,
    /// Its last capacity report.
    pub capacity: Capacity,
    /// Milliseconds since its last heartbeat (`u64::MAX`: none since the
    /// control server took over).
    pub last_heartbeat_ago_ms: u64,
}

/// The cluster map at one epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterMap {
    /// Bumped on every membership change; never goes back, also across
    /// control-server restarts.
    pub epoch: u64,
    /// Every registered node, ascending id.
    pub nodes: Vec<NodeInfo>,
}

/// What a successful join returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Joined {
    /// The node's id (new, or the one it presented).
    pub node_id: u64,
    /// The secret it presents from now on (persist it).
    pub node_key: [u8; 16],
    /// How often to heartbeat.
    pub heartbeat: Duration,
    /// Silence after which the control server marks it down.
    pub ttl: Duration,
}

/// Kind of a problem found by the control server's health check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProblemKind {
    /// Fewer than R good replicas, at least one.
    UnderReplicated,
    /// No good replica.
    Lost,
    /// Under-replicated with a copy in flight.
    BeingRepaired,
    /// A replica's node has not sent its chunk report yet.
    Unverified,
    /// The namespace and the chunk map disagree.
    Namespace,
}

/// One chunk problem, with the file's path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkProblem {
    /// The file's path (or a placeholder for a record without a file).
    pub path: String,
    /// The chunk's index in the file.
    pub index: u64,
    /// The chunk id.
    pub chunk_id: u128,
    /// What is wrong.
    pub kind: ProblemKind,
    /// Live, current, verified replicas.
    pub good_replicas: u8,
    /// Replicas the file asks for.
    pub wanted: u8,
    /// For people: which replicas are missing, stale or corrupt.
    pub detail: String,
}

/// Replica health of every chunk (see `ChunkHealth` in control.capnp).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChunkHealth {
    /// Chunk records in the map.
    pub chunks: u64,
    /// Chunks with R live, current, verified replicas.
    pub healthy: u64,
    /// Chunks with fewer than R good replicas, at least one.
    pub under_replicated: u64,
    /// Under-replicated chunks with a copy in flight.
    pub being_repaired: u64,
    /// Chunks without a good replica.
    pub lost: u64,
    /// Chunks a node has not reported on yet.
    pub unverified: u64,
    /// Records the namespace and the chunk map disagree about.
    pub namespace_errors: u64,
    /// Repair copies running now.
    pub copies_in_flight: u32,
    /// Garbage copies still to delete on their nodes.
    pub deletes_pending: u64,
    /// Up to the asked number of problems, with paths.
    pub problems: Vec<ChunkProblem>,
}

impl ChunkHealth {
    /// Every chunk has R good replicas and the namespace is consistent.
    pub fn is_clean(&self) -> bool {
        self.healthy == self.chunks && self.namespace_errors == 0
    }
}
