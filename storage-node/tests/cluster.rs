//! Integration tests: real `ringfs-control` and `ringfs-node` processes on
//! loopback (the test kit), driven over the data-plane protocol.

mod common;

use common::{bytes_at, endpoints, read_req, reserve, shards, write_req};
use ringfs_schema::frame::{Header, Hop, LockMode, Op, Status, Token};
use ringfs_schema::ids::ChunkId;
use ringfs_schema::Version;
use ringfs_tests::files::pattern;
use ringfs_tests::{on_glommio, Cluster, NodeOptions, QUICK};
use std::time::Duration;

#[test]
fn node_joins_heartbeats_and_keeps_its_id_across_restarts() {
    let mut cl = Cluster::start_custom(1, QUICK, &shards(2));
    let id = cl.node_id(0);
    assert_ne!(id, 0);
    // Heartbeats keep it up with a fresh capacity report.
    std::thread::sleep(Duration::from_millis(800));
    let map = cl.map();
    let me = map
        .nodes
        .iter()
        .find(|n| n.node_id == id)
        .expect("node in the cluster map");
    assert!(me.up, "{me:?}");
    assert!(me.last_heartbeat_ago_ms < 1000, "{me:?}");
    assert_eq!(me.capacity.total, 1 << 30);
    assert_eq!(me.shards, endpoints(&cl, 0));
    // A restart rejoins under the same id.
    cl.kill9(0);
    cl.start_node_with(0, &shards(2));
    cl.wait_up(1);
    assert_eq!(cl.node_id(0), id);
}

#[test]
fn node_keeps_retrying_until_the_control_server_appears() {
    let mut cl = Cluster::start(0);
    cl.kill_control9();
    cl.start_node(0, &[]);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!cl.node(0).data.join("node-identity").exists());
    cl.restart_control(QUICK);
    cl.wait_up(1);
}

#[test]
fn reservations_are_refused_when_full_and_released_by_unlock_or_lease() {
    // 1 MiB of capacity on one shard.
    let opts = NodeOptions {
        flags: &["--capacity-bytes", "1048576"],
        ..NodeOptions::default()
    };
    let cl = Cluster::start_custom(1, QUICK, &opts);
    let ep = endpoints(&cl, 0)[0].clone();
    let node_id = cl.node_id(0);
    on_glommio(move || async move {
        let p = common::connect(&ep).await;
        let a = reserve(&p, 1, 600_000, ChunkId::default(), 0).await;
        assert_eq!(a.status, Status::Ok, "{}", a.message);
        assert_eq!(a.chunk_id.hi, node_id, "chunk id carries the node id");
        assert_eq!(a.lock_mode, LockMode::Write);
        let b = reserve(&p, 1, 600_000, ChunkId::default(), 0).await;
        assert_eq!(b.status, Status::NoSpace, "{}", b.message);
        // Unlocking abandons the reservation.
        let mut unlock = Header::request(0, Op::Unlock);
        unlock.chunk_id = a.chunk_id;
        unlock.token = a.token.clone();
        let (u, _) = p.call(unlock, &[]).await.unwrap();
        assert_eq!(u.status, Status::Ok, "{}", u.message);
        // A short lease expires by itself.
        let c = reserve(&p, 1, 600_000, ChunkId::default(), 200).await;
        assert_eq!(c.status, Status::Ok, "{}", c.message);
        assert_ne!(c.chunk_id, a.chunk_id);
        let d = reserve(&p, 1, 600_000, ChunkId::default(), 0).await;
        assert_eq!(d.status, Status::NoSpace);
        glommio::timer::sleep(Duration::from_millis(400)).await;
        let e = reserve(&p, 1, 600_000, ChunkId::default(), 0).await;
        assert_eq!(e.status, Status::Ok, "{}", e.message);
        // The expired reservation's token is stale now.
        let (w, _) = p
            .call(
                write_req(c.chunk_id, 0, &c.token, vec![], 1, b"late"),
                b"late",
            )
            .await
            .unwrap();
        assert_eq!(w.status, Status::BadToken, "{}", w.message);
    });
    // The reservation shows in the capacity report, as the disk space the
    // chunk will take: its header plus its data in 4 KiB units.
    let on_disk = ringfs_node::chunk_file::DATA_OFFSET + 600_000u64.div_ceil(4096) * 4096;
    cl.wait_map(Duration::from_secs(5), |map| {
        map.nodes.iter().any(|n| n.capacity.reserved == on_disk)
    });
}

#[test]
fn chain_write_through_three_nodes_reads_back_from_each_replica() {
    let mut cl = Cluster::start_custom(3, QUICK, &shards(2));
    let eps: Vec<Vec<String>> = (0..3).map(|i| endpoints(&cl, i)).collect();
    let ids: Vec<u64> = (0..3).map(|i| cl.node_id(i)).collect();
    let chunk = on_glommio(move || async move {
        let client = 77;
        let p0 = common::connect(&eps[0][0]).await;
        let r = reserve(&p0, client, 4 << 20, ChunkId::default(), 0).await;
        assert_eq!(r.status, Status::Ok, "{}", r.message);
        let id = r.chunk_id;
        assert_eq!(id.shard(2), 0, "minted by shard 0 for shard 0");
        // Replicas reserve the same id on the shard owning it.
        let mut hops = Vec::new();
        let mut peers = vec![p0];
        for i in 1..3 {
            let ep = eps[i][id.shard(2)].clone();
            let p = common::connect(&ep).await;
            let rr = reserve(&p, client, 4 << 20, id, 0).await;
            assert_eq!(rr.status, Status::Ok, "{}", rr.message);
            hops.push(Hop {
                node_id: ids[i],
                address: ep,
                token: rr.token,
            });
            peers.push(p);
        }
        let tokens: Vec<Token> = std::iter::once(r.token.clone())
            .chain(hops.iter().map(|h| h.token.clone()))
            .collect();
        // An aligned 1 MiB write, then an unaligned overwrite across blocks.
        let big = pattern(1 << 20, 1);
        let (w, _) = peers[0]
            .call(write_req(id, 0, &r.token, hops.clone(), 1, &big), &big)
            .await
            .unwrap();
        assert_eq!(w.status, Status::Ok, "{}", w.message);
        assert_eq!(w.durable_replicas, 3);
        assert_eq!(w.durable_mask, 0b111);
        assert_eq!(w.chunk_length, 1 << 20);
        let small = pattern(100_001, 9);
        let (w2, _) = peers[0]
            .call(
                write_req(id, 65_530, &r.token, hops.clone(), 2, &small),
                &small,
            )
            .await
            .unwrap();
        assert_eq!(w2.status, Status::Ok, "{}", w2.message);
        assert_eq!(w2.durable_replicas, 3);
        let mut expect = big.clone();
        expect[65_530..65_530 + small.len()].copy_from_slice(&small);
        for (i, p) in peers.iter().enumerate() {
            let (h, data) = p
                .call(read_req(id, 0, 2 << 20, &tokens[i]), &[])
                .await
                .unwrap();
            assert_eq!(h.status, Status::Ok, "replica {i}: {}", h.message);
            assert_eq!(h.version, w2.version, "replica {i} version");
            assert!(data == expect, "replica {i} returned other bytes");
            let (h, data) = p
                .call(read_req(id, 65_000, 5000, &tokens[i]), &[])
                .await
                .unwrap();
            assert_eq!(h.status, Status::Ok);
            assert_eq!(h.offset, 65_000 / 4096 * 4096, "whole blocks");
            assert_eq!(bytes_at(&h, &data, 65_000, 5000), expect[65_000..70_000]);
        }
        id
    });
    // Every node reports the chunk to the control server.
    cl.wait_map(Duration::from_secs(5), |map| {
        map.nodes.iter().filter(|n| n.capacity.chunks == 1).count() == 3
    });
    // After a restart the replica still serves the chunk (with an implicit lock).
    cl.kill9(2);
    cl.start_node_with(2, &shards(2));
    let ep = cl.node(2).endpoint_for(chunk);
    on_glommio(move || async move {
        let p = common::connect(&ep).await;
        let mut h = Header::request(0, Op::Read);
        h.chunk_id = chunk;
        h.length = 1 << 20;
        h.implicit_lock = LockMode::Read;
        h.client_id = 5;
        let (r, data) = p.call(h, &[]).await.unwrap();
        assert_eq!(r.status, Status::Ok, "{}", r.message);
        assert_eq!(data.len(), 1 << 20);
        assert_eq!(r.chunk_length, 1 << 20);
    });
}

#[test]
fn locks_wait_then_get_pushed_grants_and_bad_input_gets_typed_errors() {
    let cl = Cluster::start_custom(1, QUICK, &shards(2));
    let eps = endpoints(&cl, 0);
    on_glommio(move || async move {
        let p = common::connect(&eps[0]).await;
        let r = reserve(&p, 1, 1 << 20, ChunkId::default(), 0).await;
        assert_eq!(r.status, Status::Ok);
        let id = r.chunk_id;
        let (w, _) = p
            .call(
                write_req(id, 0, &r.token, vec![], 1, &pattern(10_000, 3)),
                &pattern(10_000, 3),
            )
            .await
            .unwrap();
        assert_eq!(w.status, Status::Ok, "{}", w.message);

        // A second client waits for the write lock; the grant is pushed when
        // the holder unlocks.
        let p2 = common::connect(&eps[0]).await;
        let mut lock = Header::request(0, Op::Lock);
        lock.chunk_id = id;
        lock.client_id = 2;
        lock.lock_mode = LockMode::Read;
        lock.timeout_ms = 5000;
        let waiter = glommio::spawn_local({
            let p2 = p2.clone();
            let lock = lock.clone();
            async move { p2.lock(lock).await.unwrap() }
        });
        glommio::timer::sleep(Duration::from_millis(200)).await;
        let mut unlock = Header::request(0, Op::Unlock);
        unlock.chunk_id = id;
        unlock.token = r.token.clone();
        let (u, _) = p.call(unlock.clone(), &[]).await.unwrap();
        assert_eq!(u.status, Status::Ok);
        let (wait, granted) = waiter.await;
        assert_eq!(wait.map(|h| h.status), Some(Status::Wait));
        assert_eq!(granted.op, Op::LockGranted);
        assert_eq!(granted.status, Status::Ok, "{}", granted.message);
        let read_token = granted.token.clone();
        // A read lock does not permit writing.
        let (e, _) = p2
            .call(write_req(id, 0, &read_token, vec![], 2, b"x"), b"x")
            .await
            .unwrap();
        assert_eq!(e.status, Status::BadToken, "{}", e.message);
        // A writer without waiting is refused while the read lock is held.
        let mut wl = lock.clone();
        wl.lock_mode = LockMode::Write;
        wl.client_id = 3;
        wl.timeout_ms = 0;
        let (e, _) = p.call(wl.clone(), &[]).await.unwrap();
        assert_eq!(e.status, Status::Busy);
        // A waiting writer times out.
        wl.timeout_ms = 100;
        let (wait, fin) = p.lock(wl).await.unwrap();
        assert_eq!(wait.map(|h| h.status), Some(Status::Wait));
        assert_eq!(fin.status, Status::Timeout);

        // Forged, altered and stale tokens.
        let mut forged = read_token.clone();
        forged.mac[0] ^= 1;
        let (e, _) = p.call(read_req(id, 0, 10, &forged), &[]).await.unwrap();
        assert_eq!(e.status, Status::BadToken);
        let (e, _) = p.call(read_req(id, 0, 10, &r.token), &[]).await.unwrap();
        assert_eq!(e.status, Status::BadToken, "released token is stale");
        let (ok, data) = p.call(read_req(id, 0, 10, &read_token), &[]).await.unwrap();
        assert_eq!(ok.status, Status::Ok);
        assert_eq!(bytes_at(&ok, &data, 0, 10), pattern(10, 3));
        // Unknown chunk, write without reservation, bad ranges, no lock at all.
        let unknown = ChunkId::new(999, 0);
        let owner = &eps[unknown.shard(2)];
        let q = common::connect(owner).await;
        let mut h = read_req(unknown, 0, 10, &Token::default());
        h.implicit_lock = LockMode::Read;
        let (e, _) = q.call(h, &[]).await.unwrap();
        assert_eq!(e.status, Status::NotFound, "{}", e.message);
        let mut h = write_req(unknown, 0, &Token::default(), vec![], 1, b"data");
        h.implicit_lock = LockMode::Write;
        let (e, _) = q.call(h, b"data").await.unwrap();
        assert_eq!(e.status, Status::NotFound, "{}", e.message);
        let (e, _) = p
            .call(read_req(id, 0, 10, &Token::default()), &[])
            .await
            .unwrap();
        assert_eq!(e.status, Status::BadToken);
        let mut h = read_req(id, 0, 10, &read_token);
        h.offset = u64::MAX - 3;
        let (e, _) = p2.call(h, &[]).await.unwrap();
        assert_eq!(e.status, Status::InvalidArgument, "{}", e.message);
        let e = reserve(&p, 1, 1 << 40, ChunkId::default(), 0).await;
        assert_eq!(e.status, Status::InvalidArgument);
        // Wrong shard.
        let other = &eps[1 - id.shard(2)];
        let q = common::connect(other).await;
        let (e, _) = q.call(read_req(id, 0, 10, &read_token), &[]).await.unwrap();
        assert_eq!(e.status, Status::WrongShard);
        // The connection is still usable after all these errors.
        let (ok, _) = p2
            .call(read_req(id, 0, 10, &read_token), &[])
            .await
            .unwrap();
        assert_eq!(ok.status, Status::Ok);
    });
    // A garbage frame gets a `malformed` error frame and closes only that connection.
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(cl.node(0).addr).unwrap();
    s.write_all(&[16, 0, 0, 0]).unwrap();
    s.write_all(&[0xff; 16]).unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut hdr = vec![0u8; u32::from_le_bytes(len) as usize];
    s.read_exact(&mut hdr).unwrap();
    let h = ringfs_schema::frame::decode_header(&hdr).unwrap();
    assert_eq!(h.status, Status::Malformed, "{}", h.message);
    let mut rest = Vec::new();
    assert_eq!(s.read_to_end(&mut rest).unwrap(), 0, "connection closed");
    let mut s = std::net::TcpStream::connect(cl.node(0).addr).unwrap();
    s.write_all(&[0xff, 0xff, 0xff, 0x7f]).unwrap();
    s.read_exact(&mut len).unwrap();
    // The node still serves new connections.
    let eps = endpoints(&cl, 0);
    on_glommio(move || async move {
        let p = common::connect(&eps[0]).await;
        let r = reserve(&p, 1, 4096, ChunkId::default(), 0).await;
        assert_eq!(r.status, Status::Ok);
    });
}

#[test]
fn copy_to_replicates_a_chunk_and_delete_removes_it() {
    let cl = Cluster::start_custom(2, QUICK, &shards(2));
    let (ea, eb, b_id) = (endpoints(&cl, 0), endpoints(&cl, 1), cl.node_id(1));
    on_glommio(move || async move {
        let pa = common::connect(&ea[1]).await;
        let r = reserve(&pa, 4, 1 << 20, ChunkId::default(), 0).await;
        assert_eq!(r.status, Status::Ok, "{}", r.message);
        let id = r.chunk_id;
        assert_eq!(id.shard(2), 1);
        let data = pattern(300_000, 5);
        let (w, _) = pa
            .call(write_req(id, 0, &r.token, vec![], 1, &data), &data)
            .await
            .unwrap();
        assert_eq!(w.status, Status::Ok, "{}", w.message);
        // The target reserves the id; the source copies into it.
        let pb = common::connect(&eb[id.shard(2)]).await;
        let rb = reserve(&pb, 4, 1 << 20, id, 0).await;
        assert_eq!(rb.status, Status::Ok, "{}", rb.message);
        let mut copy = Header::request(0, Op::CopyTo);
        copy.chunk_id = id;
        copy.token = r.token.clone();
        copy.version = w.version;
        copy.expected = Version::NONE;
        copy.chain = vec![Hop {
            node_id: b_id,
            address: eb[id.shard(2)].clone(),
            token: rb.token.clone(),
        }];
        let (c, _) = pa.call(copy, &[]).await.unwrap();
        assert_eq!(c.status, Status::Ok, "{}", c.message);
        assert_eq!(c.chunk_length, 300_000);
        let (h, got) = pb
            .call(read_req(id, 0, 1 << 20, &rb.token), &[])
            .await
            .unwrap();
        assert_eq!(h.status, Status::Ok, "{}", h.message);
        assert_eq!(h.version, w.version, "the copy keeps the version");
        assert!(got == data);
        // Delete on the source (naming the newest version it may delete);
        // the copy stays.
        let mut del = Header::request(0, Op::Delete);
        del.chunk_id = id;
        del.token = r.token.clone();
        del.version = w.version;
        let (d, _) = pa.call(del, &[]).await.unwrap();
        assert_eq!(d.status, Status::Ok, "{}", d.message);
        let mut info = Header::request(0, Op::ChunkInfo);
        info.chunk_id = id;
        let (i, _) = pa.call(info.clone(), &[]).await.unwrap();
        assert!(matches!(i.status, Status::Ok | Status::NotFound));
        let (e, _) = pa.call(read_req(id, 0, 10, &r.token), &[]).await.unwrap();
        assert_eq!(e.status, Status::NotFound, "{}", e.message);
        let (i, _) = pb.call(info, &[]).await.unwrap();
        assert_eq!((i.status, i.chunk_length), (Status::Ok, 300_000));
    });
}

#[test]
fn node_rejoins_and_reports_after_a_control_server_restart() {
    let mut cl = Cluster::start(1);
    let id = cl.node_id(0);
    let ep = endpoints(&cl, 0)[0].clone();
    on_glommio(move || async move {
        let p = common::connect(&ep).await;
        let r = reserve(&p, 1, 8192, ChunkId::default(), 0).await;
        assert_eq!(r.status, Status::Ok, "{}", r.message);
        // Renewing the lock with its token extends the lease.
        let mut renew = Header::request(0, Op::Lock);
        renew.chunk_id = r.chunk_id;
        renew.token = r.token.clone();
        renew.lock_mode = LockMode::Write;
        renew.lease_ms = 60_000;
        let (n, _) = p.call(renew, &[]).await.unwrap();
        assert_eq!(n.status, Status::Ok, "{}", n.message);
        assert!(n.lease_ms > 30_000);
        let (w, _) = p
            .call(
                write_req(r.chunk_id, 0, &r.token, vec![], 1, b"persist"),
                b"persist",
            )
            .await
            .unwrap();
        assert_eq!(w.status, Status::Ok, "{}", w.message);
    });
    cl.kill_control9();
    std::thread::sleep(Duration::from_millis(500));
    cl.restart_control(QUICK);
    cl.wait_map(Duration::from_secs(20), |map| {
        map.nodes
            .iter()
            .any(|n| n.node_id == id && n.up && n.capacity.chunks == 1)
    });
}
