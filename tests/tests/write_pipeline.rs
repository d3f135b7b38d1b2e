//! Several writes in flight on one descriptor, and when other clients see
//! them (docs/client.md, "When a write is visible"): a real control server
//! and real storage nodes on loopback.

use ringfs_client::{Client, OpenOptions};
use ringfs_tests::files::{get, layout, pattern, put, read_write, records};
use ringfs_tests::{with_client, Cluster};

/// Bytes of a chunk file before its data (two 68 KiB header slots; see
/// `storage-node/src/chunk_file.rs`).
const DATA_OFFSET: usize = 2 * 68 * 1024;

const CHUNK: usize = 256 * 1024;

/// A small deterministic generator (xorshift), so a failure replays.
fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

/// Kills node `i` and starts it again (same id, new endpoints) with
/// `failpoints` armed.
fn restart_with_failpoints(cl: &mut Cluster, i: usize, failpoints: &'static str) {
    cl.kill9(i);
    cl.start_node_with(
        i,
        &ringfs_tests::NodeOptions {
            failpoints: Some(failpoints),
            ..ringfs_tests::NodeOptions::default()
        },
    );
}

/// The content after each prefix of `writes` (offset, bytes) applied to
/// `old` in order: `[0]` is `old`, the last is every write applied.
fn prefix_states(old: &[u8], writes: &[(u64, Vec<u8>)]) -> Vec<Vec<u8>> {
    let mut states = vec![old.to_vec()];
    for (at, d) in writes {
        let mut next = states.last().unwrap().clone();
        next[*at as usize..*at as usize + d.len()].copy_from_slice(d);
        states.push(next);
    }
    states
}

/// Writes in flight together on one descriptor, over overlapping ranges
/// (aligned and not, some across the chunk boundary), land in issue order
/// on every replica: each replica's chunk file holds exactly the bytes of
/// applying the writes one after another in the order they were issued.
#[test]
fn overlapping_writes_in_flight_on_one_descriptor_land_in_issue_order_on_every_replica() {
    let cl = Cluster::start(3);
    let addr = cl.control.addr;
    let size = 2 * CHUNK;
    let mut expect = pattern(size, 7);
    let mut seed = 0x5eed_u64;
    let mut writes = Vec::new();
    for i in 0..96u64 {
        let aligned = i % 3 != 0;
        let len = if aligned {
            4096 * (1 + next(&mut seed) % 8) as usize
        } else {
            1 + (next(&mut seed) % 20_000) as usize
        };
        // Mostly a hot 64 KiB region around the chunk boundary, so the
        // writes overlap a lot and some span both chunks.
        let span = 96 * 1024;
        let mut at = CHUNK - span / 2 + (next(&mut seed) as usize % span);
        if aligned {
            at &= !4095;
        }
        let at = at.min(size - len);
        let data = pattern(len, 1000 + i);
        expect[at..at + len].copy_from_slice(&data);
        writes.push((at as u64, data));
    }
    let recs = with_client(addr, async |c| {
        put(c, "/p", &pattern(size, 7), layout(CHUNK, 3, 3))
            .await
            .unwrap();
        let fd = c.open("/p", &read_write()).await.unwrap();
        // Issued in order (each call takes its place when first polled),
        // all in flight together.
        let calls = writes.iter().map(|(at, d)| c.pwrite(fd, *at, d));
        for r in futures::future::join_all(calls).await {
            r.unwrap();
        }
        c.close(fd).await.unwrap();
        assert!(get(c, "/p").await.unwrap() == expect, "read back");
        records(c, "/p").await
    });
    assert_eq!(recs.len(), 2);
    for rec in &recs {
        assert_eq!(rec.replicas.len(), 3, "{rec:?}");
        let want = &expect[rec.index as usize * CHUNK..][..CHUNK];
        for &node in &rec.replicas {
            let i = (0..3).find(|&i| cl.node_id(i) == node).unwrap();
            let file = std::fs::read(cl.node(i).chunk_file(rec.chunk_id)).unwrap();
            let held = &file[DATA_OFFSET..DATA_OFFSET + CHUNK];
            let first_diff = held.iter().zip(want).position(|(a, b)| a != b);
            assert_eq!(
                first_diff, None,
                "chunk {} on node {node}: first differing byte",
                rec.index
            );
        }
    }
}

/// A write descriptor's writes in flight together, appends included:
/// each append lands after every write issued before it.
#[test]
fn appends_in_flight_together_land_one_after_another_in_issue_order() {
    let cl = Cluster::start(3);
    let addr = cl.control.addr;
    with_client(addr, async |c| {
        put(c, "/a", b"", layout(64 * 1024, 2, 2)).await.unwrap();
        let opts = OpenOptions {
            append: true,
            write: true,
            read: true,
            ..OpenOptions::default()
        };
        let fd = c.open("/a", &opts).await.unwrap();
        let pieces: Vec<Vec<u8>> = (0..40).map(|i| pattern(1000 + 997 * i, i as u64)).collect();
        let calls = pieces.iter().map(|p| c.write(fd, p));
        for r in futures::future::join_all(calls).await {
            r.unwrap();
        }
        c.close(fd).await.unwrap();
        let want: Vec<u8> = pieces.concat();
        assert!(get(c, "/a").await.unwrap() == want);
    });
}

/// Another client, with no chunk-record cache (it sees every commit made
/// before its read).
async fn strict_reader(addr: std::net::SocketAddr) -> Client {
    let opts = ringfs_client::ClientOptions {
        record_cache: std::time::Duration::ZERO,
        ..Default::default()
    };
    Client::connect_with(addr, &ringfs_tests::admin(), opts)
        .await
        .unwrap()
}

/// docs/client.md: a write that grows the file is committed before it
/// returns (size and new chunks), so another client sees it at once; an
/// overwrite inside the file is not committed until the writer's next
/// commit point (fsync here), but its bytes are in place on the replicas,
/// so a reader already sees them; the commit point moves the records'
/// versions.
#[test]
fn growth_is_visible_when_write_returns_and_overwrites_are_committed_at_fsync() {
    let cl = Cluster::start(3);
    let addr = cl.control.addr;
    with_client(addr, async |c| {
        let other = strict_reader(addr).await;
        let fd = c.create("/v", layout(CHUNK, 3, 2)).await.unwrap();
        let first = pattern(CHUNK + 5000, 1);
        c.pwrite(fd, 0, &first).await.unwrap();
        // Growth: committed before the write returned.
        assert_eq!(other.stat("/v").await.unwrap().size, first.len() as u64);
        assert!(get(&other, "/v").await.unwrap() == first);
        let committed = records(&other, "/v").await;

        // An overwrite inside the file: acknowledged, not committed.
        let patch = pattern(3 * 4096, 2);
        c.pwrite(fd, 8192, &patch).await.unwrap();
        let mut want = first.clone();
        want[8192..8192 + patch.len()].copy_from_slice(&patch);
        assert_eq!(
            records(&other, "/v").await[0].version,
            committed[0].version,
            "the overwrite was committed before a commit point"
        );
        // ... yet a reader sees it: every replica the record lists holds it.
        assert!(get(&other, "/v").await.unwrap() == want, "overwrite hidden");

        // fsync is a commit point: the record now names its version.
        c.fsync(fd).await.unwrap();
        let after = records(&other, "/v").await;
        assert!(after[0].version > committed[0].version, "{after:?}");
        assert_eq!(after[1].version, committed[1].version, "chunk 1 untouched");
        c.close(fd).await.unwrap();
        assert!(get(&other, "/v").await.unwrap() == want);
    });
}

/// docs/client.md: a writer that dies (its connections drop, nothing
/// committed after its last overwrites) loses none of its acknowledged
/// writes: the next writer finds them on the replicas, writes on top, and
/// everything reads back.
#[test]
fn a_writer_that_dies_after_uncommitted_overwrites_loses_none_of_them() {
    let cl = Cluster::start(3);
    let addr = cl.control.addr;
    with_client(addr, async |c| {
        let mut want = pattern(2 * CHUNK, 3);
        put(c, "/d", &want, layout(CHUNK, 3, 2)).await.unwrap();
        {
            let dying = strict_reader(addr).await;
            let fd = dying.open("/d", &read_write()).await.unwrap();
            for i in 0..20u64 {
                let at = (i * 7919 * 13) as usize % (2 * CHUNK - 6000);
                let p = pattern(6000, 100 + i);
                dying.pwrite(fd, at as u64, &p).await.unwrap();
                want[at..at + p.len()].copy_from_slice(&p);
            }
            // Gone without fsync or close: the lease ends with the
            // connection.
        }
        let other = strict_reader(addr).await;
        assert!(get(&other, "/d").await.unwrap() == want, "reader");
        let fd = other.open("/d", &read_write()).await.unwrap();
        let p = pattern(5000, 999);
        other.pwrite(fd, 100, &p).await.unwrap();
        want[100..5100].copy_from_slice(&p);
        other.close(fd).await.unwrap();
        assert!(get(c, "/d").await.unwrap() == want, "after the next writer");
    });
}

/// docs/client.md: a replica that misses a write leaves the chunk's record
/// before the write returns (a commit point), so when its node comes back
/// no reader takes its old bytes, even though the writer died without
/// fsync or close.
#[test]
fn a_replica_that_misses_a_write_leaves_the_record_before_the_write_returns() {
    let mut cl = Cluster::start(3);
    let addr = cl.control.addr;
    let mut want = pattern(3 * CHUNK, 5);
    let w = want.clone();
    with_client(addr, async |c| {
        put(c, "/m", &w, layout(CHUNK, 3, 2)).await.unwrap();
    });
    let down = cl.node_id(0);
    cl.kill9(0);
    let patch = pattern(3 * CHUNK - 8192, 6);
    want[4096..4096 + patch.len()].copy_from_slice(&patch);
    with_client(addr, async |c| {
        let dying = strict_reader(addr).await;
        let fd = dying.open("/m", &read_write()).await.unwrap();
        dying.pwrite(fd, 4096, &patch).await.unwrap();
        for rec in records(c, "/m").await {
            assert!(!rec.replicas.contains(&down), "{rec:?} lists node {down}");
        }
        drop(dying);
    });
    cl.start_node(0, &[]);
    cl.wait_up(3);
    with_client(addr, async |c| {
        let other = strict_reader(addr).await;
        for _ in 0..3 {
            assert!(get(&other, "/m").await.unwrap() == want);
        }
        assert!(get(c, "/m").await.unwrap() == want);
    });
}

/// A write that one replica fails, with later writes of the chunk already
/// in flight behind it: the replica applies none of the later ones (each
/// expects the version it missed), so what it holds is the chunk after a
/// prefix of the writes (none of them, or all up to the version a repair
/// copy brought it to), never a later write on top of a missing one; the
/// other replicas (W = 2) take every write, they all succeed, and every
/// replica the record lists holds the result byte for byte. (That the
/// replica leaves the record before the write returns:
/// `a_replica_that_misses_a_write_leaves_the_record_before_the_write_returns`.)
#[test]
fn a_replica_that_fails_a_write_in_a_pipeline_applies_none_of_the_later_ones() {
    let mut cl = Cluster::start(3);
    let addr = cl.control.addr;
    let old = pattern(CHUNK, 8);
    let rec = with_client(addr, async |c| {
        put(c, "/f", &old, layout(CHUNK, 3, 2)).await.unwrap();
        records(c, "/f").await.remove(0)
    });
    assert_eq!(rec.replicas.len(), 3);
    let bad_id = rec.replicas[1];
    let bad = (0..3).find(|&i| cl.node_id(i) == bad_id).unwrap();
    // Its next write fails before it is persisted; later ones do not.
    restart_with_failpoints(&mut cl, bad, "chunk_store::before_persist=1*return->off");
    // Listed at its new endpoints.
    assert_eq!(cl.node_id(bad), bad_id);
    let writes: Vec<(u64, Vec<u8>)> = (0..24u64)
        .map(|i| {
            (
                (i * 5 * 4096) % (CHUNK as u64 - 8192),
                pattern(8192, 50 + i),
            )
        })
        .collect();
    // The chunk after each prefix of the writes, in issue order.
    let states = prefix_states(&old, &writes);
    let want = states.last().unwrap().clone();
    let held = |i: usize| {
        let file = std::fs::read(cl.node(i).chunk_file(rec.chunk_id)).unwrap();
        file[DATA_OFFSET..DATA_OFFSET + CHUNK].to_vec()
    };
    let recs = with_client(addr, async |c| {
        let fd = c.open("/f", &read_write()).await.unwrap();
        let calls = writes.iter().map(|(at, d)| c.pwrite(fd, *at, d));
        for r in futures::future::join_all(calls).await {
            r.unwrap();
        }
        // Before the close. (A commit point may already have had the
        // writer copy its version to the replica, as repair: then it holds
        // the chunk at that version, a prefix too.)
        let bad_holds = held(bad);
        let prefix = states.iter().position(|s| *s == bad_holds);
        assert!(
            prefix.is_some(),
            "the replica that failed the first write holds no prefix of the writes"
        );
        c.close(fd).await.unwrap();
        assert!(get(c, "/f").await.unwrap() == want);
        records(c, "/f").await
    });
    for &node in &recs[0].replicas {
        let i = (0..3).find(|&i| cl.node_id(i) == node).unwrap();
        assert!(held(i) == want, "node {node}");
    }
}

/// The first write of a pipeline fails on every replica: every write
/// issued behind it fails too (typed error), none is applied without it,
/// and the chunk takes writes again afterwards.
#[test]
fn when_a_write_fails_everywhere_every_write_issued_behind_it_fails_too() {
    let mut cl = Cluster::start(3);
    let addr = cl.control.addr;
    let old = pattern(CHUNK, 9);
    let rec = with_client(addr, async |c| {
        put(c, "/e", &old, layout(CHUNK, 3, 2)).await.unwrap();
        records(c, "/e").await.remove(0)
    });
    for i in 0..3 {
        let id = cl.node_id(i);
        restart_with_failpoints(&mut cl, i, "chunk_store::before_persist=1*return->off");
        assert_eq!(cl.node_id(i), id);
    }
    let writes: Vec<(u64, Vec<u8>)> = (0..12u64)
        .map(|i| (i * 4096, pattern(4096, 70 + i)))
        .collect();
    with_client(addr, async |c| {
        let fd = c.open("/e", &read_write()).await.unwrap();
        let calls = writes.iter().map(|(at, d)| c.pwrite(fd, *at, d));
        for (i, r) in futures::future::join_all(calls)
            .await
            .into_iter()
            .enumerate()
        {
            assert!(r.is_err(), "write {i} issued behind a failed one succeeded");
        }
        for i in 0..3 {
            let file = std::fs::read(cl.node(i).chunk_file(rec.chunk_id)).unwrap();
            assert!(
                file[DATA_OFFSET..DATA_OFFSET + CHUNK] == old[..],
                "node index {i} applied a write"
            );
        }
        // A new write goes on top of what the replicas hold.
        let p = pattern(100, 1);
        c.pwrite(fd, 10, &p).await.unwrap();
        c.close(fd).await.unwrap();
        let mut want = old.clone();
        want[10..110].copy_from_slice(&p);
        assert!(get(c, "/e").await.unwrap() == want);
    });
}

/// A chain of pipelined writes of one chunk with a failure in the middle
/// on the second replica of the chain: its 4th write fails after its
/// journal record is durable (`chunk_store::before_apply`), so every write
/// pipelined behind it on that node fails too (none is applied there
/// without it); the other replicas (W = 2) take every write in order.
/// After a restart (kill -9) the failed replica holds exactly the chunk
/// after a prefix of the writes, at least the three it applied: a later
/// write never survives an earlier one.
#[test]
fn a_replica_whose_pipelined_write_fails_after_its_record_keeps_a_prefix() {
    let mut cl = Cluster::start(3);
    let addr = cl.control.addr;
    let old = pattern(CHUNK, 11);
    let rec = with_client(addr, async |c| {
        put(c, "/m", &old, layout(CHUNK, 3, 2)).await.unwrap();
        records(c, "/m").await.remove(0)
    });
    let bad_id = rec.replicas[1];
    let bad = (0..3).find(|&i| cl.node_id(i) == bad_id).unwrap();
    restart_with_failpoints(
        &mut cl,
        bad,
        "chunk_store::before_apply=3*off->1*return->off",
    );
    let writes: Vec<(u64, Vec<u8>)> = (0..32u64)
        .map(|i| {
            (
                (i * 3 * 4096) % (CHUNK as u64 - 4096),
                pattern(4096, 90 + i),
            )
        })
        .collect();
    let states = prefix_states(&old, &writes);
    let want = states.last().unwrap().clone();
    with_client(addr, async |c| {
        let fd = c.open("/m", &read_write()).await.unwrap();
        let calls = writes.iter().map(|(at, d)| c.pwrite(fd, *at, d));
        for r in futures::future::join_all(calls).await {
            r.unwrap();
        }
        c.close(fd).await.unwrap();
        assert!(get(c, "/m").await.unwrap() == want);
    });
    cl.kill9(bad);
    cl.start_node(bad, &[]);
    let file = std::fs::read(cl.node(bad).chunk_file(rec.chunk_id)).unwrap();
    let held = &file[DATA_OFFSET..DATA_OFFSET + CHUNK];
    let prefix = states.iter().position(|s| s[..] == *held);
    assert!(
        prefix.is_some_and(|k| k >= 3),
        "the replica whose 4th write failed holds {prefix:?}, not a prefix of at least 3 writes"
    );
}

/// Writes in flight on one descriptor while other clients read the same
/// chunk all succeed and land in issue order. The node runs each request
/// as its own task: a write must reach the chunk's lock and admission
/// after the write it is built on even when it is resumed first, e.g. two
/// writes queued behind a reader's lock and granted together (seen as
/// stale-version refusals in the bench's mixed workload; `write_order.rs`
/// on the node). A random share of writes is held up between their lock
/// check and their store write to make that order of resumption common.
#[test]
fn writes_in_flight_under_concurrent_reads_all_succeed_in_issue_order() {
    let cl = Cluster::start_custom(
        3,
        &[],
        &ringfs_tests::NodeOptions {
            failpoints: Some("ops::write::after_authorize=20%return(2)"),
            ..ringfs_tests::NodeOptions::default()
        },
    );
    let addr = cl.control.addr;
    let mut expect = pattern(CHUNK, 3);
    let mut seed = 0xfeed_u64;
    let rounds: Vec<Vec<(u64, Vec<u8>)>> = (0..16u64)
        .map(|r| {
            (0..24u64)
                .map(|i| {
                    let at = 4096 * (next(&mut seed) % (CHUNK as u64 / 4096 - 2));
                    let data = pattern(4096 * (1 + (i % 2) as usize), r * 100 + i);
                    expect[at as usize..at as usize + data.len()].copy_from_slice(&data);
                    (at, data)
                })
                .collect()
        })
        .collect();
    let got = with_client(addr, async |c| {
        put(c, "/rw", &pattern(CHUNK, 3), layout(CHUNK, 3, 3))
            .await
            .unwrap();
        let mut readers = Vec::new();
        for _ in 0..2 {
            readers.push(strict_reader(addr).await);
        }
        let fd = c.open("/rw", &read_write()).await.unwrap();
        let done = std::cell::Cell::new(false);
        let read_loop = async |r: &Client| {
            let rfd = r.open("/rw", &OpenOptions::default()).await.unwrap();
            let mut buf = vec![0u8; 4096];
            let mut reads = 0u64;
            while !done.get() {
                let at = 4096 * (reads % (CHUNK as u64 / 4096));
                r.pread(rfd, at, &mut buf).await.unwrap();
                reads += 1;
            }
            reads
        };
        let write_loop = async {
            let mut failed = Vec::new();
            for (r, round) in rounds.iter().enumerate() {
                let calls = round.iter().map(|(at, d)| c.pwrite(fd, *at, d));
                for (i, res) in futures::future::join_all(calls)
                    .await
                    .into_iter()
                    .enumerate()
                {
                    if let Err(e) = res {
                        failed.push(format!("round {r} write {i}: {e}"));
                    }
                }
            }
            done.set(true);
            failed
        };
        let reads = futures::future::join_all(readers.iter().map(read_loop));
        let (failed, reads) = futures::join!(write_loop, reads);
        assert!(
            failed.is_empty(),
            "{} writes failed: {failed:?}",
            failed.len()
        );
        assert!(reads.iter().all(|&n| n > 0), "the readers ran: {reads:?}");
        c.close(fd).await.unwrap();
        get(c, "/rw").await.unwrap()
    });
    assert!(got == expect, "the file is not the writes applied in order");
}
