//! Operating a replicated control plane (3 control replicas on Raft) with
//! the real tools: a replica removed and added back online with `ringfs
//! admin`, a backup taken with `ringfs admin snapshot` and restored into
//! wiped replicas with `ringfs-control --restore`, `ringfs status`'s replica
//! table and the `ringfs_control_raft_*` metrics checked against what the
//! group did. Real processes on loopback.

use std::collections::HashMap;
use std::time::Duration;

use ringfs_client::{ControlClient, ReplicationStatus};
use ringfs_tests::files::{get, layout, pattern, put};
use ringfs_tests::scrape::{scrape, value};
use ringfs_tests::{binary, local, run_ok, ControlGroup, ReplicatedCluster, QUICK};

/// Snapshots every 20 entries and no log kept behind them, so that a
/// replica away for more than 20 entries can only catch up from a snapshot.
const COMPACT: &[&str] = &["--raft-snapshot-every", "20", "--raft-logs-kept", "0"];

/// Makes `/<prefix>00` .. `/<prefix><n-1>`, one after the other (one log
/// entry each).
fn mkdirs(g: &ControlGroup, prefix: &str, n: usize) {
    g.with_client(async |c| {
        for i in 0..n {
            let d = format!("/{prefix}{i:02}");
            c.mkdir(&d, 0)
                .await
                .unwrap_or_else(|e| panic!("mkdir {d}: {e}"));
        }
    });
}

fn status(g: &ControlGroup, i: usize) -> ReplicationStatus {
    g.status(i)
        .unwrap_or_else(|| panic!("replica {i} does not answer"))
}

fn voters(s: &ReplicationStatus) -> usize {
    s.replicas.iter().filter(|r| r.voter).count()
}

/// A follower removed online with `ringfs admin remove-replica` no longer
/// counts for the majority: while it still runs, the leader and it alone
/// acknowledge nothing. Added back with `ringfs admin add-replica` after
/// the log was compacted past its last entry, it catches up from a
/// snapshot, holds what the leader holds, and counts again: with the old
/// leader dead, it and the third replica elect a leader and acknowledge.
#[test]
fn a_replica_removed_online_stops_counting_and_added_back_catches_up_from_a_snapshot() {
    let mut g = ControlGroup::start(3, COMPACT);
    mkdirs(&g, "a", 30);
    let leader = g.leader();
    let (f, other) = ((leader + 1) % 3, (leader + 2) % 3);
    let removed = status(&g, f);
    run_ok(&mut g.admin(&["remove-replica", &removed.replica_id.to_string()]));
    let s = status(&g, leader);
    assert_eq!(voters(&s), 2, "{s:?}");
    assert!(
        s.replicas
            .iter()
            .all(|r| r.replica_id != removed.replica_id),
        "the removed replica is still a member: {s:?}"
    );

    // The removed replica runs; the other voter is down: no majority.
    g.kill9(other);
    let at_leader = g.addrs[leader];
    let answered = local(async move {
        tokio::time::timeout(Duration::from_secs(3), async {
            ControlClient::connect(at_leader, &ringfs_tests::admin())
                .await?
                .mkdir("/unacked", 0)
                .await
        })
        .await
    });
    assert!(
        !matches!(answered, Ok(Ok(_))),
        "a mutation was acknowledged by the leader and the removed replica"
    );
    let f_last = status(&g, f).last_log_index;
    g.kill9(f);
    g.restart(other);
    g.wait_voters(2);
    mkdirs(&g, "b", 30);
    let leader = g.leader();
    let compacted = status(&g, leader).snapshot_index;
    assert!(
        compacted > f_last,
        "the leader's log still holds what the removed replica lacks \
         (snapshot at {compacted}, the replica at {f_last})"
    );

    g.restart(f);
    let f_addr = g.addrs[f].to_string();
    run_ok(&mut g.admin(&["add-replica", &removed.replica_id.to_string(), &f_addr]));
    g.wait_voters(3);
    let back = status(&g, f);
    assert!(
        back.snapshot_index >= compacted,
        "the replica added back has no snapshot from the leader: {back:?}"
    );
    let expected: Vec<String> = g
        .names_at(leader)
        .into_iter()
        .filter(|n| n != "unacked")
        .collect();
    assert_eq!(expected.len(), 60, "{expected:?}");
    let held: Vec<String> = g
        .names_at(f)
        .into_iter()
        .filter(|n| n != "unacked")
        .collect();
    assert_eq!(held, expected, "the replica added back differs");

    // It counts again: the old leader dies, it and `other` go on.
    g.kill9(leader);
    mkdirs(&g, "c", 1);
    g.wait_voters(3);
    assert!(g.names_at(f).iter().any(|n| n == "c00"));
}

/// A backup taken with `ringfs admin snapshot` while 3 replicas and 3
/// storage nodes run, then every replica's disk lost: `ringfs-control
/// --restore` into an empty directory, that replica bootstrapped on its old
/// address and two empty ones joined, the nodes come back to it and every
/// file acknowledged before the snapshot reads back byte for byte (what came
/// after the snapshot is gone, as documented); every replica holds the
/// same namespace.
#[test]
fn a_snapshot_restored_into_wiped_replicas_holds_everything_acknowledged_before_it() {
    let mut cl = ReplicatedCluster::start(3, 3, QUICK);
    let files: Vec<(String, u64)> = (0..4).map(|i| (format!("/d/f{i}"), i)).collect();
    let data = |seed: u64| pattern(100_000 + seed as usize * 1000, seed);
    cl.group.with_client(async |c| {
        c.mkdir("/d", 0).await.expect("mkdir /d");
        for (p, seed) in &files {
            put(c, p, &data(*seed), layout(64 * 1024, 3, 2))
                .await
                .unwrap_or_else(|e| panic!("writing {p}: {e}"));
        }
    });
    let out = run_ok(&mut cl.group.admin(&["snapshot", "--json"]));
    let snap: serde_json::Value = serde_json::from_str(&out).expect("snapshot --json");
    let path = snap["path"].as_str().expect("the snapshot's path");
    let backup = cl.dir().join("backup");
    std::fs::copy(path, &backup).expect("copying the snapshot off the replica");
    cl.group
        .with_client(async |c| c.mkdir("/after", 0).await.expect("mkdir /after"));

    for i in 0..3 {
        cl.group.kill9(i);
        cl.group.wipe(i);
    }
    // As docs/operations.md says: the snapshot and the data directory, nothing else.
    let restored = run_ok(
        std::process::Command::new(binary("ringfs-control", "ringfs-control"))
            .arg("--restore")
            .arg(&backup)
            .arg("--data")
            .arg(cl.group.data(0)),
    );
    assert!(restored.contains("restored"), "{restored}");
    cl.group.restart_with(0, &["--bootstrap"]);
    let first = cl.group.addrs[0].to_string();
    for i in 1..3 {
        cl.group.restart_with(i, &["--peers", &first]);
    }
    cl.group.wait_voters(3);
    cl.wait_up(3);

    for i in 0..3 {
        assert_eq!(cl.group.names_at(i), ["d"], "replica {i}'s /");
    }
    cl.group.with_client(async |c| {
        let names: Vec<String> = c
            .list("/d")
            .await
            .expect("listing /d")
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, ["f0", "f1", "f2", "f3"]);
        for (p, seed) in &files {
            let got = get(c, p)
                .await
                .unwrap_or_else(|e| panic!("reading {p}: {e}"));
            assert!(got == data(*seed), "{p} does not read back as written");
        }
    });
}

/// `ringfs --json status`'s control table.
fn status_table(g: &ControlGroup) -> serde_json::Value {
    let out = run_ok(&mut g.ringfs(&["--json", "status"]));
    let v: serde_json::Value = serde_json::from_str(&out).expect("status --json");
    v["control"].clone()
}

/// The first status table for which `settled` holds, read again until it
/// does (log positions reach the followers, and the leader hears of it, a
/// moment after a write or an election); after 10 s the last one read,
/// for the caller's assertions to show.
fn settled_table(
    g: &ControlGroup,
    settled: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let start = std::time::Instant::now();
    loop {
        let t = status_table(g);
        if settled(&t) || start.elapsed() > Duration::from_secs(10) {
            return t;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The row of replica `id` in a status table.
fn row(table: &serde_json::Value, id: u64) -> &serde_json::Value {
    table["replicas"]
        .as_array()
        .expect("replicas")
        .iter()
        .find(|r| r["replica_id"] == id)
        .unwrap_or_else(|| panic!("no row for replica {id}: {table}"))
}

/// `ringfs status` shows every replica with what it is: the replica that
/// serves as leader marked as such, every replica's term and log positions
/// as it reports them, and those positions moving by exactly the mutations
/// made; after the leader is killed, the new leader, a higher term, and
/// the dead one unreachable. The text form names the leader too.
#[test]
fn status_shows_the_replicas_the_leader_terms_and_log_positions() {
    let mut g = ControlGroup::start(3, &[]);
    let leader = g.leader();
    let ids: Vec<u64> = (0..3).map(|i| status(&g, i).replica_id).collect();
    let term = status(&g, leader).term;
    let before = status(&g, leader).last_log_index;
    let positions = ["last_log_index", "applied_index", "matched_index"];
    let at = |t: &serde_json::Value, n: u64| {
        ids.iter()
            .all(|&id| positions.iter().all(|k| row(t, id)[k] == n))
    };
    let t = settled_table(&g, |t| at(t, before));
    assert_eq!(t["leader_id"], ids[leader], "{t}");
    assert_eq!(t["leader_address"], g.addrs[leader].to_string(), "{t}");
    assert_eq!(t["replicas"].as_array().map(Vec::len), Some(3), "{t}");
    for (i, &id) in ids.iter().enumerate() {
        let r = row(&t, id);
        assert_eq!(r["address"], g.addrs[i].to_string(), "{t}");
        assert_eq!(r["leader"], i == leader, "{t}");
        assert_eq!(r["voter"], true, "{t}");
        assert_eq!(r["reachable"], true, "{t}");
        assert_eq!(r["state"], if i == leader { "leader" } else { "follower" });
        assert_eq!(r["term"], term, "{t}");
        assert_eq!(r["last_log_index"], before, "{t}");
        assert_eq!(r["applied_index"], before, "{t}");
        assert_eq!(r["matched_index"], before, "{t}");
    }

    // Five mutations, one log entry each, on every replica.
    mkdirs(&g, "m", 5);
    let t = settled_table(&g, |t| at(t, before + 5));
    for (i, &id) in ids.iter().enumerate() {
        let r = row(&t, id);
        for k in positions {
            assert_eq!(r[k], before + 5, "{k} of replica {i}: {t}");
        }
    }
    let text = run_ok(&mut g.ringfs(&["status"]));
    assert!(
        text.contains(&format!(
            "leader {} at {} (term {term})",
            ids[leader], g.addrs[leader]
        )),
        "{text}"
    );

    g.kill9(leader);
    let new = g.leader();
    let live = |t: &serde_json::Value| {
        (0..3).filter(|&i| i != leader).all(|i| {
            let r = row(t, ids[i]);
            r["term"] == t["term"] && r["last_log_index"].as_u64() > Some(before + 5)
        })
    };
    let t = settled_table(&g, live);
    assert_eq!(t["leader_id"], ids[new], "{t}");
    let new_term = t["term"].as_u64().expect("term");
    assert!(new_term > term, "the term did not rise: {t}");
    let dead = row(&t, ids[leader]);
    assert_eq!(dead["reachable"], false, "{t}");
    assert_eq!(dead["leader"], false, "{t}");
    for i in (0..3).filter(|&i| i != leader) {
        let r = row(&t, ids[i]);
        assert_eq!(r["leader"], i == new, "{t}");
        assert_eq!(r["term"], new_term, "{t}");
        // The new leader's first entry of its term (a blank one).
        assert!(r["last_log_index"].as_u64() > Some(before + 5), "{t}");
    }
}

/// Every replica's Raft metrics.
fn raft_metrics(g: &ControlGroup, i: usize) -> HashMap<String, f64> {
    scrape(g.metrics(i))
}

/// Waits (up to 30 s) until `cond` holds for the metrics of every running
/// replica.
fn wait_metrics(g: &ControlGroup, what: &str, cond: impl Fn(usize, &HashMap<String, f64>) -> bool) {
    ringfs_tests::wait_until(
        Duration::from_secs(30),
        || {
            (0..g.replicas.len())
                .filter(|&i| g.replicas[i].is_some())
                .all(|i| cond(i, &raft_metrics(g, i)))
        },
        || {
            let all: Vec<String> = (0..g.replicas.len())
                .filter(|&i| g.replicas[i].is_some())
                .map(|i| {
                    let m = raft_metrics(g, i);
                    let mut raft: Vec<_> = m
                        .iter()
                        .filter(|(k, _)| k.starts_with("ringfs_control_raft_"))
                        .collect();
                    raft.sort_by(|a, b| a.0.cmp(b.0));
                    format!("replica {i}: {raft:?}")
                })
                .collect();
            format!("{what}: {all:?}")
        },
    );
}

/// The `ringfs_control_raft_*` metrics of each replica: one leader (the one
/// that serves), the same term, 3 replicas and voters; log and applied
/// indexes move by exactly the mutations made; the snapshot index moves to
/// what `ringfs admin snapshot` covered; after the leader is killed another
/// reports leader 1 in a higher term, and after the dead one is removed the
/// group counts 2.
#[test]
fn raft_metrics_are_present_and_move_with_the_group() {
    let mut g = ControlGroup::start(3, &["--metrics", "127.0.0.1:0"]);
    let leader = g.leader();
    let m = raft_metrics(&g, leader);
    let term = value(&m, "ringfs_control_raft_term");
    let before = value(&m, "ringfs_control_raft_last_log_index");
    assert!(term >= 1.0 && before >= 1.0, "{m:?}");
    wait_metrics(&g, "one leader, 3 voters, one term", |i, m| {
        value(m, "ringfs_control_raft_leader") == f64::from(i == leader)
            && value(m, "ringfs_control_raft_term") == term
            && value(m, "ringfs_control_raft_replicas") == 3.0
            && value(m, "ringfs_control_raft_voters") == 3.0
            && value(m, "ringfs_control_raft_applied_index") == before
    });

    mkdirs(&g, "m", 5);
    wait_metrics(&g, "5 entries more", |_, m| {
        value(m, "ringfs_control_raft_last_log_index") == before + 5.0
            && value(m, "ringfs_control_raft_applied_index") == before + 5.0
    });

    let out = run_ok(&mut g.admin(&["snapshot", "--json"]));
    let snap: serde_json::Value = serde_json::from_str(&out).expect("snapshot --json");
    let covered = snap["last_index"].as_u64().expect("last_index") as f64;
    assert_eq!(covered, before + 5.0, "{snap}");
    assert_eq!(
        value(
            &raft_metrics(&g, leader),
            "ringfs_control_raft_snapshot_index"
        ),
        covered
    );

    let dead = status(&g, leader).replica_id;
    g.kill9(leader);
    let new = g.leader();
    wait_metrics(&g, "a new leader in a higher term", |i, m| {
        value(m, "ringfs_control_raft_leader") == f64::from(i == new)
            && value(m, "ringfs_control_raft_term") > term
    });
    run_ok(&mut g.admin(&["remove-replica", &dead.to_string()]));
    wait_metrics(&g, "2 replicas once the dead one is removed", |_, m| {
        value(m, "ringfs_control_raft_replicas") == 2.0
            && value(m, "ringfs_control_raft_voters") == 2.0
    });
}
