//! The client library end to end: a real control server and three real
//! storage nodes on loopback, files written and read through `Client`.

use std::time::Duration;

use ringfs_client::{Client, CreateOptions, Error, OpenOptions, SeekFrom};
use ringfs_tests::files::{corrupt_chunk_file, get, overwrite, pattern, put, read_write, records};
use ringfs_tests::{local, with_client, Cluster};

/// Small chunks keep the tests fast while crossing many chunk boundaries.
const CHUNK: u32 = 64 * 1024;

fn cluster(nodes: usize) -> Cluster {
    Cluster::start(nodes)
}

fn layout(r: u8, w: u8) -> CreateOptions {
    ringfs_tests::files::layout(CHUNK as usize, r, w)
}

const SIZES: &[usize] = &[
    0,
    1,
    4095,
    4096,
    CHUNK as usize,
    CHUNK as usize + 1,
    5 * CHUNK as usize + 4097,
];

#[test]
fn round_trips_of_every_size_with_r1_and_r3() {
    let cl = cluster(3);
    let addr = cl.control.addr;
    with_client(addr, async |c| {
        for r in [1u8, 3] {
            for &size in SIZES {
                let path = format!("/r{r}-{size}");
                let data = pattern(size, r as u64);
                put(c, &path, &data, layout(r, r)).await.unwrap();
                let attr = c.stat(&path).await.unwrap();
                assert_eq!(attr.size, size as u64, "{path}");
                let back = get(c, &path).await.unwrap();
                assert!(back == data, "{path}: read back other bytes");
            }
        }
        // Every chunk of an R=3 file lives on three distinct nodes.
        let recs = records(c, &format!("/r3-{}", 5 * CHUNK as usize + 4097)).await;
        assert_eq!(recs.len(), 6);
        for rec in recs {
            let mut reps = rec.replicas.clone();
            reps.sort_unstable();
            reps.dedup();
            assert_eq!(reps.len(), 3, "{rec:?}");
        }
    });
}

#[test]
fn pwrite_holes_truncate_append_and_seek_behave_as_posix() {
    let cl = cluster(3);
    let addr = cl.control.addr;
    with_client(addr, async |c| {
        let fd = c.create("/f", layout(2, 2)).await.unwrap();
        // A write far out leaves a hole of zeros (whole chunks without records).
        let far = 3 * CHUNK as u64 + 100;
        c.pwrite(fd, far, b"tail").await.unwrap();
        c.pwrite(fd, 10, b"head").await.unwrap();
        let mut expect = vec![0u8; far as usize + 4];
        expect[10..14].copy_from_slice(b"head");
        expect[far as usize..].copy_from_slice(b"tail");
        let mut buf = vec![0xaa; expect.len() + 50];
        assert_eq!(
            c.pread(fd, 0, &mut buf).await,
            Err(Error::BadDescriptor(format!(
                "{fd} is not open for reading"
            )))
        );
        c.close(fd).await.unwrap();
        assert_eq!(get(c, "/f").await.unwrap(), expect);

        // Overwrite inside a chunk, across a chunk boundary.
        let fd = c.open("/f", &read_write()).await.unwrap();
        let cross = pattern(5000, 7);
        let at = CHUNK as u64 - 2000;
        c.pwrite(fd, at, &cross).await.unwrap();
        expect[at as usize..at as usize + 5000].copy_from_slice(&cross);
        let mut back = vec![0u8; expect.len()];
        assert_eq!(c.pread(fd, 0, &mut back).await.unwrap(), expect.len());
        assert!(back == expect);
        // Reads past the end are short, then empty.
        let mut small = [0u8; 10];
        assert_eq!(c.pread(fd, far + 2, &mut small).await.unwrap(), 2);
        assert_eq!(&small[..2], b"il");
        assert_eq!(c.pread(fd, far + 4, &mut small).await.unwrap(), 0);

        // Truncate into a chunk, then extend by writing past the cut: the
        // old bytes in between read as zeros.
        c.set_len(fd, 12).await.unwrap();
        c.pwrite(fd, 20, b"new").await.unwrap();
        let mut back = [0xffu8; 23];
        assert_eq!(c.pread(fd, 0, &mut back).await.unwrap(), 23);
        let mut want = [0u8; 23];
        want[10..12].copy_from_slice(b"he");
        want[20..23].copy_from_slice(b"new");
        assert_eq!(back, want);

        // Seek + read/write move the position.
        assert_eq!(c.seek(fd, SeekFrom::End(-3)).unwrap(), 20);
        let mut three = [0u8; 3];
        assert_eq!(c.read(fd, &mut three).await.unwrap(), 3);
        assert_eq!(&three, b"new");
        assert_eq!(c.seek(fd, SeekFrom::Current(-23)).unwrap(), 0);
        assert!(c.seek(fd, SeekFrom::Current(-1)).is_err());
        c.close(fd).await.unwrap();

        // Append opens write at the end.
        let fd = c
            .open(
                "/f",
                &OpenOptions {
                    append: true,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        c.write(fd, b"++").await.unwrap();
        c.close(fd).await.unwrap();
        let all = get(c, "/f").await.unwrap();
        assert_eq!(&all[20..], b"new++");
        assert_eq!(
            c.write(fd, b"x").await,
            Err(Error::BadDescriptor(fd.to_string()))
        );
    });
}

#[test]
fn reads_keep_working_with_one_of_three_nodes_killed() {
    let mut cl = cluster(3);
    let addr = cl.control.addr;
    let data = pattern(4 * CHUNK as usize + 77, 3);
    let d = data.clone();
    with_client(addr, async |c| {
        put(c, "/keep", &d, layout(3, 3)).await.unwrap();
    });
    cl.kill9(1);
    // At once (the map still calls the node up) and after it is marked down.
    for _ in 0..2 {
        let d = data.clone();
        with_client(addr, async |c| {
            assert!(get(c, "/keep").await.unwrap() == d);
        });
        cl.wait_up(2);
    }
}

#[test]
fn write_quorum_three_fails_with_a_node_down_and_two_succeeds() {
    let mut cl = cluster(3);
    let addr = cl.control.addr;
    cl.kill9(2);
    cl.wait_up(2);
    with_client(addr, async |c| {
        let data = pattern(2 * CHUNK as usize + 5, 9);
        let e = put(c, "/w3", &data, layout(3, 3)).await.unwrap_err();
        assert!(
            matches!(e, Error::Unavailable { .. } | Error::Quorum(_)),
            "{e}"
        );
        assert!(e.to_string().contains("2 of the 3 replicas"), "{e}");
        // Nothing was committed.
        assert_eq!(c.stat("/w3").await.unwrap().size, 0);
        put(c, "/w2", &data, layout(3, 2)).await.unwrap();
        assert!(get(c, "/w2").await.unwrap() == data);
    });
}

#[test]
fn a_second_writer_is_refused_busy_while_the_first_holds_the_file() {
    let cl = cluster(1);
    let addr = cl.control.addr;
    local(async move {
        let a = Client::connect(addr, &ringfs_tests::admin()).await.unwrap();
        let b = Client::connect(addr, &ringfs_tests::admin()).await.unwrap();
        let fd = a.create("/x", layout(1, 1)).await.unwrap();
        a.write(fd, b"first").await.unwrap();
        let e = b.open("/x", &read_write()).await.unwrap_err();
        assert!(matches!(e, Error::Busy(_)), "{e}");
        // A reader sees the committed bytes meanwhile.
        assert_eq!(get(&b, "/x").await.unwrap(), b"first");
        a.close(fd).await.unwrap();
        let fd = b.open("/x", &read_write()).await.unwrap();
        b.pwrite(fd, 0, b"SECOND").await.unwrap();
        b.close(fd).await.unwrap();
        assert_eq!(get(&a, "/x").await.unwrap(), b"SECOND");
    });
}

#[test]
fn a_corrupt_replica_is_detected_read_around_and_repaired() {
    let mut cl = cluster(3);
    let addr = cl.control.addr;
    let data = pattern(CHUNK as usize, 11);
    let (chunk_id, primary) = with_client(addr, async |c| {
        put(c, "/c", &data, layout(3, 3)).await.unwrap();
        let rec = records(c, "/c").await.remove(0);
        (rec.chunk_id, rec.replicas[0])
    });
    // Reads try the first replica of chunk 0 first: corrupt that one.
    let bad = cl.index_of(primary);
    let bad_file = cl.node(bad).chunk_file(chunk_id);
    corrupt_chunk_file(&bad_file, &data[..64], 1000, 1);
    let corrupted = std::fs::read(&bad_file).unwrap();
    with_client(addr, async |c| {
        // A read-only descriptor's records grant no write: the reader
        // reads around the replica and leaves the repair to the control
        // server.
        assert!(get(c, "/c").await.unwrap() == data);
        assert_eq!(c.repairs(), 0, "a reader may not write a replica");
        // Through a write descriptor the client repairs it itself (unless
        // the control server, told by the reader, was quicker).
        let fd = c.open("/c", &read_write()).await.unwrap();
        let mut back = vec![0; data.len()];
        assert_eq!(c.pread(fd, 0, &mut back).await.unwrap(), data.len());
        assert!(back == data);
        assert!(c.repairs() <= 1);
        c.close(fd).await.unwrap();
    });
    // Only the repaired replica left: it serves the right bytes (once the
    // control server's repair finished, if it was the one repairing).
    ringfs_tests::wait_until(
        std::time::Duration::from_secs(30),
        || std::fs::read(&bad_file).is_ok_and(|now| now != corrupted),
        || format!("node {bad}'s replica was not repaired"),
    );
    cl.keep_only(bad);
    with_client(addr, async |c| {
        assert!(get(c, "/c").await.unwrap() == data);
        assert_eq!(c.repairs(), 0);
    });
}

#[test]
fn concurrent_readers_never_see_a_mix_inside_a_chunk() {
    let cl = cluster(3);
    let addr = cl.control.addr;
    const CHUNKS: usize = 4;
    local(async move {
        let w = Client::connect(addr, &ringfs_tests::admin()).await.unwrap();
        let r = Client::connect(addr, &ringfs_tests::admin()).await.unwrap();
        put(&w, "/m", &vec![1u8; CHUNKS * CHUNK as usize], layout(3, 3))
            .await
            .unwrap();
        let writer = async {
            for g in 2..=12u8 {
                let fd = w.open("/m", &read_write()).await.unwrap();
                w.pwrite(fd, 0, &vec![g; CHUNKS * CHUNK as usize])
                    .await
                    .unwrap();
                w.close(fd).await.unwrap();
            }
        };
        let reader = async {
            let mut seen = std::collections::BTreeSet::new();
            let mut buf = vec![0u8; CHUNKS * CHUNK as usize];
            for _ in 0..40 {
                let fd = r.open("/m", &OpenOptions::read()).await.unwrap();
                assert_eq!(r.pread(fd, 0, &mut buf).await.unwrap(), buf.len());
                r.close(fd).await.unwrap();
                for (i, chunk) in buf.chunks(CHUNK as usize).enumerate() {
                    assert!(
                        chunk.iter().all(|&b| b == chunk[0]),
                        "chunk {i} mixes generations"
                    );
                    assert!((1..=12).contains(&chunk[0]));
                    seen.insert(chunk[0]);
                }
                tokio::task::yield_now().await;
            }
            seen
        };
        let ((), seen) = tokio::join!(writer, reader);
        assert!(!seen.is_empty());
        assert_eq!(
            get(&r, "/m").await.unwrap(),
            vec![12u8; CHUNKS * CHUNK as usize]
        );
    });
}

#[test]
fn the_blocking_client_round_trips_a_file() {
    let cl = cluster(1);
    let c =
        ringfs_client::BlockingClient::connect(cl.control.addr, &ringfs_tests::admin()).unwrap();
    c.mkdir("/d", 0).unwrap();
    let fd = c.create("/d/f", layout(1, 1)).unwrap();
    let data = pattern(3 * CHUNK as usize + 10, 4);
    assert_eq!(c.write(fd, &data).unwrap(), data.len());
    c.fsync(fd).unwrap();
    c.close(fd).unwrap();
    let fd = c.open("/d/f", &OpenOptions::read()).unwrap();
    let mut back = vec![0u8; data.len() + 1];
    assert_eq!(c.pread(fd, 0, &mut back).unwrap(), data.len());
    assert!(back[..data.len()] == data[..]);
    assert_eq!(c.seek(fd, SeekFrom::Start(5)).unwrap(), 5);
    let mut five = [0u8; 5];
    assert_eq!(c.read(fd, &mut five).unwrap(), 5);
    assert_eq!(five, data[5..10]);
    c.close(fd).unwrap();
    assert_eq!(c.list("/d").unwrap().len(), 1);
    c.unlink("/d/f").unwrap();
    c.rmdir("/d").unwrap();
    assert!(matches!(c.stat("/d"), Err(Error::NotFound(_))));
}

#[test]
fn an_overwrite_with_a_replica_down_keeps_the_live_ones_and_reads_back() {
    let mut cl = cluster(3);
    let addr = cl.control.addr;
    let mut data = pattern(3 * CHUNK as usize, 21);
    let d = data.clone();
    with_client(addr, async |c| {
        put(c, "/o", &d, layout(3, 2)).await.unwrap();
    });
    cl.kill9(0);
    cl.wait_up(2);
    let patch = pattern(CHUNK as usize, 99);
    let at = CHUNK as usize / 2;
    data[at..at + patch.len()].copy_from_slice(&patch);
    with_client(addr, async |c| {
        overwrite(c, "/o", at as u64, &patch).await.unwrap();
        assert!(get(c, "/o").await.unwrap() == data);
        // The records of the rewritten chunks list only the two live replicas.
        let recs = records(c, "/o").await;
        assert_eq!(recs[0].replicas.len(), 2, "{recs:?}");
        assert_eq!(recs[1].replicas.len(), 2, "{recs:?}");
        assert_eq!(recs[2].replicas.len(), 3, "{recs:?}");
    });
}

/// Reads through one descriptor see writes made through another descriptor
/// of the same client at once (they share the chunk-record cache, which
/// writes clear), and another client's replacement of the file's chunks
/// within the cache's bound.
#[test]
fn cached_chunk_records_never_hide_own_writes_and_expire_for_others() {
    let cl = cluster(3);
    let addr = cl.control.addr;
    with_client(addr, async |c| {
        let old = pattern(3 * CHUNK as usize, 1);
        put(c, "/f", &old, layout(2, 2)).await.unwrap();
        let reader = c.open("/f", &OpenOptions::read()).await.unwrap();
        let mut buf = vec![0u8; CHUNK as usize];
        c.pread(reader, CHUNK as u64, &mut buf).await.unwrap();
        assert_eq!(buf, old[CHUNK as usize..2 * CHUNK as usize]);

        // Same client, another descriptor: truncate and rewrite (new chunks).
        let new = pattern(3 * CHUNK as usize, 2);
        put(c, "/f", &new, layout(2, 2)).await.unwrap();
        c.pread(reader, CHUNK as u64, &mut buf).await.unwrap();
        assert_eq!(
            buf,
            new[CHUNK as usize..2 * CHUNK as usize],
            "own write hidden"
        );

        // A strict reader (no record cache) has the old records too.
        let strict_client = Client::connect_with(
            addr,
            &ringfs_tests::admin(),
            ringfs_client::ClientOptions {
                record_cache: Duration::ZERO,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let strict = strict_client
            .open("/f", &OpenOptions::read())
            .await
            .unwrap();
        let mut sbuf = vec![0u8; CHUNK as usize];
        strict_client
            .pread(strict, CHUNK as u64, &mut sbuf)
            .await
            .unwrap();
        assert_eq!(sbuf, buf);

        // Another client replaces the chunks: the strict reader sees it at
        // once, the caching one after the cache bound.
        let other = Client::connect(addr, &ringfs_tests::admin()).await.unwrap();
        let newer = pattern(3 * CHUNK as usize, 3);
        put(&other, "/f", &newer, layout(2, 2)).await.unwrap();
        strict_client
            .pread(strict, CHUNK as u64, &mut sbuf)
            .await
            .unwrap();
        assert_eq!(
            sbuf,
            newer[CHUNK as usize..2 * CHUNK as usize],
            "strict reader"
        );
        tokio::time::sleep(ringfs_client::record_cache::DEFAULT_MAX_AGE).await;
        c.pread(reader, CHUNK as u64, &mut buf).await.unwrap();
        assert_eq!(buf, newer[CHUNK as usize..2 * CHUNK as usize]);
        c.close(reader).await.unwrap();
    });
}

/// A node learns of a node that joined after its last cluster map as soon
/// as a write's chain names it, not at its next heartbeat: with heartbeats
/// 30 s apart, writes whose chains forward to the newcomer succeed at once
/// (a node forwards only to members of its map, and waited for a newer map
/// at most 3 s before refusing).
#[test]
fn a_chain_through_a_node_that_just_joined_is_forwarded_without_waiting_for_a_heartbeat() {
    let mut cl = Cluster::start_with(
        2,
        &["--heartbeat-ms", "30000", "--node-ttl-ms", "90000"],
        &[],
    );
    cl.start_node(2, &[]);
    cl.wait_up(3);
    let newcomer = cl.node_id(2);
    with_client(cl.control.addr, async |c| {
        // Until a chain has forwarded to the newcomer (replicas are listed
        // primary first; the primary and each hop forward to the next).
        for i in 0..20 {
            let path = format!("/joined-{i}");
            let data = pattern(CHUNK as usize, i);
            put(c, &path, &data, layout(3, 3)).await.unwrap();
            assert!(get(c, &path).await.unwrap() == data);
            let recs = records(c, &path).await;
            if recs[0].replicas[0] != newcomer {
                assert!(recs[0].replicas.contains(&newcomer), "{recs:?}");
                return;
            }
        }
        panic!("no chain of 20 forwarded to the newcomer: the test proves nothing");
    });
}
