//! Replicated control planes: N control replicas (Raft) on loopback, alone
//! ([`ControlGroup`]) or with storage nodes ([`ReplicatedCluster`]).
//!
//! The first replica starts with `--bootstrap` on port 0; the others start
//! empty with `--peers` naming it and are added by the group, so no port is
//! ever guessed. A restarted replica comes back on its address with its
//! data (a replica's address is part of the group's membership).

use crate::{local, ControlProcess, NodeOptions, NodeProcess};
use ringfs_client::{Client, ClientOptions, ClusterMap, ControlClient, ReplicationStatus};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Raft timing of test groups: a 50 ms heartbeat and a 300 ms election
/// timeout, so that failovers take well under a second when the machine
/// is idle.
pub const FAST_RAFT: &[&str] = &["--raft-heartbeat-ms", "50", "--raft-election-ms", "300"];

/// How long a group may take to elect a leader or add a replica.
const LEADER_WITHIN: Duration = Duration::from_secs(30);

/// N control replicas in a temporary directory (`r0`, `r1`, ...).
/// Dropping it kills them.
pub struct ControlGroup {
    /// Replica `i`; `None` while killed.
    pub replicas: Vec<Option<ControlProcess>>,
    /// Replica `i`'s RPC address (kept while it is killed).
    pub addrs: Vec<SocketAddr>,
    /// Flags every replica gets.
    flags: Vec<String>,
    /// `FAILPOINTS` of replicas, by index.
    failpoints: Vec<(usize, String)>,
    /// The directory (replicas' data, secret; nodes' data too).
    pub dir: tempfile::TempDir,
}

impl ControlGroup {
    /// Starts `n` replicas with these flags (plus [`FAST_RAFT`]) and waits
    /// until all of them vote.
    pub fn start(n: usize, flags: &[&str]) -> Self {
        Self::start_armed(n, flags, None)
    }

    /// Like [`ControlGroup::start`], with `FAILPOINTS` armed in the first
    /// replica (the leader once the group formed).
    pub fn start_armed(n: usize, flags: &[&str], first: Option<&str>) -> Self {
        let mut g = Self::empty(flags);
        if let Some(f) = first {
            g.arm(0, f);
        }
        g.add("127.0.0.1:0", &["--bootstrap"], None);
        for _ in 1..n {
            g.add_empty();
        }
        g.wait_voters(n);
        g
    }

    /// A group not started yet: start its first replica with
    /// [`ControlGroup::add`] (`--bootstrap`), the others with
    /// [`ControlGroup::add_empty`] (or `add` with `--peers`).
    pub fn empty(flags: &[&str]) -> Self {
        ControlGroup {
            replicas: Vec::new(),
            addrs: Vec::new(),
            flags: FAST_RAFT
                .iter()
                .chain(flags)
                .map(|s| s.to_string())
                .collect(),
            failpoints: Vec::new(),
            dir: tempfile::tempdir().expect("temporary directory"),
        }
    }

    /// Starts a new replica with its data in `dir/r<index>`, listening on
    /// `listen`, with `extra` flags, inside `netns` if given; returns its
    /// index.
    pub fn add(&mut self, listen: &str, extra: &[&str], netns: Option<&str>) -> usize {
        let i = self.replicas.len();
        let p = self.launch(i, listen, extra, netns);
        self.addrs.push(p.addr);
        self.replicas.push(Some(p));
        i
    }

    /// Starts a new, empty replica on loopback that asks the running ones
    /// to add it; returns its index (it votes once [`ControlGroup::wait_voters`]
    /// says so).
    pub fn add_empty(&mut self) -> usize {
        let peers = self.running_addrs();
        self.add("127.0.0.1:0", &["--peers", &peers], None)
    }

    fn launch(
        &self,
        i: usize,
        listen: &str,
        extra: &[&str],
        netns: Option<&str>,
    ) -> ControlProcess {
        let failpoints = self
            .failpoints
            .iter()
            .find(|(r, _)| *r == i)
            .map(|(_, f)| f.as_str());
        let mut flags: Vec<&str> = self.flags.iter().map(String::as_str).collect();
        flags.extend_from_slice(extra);
        ControlProcess::start_in(
            self.dir.path(),
            &format!("r{i}"),
            listen,
            &flags,
            failpoints,
            netns,
        )
    }

    /// Arms `FAILPOINTS` in replica `i` from its next start on.
    pub fn arm(&mut self, i: usize, failpoints: &str) {
        self.failpoints.push((i, failpoints.to_string()));
    }

    /// The running replicas' addresses, comma-separated.
    pub fn running_addrs(&self) -> String {
        self.replicas
            .iter()
            .flatten()
            .map(|p| p.addr.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// kill -9 replica `i` (its data stays).
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut p) = self.replicas[i].take() {
            p.kill9();
        }
    }

    /// Starts replica `i` again on its address, from its data.
    pub fn restart(&mut self, i: usize) {
        self.restart_with(i, &[]);
    }

    /// Starts replica `i` again on its address, from its data (if any),
    /// with `extra` flags (`--bootstrap`, `--peers`).
    pub fn restart_with(&mut self, i: usize, extra: &[&str]) {
        assert!(self.replicas[i].is_none(), "replica {i} is running");
        let addr = self.addrs[i].to_string();
        self.replicas[i] = Some(self.launch(i, &addr, extra, None));
    }

    /// Replica `i`'s data directory (`dir/r<i>`).
    pub fn data(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("r{i}"))
    }

    /// Deletes the data of killed replica `i` (its disk is lost).
    pub fn wipe(&self, i: usize) {
        assert!(self.replicas[i].is_none(), "replica {i} is running");
        std::fs::remove_dir_all(self.data(i)).expect("deleting a replica's data");
    }

    /// Replica `i`'s monitoring endpoint (started with `--metrics`).
    pub fn metrics(&self, i: usize) -> SocketAddr {
        self.replicas[i]
            .as_ref()
            .and_then(|p| p.metrics)
            .unwrap_or_else(|| panic!("replica {i} runs without --metrics"))
    }

    /// The `ringfs` CLI with `args`, given every replica's address, as the
    /// administrator.
    pub fn ringfs(&self, args: &[&str]) -> Command {
        let addrs: Vec<String> = self.addrs.iter().map(|a| a.to_string()).collect();
        let mut cmd = Command::new(crate::binary("ringfs-client", "ringfs"));
        cmd.env("RINGFS_CONTROL", addrs.join(","))
            .env(
                "RINGFS_CREDENTIAL",
                crate::admin_credential(self.dir.path()),
            )
            .args(args);
        cmd
    }

    /// `ringfs admin` with the cluster secret and `args`.
    pub fn admin(&self, args: &[&str]) -> Command {
        let secret = crate::write_secret(self.dir.path());
        let mut cmd = self.ringfs(&["admin", "--secret-file"]);
        cmd.arg(secret).args(args);
        cmd
    }

    /// The names replica `i` itself holds in `/` (a stale read of its own
    /// store, whether it leads or not), in byte order.
    pub fn names_at(&self, i: usize) -> Vec<String> {
        let addr = self.addrs[i];
        local(async move {
            let c = ControlClient::connect(addr, &crate::admin())
                .await
                .expect("connecting");
            c.list_with("/", true).await.expect("listing")
        })
        .into_iter()
        .map(|(n, _)| n)
        .collect()
    }

    /// Replica `i`'s view of the group, if it answers within 2 s.
    pub fn status(&self, i: usize) -> Option<ReplicationStatus> {
        self.replicas[i].as_ref()?;
        let addr = self.addrs[i];
        local(async move {
            tokio::time::timeout(Duration::from_secs(2), async {
                ControlClient::connect(addr, &crate::admin())
                    .await?
                    .replication()
                    .await
            })
            .await
            .ok()?
            .ok()
        })
    }

    /// Whether replica `i` serves calls that need the leader now.
    pub fn leads(&self, i: usize) -> bool {
        if self.replicas[i].is_none() {
            return false;
        }
        let addr = self.addrs[i];
        local(async move {
            tokio::time::timeout(
                Duration::from_secs(2),
                ControlClient::connect(addr, &crate::admin()),
            )
            .await
            .is_ok_and(|c| c.is_ok_and(|c| c.server_info().is_leader))
        })
    }

    /// Waits (up to 30 s) until a running replica serves as the leader;
    /// returns its index.
    pub fn leader(&self) -> usize {
        let start = Instant::now();
        loop {
            if let Some(i) = (0..self.replicas.len()).find(|&i| self.leads(i)) {
                return i;
            }
            assert!(
                start.elapsed() < LEADER_WITHIN,
                "no leader after {LEADER_WITHIN:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits (up to 30 s) until the leader counts `n` voters and every
    /// running replica applied what the leader has.
    pub fn wait_voters(&self, n: usize) {
        let start = Instant::now();
        loop {
            let l = self.leader();
            if let Some(s) = self.status(l) {
                let voters = s.replicas.iter().filter(|r| r.voter).count();
                let caught_up = (0..self.replicas.len())
                    .filter(|&i| self.replicas[i].is_some())
                    .all(|i| {
                        self.status(i)
                            .is_some_and(|r| r.applied_index >= s.applied_index)
                    });
                if voters == n && caught_up {
                    return;
                }
            }
            assert!(
                start.elapsed() < LEADER_WITHIN,
                "not {n} voters after {LEADER_WITHIN:?}: {:?}",
                self.status(l)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `f` with a new client given every replica's address.
    pub fn with_client<T>(&self, f: impl AsyncFnOnce(&Client) -> T) -> T {
        let addrs = self.addrs.clone();
        local(async move {
            let c = Client::connect_replicas(&addrs, &crate::admin(), ClientOptions::default())
                .await
                .expect("connecting a client to the control replicas");
            f(&c).await
        })
    }
}

/// A replicated control plane with storage nodes `n0`, `n1`, ... given
/// every replica's address. Dropping it kills every process.
pub struct ReplicatedCluster {
    /// The control replicas.
    pub group: ControlGroup,
    /// Node `i`; `None` once killed.
    pub nodes: Vec<Option<NodeProcess>>,
}

impl ReplicatedCluster {
    /// `replicas` control replicas with these flags and `nodes` nodes
    /// (1 GiB each); waits until every node is up in the leader's map.
    pub fn start(replicas: usize, nodes: usize, control_flags: &[&str]) -> Self {
        Self::start_armed(replicas, nodes, control_flags, None)
    }

    /// Like [`ReplicatedCluster::start`], with `FAILPOINTS` armed in the
    /// first replica (the leader once the group formed).
    pub fn start_armed(
        replicas: usize,
        nodes: usize,
        control_flags: &[&str],
        first: Option<&str>,
    ) -> Self {
        let group = ControlGroup::start_armed(replicas, control_flags, first);
        let mut c = ReplicatedCluster {
            group,
            nodes: Vec::new(),
        };
        for i in 0..nodes {
            let opts = NodeOptions {
                controls: &c.group.addrs,
                flags: &["--capacity-bytes", "1073741824"],
                ..NodeOptions::default()
            };
            let n = NodeProcess::start_with(c.dir(), &format!("n{i}"), c.group.addrs[0], &opts);
            c.nodes.push(Some(n));
        }
        c.wait_up(nodes);
        c
    }

    /// The directory of the cluster.
    pub fn dir(&self) -> &Path {
        self.group.dir.path()
    }

    /// The cluster map, from the leader.
    pub fn map(&self) -> ClusterMap {
        self.group
            .with_client(async |c| c.cluster_map().await.expect("cluster map"))
    }

    /// Waits (up to 30 s) until exactly `n` nodes are up in the leader's
    /// map, each heard from by it.
    pub fn wait_up(&self, n: usize) {
        let start = Instant::now();
        loop {
            let map = self.map();
            if crate::cluster::exactly_up(&map, n) {
                return;
            }
            assert!(
                start.elapsed() < LEADER_WITHIN,
                "after {LEADER_WITHIN:?}: {map:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
