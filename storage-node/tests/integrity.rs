//! Replica integrity on real node processes, over the data-plane protocol:
//! strict versions on a chain (a stale hop is skipped, not moved forward,
//! and the answer says exactly who applied), payloads checked against their
//! CRCs, version-fenced deletes and copies, locks that fence and follow
//! their connection, forwards cut mid-frame, and a peer that never reads.
//! Each test names the guarantee it checks; failpoints (the node's
//! `failpoints` feature, armed per child) make the faults exact.

mod common;

use common::{bytes_at, endpoints, info, read_req, reserve, write_cas};
use rand::{Rng, SeedableRng};
use ringfs_node::peer::Peer;
use ringfs_schema::frame::{Header, Hop, LockMode, Op, Status, Token};
use ringfs_schema::ids::ChunkId;
use ringfs_schema::Version;
use ringfs_tests::files::pattern;
use ringfs_tests::{on_glommio, Cluster, NodeOptions, QUICK};
use std::io::Write;
use std::time::{Duration, Instant};

const V1: Version = Version::new(1, 1);
const V2: Version = Version::new(1, 2);
const V3: Version = Version::new(1, 3);

/// Reserves chunk `id` (a fresh one for the default id) on `p` for
/// `client`; its write token.
async fn reserved(p: &Peer, client: u64, id: ChunkId) -> (ChunkId, Token) {
    let r = reserve(p, client, 1 << 20, id, 0).await;
    assert_eq!(r.status, Status::Ok, "{}", r.message);
    (r.chunk_id, r.token)
}

/// Reads the whole chunk `id` with `token`: (its version, its bytes).
async fn whole(p: &Peer, id: ChunkId, token: &Token) -> (Version, Vec<u8>) {
    let (h, data) = p.call(read_req(id, 0, 1 << 20, token), &[]).await.unwrap();
    assert_eq!(h.status, Status::Ok, "{}", h.message);
    (h.version, data)
}

/// A chain of three nodes; hop 1 missed a write (it holds another
/// version). A chain write expecting the others' version is applied by
/// nodes 0 and 2, refused by the stale hop (which still passes it on), and
/// the answer names exactly nodes 0 and 2. The stale hop is not moved
/// forward: it keeps its bytes at its version.
#[test]
fn a_stale_hop_is_skipped_not_moved_forward_and_the_answer_says_who_applied() {
    let cl = Cluster::start(3);
    let eps: Vec<String> = (0..3).map(|i| endpoints(&cl, i)[0].clone()).collect();
    let ids: Vec<u64> = (0..3).map(|i| cl.node_id(i)).collect();
    on_glommio(move || async move {
        let mut peers = Vec::new();
        for ep in &eps {
            peers.push(common::connect(ep).await);
        }
        let (id, t0) = reserved(&peers[0], 9, ChunkId::default()).await;
        let mut tokens = vec![t0];
        for p in &peers[1..] {
            tokens.push(reserved(p, 9, id).await.1);
        }
        let hops = |from: usize| -> Vec<Hop> {
            (from..3)
                .map(|i| Hop {
                    node_id: ids[i],
                    address: eps[i].clone(),
                    token: tokens[i].clone(),
                })
                .collect()
        };
        let a = pattern(20_000, 1);
        let (w, _) = peers[0]
            .call(
                write_cas(id, 0, &tokens[0], hops(1), Version::NONE, V1, &a),
                &a,
            )
            .await
            .unwrap();
        assert_eq!(
            (w.status, w.durable_mask),
            (Status::Ok, 0b111),
            "{}",
            w.message
        );
        // Hop 1 alone takes another write: it is at V2, the others at V1.
        let b = pattern(5000, 2);
        let (w, _) = peers[1]
            .call(write_cas(id, 100, &tokens[1], vec![], V1, V2, &b), &b)
            .await
            .unwrap();
        assert_eq!(w.status, Status::Ok, "{}", w.message);
        // The writer of V3 expects V1: hop 1 refuses, hops 0 and 2 apply.
        let c = pattern(30_000, 3);
        let mut h = write_cas(id, 4000, &tokens[0], hops(1), V1, V3, &c);
        h.write_quorum = 2;
        let (w, _) = peers[0].call(h, &c).await.unwrap();
        assert_eq!(w.status, Status::Ok, "{}", w.message);
        assert_eq!(
            w.durable_mask, 0b101,
            "exactly nodes 0 and 2: {}",
            w.message
        );
        assert_eq!(w.durable_replicas, 2);
        let mut applied = a.clone();
        applied.resize(34_000, 0);
        applied[4000..34_000].copy_from_slice(&c);
        let mut stale = a.clone();
        stale[100..5100].copy_from_slice(&b);
        assert_eq!(
            whole(&peers[0], id, &tokens[0]).await,
            (V3, applied.clone())
        );
        assert_eq!(whole(&peers[2], id, &tokens[2]).await, (V3, applied));
        assert_eq!(whole(&peers[1], id, &tokens[1]).await, (V2, stale));
        // With W = 3 the same situation is a quorum failure that still
        // says who holds the write.
        let d = pattern(100, 4);
        let mut h = write_cas(id, 0, &tokens[0], hops(1), V3, Version::new(1, 4), &d);
        h.write_quorum = 3;
        let (w, _) = peers[0].call(h, &d).await.unwrap();
        assert_eq!(
            (w.status, w.durable_mask),
            (Status::Quorum, 0b101),
            "{}",
            w.message
        );
    });
}

/// A payload that does not match its CRCs (a bit flipped in flight, or a
/// CRC missing) is refused whole with `payloadChecksum`: nothing applied,
/// not forwarded.
#[test]
fn a_payload_that_does_not_match_its_crcs_is_refused_whole() {
    let cl = Cluster::start(2);
    let (e0, e1, n1) = (
        endpoints(&cl, 0)[0].clone(),
        endpoints(&cl, 1)[0].clone(),
        cl.node_id(1),
    );
    on_glommio(move || async move {
        let p0 = common::connect(&e0).await;
        let p1 = common::connect(&e1).await;
        let (id, t0) = reserved(&p0, 3, ChunkId::default()).await;
        let (_, t1) = reserved(&p1, 3, id).await;
        let hop = vec![Hop {
            node_id: n1,
            address: e1.clone(),
            token: t1.clone(),
        }];
        let data = pattern(50_000, 7);
        let good = write_cas(id, 0, &t0, hop.clone(), Version::NONE, V1, &data);
        // One bit flipped after the CRCs were computed.
        let mut flipped = data.clone();
        flipped[40_000] ^= 0x08;
        let (w, _) = p0.call(good.clone(), &flipped).await.unwrap();
        assert_eq!(w.status, Status::PayloadChecksum, "{}", w.message);
        assert_eq!(w.durable_mask, 0);
        // A CRC missing.
        let mut short = good.clone();
        short.crcs.pop();
        let (w, _) = p0.call(short, &data).await.unwrap();
        assert_eq!(w.status, Status::PayloadChecksum, "{}", w.message);
        for p in [&p0, &p1] {
            let i = info(p, id).await;
            assert_eq!(
                (i.status, i.version, i.chunk_length),
                (Status::Ok, Version::NONE, 0)
            );
        }
        // The same write, intact, goes through on both.
        let (w, _) = p0.call(good, &data).await.unwrap();
        assert_eq!(
            (w.status, w.durable_mask),
            (Status::Ok, 0b11),
            "{}",
            w.message
        );
    });
}

/// A delete names the newest version it may delete: a replica newer than
/// that is kept. A copy names the version the source must hold and the
/// version the target must hold: either wrong, and nothing changes on the
/// target.
#[test]
fn deletes_and_copies_are_fenced_by_version() {
    let cl = Cluster::start(2);
    let (e0, e1, n1) = (
        endpoints(&cl, 0)[0].clone(),
        endpoints(&cl, 1)[0].clone(),
        cl.node_id(1),
    );
    on_glommio(move || async move {
        let p0 = common::connect(&e0).await;
        let p1 = common::connect(&e1).await;
        let (id, t0) = reserved(&p0, 3, ChunkId::default()).await;
        let (_, t1) = reserved(&p1, 3, id).await;
        let (a, b) = (pattern(9000, 1), pattern(3000, 2));
        for (p, t) in [(&p0, &t0), (&p1, &t1)] {
            let (w, _) = p
                .call(write_cas(id, 0, t, vec![], Version::NONE, V1, &a), &a)
                .await
                .unwrap();
            assert_eq!(w.status, Status::Ok, "{}", w.message);
        }
        let (w, _) = p0
            .call(write_cas(id, 0, &t0, vec![], V1, V2, &b), &b)
            .await
            .unwrap();
        assert_eq!(w.status, Status::Ok, "{}", w.message);
        // A delete of V1 finds V2: refused, the replica is kept.
        let mut del = Header::request(0, Op::Delete);
        del.chunk_id = id;
        del.token = t0.clone();
        del.version = V1;
        let (d, _) = p0.call(del.clone(), &[]).await.unwrap();
        assert_eq!(
            (d.status, d.version),
            (Status::StaleVersion, V2),
            "{}",
            d.message
        );
        assert_eq!(info(&p0, id).await.version, V2);
        // Copies: the source at V2 copies only as V2, onto a target that
        // is at the version named.
        let copy = |version, expected| {
            let mut h = Header::request(0, Op::CopyTo);
            h.chunk_id = id;
            h.token = t0.clone();
            h.version = version;
            h.expected = expected;
            h.chain = vec![Hop {
                node_id: n1,
                address: e1.clone(),
                token: t1.clone(),
            }];
            h
        };
        let (c, _) = p0.call(copy(V1, V1), &[]).await.unwrap();
        assert_eq!(
            c.status,
            Status::StaleVersion,
            "source not at V1: {}",
            c.message
        );
        let (c, _) = p0.call(copy(V2, Version::new(1, 9)), &[]).await.unwrap();
        assert_eq!(
            c.status,
            Status::StaleVersion,
            "target not at 1.9: {}",
            c.message
        );
        assert_eq!(
            whole(&p1, id, &t1).await,
            (V1, a.clone()),
            "the target is untouched"
        );
        let (c, _) = p0.call(copy(V2, V1), &[]).await.unwrap();
        assert_eq!(c.status, Status::Ok, "{}", c.message);
        let mut v2 = a.clone();
        v2[..3000].copy_from_slice(&b);
        assert_eq!(whole(&p1, id, &t1).await, (V2, v2));
        // Now a delete of V2 goes through.
        del.version = V2;
        let (d, _) = p0.call(del, &[]).await.unwrap();
        assert_eq!(d.status, Status::Ok, "{}", d.message);
        // Only the reservation is left there: an empty chunk.
        let i = info(&p0, id).await;
        assert_eq!(
            (i.status, i.version, i.chunk_length),
            (Status::Ok, Version::NONE, 0)
        );
        // A digest of identical replicas is identical.
        let mut dg = Header::request(0, Op::Digest);
        dg.chunk_id = id;
        let (x, _) = p1.call(dg, &[]).await.unwrap();
        assert_eq!((x.status, x.version, x.digest.len()), (Status::Ok, V2, 32));
    });
}

/// A write whose lock was valid when it arrived but lapsed while it waited
/// (here: held up between its authorization and its apply) is refused at
/// apply time, after another client got the lock: nothing applied.
#[test]
fn a_write_whose_lock_lapsed_before_it_applied_is_refused() {
    let opts = NodeOptions {
        // The second write through the node waits 1.5 s after its check.
        failpoints: Some("ops::write::after_authorize=1*off->1*return(1500)->off"),
        ..NodeOptions::default()
    };
    let cl = Cluster::start_custom(1, QUICK, &opts);
    let ep = endpoints(&cl, 0)[0].clone();
    on_glommio(move || async move {
        let p = common::connect(&ep).await;
        let (id, t) = reserved(&p, 1, ChunkId::default()).await;
        let a = pattern(8192, 1);
        let (w, _) = p
            .call(write_cas(id, 0, &t, vec![], Version::NONE, V1, &a), &a)
            .await
            .unwrap();
        assert_eq!(w.status, Status::Ok, "{}", w.message);
        let mut unlock = Header::request(0, Op::Unlock);
        unlock.chunk_id = id;
        unlock.token = t;
        assert_eq!(p.call(unlock, &[]).await.unwrap().0.status, Status::Ok);
        // A write lock with a 300 ms lease; its write is held up 1.5 s.
        let mut lock = Header::request(0, Op::Lock);
        lock.chunk_id = id;
        lock.client_id = 1;
        lock.lock_mode = LockMode::Write;
        lock.lease_ms = 300;
        let (l, _) = p.call(lock.clone(), &[]).await.unwrap();
        assert_eq!(l.status, Status::Ok, "{}", l.message);
        let b = pattern(8192, 2);
        let late = glommio::spawn_local({
            let p = p.clone();
            let h = write_cas(id, 0, &l.token, vec![], V1, V2, &b);
            async move { p.call(h, &b).await.unwrap().0 }
        });
        // Once the lease lapsed, another client takes a read lock.
        glommio::timer::sleep(Duration::from_millis(600)).await;
        let p2 = common::connect(&ep).await;
        lock.client_id = 2;
        lock.lock_mode = LockMode::Read;
        lock.lease_ms = 10_000;
        let (r, _) = p2.call(lock, &[]).await.unwrap();
        assert_eq!(
            r.status,
            Status::Ok,
            "the lapsed lock is free: {}",
            r.message
        );
        let w = late.await;
        assert_eq!(w.status, Status::BadToken, "{}", w.message);
        assert!(w.message.contains("lapsed"), "{}", w.message);
        assert_eq!(whole(&p2, id, &r.token).await, (V1, a), "nothing applied");
    });
}

/// When a connection closes, the locks it held and the lock requests it
/// had waiting go at once: the next waiter on another connection gets the
/// lock right away, not after the closed holder's lease (30 s), and the
/// closed waiter does not get it.
#[test]
fn locks_and_waiters_of_a_closed_connection_go_at_once() {
    let cl = Cluster::start(1);
    let ep = endpoints(&cl, 0)[0].clone();
    on_glommio(move || async move {
        let holder = common::connect(&ep).await;
        let (id, t) = reserved(&holder, 1, ChunkId::default()).await;
        let a = pattern(100, 1);
        let (w, _) = holder
            .call(write_cas(id, 0, &t, vec![], Version::NONE, V1, &a), &a)
            .await
            .unwrap();
        assert_eq!(w.status, Status::Ok, "{}", w.message);
        let lock = |client: u64| {
            let mut h = Header::request(0, Op::Lock);
            h.chunk_id = id;
            h.client_id = client;
            h.lock_mode = LockMode::Write;
            h.timeout_ms = 20_000;
            h
        };
        let gone_waiter = common::connect(&ep).await;
        let next = common::connect(&ep).await;
        let first = glommio::spawn_local({
            let p = gone_waiter.clone();
            let h = lock(2);
            async move { p.lock(h).await }
        });
        glommio::timer::sleep(Duration::from_millis(200)).await;
        let second = glommio::spawn_local({
            let p = next.clone();
            let h = lock(3);
            async move { p.lock(h).await.unwrap() }
        });
        glommio::timer::sleep(Duration::from_millis(200)).await;
        // The first waiter's connection closes, then the holder's.
        gone_waiter.close();
        assert!(first.await.is_err());
        glommio::timer::sleep(Duration::from_millis(100)).await;
        let closed = Instant::now();
        holder.close();
        let (wait, granted) = second.await;
        assert_eq!(wait.map(|h| h.status), Some(Status::Wait));
        assert_eq!(granted.status, Status::Ok, "{}", granted.message);
        assert!(
            closed.elapsed() < Duration::from_secs(5),
            "granted {:?} after the holder's connection closed",
            closed.elapsed()
        );
        // The holder's token is void.
        let p = common::connect(&ep).await;
        let (e, _) = p.call(read_req(id, 0, 10, &t), &[]).await.unwrap();
        assert_eq!(e.status, Status::BadToken, "{}", e.message);
    });
}

/// Forwards cut mid-frame (the next hop stops taking bytes: failpoint
/// `peer::stall_send` at random offsets of the frame, in its header or its
/// payload, and the forward timeout cuts the send): the next hop never
/// applies a partial payload, and the forward after each cut reaches it
/// whole (a cut connection is never reused, so the bytes of one frame can
/// never complete another).
#[test]
fn forwards_cut_mid_frame_never_apply_a_partial_payload() {
    const LEN: usize = 100_000;
    let seed: u64 = rand::random();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // Offsets into the frame: 4-byte length, a header of some hundred
    // bytes, then the payload; most in the payload.
    let offsets: Vec<u64> = (0..5)
        .map(|i| {
            if i == 0 {
                rng.random_range(1..200)
            } else {
                rng.random_range(400..LEN as u64)
            }
        })
        .collect();
    eprintln!("seed {seed}: sends cut at frame offsets {offsets:?}");
    let actions: Vec<String> = offsets
        .iter()
        .map(|o| format!("1*return({o})->1*off"))
        .collect();
    let failpoints = format!("peer::stall_send={}->off", actions.join("->"));
    let mut cl = Cluster::start(1);
    let opts = NodeOptions {
        failpoints: Some(&failpoints),
        flags: &["--forward-timeout-ms", "500"],
        ..NodeOptions::default()
    };
    cl.start_node_with(1, &opts);
    cl.wait_up(2);
    let (e0, e1, n0) = (
        endpoints(&cl, 0)[0].clone(),
        endpoints(&cl, 1)[0].clone(),
        cl.node_id(0),
    );
    on_glommio(move || async move {
        // Node 1 is the primary and forwards to node 0.
        let p1 = common::connect(&e1).await;
        let p0 = common::connect(&e0).await;
        for (round, offset) in offsets.iter().enumerate() {
            for cut in [true, false] {
                let (id, t1) = reserved(&p1, 4, ChunkId::default()).await;
                let (_, t0) = reserved(&p0, 4, id).await;
                let hop = vec![Hop {
                    node_id: n0,
                    address: e0.clone(),
                    token: t0.clone(),
                }];
                let data = pattern(LEN, (round * 2 + cut as usize) as u64);
                let h = write_cas(id, 0, &t1, hop, Version::NONE, V1, &data);
                let (w, _) = p1.call(h, &data).await.unwrap();
                let i = info(&p0, id).await;
                if cut {
                    // The primary wrote; the forward was cut at `offset`.
                    assert_eq!(w.durable_mask, 0b01, "cut at {offset}: {}", w.message);
                    assert_eq!(
                        (i.version, i.chunk_length),
                        (Version::NONE, 0),
                        "cut at {offset}: the next hop applied part of a frame"
                    );
                } else {
                    assert_eq!(
                        (w.status, w.durable_mask),
                        (Status::Ok, 0b11),
                        "the forward after the cut at {offset}: {}",
                        w.message
                    );
                    assert_eq!(whole(&p0, id, &t0).await, (V1, data));
                }
            }
        }
    });
}

/// A client pipelines large reads and never reads its socket: the node
/// holds at most its per-connection budget for it (responses count until
/// sent), its memory stays bounded, and another client is served all the
/// while.
#[test]
fn a_peer_that_never_reads_stalls_only_itself() {
    const CHUNK: usize = 4 << 20;
    const REQUESTS: u64 = 300;
    let cl = Cluster::start(1);
    let ep = endpoints(&cl, 0)[0].clone();
    let pid = cl.node(0).pid();
    let rss = move || -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u64>()
            .unwrap()
            * 1024
    };
    let ep2 = ep.clone();
    let id = on_glommio(move || async move {
        let p = common::connect(&ep2).await;
        let (id, t) = reserved(&p, 1, ChunkId::default()).await;
        let data = pattern(CHUNK, 5);
        let h = write_cas(id, 0, &t, vec![], Version::NONE, V1, &data);
        let (w, _) = p.call(h, &data).await.unwrap();
        assert_eq!(w.status, Status::Ok, "{}", w.message);
        // Its reservation's write lock goes with the connection.
        p.close();
        id
    });
    let before = rss();
    // The greedy reader: REQUESTS reads of the whole chunk, never reading
    // an answer.
    let mut greedy = std::net::TcpStream::connect(&ep).unwrap();
    let mut frames = Vec::new();
    for i in 0..REQUESTS {
        let mut h = Header::request(i + 1, Op::Read);
        h.chunk_id = id;
        h.length = CHUNK as u32;
        h.implicit_lock = LockMode::Read;
        h.client_id = 66;
        h.timeout_ms = 10_000;
        frames.extend_from_slice(&ringfs_schema::frame::encode_header(&h));
    }
    greedy.set_nonblocking(true).unwrap();
    let mut sent = 0;
    let until = Instant::now() + Duration::from_secs(3);
    while sent < frames.len() && Instant::now() < until {
        match greedy.write(&frames[sent..]) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("{e}"),
        }
    }
    std::thread::sleep(Duration::from_secs(2));
    // Another client reads the same chunk meanwhile.
    let served = on_glommio(move || async move {
        let p = common::connect(&ep).await;
        let started = Instant::now();
        let mut h = read_req(id, 0, CHUNK as u32, &Token::default());
        h.implicit_lock = LockMode::Read;
        h.client_id = 7;
        h.timeout_ms = 5000;
        let (r, data) = p.call(h, &[]).await.unwrap();
        assert_eq!(r.status, Status::Ok, "{}", r.message);
        assert!(bytes_at(&r, &data, 0, CHUNK) == pattern(CHUNK, 5));
        started.elapsed()
    });
    let during = rss();
    eprintln!(
        "node RSS {} MiB before, {} MiB with {REQUESTS} unread 4 MiB reads queued ({} MiB asked); \
         another read served in {served:?}",
        before >> 20,
        during >> 20,
        (REQUESTS * CHUNK as u64) >> 20
    );
    assert!(
        served < Duration::from_secs(5),
        "the other client waited {served:?}"
    );
    // The connection's budget is 128 MiB; allow the kernel's socket buffers
    // and allocator slack on top.
    assert!(
        during < before + (320 << 20),
        "node memory grew from {} to {} MiB",
        before >> 20,
        during >> 20
    );
    drop(greedy);
}
