//! Failpoints in a real node process (the test kit builds `ringfs-node` with
//! its `failpoints` feature and arms them through the child's `FAILPOINTS`):
//! a write that fails at any of the four durability points of the chunk
//! store and its group commit is never acknowledged, and the blocks it
//! wrote then read as checksum errors, never as its bytes nor as other
//! bytes, before and after a restart; every acknowledged block reads back.

use ringfs_node::peer::Peer;
use ringfs_schema::frame::{Header, Op, Status, Token};
use ringfs_schema::ids::ChunkId;
use ringfs_schema::Version;
use ringfs_tests::files::pattern;
use ringfs_tests::{on_glommio, Cluster, NodeOptions, QUICK};
use std::rc::Rc;

const BLOCK: usize = 4096;
/// Blocks of the chunk.
const BLOCKS: usize = 16;

/// Each point fails its second hit, once. A write passes the points in
/// this order and stops at the first that fails, so writes 2, 3, 4 and 5
/// each fail at the next point and every other write passes all four.
const FAILPOINTS: &str = "chunk_store::before_sync=1*off->1*return->off;\
    group_commit::before_fdatasync=1*off->1*return->off;\
    group_commit::after_fdatasync=1*off->1*return->off;\
    chunk_store::before_apply=1*off->1*return->off";

/// The failing writes: (first block, the point it fails at).
const FAILING: [(usize, &str); 4] = [
    (2, "chunk_store::before_sync"),
    (5, "group_commit::before_fdatasync"),
    (8, "group_commit::after_fdatasync"),
    (11, "chunk_store::before_apply"),
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

/// Reads every block on its own: the content of those that read, or
/// `None` for a checksum error (any other outcome fails the test).
async fn read_blocks(p: &Peer, id: ChunkId, token: &Token) -> Vec<Option<Vec<u8>>> {
    let mut out = Vec::new();
    for b in 0..BLOCKS {
        let mut h = Header::request(0, Op::Read);
        h.chunk_id = id;
        h.offset = (b * BLOCK) as u64;
        h.length = BLOCK as u32;
        h.token = token.clone();
        let (r, data) = p.call(h, &[]).await.expect("read answered");
        match r.status {
            Status::Ok => out.push(Some(data)),
            Status::Checksum => out.push(None),
            s => panic!("block {b}: {s:?} {}", r.message),
        }
    }
    out
}

/// Every acknowledged block reads back; every block only a failed write
/// wrote fails its checksum.
fn check(blocks: &[Option<Vec<u8>>], acked: &[u8], failed: &[usize], when: &str) {
    for (b, got) in blocks.iter().enumerate() {
        let want = &acked[b * BLOCK..(b + 1) * BLOCK];
        if failed.contains(&b) {
            assert!(got.is_none(), "{when}: block {b} of a failed write reads");
        } else {
            assert!(got.as_deref() == Some(want), "{when}: block {b} differs");
        }
    }
}

#[test]
fn a_write_failing_at_any_durability_point_is_not_acknowledged_and_reads_as_damage() {
    let opts = NodeOptions {
        failpoints: Some(FAILPOINTS),
        ..NodeOptions::default()
    };
    let mut cl = Cluster::start_custom(1, QUICK, &opts);
    let ep = cl.node(0).addr.to_string();
    let mut acked = pattern(BLOCKS * BLOCK, 1);
    let failed: Vec<usize> = FAILING.iter().flat_map(|&(b, _)| [b, b + 1]).collect();
    let after = {
        let acked = acked.clone();
        let failed = failed.clone();
        on_glommio(move || async move {
            let p = Peer::connect(&ep).await.unwrap();
            let mut h = Header::request(0, Op::Reserve);
            h.client_id = 1;
            h.reserve_bytes = (BLOCKS * BLOCK) as u64;
            h.lease_ms = 600_000;
            let (r, _) = p.call(h, &[]).await.unwrap();
            assert_eq!(r.status, Status::Ok, "{}", r.message);
            let (id, token) = (r.chunk_id, r.token);
            let v1 = Version::new(1, 1);
            let w = write(&p, id, &token, 0, &acked, Version::NONE, 1).await;
            assert_eq!(w.status, Status::Ok, "{}", w.message);
            for (i, &(block, point)) in FAILING.iter().enumerate() {
                let data = pattern(2 * BLOCK, 10 + i as u64);
                let w = write(&p, id, &token, block, &data, v1, 2 + i as u64).await;
                assert_eq!(
                    w.status,
                    Status::Io,
                    "write failing at {point}: {}",
                    w.message
                );
                assert!(w.message.contains(point), "{point}: {}", w.message);
            }
            check(
                &read_blocks(&p, id, &token).await,
                &acked,
                &failed,
                "after the failures",
            );
            // A later write succeeds; its header carries the acknowledged
            // checksums, so the failed writes' blocks stay damaged.
            let mut acked = acked;
            let last = pattern(2 * BLOCK, 20);
            // The failed writes took no version: the replica is still at
            // the first write's.
            let w = write(&p, id, &token, 14, &last, v1, 6).await;
            assert_eq!(w.status, Status::Ok, "{}", w.message);
            assert_eq!(w.version, Version::new(1, 6));
            acked[14 * BLOCK..].copy_from_slice(&last);
            check(
                &read_blocks(&p, id, &token).await,
                &acked,
                &failed,
                "after a good write",
            );
            (id, acked)
        })
    };
    acked = after.1;
    let id = after.0;
    // After a crash and a restart without failpoints: the same.
    cl.kill9(0);
    cl.start_node(0, &[]);
    let ep = cl.node(0).addr.to_string();
    on_glommio(move || async move {
        let p: Rc<Peer> = Peer::connect(&ep).await.unwrap();
        let mut h = Header::request(0, Op::Lock);
        h.chunk_id = id;
        h.client_id = 1;
        h.lock_mode = ringfs_schema::frame::LockMode::Read;
        let (r, _) = p.call(h, &[]).await.unwrap();
        assert_eq!(r.status, Status::Ok, "{}", r.message);
        check(
            &read_blocks(&p, id, &r.token).await,
            &acked,
            &failed,
            "after a restart",
        );
    });
}
