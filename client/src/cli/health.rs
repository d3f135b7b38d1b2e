//! Cluster health: `status` (control replicas, nodes, chunks) and `fsck`
//! (with `--verify`, replica contents compared by digest).

use std::io::Write;
use std::net::SocketAddr;

use anyhow::{bail, Result};
use ringfs_client::{human, Client, ControlClient, Credential, Error, Kind, ReplicationStatus};
use serde_json::json;

use crate::namespace::join;

/// `fsck`: every chunk problem with its path; fails unless every chunk has
/// R live, current, verified replicas and the namespace is consistent.
/// With `verify`, also every replica whose content differs from the
/// others' (see [`verify_replicas`]).
pub(crate) async fn cmd_fsck(c: &Client, json: bool, verify: bool) -> Result<()> {
    let h = c.control().chunk_health(u32::MAX).await?;
    let differing = if verify {
        verify_replicas(c).await?
    } else {
        Vec::new()
    };
    if json {
        let problems: Vec<_> = h.problems.iter().map(problem_json).collect();
        let differing: Vec<_> = differing
            .iter()
            .map(|(path, index, chunk, detail)| {
                json!({"path": path, "index": index, "chunk_id": format!("{chunk:032x}"), "detail": detail})
            })
            .collect();
        outln!(
            "{}",
            json!({
                "clean": h.is_clean() && differing.is_empty(),
                "health": health_json(&h),
                "problems": problems,
                "differing_replicas": differing,
            })
        );
    } else {
        for (path, index, chunk, detail) in &differing {
            outln!("{path}: chunk {index} ({chunk:032x}): replicas differ: {detail}");
        }
        for p in &h.problems {
            outln!(
                "{}: chunk {} ({:032x}): {} ({} of {} good replicas) {}",
                p.path,
                p.index,
                p.chunk_id,
                problem_name(p.kind),
                p.good_replicas,
                p.wanted,
                p.detail
            );
        }
        outln!("{}", health_line(&h));
    }
    if !differing.is_empty() {
        bail!(
            "{} chunks have replicas that differ{}",
            differing.len(),
            if h.is_clean() {
                String::new()
            } else {
                format!(
                    "; {} of {} chunks lack R live, current, verified replicas",
                    h.chunks - h.healthy,
                    h.chunks
                )
            }
        );
    }
    if !h.is_clean() {
        bail!(
            "{} of {} chunks lack R live, current, verified replicas{}",
            h.chunks - h.healthy,
            h.chunks,
            if h.namespace_errors > 0 {
                format!(", {} namespace errors", h.namespace_errors)
            } else {
                String::new()
            }
        );
    }
    Ok(())
}

/// The control replicas as the leader sees them, with each reachable
/// replica's own view (term, log positions); `None` for a single server.
async fn control_status(
    c: &Client,
    (cred, tls): (&Credential, Option<&ringfs_ops::tls::Tls>),
    addrs: &[SocketAddr],
) -> Result<Option<(ReplicationStatus, Vec<ReplicationStatus>)>> {
    let leader = c.control().replication().await?;
    if !leader.replicated {
        return Ok(None);
    }
    let mut each = Vec::new();
    let mut asked: Vec<String> = leader.replicas.iter().map(|r| r.address.clone()).collect();
    asked.extend(addrs.iter().map(|a| a.to_string()));
    asked.sort();
    asked.dedup();
    for a in asked {
        let Ok(addr) = a.parse::<SocketAddr>() else {
            continue;
        };
        let probe = tokio::time::timeout(std::time::Duration::from_secs(2), async {
            ControlClient::connect_tls(addr, cred, tls)
                .await?
                .replication()
                .await
        });
        if let Ok(Ok(s)) = probe.await {
            each.push(s);
        }
    }
    Ok(Some((leader, each)))
}

/// `status`: control replicas, nodes, up/down, capacity and chunk health.
pub(crate) async fn cmd_status(
    c: &Client,
    cred: (&Credential, Option<&ringfs_ops::tls::Tls>),
    addrs: &[SocketAddr],
    json: bool,
) -> Result<()> {
    let control = control_status(c, cred, addrs).await?;
    let health = c.control().chunk_health(0).await?;
    let map = c.cluster_map().await?;
    let total: u64 = map.nodes.iter().map(|n| n.capacity.total).sum();
    let used: u64 = map.nodes.iter().map(|n| n.capacity.used).sum();
    let up = map.nodes.iter().filter(|n| n.up).count();
    if json {
        let nodes: Vec<_> = map
            .nodes
            .iter()
            .map(|n| {
                json!({
                    "node_id": n.node_id,
                    "up": n.up,
                    "shards": n.shards,
                    "total_bytes": n.capacity.total,
                    "used_bytes": n.capacity.used,
                    "reserved_bytes": n.capacity.reserved,
                    "free_bytes": ringfs_client::placement::free_bytes(n),
                    "chunks": n.capacity.chunks,
                    "last_heartbeat_ago_ms": n.last_heartbeat_ago_ms,
                })
            })
            .collect();
        outln!(
            "{}",
            json!({
                "epoch": map.epoch,
                "nodes_up": up,
                "nodes": nodes,
                "total_bytes": total,
                "used_bytes": used,
                "chunks": health_json(&health),
                "control": control.as_ref().map(|(leader, each)| control_json(leader, each)),
            })
        );
        return Ok(());
    }
    if let Some((leader, each)) = &control {
        print_control(leader, each)?;
    }
    outln!(
        "{} of {} nodes up, {} used of {} (map epoch {})",
        up,
        map.nodes.len(),
        human::size(used),
        human::size(total),
        map.epoch
    );
    outln!("{}", health_line(&health));
    outln!(
        "{:>6}  {:<4}  {:>10}  {:>10}  {:>10}  {:>8}  {:>10}  shards",
        "node",
        "up",
        "total",
        "used",
        "free",
        "chunks",
        "heartbeat"
    );
    for n in &map.nodes {
        let hb = if n.last_heartbeat_ago_ms == u64::MAX {
            "never".to_string()
        } else {
            format!("{:.1}s ago", n.last_heartbeat_ago_ms as f64 / 1000.0)
        };
        outln!(
            "{:>6}  {:<4}  {:>10}  {:>10}  {:>10}  {:>8}  {:>10}  {}",
            n.node_id,
            if n.up { "up" } else { "DOWN" },
            human::size(n.capacity.total),
            human::size(n.capacity.used),
            human::size(ringfs_client::placement::free_bytes(n)),
            n.capacity.chunks,
            hb,
            n.shards.join(",")
        );
    }
    Ok(())
}

fn problem_name(k: ringfs_client::ProblemKind) -> &'static str {
    use ringfs_client::ProblemKind as K;
    match k {
        K::UnderReplicated => "under-replicated",
        K::Lost => "LOST",
        K::BeingRepaired => "being repaired",
        K::Unverified => "unverified",
        K::Namespace => "namespace error",
    }
}

fn health_line(h: &ringfs_client::ChunkHealth) -> String {
    format!(
        "chunks: {} total, {} healthy, {} under-replicated, {} being repaired ({} copies in flight), \
         {} lost, {} unverified, {} namespace errors; {} garbage copies to delete",
        h.chunks,
        h.healthy,
        h.under_replicated,
        h.being_repaired,
        h.copies_in_flight,
        h.lost,
        h.unverified,
        h.namespace_errors,
        h.deletes_pending
    )
}

fn health_json(h: &ringfs_client::ChunkHealth) -> serde_json::Value {
    json!({
        "total": h.chunks,
        "healthy": h.healthy,
        "under_replicated": h.under_replicated,
        "being_repaired": h.being_repaired,
        "copies_in_flight": h.copies_in_flight,
        "lost": h.lost,
        "unverified": h.unverified,
        "namespace_errors": h.namespace_errors,
        "deletes_pending": h.deletes_pending,
    })
}

fn problem_json(p: &ringfs_client::ChunkProblem) -> serde_json::Value {
    json!({
        "path": p.path,
        "index": p.index,
        "chunk_id": format!("{:032x}", p.chunk_id),
        "kind": problem_name(p.kind),
        "good_replicas": p.good_replicas,
        "wanted": p.wanted,
        "detail": p.detail,
    })
}

fn control_json(leader: &ReplicationStatus, each: &[ReplicationStatus]) -> serde_json::Value {
    let replicas: Vec<_> = leader
        .replicas
        .iter()
        .map(|r| {
            let own = each.iter().find(|s| s.replica_id == r.replica_id);
            json!({
                "replica_id": r.replica_id,
                "address": r.address,
                "voter": r.voter,
                "leader": r.replica_id == leader.leader_id,
                "matched_index": r.matched_index,
                "reachable": own.is_some(),
                "state": own.map(|s| s.state.clone()),
                "term": own.map(|s| s.term),
                "last_log_index": own.map(|s| s.last_log_index),
                "applied_index": own.map(|s| s.applied_index),
                "snapshot_index": own.map(|s| s.snapshot_index),
            })
        })
        .collect();
    json!({
        "leader_id": leader.leader_id,
        "leader_address": leader.leader_address,
        "term": leader.term,
        "replicas": replicas,
    })
}

fn print_control(leader: &ReplicationStatus, each: &[ReplicationStatus]) -> Result<()> {
    outln!(
        "control: {} replicas, leader {} at {} (term {})",
        leader.replicas.len(),
        leader.leader_id,
        leader.leader_address,
        leader.term
    );
    outln!(
        "{:>20}  {:<21}  {:<9}  {:>5}  {:>9}  {:>9}  {:>9}  {:>9}",
        "replica",
        "address",
        "state",
        "term",
        "last log",
        "applied",
        "snapshot",
        "matched"
    );
    for r in &leader.replicas {
        let own = each.iter().find(|s| s.replica_id == r.replica_id);
        let state = match own {
            Some(s) if r.voter => s.state.clone(),
            Some(_) => "learner".into(),
            None => "UNREACHABLE".into(),
        };
        let n =
            |f: fn(&ReplicationStatus) -> u64| own.map(|s| f(s).to_string()).unwrap_or("-".into());
        outln!(
            "{:>20}  {:<21}  {:<9}  {:>5}  {:>9}  {:>9}  {:>9}  {:>9}",
            r.replica_id,
            r.address,
            state,
            n(|s| s.term),
            n(|s| s.last_log_index),
            n(|s| s.applied_index),
            n(|s| s.snapshot_index),
            r.matched_index
        );
    }
    Ok(())
}

/// One chunk whose replicas differ: (path, chunk index, chunk id, what).
type Differing = (String, u64, u128, String);

/// Asks every replica of every chunk of every file for its version, length
/// and digest of stored CRCs, and lists the chunks whose replicas do not
/// all agree, or could not all be asked.
async fn verify_replicas(c: &Client) -> Result<Vec<Differing>> {
    let mut out = Vec::new();
    let mut dirs = vec!["/".to_string()];
    while let Some(dir) = dirs.pop() {
        for (name, a) in c.list(&dir).await? {
            let path = join(&dir, &name);
            if a.kind == Kind::Directory {
                dirs.push(path);
                continue;
            }
            let chunks = match c.replica_digests(&path).await {
                Ok(chunks) => chunks,
                // Removed since it was listed.
                Err(Error::NotFound(_)) => continue,
                Err(e) => return Err(e.into()),
            };
            for (rec, replicas) in chunks {
                if let Some(detail) = replica_verdict(rec.version, &replicas) {
                    out.push((path.clone(), rec.index, rec.chunk_id, detail));
                }
            }
        }
    }
    Ok(out)
}

/// What is wrong with the replicas of a chunk committed at `committed`
/// (each replica's node and digest, or why it could not be asked), if
/// anything: replicas must all be reachable, at one version, at least the
/// committed one, with one length and digest.
fn replica_verdict(
    committed: ringfs_client::Version,
    replicas: &[(u64, ringfs_client::Result<ringfs_client::ReplicaDigest>)],
) -> Option<String> {
    let describe = |(n, r): &(u64, ringfs_client::Result<ringfs_client::ReplicaDigest>)| match r {
        Ok(d) => format!("node {n}: {d}"),
        Err(e) => format!("node {n}: not verified: {}", e.describe()),
    };
    let answers: Vec<_> = replicas
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok())
        .collect();
    let same_version_differs = answers.iter().any(|a| {
        answers
            .iter()
            .any(|b| a.version == b.version && (a.length != b.length || a.digest != b.digest))
    });
    let all_agree = answers.len() == replicas.len()
        && answers.windows(2).all(|w| w[0] == w[1])
        && answers.first().is_none_or(|a| a.version >= committed);
    if all_agree {
        return None;
    }
    let what = if same_version_differs {
        "DIFFERENT CONTENT AT THE SAME VERSION"
    } else {
        "not identical"
    };
    Some(format!(
        "{what} (committed version {committed}): {}",
        replicas.iter().map(describe).collect::<Vec<_>>().join("; ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringfs_client::{ReplicaDigest, Version};

    fn at(v: u64, digest: u8) -> ringfs_client::Result<ReplicaDigest> {
        Ok(ReplicaDigest {
            version: Version::new(1, v),
            length: 10,
            digest: vec![digest; 32],
        })
    }

    #[test]
    fn replicas_must_agree_on_version_and_content() {
        let v2 = Version::new(1, 2);
        assert_eq!(replica_verdict(v2, &[(1, at(2, 7)), (2, at(2, 7))]), None);
        let same = replica_verdict(v2, &[(1, at(2, 7)), (2, at(2, 8))]).unwrap();
        assert!(
            same.contains("SAME VERSION") && same.contains("node 2"),
            "{same}"
        );
        let behind = replica_verdict(v2, &[(1, at(3, 7)), (2, at(2, 7))]).unwrap();
        assert!(behind.starts_with("not identical"), "{behind}");
        assert!(
            replica_verdict(v2, &[(1, at(1, 7)), (2, at(1, 7))]).is_some(),
            "below the record"
        );
        let gone = Err(ringfs_client::Error::unavailable("down"));
        assert!(replica_verdict(v2, &[(1, at(2, 7)), (2, gone)])
            .unwrap()
            .contains("not verified"));
    }
}
