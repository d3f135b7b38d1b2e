//! Capabilities on the data plane, played against the real binaries on
//! loopback: an attacker with a raw data-plane client (frames written from
//! docs/protocol.md) tries every chunk operation on a chunk of another
//! user's file with no capability, a forged one, an expired one, one for
//! another chunk or without the right, and guessed chunk ids, and is
//! refused each time with the typed status; a capability replayed for its
//! own chunk and right is served (by design). A writer cannot commit
//! another file's chunk id. The legitimate user still reads and writes.
//!
//! Expired and rotated capabilities are issued here with the cluster's
//! keys (derived from the test secret), standing in for the control
//! server: its own live five minutes.

use std::time::Duration;

use ringfs_client::control::{Capability, ChunkRecord, ClusterMap};
use ringfs_client::node_conn::NodeConn;
use ringfs_client::{Client, CreateOptions, Error};
use ringfs_ops::capability::{now_ms, CapabilityKeys, Lease, Rights};
use ringfs_schema::frame::{Header, Hop, LockMode, Op, Status, CAPABILITY_LEN};
use ringfs_schema::{ChunkId, Version};
use ringfs_tests::files::{get, layout, pattern, put};
use ringfs_tests::{local, scrape, Cluster, NodeOptions, SECRET};

const T: Duration = Duration::from_secs(10);
const NO_WAIT: Duration = Duration::ZERO;

type Cap = Option<[u8; CAPABILITY_LEN]>;

fn cid(id: u128) -> ChunkId {
    ChunkId::new((id >> 64) as u64, id as u64)
}

/// The endpoint of node `node`'s shard owning `id`.
fn endpoint(map: &ClusterMap, node: u64, id: ChunkId) -> String {
    let n = map.nodes.iter().find(|n| n.node_id == node).unwrap();
    n.shards[id.shard(n.shards.len())].clone()
}

async fn ask(conn: &NodeConn, h: Header, payload: &[u8]) -> Header {
    conn.call(h, payload, T).await.expect("answered").0
}

/// Every chunk operation on `id` carrying `cap`, and each answer. Writes
/// would change the chunk (a new version, a deletion, a replace from the
/// copy) if they were applied.
async fn every_op(
    conn: &NodeConn,
    id: ChunkId,
    cap: Cap,
    copy: (&str, Version),
) -> Vec<(&'static str, Header)> {
    let req = |op| {
        let mut h = Header::request(0, op);
        h.chunk_id = id;
        h.capability = cap;
        h.client_id = 4242;
        h
    };
    let mut out = Vec::new();
    let mut h = req(Op::Read);
    h.length = 4096;
    h.implicit_lock = LockMode::Read;
    out.push(("read", ask(conn, h, &[]).await));
    out.push(("chunkInfo", ask(conn, req(Op::ChunkInfo), &[]).await));
    out.push(("digest", ask(conn, req(Op::Digest), &[]).await));
    for (name, mode) in [
        ("lock read", LockMode::Read),
        ("lock write", LockMode::Write),
    ] {
        let mut h = req(Op::Lock);
        h.lock_mode = mode;
        let r = ask(conn, h, &[]).await;
        if r.status == Status::Ok {
            let mut u = req(Op::Unlock);
            u.token = r.token.clone();
            ask(conn, u, &[]).await;
        }
        out.push((name, r));
    }
    let mut h = req(Op::Write);
    h.implicit_lock = LockMode::Write;
    h.version = Version::new(u64::MAX / 2, 1);
    h.expected = Version::NONE;
    h.crcs = ringfs_schema::crc::piece_crcs(0, b"pwned");
    out.push(("write", ask(conn, h, b"pwned").await));
    let mut h = req(Op::Delete);
    h.implicit_lock = LockMode::Write;
    h.version = Version::new(u64::MAX, u64::MAX);
    out.push(("delete", ask(conn, h, &[]).await));
    let mut h = req(Op::Reserve);
    h.reserve_bytes = 4096;
    out.push(("reserve", ask(conn, h, &[]).await));
    let mut h = req(Op::Reserve);
    h.chunk_id = ChunkId::default();
    h.reserve_bytes = 4096;
    out.push(("reserve (mint)", ask(conn, h, &[]).await));
    let mut h = req(Op::CopyTo);
    h.implicit_lock = LockMode::Read;
    h.version = copy.1;
    h.chain = vec![Hop {
        node_id: 0,
        address: copy.0.to_string(),
        token: Default::default(),
    }];
    out.push(("copyTo", ask(conn, h, &[]).await));
    out
}

/// Asserts that every answer in `answers` has `status` and a message.
fn all_refused(answers: &[(&str, Header)], status: Status, what: &str) {
    for (op, r) in answers {
        assert_eq!(
            r.status, status,
            "{what}: {op} answered {:?}: {}",
            r.status, r.message
        );
        assert!(!r.message.is_empty(), "{what}: {op}: a refusal says why");
    }
}

/// The capability of chunk `id` issued by `keys` (rights, expiry).
fn issue(keys: &CapabilityKeys, rights: Rights, id: ChunkId, expires_ms: u64) -> Cap {
    Some(keys.issue(rights, id.to_bytes(), Lease::NONE, expires_ms))
}

#[test]
fn every_chunk_operation_needs_a_valid_capability_for_its_chunk_and_right() {
    let node_flags = ["--metrics", "127.0.0.1:0"];
    let cl = Cluster::start_custom(
        2,
        &["--metrics", "127.0.0.1:0"],
        &NodeOptions {
            flags: &node_flags,
            ..NodeOptions::default()
        },
    );
    let addr = cl.control.addr;
    let map = cl.map();
    let data = pattern(8192, 3);
    local(async {
        let admin = Client::connect(addr, &ringfs_tests::admin()).await.unwrap();
        let ctl = admin.control();
        let (alice_cred, bob_cred) = ringfs_tests::two_users(&ctl).await;
        let alice = Client::connect(addr, &alice_cred).await.unwrap();
        let bob = Client::connect(addr, &bob_cred).await.unwrap();
        put(
            &alice,
            "/home/alice/secret",
            &data,
            CreateOptions {
                mode: 0o600,
                ..layout(8192, 2, 2)
            },
        )
        .await
        .unwrap();
        put(
            &alice,
            "/home/alice/shared",
            &data,
            CreateOptions {
                mode: 0o644,
                ..layout(8192, 2, 2)
            },
        )
        .await
        .unwrap();
        put(&bob, "/home/bob/mine", &data, layout(8192, 2, 2))
            .await
            .unwrap();

        // Alice's records, as her client holds them.
        let ac = alice.control();
        let h = ac.open("/home/alice/secret", false, NO_WAIT).await.unwrap();
        let rec = h.get_chunks(0, 1).await.unwrap().remove(0);
        let x = cid(rec.chunk_id);
        let read_cap = rec.capability.map(|c| c.0);
        assert!(read_cap.is_some(), "a record comes with its capability");
        let primary = endpoint(&map, rec.replicas[0], x);
        let other_addr = endpoint(&map, rec.replicas[1], x);
        let other = (other_addr.as_str(), rec.version);
        // Bob's own chunk and its write capability.
        let bc = bob.control();
        let bw = bc.open("/home/bob/mine", true, NO_WAIT).await.unwrap();
        let bob_rec = bw.get_chunks(0, 1).await.unwrap().remove(0);
        let bob_cap = bob_rec.capability.map(|c| c.0);

        let attacker = NodeConn::connect(&primary, None).await.unwrap();
        let keys = ringfs_tests::capability_keys();

        // No capability at all.
        all_refused(
            &every_op(&attacker, x, None, other).await,
            Status::Denied,
            "none",
        );
        // Forged: one bit of a real one flipped; one from another cluster.
        let mut forged = read_cap.unwrap();
        forged[CAPABILITY_LEN - 1] ^= 1;
        all_refused(
            &every_op(&attacker, x, Some(forged), other).await,
            Status::Denied,
            "forged",
        );
        let alien = CapabilityKeys::new(b"another-cluster-secret-0123", 1);
        let alien_cap = issue(&alien, Rights::READ_WRITE, x, now_ms() + 60_000);
        all_refused(
            &every_op(&attacker, x, alien_cap, other).await,
            Status::Denied,
            "alien",
        );
        // Foreign: Bob's (valid) capability of his own chunk, replayed for
        // Alice's.
        all_refused(
            &every_op(&attacker, x, bob_cap, other).await,
            Status::Denied,
            "foreign",
        );
        // Guessed ids (the next ids the same shard mints) with no
        // capability, or with the capability of another chunk.
        for step in 1..4u64 {
            let guess = ChunkId::new(x.hi, x.lo + (step << 16));
            let conn = NodeConn::connect(&endpoint(&map, rec.replicas[0], guess), None)
                .await
                .unwrap();
            all_refused(
                &every_op(&conn, guess, None, other).await,
                Status::Denied,
                "guessed",
            );
            all_refused(
                &every_op(&conn, guess, read_cap, other).await,
                Status::Denied,
                "guessed+cap",
            );
        }
        // Expired (authentic), or under a key id the nodes retired.
        let expired = issue(&keys, Rights::READ_WRITE, x, now_ms() - 1);
        let mut answers = every_op(&attacker, x, expired, other).await;
        // (Minting needs a reserve capability, which this is not.)
        let (_, mint) = answers.remove(
            answers
                .iter()
                .position(|(op, _)| *op == "reserve (mint)")
                .unwrap(),
        );
        assert_eq!(mint.status, Status::Denied, "{}", mint.message);
        all_refused(&answers, Status::CapabilityExpired, "expired");
        let retired = CapabilityKeys::new(SECRET.as_bytes(), 7);
        let retired_cap = issue(&retired, Rights::READ_WRITE, x, now_ms() + 60_000);
        all_refused(
            &every_op(&attacker, x, retired_cap, other).await,
            Status::CapabilityExpired,
            "retired key",
        );
        // The right: a read capability does not write, lock for writing,
        // delete, reserve or mint; it reads (replayed as often as wanted
        // within its expiry, by design).
        let answers = every_op(&attacker, x, read_cap, other).await;
        for (op, r) in &answers {
            let writes = matches!(
                *op,
                "lock write" | "write" | "delete" | "reserve" | "reserve (mint)"
            );
            if writes {
                assert_eq!(
                    r.status,
                    Status::Denied,
                    "read cap: {op}: {:?} {}",
                    r.status,
                    r.message
                );
            } else if *op != "copyTo" {
                assert_eq!(r.status, Status::Ok, "read cap: {op}: {}", r.message);
            }
        }
        // A copy with a read capability reads here but writes nothing
        // there: the target checks the caller's capability itself.
        let copy = &answers.iter().find(|(op, _)| *op == "copyTo").unwrap().1;
        assert_eq!(
            copy.status,
            Status::Denied,
            "copy with a read capability: {}",
            copy.message
        );

        // A node sends chunk data only to nodes of the cluster map: Bob,
        // with a valid capability of his own chunk, cannot make a node copy
        // or forward it to an outside address, nor pass the node's own
        // address off as another node's in a chain.
        let outside = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        outside.set_nonblocking(true).unwrap();
        let outside_addr = outside.local_addr().unwrap().to_string();
        let y = cid(bob_rec.chunk_id);
        let bob_primary = endpoint(&map, bob_rec.replicas[0], y);
        let bconn = NodeConn::connect(&bob_primary, None).await.unwrap();
        let mut copy = Header::request(0, Op::CopyTo);
        copy.chunk_id = y;
        copy.capability = bob_cap;
        copy.client_id = 77;
        copy.implicit_lock = LockMode::Read;
        copy.version = bob_rec.version;
        copy.chain = vec![Hop {
            node_id: bob_rec.replicas[1],
            address: outside_addr.clone(),
            token: Default::default(),
        }];
        let r = ask(&bconn, copy, &[]).await;
        assert_eq!(r.status, Status::Denied, "copy outside: {}", r.message);
        assert!(
            r.message
                .contains("not a shard of a node of the cluster map"),
            "{}",
            r.message
        );
        let mut fwd = Header::request(0, Op::Write);
        fwd.chunk_id = y;
        fwd.capability = bob_cap;
        fwd.client_id = 77;
        fwd.implicit_lock = LockMode::Write;
        // Stale on purpose: nothing applies here, the forward is what counts.
        fwd.expected = Version::new(1, 1);
        fwd.version = Version::new(bw.write_epoch, 99);
        fwd.crcs = ringfs_schema::crc::piece_crcs(0, b"exfil");
        fwd.chain = vec![Hop {
            node_id: bob_rec.replicas[1],
            address: outside_addr.clone(),
            token: Default::default(),
        }];
        let r = ask(&bconn, fwd.clone(), b"exfil").await;
        assert_ne!(r.status, Status::Ok, "{}", r.message);
        assert_eq!(r.durable_mask, 0);
        assert!(
            matches!(outside.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "a node connected to an address outside the cluster"
        );
        fwd.chain[0].address = bob_primary.clone();
        fwd.chain[0].node_id = 999_999;
        let r = ask(&bconn, fwd, b"exfil").await;
        assert_eq!(r.status, Status::InvalidArgument, "{}", r.message);
        assert!(r.message.contains("lists this node"), "{}", r.message);

        // Alice's data is untouched by all of it, and she still writes.
        assert!(get(&alice, "/home/alice/secret").await.unwrap() == data);
        put(
            &alice,
            "/home/alice/secret",
            b"still mine",
            layout(8192, 2, 2),
        )
        .await
        .unwrap();
        assert_eq!(
            get(&alice, "/home/alice/secret").await.unwrap(),
            b"still mine"
        );

        // commitChunks: Bob cannot commit Alice's chunk id into his file
        // (which would send it to garbage collection with his file) with
        // no capability, with a read capability of her shared file, or
        // with a write capability of another lease.
        let shared = bc.open("/home/alice/shared", false, NO_WAIT).await.unwrap();
        let shared_rec = shared.get_chunks(0, 1).await.unwrap().remove(0);
        bob.control()
            .create("/home/bob/other", layout(8192, 2, 2))
            .await
            .unwrap();
        let bo = bc.open("/home/bob/other", true, NO_WAIT).await.unwrap();
        // With this lease's epoch, as if written under it (the version
        // check alone would let that pass).
        let steal = |capability: Option<Capability>| ChunkRecord {
            index: 1,
            capability,
            version: Version::new(bo.write_epoch, 1),
            ..shared_rec.clone()
        };
        for (what, cap) in [
            ("no capability", None),
            ("a read capability of the chunk", shared_rec.capability),
            (
                "a write capability of another lease",
                Some(ringfs_tests::lease_capability(&bw, shared_rec.chunk_id)),
            ),
        ] {
            let r = bo.commit_chunks(&[steal(cap)], 2 * 8192).await;
            assert!(
                matches!(r, Err(Error::PermissionDenied(_))),
                "commit with {what}: {r:?}"
            );
        }
        // Nor another of his own files' chunks with that file's capability.
        let r = bo
            .commit_chunks(
                &[ChunkRecord {
                    index: 1,
                    version: Version::new(bo.write_epoch, 1),
                    ..bob_rec.clone()
                }],
                2 * 8192,
            )
            .await;
        assert!(matches!(r, Err(Error::PermissionDenied(_))), "{r:?}");
        assert!(get(&alice, "/home/alice/shared").await.unwrap() == data);
    });
    // The refusals were counted (nothing secret in the counter).
    let node = cl.node(0).metrics.expect("node metrics");
    let m = scrape::scrape(node);
    let failures = scrape::sum(&m, "ringfs_node_auth_failures_total");
    assert!(failures > 0.0, "auth failures counted: {m:?}");
    let control = cl.control.metrics.expect("control metrics");
    let m = scrape::scrape(control);
    let failures = m.get("ringfs_control_auth_failures_total").copied();
    assert!(
        failures >= Some(4.0),
        "the four refused commits counted: {failures:?}"
    );
}
