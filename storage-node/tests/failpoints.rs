//! Failpoints in a real node process (the test kit builds `ringfs-node` with
//! its `failpoints` feature and arms them through the child's `FAILPOINTS`):
//! a write that fails at any durability point of the chunk store and its
//! journal is never acknowledged; every block then reads its acknowledged
//! content (never a checksum error, never other bytes), later writes to the
//! chunk are refused until a restart, and after a kill -9 and a restart
//! every block reads its acknowledged content or the failed write's.

mod common;

use ringfs_node::peer::Peer;
use ringfs_schema::frame::{Header, Op, Status, Token};
use ringfs_schema::ids::ChunkId;
use ringfs_schema::Version;
use ringfs_tests::files::pattern;
use ringfs_tests::{on_glommio, Cluster, NodeOptions, QUICK};

const BLOCK: usize = 4096;
/// Blocks of the chunk's first (acknowledged) write.
const BLOCKS: usize = 16;

/// (failpoint armed for the failing write, its first block, its blocks):
/// small overwrites go through the journal; a large write past the end
/// goes straight to the chunk file.
const CASES: [(&str, usize, usize); 4] = [
    ("journal::before_write", 2, 2),
    ("journal::before_fdatasync", 5, 2),
    ("chunk_store::before_apply", 8, 2),
    ("chunk_store::before_sync", BLOCKS, 64),
];

/// Writes `data` at `block`, creating version (1, `seq`) on top of
/// `expected`.
async fn write(
    p: &Peer,
    id: ChunkId,
    token: &Token,
    block: usize,
    data: &[u8],
    expected: Version,
    seq: u64,
) -> Header {
    let mut h = Header::request(0, Op::Write);
    h.chunk_id = id;
    h.offset = (block * BLOCK) as u64;
    h.token = token.clone();
    h.expected = expected;
    h.version = Version::new(1, seq);
    h.crcs = ringfs_schema::crc::piece_crcs(h.offset, data);
    p.call(h, data).await.expect("write answered").0
}

/// Reads every block of `[0, blocks)` on its own: the content of those
/// that read (short past the chunk's end); any error fails the test.
async fn read_blocks(p: &Peer, id: ChunkId, token: &Token, blocks: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for b in 0..blocks {
        let mut h = Header::request(0, Op::Read);
        h.chunk_id = id;
        h.offset = (b * BLOCK) as u64;
        h.length = BLOCK as u32;
        h.token = token.clone();
        let (r, data) = p.call(h, &[]).await.expect("read answered");
        assert_eq!(r.status, Status::Ok, "block {b}: {}", r.message);
        out.push(data);
    }
    out
}

/// Block `b` of `content` (empty past its end).
fn block(content: &[u8], b: usize) -> &[u8] {
    let s = (b * BLOCK).min(content.len());
    &content[s..((b + 1) * BLOCK).min(content.len())]
}

#[test]
fn a_write_failing_at_any_durability_point_is_not_acknowledged_and_blocks_stay_old_or_new() {
    let mut cl = Cluster::start_custom(1, QUICK, &NodeOptions::default());
    for (case, &(point, first, blocks)) in CASES.iter().enumerate() {
        cl.kill9(0);
        // The chunk's first write passes every point of the journal path;
        // the failing write is the first to pass the direct path's.
        let armed = if point == "chunk_store::before_sync" {
            format!("{point}=1*return->off")
        } else {
            format!("{point}=1*off->1*return->off")
        };
        cl.start_node_with(
            0,
            &NodeOptions {
                failpoints: Some(&armed),
                ..NodeOptions::default()
            },
        );
        let ep = cl.node(0).addr.to_string();
        let acked = pattern(BLOCKS * BLOCK, case as u64);
        let failed = pattern(blocks * BLOCK, 10 + case as u64);
        let mut new = acked.clone();
        new.resize(new.len().max((first + blocks) * BLOCK), 0);
        new[first * BLOCK..(first + blocks) * BLOCK].copy_from_slice(&failed);
        let span = new.len() / BLOCK;
        let (acked2, new2) = (acked.clone(), new.clone());
        let id = on_glommio(move || async move {
            let (acked, new) = (acked2, new2);
            let p = common::connect(&ep).await;
            let mut h = Header::request(0, Op::Reserve);
            h.client_id = 1;
            h.reserve_bytes = (span * BLOCK) as u64;
            h.lease_ms = 600_000;
            let (r, _) = p.call(h, &[]).await.unwrap();
            assert_eq!(r.status, Status::Ok, "{}", r.message);
            let (id, token) = (r.chunk_id, r.token);
            let v1 = Version::new(1, 1);
            let w = write(&p, id, &token, 0, &acked, Version::NONE, 1).await;
            assert_eq!(w.status, Status::Ok, "{}", w.message);
            let w = write(
                &p,
                id,
                &token,
                first,
                &new[first * BLOCK..(first + blocks) * BLOCK],
                v1,
                2,
            )
            .await;
            assert_eq!(w.status, Status::Io, "{point}: {}", w.message);
            assert!(w.message.contains(point), "{point}: {}", w.message);
            // Not applied: every block reads as acknowledged.
            let got = read_blocks(&p, id, &token, span).await;
            for (b, got) in got.iter().enumerate() {
                assert!(got == block(&acked, b), "{point}: block {b} differs");
            }
            // The chunk takes no write until the node restarts.
            let w = write(&p, id, &token, 0, &acked[..BLOCK], v1, 3).await;
            assert_eq!(
                w.status,
                Status::Io,
                "{point}: a later write: {}",
                w.message
            );
            id
        });
        // After a crash and a restart without failpoints: every block is
        // as acknowledged or as the failed write left it.
        cl.kill9(0);
        cl.start_node(0, &[]);
        let ep = cl.node(0).addr.to_string();
        on_glommio(move || async move {
            let p = common::connect(&ep).await;
            let mut h = Header::request(0, Op::Lock);
            h.chunk_id = id;
            h.client_id = 1;
            h.lock_mode = ringfs_schema::frame::LockMode::Read;
            let (r, _) = p.call(h, &[]).await.unwrap();
            assert_eq!(r.status, Status::Ok, "{}", r.message);
            let got = read_blocks(&p, id, &r.token, span).await;
            for (b, got) in got.iter().enumerate() {
                assert!(
                    got == block(&acked, b) || got == block(&new, b),
                    "{point}, after a restart: block {b} is neither old nor new"
                );
            }
        });
    }
}
