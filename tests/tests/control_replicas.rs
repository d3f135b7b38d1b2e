//! A replicated control plane (3 control replicas on Raft) under faults:
//! the leader killed during a stream of creates, renames and file writes;
//! the leader partitioned from the others; every replica restarted at once;
//! a replica replaced by an empty one; a follower asked for a mutation;
//! write epochs across a failover; a setAttr sent again after a failover;
//! new chunks placed on a new leader before the nodes rejoined it.
//! Real processes on loopback (and a network namespace for the partition).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ringfs_client::{Client, ClientOptions, ControlClient, Error, OpenOptions};
use ringfs_tests::files::{get, layout, pattern};
use ringfs_tests::{local, ControlGroup, Netns, ReplicatedCluster, QUICK};

/// The mkdir whose committed entry the first leader never answers
/// (failpoint `raft::before_answer`): its client must send it again to the
/// next leader, which must answer from its record, not apply it twice.
const HELD: &str = "/s/d6";

/// What the stream had acknowledged.
#[derive(Default)]
struct Acked {
    /// Directories made.
    dirs: Vec<String>,
    /// Files (final path, seed of their content).
    files: Vec<(String, u64)>,
    /// Errors (there must be none).
    errors: Vec<String>,
}

/// Step `i` of the stream: a file written under an exclusive create, a
/// directory, and every other step the previous file renamed.
async fn step(c: &Client, i: u64, acked: &Mutex<Acked>) -> Result<(), (String, Error)> {
    let f = format!("/s/f{i}");
    let data = pattern(64 * 1024 + i as usize * 100, i);
    let open = OpenOptions {
        exclusive: true,
        layout: layout(64 * 1024, 3, 2),
        ..OpenOptions::create(layout(64 * 1024, 3, 2))
    };
    let fd = c
        .open(&f, &open)
        .await
        .map_err(|e| (format!("create {f}"), e))?;
    c.write(fd, &data)
        .await
        .map_err(|e| (format!("write {f}"), e))?;
    c.close(fd).await.map_err(|e| (format!("close {f}"), e))?;
    acked.lock().unwrap().files.push((f.clone(), i));
    let d = format!("/s/d{i}");
    c.mkdir(&d, 0)
        .await
        .map_err(|e| (format!("mkdir {d}"), e))?;
    acked.lock().unwrap().dirs.push(d);
    if i % 2 == 1 {
        let g = format!("/s/g{i}");
        c.rename(&f, &g)
            .await
            .map_err(|e| (format!("rename {f}"), e))?;
        let mut a = acked.lock().unwrap();
        a.files.retain(|(p, _)| *p != f);
        a.files.push((g, i));
    }
    Ok(())
}

/// Checks that the namespace holds exactly what was acknowledged, and
/// every file reads back byte for byte.
fn check_state(group: &ControlGroup, acked: &Acked) {
    group.with_client(async |c| {
        let names: BTreeSet<String> = c
            .list("/s")
            .await
            .expect("listing /s")
            .into_iter()
            .map(|(n, _)| format!("/s/{n}"))
            .collect();
        let expected: BTreeSet<String> = acked
            .dirs
            .iter()
            .cloned()
            .chain(acked.files.iter().map(|(p, _)| p.clone()))
            .collect();
        assert_eq!(
            names, expected,
            "the namespace is not what was acknowledged"
        );
        for (p, seed) in &acked.files {
            let data = get(c, p)
                .await
                .unwrap_or_else(|e| panic!("reading {p}: {e}"));
            assert!(
                data == pattern(64 * 1024 + *seed as usize * 100, *seed),
                "{p} does not read back as written"
            );
        }
    });
}

/// kill -9 the leader while a client streams creates, writes, mkdirs and
/// renames, at the worst moment: after the leader committed a mkdir and
/// before it answered. A new leader serves within seconds; every
/// acknowledged operation is there, none was applied twice (the mkdir sent
/// again is answered from the request-id record; applied again it would
/// fail with `exists`), and every file written before and after reads back
/// byte for byte. Then every replica is killed and restarted at once: the
/// state is intact.
#[test]
fn leader_killed_during_a_stream_loses_nothing_and_applies_nothing_twice() {
    let failpoint = format!("raft::before_answer=return({HELD})");
    let mut cl = ReplicatedCluster::start_armed(3, 3, QUICK, Some(&failpoint));
    assert_eq!(
        cl.group.leader(),
        0,
        "the bootstrapped replica leads at first"
    );
    cl.group
        .with_client(async |c| c.mkdir("/s", 0).await.expect("mkdir /s"));

    let acked = Arc::new(Mutex::new(Acked::default()));
    let done = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let addrs = cl.group.addrs.clone();
    let stream = {
        let (acked, done, stop) = (acked.clone(), done.clone(), stop.clone());
        std::thread::spawn(move || {
            local(async move {
                let c = Client::connect_replicas(
                    &addrs,
                    &ringfs_tests::admin(),
                    ClientOptions::default(),
                )
                .await
                .expect("connecting");
                for i in 0.. {
                    if stop.load(Ordering::Relaxed) && i >= 14 {
                        break;
                    }
                    if let Err((op, e)) = step(&c, i, &acked).await {
                        acked.lock().unwrap().errors.push(format!("{op}: {e}"));
                        break;
                    }
                    done.store(i as usize + 1, Ordering::Relaxed);
                }
            })
        })
    };

    // The stream stops at the held mkdir (step 6).
    let start = Instant::now();
    while !acked.lock().unwrap().dirs.iter().any(|d| d == "/s/d5")
        || done.load(Ordering::Relaxed) < 6
    {
        assert!(
            acked.lock().unwrap().errors.is_empty(),
            "{:?}",
            acked.lock().unwrap().errors
        );
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the stream did not get to step 6"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        done.load(Ordering::Relaxed),
        6,
        "the leader did not hold the answer of {HELD}"
    );
    let killed = Instant::now();
    cl.group.kill9(0);
    while done.load(Ordering::Relaxed) < 7 {
        assert!(
            acked.lock().unwrap().errors.is_empty(),
            "{:?}",
            acked.lock().unwrap().errors
        );
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "no progress after the leader died"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!(
        "failover: the stream went on {:?} after the leader was killed",
        killed.elapsed()
    );
    stop.store(true, Ordering::Relaxed);
    stream.join().expect("the stream thread");
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    assert!(
        acked.errors.is_empty(),
        "the stream failed: {:?}",
        acked.errors
    );
    assert!(acked.dirs.iter().any(|d| d == HELD));
    check_state(&cl.group, &acked);

    // Every replica down at once, then up again.
    cl.group.kill9(1);
    cl.group.kill9(2);
    for i in 0..3 {
        cl.group.restart(i);
    }
    cl.group.wait_voters(3);
    cl.wait_up(3);
    check_state(&cl.group, &acked);
}

/// The leader is cut off from the other replicas (its network namespace's
/// link goes down): a client on its side gets no mutation acknowledged,
/// the other side elects a leader and goes on; after healing, every
/// replica holds one history (the majority's), without the mutation the
/// cut-off leader was asked for.
#[test]
fn a_partitioned_leader_acknowledges_nothing_and_one_history_remains() {
    let ns = Netns::create().expect("network namespaces (ip netns) are needed for this test");
    let mut group = ControlGroup::empty(&[]);
    let listen = format!("{}:0", ns.ns_ip);
    group.add(&listen, &["--bootstrap"], Some(&ns.name));
    let first = group.addrs[0].to_string();
    for _ in 0..2 {
        let listen = format!("{}:0", ns.host_ip);
        group.add(&listen, &["--peers", &first], None);
    }
    group.wait_voters(3);
    assert_eq!(group.leader(), 0);
    group.with_client(async |c| c.mkdir("/before", 0).await.expect("mkdir /before"));

    ns.set(false);
    // A client inside the namespace reaches only the old leader.
    let mut minority = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(ringfs_tests::binary("ringfs-client", "ringfs"))
        .args(["--control", &first, "mkdir", "/minority", "--credential"])
        .arg(ringfs_tests::admin_credential(group.dir.path()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("starting the minority client");
    // The majority elects a leader and acknowledges.
    let majority = group.addrs[1..].to_vec();
    let t = Instant::now();
    local(async {
        let c =
            Client::connect_replicas(&majority, &ringfs_tests::admin(), ClientOptions::default())
                .await
                .expect("the majority serves");
        c.mkdir("/majority", 0)
            .await
            .expect("mkdir on the majority side");
    });
    eprintln!(
        "partition: the majority acknowledged after {:?}",
        t.elapsed()
    );
    std::thread::sleep(Duration::from_secs(2));
    let ended = minority.try_wait().expect("the minority client");
    let _ = minority.kill();
    let _ = minority.wait();
    assert!(
        ended.is_none_or(|s| !s.success()),
        "the cut-off leader acknowledged a mutation"
    );
    ns.set(true);
    group.wait_voters(3);

    // One history on every replica (stale reads: each replica's own state).
    let expected = ["before", "majority"];
    for i in 0..3 {
        let start = Instant::now();
        loop {
            let names = group.names_at(i);
            if names == expected {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "replica {i} holds {names:?}, not {expected:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A replica is lost for good and replaced by an empty one after the log
/// was compacted: the group removes the dead one, the new one joins and
/// catches up from a snapshot (its first log index is past the start), and
/// holds the same metadata as the leader.
#[test]
fn an_empty_replacement_catches_up_from_a_snapshot() {
    let mut group =
        ControlGroup::start(3, &["--raft-snapshot-every", "20", "--raft-logs-kept", "0"]);
    group.with_client(async |c| {
        for i in 0..60 {
            c.mkdir(&format!("/d{i:02}"), 0).await.expect("mkdir");
        }
    });
    let dead = 2;
    let dead_id = group.status(dead).expect("status").replica_id;
    group.kill9(dead);
    let leader_addr = group.addrs[group.leader()];
    local(async move {
        let c = ControlClient::connect(leader_addr, &ringfs_tests::admin())
            .await
            .expect("connecting");
        c.remove_replica(dead_id)
            .await
            .expect("removing the dead replica");
    });
    group.wait_voters(2);
    let new = group.add_empty();
    group.wait_voters(3);
    let s = group.status(new).expect("the new replica's status");
    assert!(
        s.snapshot_index >= 20,
        "the new replica has no snapshot: {s:?}"
    );
    let expected: Vec<String> = (0..60).map(|i| format!("d{i:02}")).collect();
    assert_eq!(
        group.names_at(new),
        expected,
        "the new replica's metadata differs"
    );
}

/// A follower never acknowledges a mutation: it answers `not_leader`,
/// naming the leader, and no replica's state ever holds the refused
/// mutation, while the leader's next one reaches every replica.
#[test]
fn a_follower_refuses_mutations_and_names_the_leader() {
    let group = ControlGroup::start(3, &[]);
    group.wait_voters(3);
    let leader = group.leader();
    let follower = (leader + 1) % 3;
    let (at_follower, at_leader) = (group.addrs[follower], group.addrs[leader]);
    let refused = local(async move {
        let c = ControlClient::connect(at_follower, &ringfs_tests::admin())
            .await
            .expect("connecting to a follower");
        c.mkdir("/via-follower", 0).await
    });
    match refused {
        Err(Error::NotLeader(m)) => assert!(
            m.contains(&at_leader.to_string()),
            "not_leader does not name the leader {at_leader}: {m}"
        ),
        other => panic!("a follower answered a mutation: {other:?}"),
    }
    group.with_client(async |c| c.mkdir("/after", 0).await.expect("mkdir on the leader"));
    for i in 0..3 {
        let start = Instant::now();
        loop {
            let names = group.names_at(i);
            if names.iter().any(|n| n == "after") {
                assert_eq!(names, ["after"], "replica {i}");
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "replica {i} holds {names:?}, never /after"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Write epochs handed out by the leader at `addr` for write opens of
/// `files` new files.
fn write_epochs(addr: std::net::SocketAddr, files: std::ops::Range<u32>) -> Vec<u64> {
    local(async move {
        let c = ControlClient::connect(addr, &ringfs_tests::admin())
            .await
            .expect("connecting");
        let mut epochs = Vec::new();
        for i in files {
            let path = format!("/e{i}");
            c.create(&path, Default::default()).await.expect("create");
            let h = c
                .open(&path, true, Duration::from_secs(5))
                .await
                .expect("write open");
            epochs.push(h.write_epoch);
            h.close().await.expect("close");
        }
        epochs
    })
}

/// Write epochs only grow across a failover: the new leader hands out
/// epochs above every one the old leader did (the mark they come from is
/// raised through the replicated log).
#[test]
fn write_epochs_grow_across_a_failover() {
    let mut group = ControlGroup::start(3, &[]);
    group.wait_voters(3);
    let old = group.leader();
    let before = write_epochs(group.addrs[old], 0..3);
    assert!(before.windows(2).all(|w| w[0] < w[1]), "{before:?}");
    group.kill9(old);
    let new = group.leader();
    let after = write_epochs(group.addrs[new], 3..5);
    assert!(
        after[0] > *before.last().unwrap() && after[0] < after[1],
        "the old leader handed out {before:?}, the new one {after:?}"
    );
}

/// A setAttr whose answer was lost, sent again with its request id to the
/// leader elected after a failover, is answered with the first outcome and
/// applied once (the version moved by one, not two); the same change
/// without an id is a new request and moves it again.
#[test]
fn a_set_attr_sent_again_after_a_failover_is_applied_once() {
    let mut group = ControlGroup::start(3, &[]);
    let old = group.leader();
    let id = Some(0x5e7a_77e5_u128);
    let set_at = |addr: std::net::SocketAddr, id: Option<u128>| {
        local(async move {
            let c = ControlClient::connect(addr, &ringfs_tests::admin())
                .await
                .expect("connecting");
            c.set_attr_as(id, "/f", Some(0o600), Some(7_000))
                .await
                .expect("set_attr")
        })
    };
    let at_old = group.addrs[old];
    let created = local(async move {
        let c = ControlClient::connect(at_old, &ringfs_tests::admin())
            .await
            .expect("connecting");
        c.create("/f", Default::default()).await.expect("create")
    });
    let first = set_at(at_old, id);
    assert_eq!(first.version, created.version + 1, "{created:?} {first:?}");
    assert_eq!((first.mode & 0o7777, first.mtime_ns), (0o600, 7_000));
    group.kill9(old);
    let new = group.leader();
    let again = set_at(group.addrs[new], id);
    assert_eq!(again, first, "the setAttr sent again was applied again");
    let fresh = set_at(group.addrs[new], None);
    assert_eq!(fresh.version, first.version + 1, "{fresh:?}");
}

/// A new leader presumes every registered node up, as if each had just
/// heartbeated it: right after the leader and a node are killed together,
/// before any node could rejoin the new leader, its map shows all three
/// nodes up (the killed one never heard from) and a client, which waits
/// for nothing, places and writes new chunks (R = 3, W = 2: the dead node
/// is skipped). The dead node is marked down one TTL after the election.
#[test]
fn a_new_leader_serves_placements_before_the_nodes_rejoin_it() {
    // Nodes notice the dead leader only at their next heartbeat (up to 2 s
    // later): the client asks well before most of them rejoined.
    const TTL: Duration = Duration::from_secs(4);
    let flags = ["--heartbeat-ms", "2000", "--node-ttl-ms", "4000"];
    let mut cl = ReplicatedCluster::start(3, 3, &flags);
    assert_eq!(cl.group.leader(), 0, "the bootstrapped replica leads");
    let shard0 = cl.nodes[2].as_ref().unwrap().addr.to_string();
    let dead = cl
        .map()
        .nodes
        .into_iter()
        .find(|n| n.shards.first() == Some(&shard0))
        .expect("node n2 in the map")
        .node_id;
    let addrs = cl.group.addrs.clone();
    let data = pattern(3 << 20, 31);
    local(async {
        let c = Client::connect_replicas(&addrs, &ringfs_tests::admin(), ClientOptions::default())
            .await
            .expect("connecting");
        c.mkdir("/d", 0).await.expect("mkdir /d");
        cl.group.kill9(0);
        cl.nodes[2].take().unwrap().kill9();
        let map = c.cluster_map().await.expect("the new leader's map");
        // The new leader took over before it answered.
        let served = Instant::now();
        let n2 = map.nodes.iter().find(|n| n.node_id == dead).unwrap();
        assert!(
            map.nodes.iter().all(|n| n.up) && n2.last_heartbeat_ago_ms == u64::MAX,
            "right after the election every node is presumed up: {map:?}"
        );
        ringfs_tests::files::put(&c, "/d/f", &data, layout(1 << 20, 3, 2))
            .await
            .expect("placing new chunks right after a failover");
        assert!(get(&c, "/d/f").await.unwrap() == data, "/d/f differs");
        // The dead node: down one TTL after the takeover, at the next
        // sweep (every TTL/4); 3 s more for a loaded machine.
        loop {
            let map = c.cluster_map().await.expect("cluster map");
            if map.nodes.iter().any(|n| n.node_id == dead && !n.up) {
                break;
            }
            assert!(
                served.elapsed() < TTL + TTL / 4 + Duration::from_secs(3),
                "the node killed with the leader is still up: {map:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!(
            "node {dead} down {:?} after the first map",
            served.elapsed()
        );
    });
}
