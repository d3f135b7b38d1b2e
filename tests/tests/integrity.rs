//! Replica integrity through the client, on real processes: a replica that
//! missed a write (a hop failing after the primary wrote, the primary
//! failing after its forward) is caught up by a copy and never moved
//! forward over the write it missed; repair finishes while a file is being
//! overwritten; a write call slower than the orphan grace loses nothing; a
//! read repair that fails halfway leaves the replica in place; a replica
//! whose write replay dropped (left empty at (0, 0)) is repaired; a bit
//! flipped in a node's memory is caught by the reader; `fsck --verify`
//! names a replica that differs. Failpoints (armed in one node process)
//! make each fault exact; every test ends with the replicas compared by
//! content and the bytes compared with a model.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use ringfs_client::{ChunkRecord, Client, ClientOptions, Error};
use ringfs_tests::files::{corrupt_chunk_file, get, layout, pattern, put, read_write, records};
use ringfs_tests::{local, scrape, with_client, Cluster, NodeOptions, FAST_REPAIR};

const CHUNK: usize = 256 * 1024;

/// Restarts node `i` with `failpoints` armed; returns once the cluster map
/// lists it at its new endpoints.
fn restart_with(cl: &mut Cluster, i: usize, failpoints: &str) {
    cl.kill9(i);
    cl.start_node_with(
        i,
        &NodeOptions {
            failpoints: Some(failpoints),
            ..NodeOptions::default()
        },
    );
    cl.node_id(i);
}

/// Every replica of every chunk of `path` holds the same version and the
/// same content (digests of their stored CRCs), at least the committed
/// version.
async fn replicas_identical(c: &Client, path: &str) {
    for (rec, replicas) in c.replica_digests(path).await.unwrap() {
        let digests: Vec<_> = replicas
            .iter()
            .map(|(n, d)| (n, d.as_ref().unwrap_or_else(|e| panic!("node {n}: {e}"))))
            .collect();
        for (n, d) in &digests {
            assert!(
                d.version >= rec.version,
                "chunk {}: node {n} behind",
                rec.index
            );
            assert_eq!(
                (d.version, d.length, &d.digest),
                (
                    digests[0].1.version,
                    digests[0].1.length,
                    &digests[0].1.digest
                ),
                "chunk {}: node {n} differs from node {}",
                rec.index,
                digests[0].0
            );
        }
    }
}

/// A hop of a W = 3 chain fails a write before writing anything, after the
/// primary wrote it: the write fails (two replicas hold it). The next write
/// finds that hop behind: it is caught up by a copy of the version the
/// others hold (fenced on the version it holds) and then written with
/// them; never is it moved to a new version over the write it missed. All
/// three end identical, with both writes' bytes.
#[test]
fn a_hop_that_missed_a_write_is_caught_up_by_a_copy_never_moved_forward() {
    let mut cl = Cluster::start_with(3, FAST_REPAIR, &[]);
    let addr = cl.control.addr;
    let mut model = pattern(CHUNK, 1);
    let hop = with_client(addr, async |c| {
        put(c, "/f", &model, layout(CHUNK, 3, 3)).await.unwrap();
        records(c, "/f").await[0].replicas[1]
    });
    let hop = cl.index_of(hop);
    restart_with(&mut cl, hop, "chunk_store::before_persist=1*return->off");
    cl.wait_clean(Duration::from_secs(20));
    let (w1, w2) = (pattern(10_000, 2), pattern(20_000, 3));
    with_client(addr, async |c| {
        let fd = c.open("/f", &read_write()).await.unwrap();
        let e = c.pwrite(fd, 1000, &w1).await.unwrap_err();
        assert!(matches!(e, Error::Quorum(_)), "{e}");
        c.pwrite(fd, 50_000, &w2).await.unwrap();
        c.close(fd).await.unwrap();
        // The failed write reached two replicas and was copied to the third.
        model[1000..11_000].copy_from_slice(&w1);
        model[50_000..70_000].copy_from_slice(&w2);
        assert_eq!(records(c, "/f").await[0].replicas.len(), 3);
        replicas_identical(c, "/f").await;
        assert!(get(c, "/f").await.unwrap() == model);
    });
    let fsck = cl.ringfs(&["fsck", "--verify"]);
    assert_eq!(fsck.code, Some(0), "{fsck:#?}");
}

/// The primary's own write fails after its forward reached the other two
/// (W = 2): the write succeeds on those two and the record lists them;
/// the control server names the primary's node to add, and the writer
/// copies its version there (over the primary's stale replica, copy then
/// swap). Later writes reach all three, identical.
#[test]
fn a_primary_failing_after_its_forward_is_left_out_then_caught_up() {
    let mut cl = Cluster::start_with(3, FAST_REPAIR, &[]);
    let addr = cl.control.addr;
    let mut model = pattern(CHUNK, 4);
    let primary = with_client(addr, async |c| {
        put(c, "/f", &model, layout(CHUNK, 3, 2)).await.unwrap();
        records(c, "/f").await[0].replicas[0]
    });
    let primary_index = cl.index_of(primary);
    restart_with(
        &mut cl,
        primary_index,
        "chunk_store::before_apply=1*return->off",
    );
    cl.wait_clean(Duration::from_secs(20));
    let (w1, w2) = (pattern(30_000, 5), pattern(4096, 6));
    with_client(addr, async |c| {
        let fd = c.open("/f", &read_write()).await.unwrap();
        c.pwrite(fd, 3000, &w1).await.unwrap();
        model[3000..33_000].copy_from_slice(&w1);
        let rec = &records(c, "/f").await[0];
        assert_eq!(rec.replicas.len(), 3, "the writer added a replica: {rec:?}");
        c.pwrite(fd, 100_000, &w2).await.unwrap();
        model[100_000..104_096].copy_from_slice(&w2);
        c.close(fd).await.unwrap();
        let rec = &records(c, "/f").await[0];
        assert!(rec.replicas.contains(&primary), "{rec:?}");
        replicas_identical(c, "/f").await;
        assert!(get(c, "/f").await.unwrap() == model);
    });
    let fsck = cl.ringfs(&["fsck", "--verify"]);
    assert_eq!(fsck.code, Some(0), "{fsck:#?}");
}

/// A writer overwrites random ranges of a file (R = 3, W = 2) without
/// pause while a node holding its chunks is killed: repair brings every
/// chunk back to three good replicas while the writes go on (the writer
/// adds the replicas the control server names, in step with its writes;
/// node-driven copies, slowed here to race the writes, never record a copy
/// the writes overtook), so a second node can be killed after it with no
/// write failing for lack of replicas.
#[test]
fn repair_finishes_under_overwrites_and_the_file_survives_the_next_failure() {
    const SIZE: usize = 4 * CHUNK;
    let opts = NodeOptions {
        failpoints: Some("replicate::before_send=return(300)"),
        ..NodeOptions::default()
    };
    let mut cl = Cluster::start_custom(4, FAST_REPAIR, &opts);
    let addr = cl.control.addr;
    let initial = pattern(SIZE, 7);
    let first = with_client(addr, async |c| {
        put(c, "/busy", &initial, layout(CHUNK, 3, 2))
            .await
            .unwrap();
        records(c, "/busy").await[0].replicas.clone()
    });
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, failures) = (stop.clone(), failures.clone());
        let mut model = initial.clone();
        std::thread::spawn(move || {
            local(async move {
                let options = ClientOptions {
                    request_timeout: Duration::from_secs(5),
                    lock_wait: Duration::from_secs(2),
                    record_cache: Duration::ZERO,
                    ..ClientOptions::default()
                };
                let c = Client::connect_with(addr, &ringfs_tests::admin(), options)
                    .await
                    .unwrap();
                let fd = c.open("/busy", &read_write()).await.unwrap();
                let mut rng = StdRng::seed_from_u64(11);
                let mut writes = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let len = rng.random_range(1..=16 * 1024);
                    let at = rng.random_range(0..=SIZE - len);
                    let mut data = vec![0u8; len];
                    rng.fill_bytes(&mut data);
                    let since = Instant::now();
                    while let Err(e) = c.pwrite(fd, at as u64, &data).await {
                        eprintln!("a write failed (repeated): {e}");
                        failures.fetch_add(1, Ordering::Relaxed);
                        assert!(since.elapsed() < Duration::from_secs(20), "{e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    model[at..at + len].copy_from_slice(&data);
                    writes += 1;
                }
                c.close(fd).await.unwrap();
                (model, writes)
            })
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    let a = cl.index_of(first[0]);
    let a_id = first[0];
    cl.kill9(a);
    let killed = Instant::now();
    cl.wait_up(3);
    let healed = cl.wait_clean(Duration::from_secs(40));
    eprintln!(
        "three good replicas again {:?} after the first kill ({healed:?} after it was marked \
         down), under writes",
        killed.elapsed()
    );
    let failed_before = failures.load(Ordering::Relaxed);
    // The second failure: another node of chunk 0's record.
    let now = with_client(addr, async |c| {
        records(c, "/busy").await[0].replicas.clone()
    });
    let b = cl.index_of(*now.iter().find(|n| **n != a_id).unwrap());
    cl.kill9(b);
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    let (model, writes) = writer.join().expect("the writer failed");
    eprintln!(
        "{writes} writes in {:?}; {failed_before} failed attempts before the second kill, {} after",
        killed.elapsed(),
        failures.load(Ordering::Relaxed) - failed_before
    );
    cl.start_node_with(a, &NodeOptions::default());
    cl.start_node_with(b, &NodeOptions::default());
    cl.wait_up(4);
    cl.wait_clean(Duration::from_secs(60));
    with_client(addr, async |c| {
        replicas_identical(c, "/busy").await;
        assert!(get(c, "/busy").await.unwrap() == model);
    });
    let fsck = cl.ringfs(&["fsck", "--verify"]);
    assert_eq!(fsck.code, Some(0), "{fsck:#?}");
}

/// A write call whose chunk writes take 3 s on one of the two replicas
/// (R = 2, W = 1), with an orphan grace of 1 s and chunk reports every
/// 300 ms: the other replica sits on disk, uncommitted, three times the
/// grace. It carries the epoch of the write lease, which is open, so
/// garbage collection leaves it; the call succeeds and both replicas hold
/// the bytes.
#[test]
fn a_write_call_slower_than_the_orphan_grace_loses_nothing() {
    let flags = [
        "--heartbeat-ms",
        "100",
        "--node-ttl-ms",
        "1000",
        "--report-interval-ms",
        "300",
        "--orphan-grace-ms",
        "1000",
    ];
    let mut cl = Cluster::start_with(1, &flags, &[]);
    cl.start_node_with(
        1,
        &NodeOptions {
            failpoints: Some("chunk_store::slow_persist=return(3000)"),
            ..NodeOptions::default()
        },
    );
    cl.wait_up(2);
    let addr = cl.control.addr;
    let data = pattern(CHUNK, 9);
    with_client(addr, async |c| {
        let fd = c.create("/slow", layout(CHUNK, 2, 1)).await.unwrap();
        let started = Instant::now();
        c.write(fd, &data).await.unwrap();
        eprintln!("the write call took {:?}", started.elapsed());
        assert!(started.elapsed() > Duration::from_secs(2));
        c.close(fd).await.unwrap();
        for (rec, replicas) in c.replica_digests("/slow").await.unwrap() {
            assert_eq!(replicas.len(), 2, "{rec:?}");
            for (n, d) in replicas {
                let d = d.unwrap_or_else(|e| panic!("node {n} lost its replica: {e}"));
                assert_eq!(d.version, rec.version);
            }
        }
        assert!(get(c, "/slow").await.unwrap() == data);
    });
}

/// Flags of a node these tests restart after damaging its replica: no
/// scrubbing (the test finds the damage itself), and the metrics
/// [`replay_dropped`] reads.
const RESTART_FLAGS: &[&str] = &["--scrub-bytes-per-sec", "0", "--metrics", "127.0.0.1:0"];

/// Direct writes node `i`'s journal replay dropped when it started (it
/// runs with [`RESTART_FLAGS`]).
fn replay_dropped(cl: &Cluster, i: usize) -> f64 {
    let m = scrape::scrape(cl.node(i).metrics.expect("node metrics"));
    scrape::sum(&m, "ringfs_node_replay_dropped_writes_total")
}

/// Two nodes (fast repair, no scrubbing) and a file `path` of one chunk
/// at R = 2: its bytes and the chunk's record.
fn one_chunk_on_two_nodes(path: &str, seed: u64) -> (Cluster, Vec<u8>, ChunkRecord) {
    let cl = Cluster::start_with(2, FAST_REPAIR, &["--scrub-bytes-per-sec", "0"]);
    let data = pattern(CHUNK, seed);
    let rec = with_client(cl.control.addr, async |c| {
        put(c, path, &data, layout(CHUNK, 2, 2)).await.unwrap();
        records(c, path).await.remove(0)
    });
    (cl, data, rec)
}

/// A replica fails its checksum on a read; the reader (through a write
/// descriptor: a read one has no right to write a replica) repairs it from
/// the good replica, copy-then-swap, and the swap fails (failpoint after the
/// copy was written aside): the damaged replica's file is still there (no
/// replica fewer), and the control server's repair replaces it later. The
/// damage is done after a graceful stop, which confirmed the write: replay
/// keeps the write (damaged) instead of dropping it.
#[test]
fn a_read_repair_that_fails_halfway_keeps_the_replica() {
    let (mut cl, data, rec) = one_chunk_on_two_nodes("/r", 12);
    let addr = cl.control.addr;
    // Chunk 0 is read from its first replica first: damage that one, once
    // its write is confirmed (a graceful stop checkpoints: damage before
    // that drops the write at replay instead, the test below).
    let bad = cl.index_of(rec.replicas[0]);
    let file = cl.node(bad).chunk_file(rec.chunk_id);
    cl.terminate(bad);
    corrupt_chunk_file(&file, &data[..64], 5000, 16);
    cl.start_node_with(
        bad,
        &NodeOptions {
            failpoints: Some("chunk_store::before_swap=1*return->off"),
            flags: RESTART_FLAGS,
            ..NodeOptions::default()
        },
    );
    // The drain confirmed the write, so replay kept it, damaged: it was
    // not dropped to (0, 0) as an unconfirmed one would be.
    assert_eq!(
        replay_dropped(&cl, bad),
        0.0,
        "replay dropped the confirmed write"
    );
    // Mapped at its new endpoint: the read below goes to it first.
    cl.node_id(bad);
    with_client(addr, async |c| {
        let fd = c.open("/r", &read_write()).await.unwrap();
        let mut buf = vec![0u8; CHUNK];
        c.pread(fd, 0, &mut buf).await.unwrap();
        assert!(buf == data, "the read is served by the good replica");
        assert_eq!(c.repairs(), 0, "the repair failed at the swap");
        assert!(file.exists(), "the damaged replica's file was removed");
        c.close(fd).await.unwrap();
    });
    cl.wait_clean(Duration::from_secs(30));
    // Repaired in place: the once-damaged replica alone serves the bytes.
    let good = cl.index_of(rec.replicas[1]);
    cl.kill9(good);
    cl.wait_up(1);
    with_client(addr, async |c| assert!(get(c, "/r").await.unwrap() == data));
}

/// A node is killed right after a large write went straight to its chunk
/// file, and the write's blocks are damaged before the node confirmed them
/// (docs/architecture.md, "Direct writes"): replay cannot tell them from a
/// torn write and drops the write, leaving the chunk empty at (0, 0) on
/// that node. The control server's repair copies the chunk over that empty
/// one (a reservation finds it there: the copy locks and replaces it),
/// and the repaired replica alone serves the bytes.
#[test]
fn a_replica_whose_write_replay_dropped_is_repaired() {
    let (mut cl, data, rec) = one_chunk_on_two_nodes("/d", 13);
    let addr = cl.control.addr;
    // Well within the second a direct write stays unconfirmed.
    let bad = cl.index_of(rec.replicas[0]);
    let file = cl.node(bad).chunk_file(rec.chunk_id);
    cl.kill9(bad);
    corrupt_chunk_file(&file, &data[..64], 5000, 16);
    cl.start_node(bad, RESTART_FLAGS);
    assert_eq!(
        replay_dropped(&cl, bad),
        1.0,
        "replay kept the damaged write"
    );
    cl.node_id(bad);
    cl.wait_clean(Duration::from_secs(30));
    let good = cl.index_of(rec.replicas[1]);
    cl.kill9(good);
    cl.wait_up(1);
    with_client(addr, async |c| assert!(get(c, "/d").await.unwrap() == data));
}

/// A node flips a bit of what it sends after its own check passed (as
/// memory or a NIC may): the reader checks every block against the CRC the
/// node stored, takes it as damage, reads the other replica, and returns
/// the right bytes (read through a write descriptor, whose client then
/// repairs the replica: the count shows the flipping node was read).
#[test]
fn a_bit_flipped_after_the_node_checked_it_is_caught_by_the_reader() {
    let mut cl = Cluster::start_with(2, FAST_REPAIR, &[]);
    let addr = cl.control.addr;
    let data = pattern(4 * CHUNK, 13);
    let first = with_client(addr, async |c| {
        put(c, "/b", &data, layout(CHUNK, 2, 2)).await.unwrap();
        records(c, "/b").await[0].replicas[0]
    });
    let flipping = cl.index_of(first);
    restart_with(&mut cl, flipping, "ops::read::flip_bit=return");
    with_client(addr, async |c| {
        for _ in 0..3 {
            let fd = c.open("/b", &read_write()).await.unwrap();
            let mut back = vec![0u8; data.len()];
            assert_eq!(c.pread(fd, 0, &mut back).await.unwrap(), data.len());
            assert!(back == data);
            c.close(fd).await.unwrap();
        }
        assert!(c.repairs() > 0, "the flipping node was read from");
    });
}

/// `fsck --verify` compares replicas by the digests of their stored CRCs:
/// a replica made to differ at the same version (its data and its CRC both
/// rewritten, which no correct node does) is named with its path, and the
/// check fails; plain `fsck`, which trusts versions, does not see it.
#[test]
fn fsck_verify_names_a_replica_that_differs_at_the_same_version() {
    let mut cl = Cluster::start_with(2, FAST_REPAIR, &[]);
    let addr = cl.control.addr;
    let rec = with_client(addr, async |c| {
        c.mkdir("/dir", 0).await.unwrap();
        put(c, "/dir/div", &pattern(64 * 1024, 14), layout(CHUNK, 2, 2))
            .await
            .unwrap();
        records(c, "/dir/div").await.remove(0)
    });
    let clean = cl.ringfs(&["fsck", "--verify"]);
    assert_eq!(clean.code, Some(0), "{clean:#?}");
    cl.diverge_replica(rec.replicas[1], rec.chunk_id, 3, 0xaa);
    cl.wait_clean(Duration::from_secs(20));
    let plain = cl.ringfs(&["fsck"]);
    assert_eq!(plain.code, Some(0), "{plain:#?}");
    let verify = cl.ringfs(&["fsck", "--verify"]);
    assert_eq!(verify.code, Some(1), "{verify:#?}");
    assert!(
        verify.stdout.contains("/dir/div") && verify.stdout.contains("SAME VERSION"),
        "{verify:#?}"
    );
    assert!(
        verify.stdout.contains(&format!("node {}", rec.replicas[1])),
        "{verify:#?}"
    );
}

/// With heartbeats only every 3 s, repair still copies chunk after chunk
/// without waiting for them: the control server pushes each command through
/// the capability the node offered at its join and hears the outcome as
/// the call's answer, then plans the next copy at once. A node that stops
/// (SIGTERM: it leaves) has its chunks copied within a few seconds of its
/// grace, where commands riding on heartbeats would need one heartbeat out
/// and one back per round of copies. Prints the repair rate.
#[test]
fn repair_commands_are_pushed_not_carried_by_heartbeats() {
    const CHUNKS: usize = 16;
    const SIZE: usize = 1 << 20;
    let flags = [
        "--heartbeat-ms",
        "3000",
        "--node-ttl-ms",
        "3500",
        "--repair-grace-ms",
        "100",
        "--report-interval-ms",
        "60000",
    ];
    let mut cl = Cluster::start_with(3, &flags, &[]);
    let addr = cl.control.addr;
    let data = pattern(CHUNKS * SIZE, 15);
    let gone = with_client(addr, async |c| {
        put(c, "/many", &data, layout(SIZE, 2, 2)).await.unwrap();
        records(c, "/many").await[0].replicas[0]
    });
    let lost = with_client(addr, async |c| {
        records(c, "/many")
            .await
            .iter()
            .filter(|r| r.replicas.contains(&gone))
            .count()
    });
    let gone = cl.index_of(gone);
    let stopped = Instant::now();
    cl.nodes[gone].as_mut().unwrap().terminate();
    cl.nodes[gone] = None;
    // Down at once (it left); its replicas are lost after TTL + grace.
    let healed = cl.wait_clean(Duration::from_secs(60));
    let after_grace = stopped
        .elapsed()
        .saturating_sub(Duration::from_millis(3600));
    eprintln!(
        "{lost} chunks of 1 MiB re-replicated {:?} after the node stopped, {after_grace:?} after \
         its grace: {:.1} MiB/s with 3 s heartbeats",
        stopped.elapsed(),
        lost as f64 / after_grace.as_secs_f64().max(0.001)
    );
    assert!(lost >= 4, "{lost} chunks on the stopped node");
    // Riding on heartbeats, each round of (at most two) copies would take
    // a heartbeat out and one back: 6 s per round, 30 s for ten chunks.
    assert!(
        healed < Duration::from_secs(15),
        "repair took {healed:?}: commands waited for heartbeats"
    );
    with_client(addr, async |c| {
        assert!(get(c, "/many").await.unwrap() == data)
    });
}
