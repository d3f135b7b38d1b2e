//! What the node's integration tests share: requests over the data-plane
//! protocol ([`Peer`]) and where a cluster's nodes listen.
#![allow(dead_code)]

use ringfs_node::peer::Peer;
use ringfs_schema::frame::{Header, Hop, Op, Status, Token};
use ringfs_schema::ids::ChunkId;
use ringfs_schema::Version;
use ringfs_tests::{Cluster, NodeOptions};

/// A data-plane connection to `addr` whose requests carry capabilities
/// issued with the test cluster's keys (as the control server would hand
/// a client).
pub async fn connect(addr: &str) -> std::rc::Rc<Peer> {
    Peer::connect_issuing(addr, ringfs_tests::capability_keys())
        .await
        .expect("connecting to a shard")
}

/// Nodes of `shards` shards with the kit's defaults.
pub fn shards(shards: usize) -> NodeOptions<'static> {
    NodeOptions {
        shards,
        ..NodeOptions::default()
    }
}

/// The data-plane endpoints of every shard of running node `i`.
pub fn endpoints(cl: &Cluster, i: usize) -> Vec<String> {
    cl.node(i)
        .endpoints
        .iter()
        .map(ToString::to_string)
        .collect()
}

/// Sends a reserve request (a fresh id for `ChunkId::default()`) and
/// returns the answer, whatever its status. The control server counts a
/// node up at its join, and the node's shards learn their node id (which
/// a fresh id needs) a moment later: a fresh reserve that finds the node
/// not joined yet is sent again, for up to [`JOIN_WITHIN`].
pub async fn reserve(p: &Peer, client: u64, bytes: u64, id: ChunkId, lease_ms: u32) -> Header {
    let mut h = Header::request(0, Op::Reserve);
    h.client_id = client;
    h.reserve_bytes = bytes;
    h.chunk_id = id;
    h.lease_ms = lease_ms;
    let start = std::time::Instant::now();
    loop {
        let r = p.call(h.clone(), &[]).await.expect("reserve answered").0;
        let not_joined = id == ChunkId::default()
            && r.status == Status::Unavailable
            && r.message.contains("has not joined");
        if !not_joined || start.elapsed() > JOIN_WITHIN {
            return r;
        }
        glommio::timer::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// How long after the control server counts a node up its shards may
/// still lack their node id.
pub const JOIN_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

/// A write of `data` at `offset` creating version (1, `seq`) on top of
/// (1, `seq` - 1) ((0, 0) for seq 1), with its CRCs.
pub fn write_req(
    id: ChunkId,
    offset: u64,
    token: &Token,
    chain: Vec<Hop>,
    seq: u64,
    data: &[u8],
) -> Header {
    let expected = if seq == 1 {
        Version::NONE
    } else {
        Version::new(1, seq - 1)
    };
    write_cas(
        id,
        offset,
        token,
        chain,
        expected,
        Version::new(1, seq),
        data,
    )
}

/// The `len` bytes at `offset` of a read answer, which starts at a block
/// boundary at or before `offset`.
pub fn bytes_at(h: &Header, data: &[u8], offset: u64, len: usize) -> Vec<u8> {
    let skip = (offset - h.offset) as usize;
    data[skip..(skip + len).min(data.len())].to_vec()
}

pub fn read_req(id: ChunkId, offset: u64, len: u32, token: &Token) -> Header {
    let mut h = Header::request(0, Op::Read);
    h.chunk_id = id;
    h.offset = offset;
    h.length = len;
    h.token = token.clone();
    h
}

/// A write of `data` at `offset` creating `version` on top of `expected`,
/// with its CRCs.
pub fn write_cas(
    id: ChunkId,
    offset: u64,
    token: &Token,
    chain: Vec<Hop>,
    expected: Version,
    version: Version,
    data: &[u8],
) -> Header {
    let mut h = Header::request(0, Op::Write);
    h.chunk_id = id;
    h.offset = offset;
    h.token = token.clone();
    h.chain = chain;
    h.expected = expected;
    h.version = version;
    h.crcs = ringfs_schema::crc::piece_crcs(offset, data);
    h
}

/// The version and length a node holds of `id` (`chunkInfo`).
pub async fn info(p: &Peer, id: ChunkId) -> Header {
    let mut h = Header::request(0, Op::ChunkInfo);
    h.chunk_id = id;
    p.call(h, &[]).await.expect("chunkInfo answered").0
}
