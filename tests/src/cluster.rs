//! A control server and storage nodes on loopback in one temporary
//! directory.

use crate::{binary, local, run, ControlProcess, NodeOptions, NodeProcess, Ran};
use ringfs_client::{ChunkHealth, ClusterMap, ControlClient, NodeInfo};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How long a cluster may take to show the nodes it started as up.
const UP_WITHIN: Duration = Duration::from_secs(20);

/// Control-server flags of fault tests: fast failure detection, a short
/// repair grace, frequent chunk reports, a short orphan grace.
pub const FAST_REPAIR: &[&str] = &[
    "--heartbeat-ms",
    "200",
    "--node-ttl-ms",
    "1000",
    "--repair-grace-ms",
    "1000",
    "--report-interval-ms",
    "1000",
    "--orphan-grace-ms",
    "5000",
];

/// The control flags of [`Cluster::start`]: a short heartbeat (200 ms) and
/// node TTL (1 s), so down nodes show quickly.
pub const QUICK: &[&str] = &["--heartbeat-ms", "200", "--node-ttl-ms", "1000"];

/// A node's capacity unless its flags say otherwise: 1 GiB.
const CAPACITY: &[&str] = &["--capacity-bytes", "1073741824"];

/// A control server and storage nodes `n0`, `n1`, ... in a temporary
/// directory. Dropping it kills every process.
pub struct Cluster {
    /// The control server.
    pub control: ControlProcess,
    /// Node `i` (data in `dir/n<i>`); `None` once killed.
    pub nodes: Vec<Option<NodeProcess>>,
    /// The cluster's directory.
    pub dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts a control server and `nodes` nodes (1 GiB each) and waits
    /// until all of them are up in the cluster map.
    pub fn start(nodes: usize) -> Self {
        Self::start_with(nodes, QUICK, &[])
    }

    /// Like [`Cluster::start`] with these control-server flags and extra
    /// node flags.
    pub fn start_with(nodes: usize, control_flags: &[&str], node_flags: &[&str]) -> Self {
        let opts = NodeOptions {
            flags: node_flags,
            ..NodeOptions::default()
        };
        Self::start_custom(nodes, control_flags, &opts)
    }

    /// Like [`Cluster::start`] with these control-server flags and every
    /// node started as `node` says.
    pub fn start_custom(nodes: usize, control_flags: &[&str], node: &NodeOptions) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let control = ControlProcess::start(dir.path(), "127.0.0.1:0", control_flags);
        let mut c = Cluster {
            control,
            nodes: Vec::new(),
            dir,
        };
        for i in 0..nodes {
            c.start_node_with(i, node);
        }
        c.wait_up(nodes);
        c
    }

    /// Starts node `i` (a new one if `i == nodes.len()`, else a restart
    /// from its data directory, so with its node id) with these flags.
    pub fn start_node(&mut self, i: usize, flags: &[&str]) {
        let opts = NodeOptions {
            flags,
            ..NodeOptions::default()
        };
        self.start_node_with(i, &opts);
    }

    /// Like [`Cluster::start_node`], as `opts` says. Returns once the
    /// node's shards listen (it joins within a heartbeat: [`Cluster::wait_up`]).
    pub fn start_node_with(&mut self, i: usize, opts: &NodeOptions) {
        let mut flags = Vec::new();
        if !opts.flags.contains(&CAPACITY[0]) {
            flags.extend_from_slice(CAPACITY);
        }
        flags.extend_from_slice(opts.flags);
        let opts = NodeOptions {
            flags: &flags,
            ..opts.clone()
        };
        let n =
            NodeProcess::start_with(self.dir.path(), &format!("n{i}"), self.control.addr, &opts);
        if i == self.nodes.len() {
            self.nodes.push(Some(n));
        } else {
            assert!(self.nodes[i].is_none(), "node {i} is running");
            self.nodes[i] = Some(n);
        }
    }

    /// Running node `i`.
    pub fn node(&self, i: usize) -> &NodeProcess {
        self.nodes[i]
            .as_ref()
            .unwrap_or_else(|| panic!("node {i} is not running"))
    }

    /// Runs `f` with a fresh connection to the control server.
    fn with_control<T>(&self, f: impl AsyncFnOnce(&ControlClient) -> T) -> T {
        let addr = self.control.addr;
        local(async move {
            let c = ControlClient::connect(addr, &crate::admin())
                .await
                .expect("connecting to the control server");
            f(&c).await
        })
    }

    /// The cluster map, fetched now.
    pub fn map(&self) -> ClusterMap {
        self.with_control(async |c| c.cluster_map().await.expect("cluster map"))
    }

    /// Writes `data` (16 KiB to 256 KiB) to a new one-chunk file `path`
    /// with `r` replicas, then
    /// makes the replica on the chunk's second node differ from the others
    /// at the same version ([`Cluster::diverge_replica`], block 3); returns
    /// the chunk's record once the control server finds the cluster clean
    /// again (it compares versions, which agree).
    pub fn diverged_file(&mut self, path: &str, data: &[u8], r: u8) -> ringfs_client::ChunkRecord {
        let rec = crate::with_client(self.control.addr, async |c| {
            const CHUNK: usize = 256 * 1024;
            assert!(
                data.len() > 4 * 4096 && data.len() <= CHUNK,
                "one chunk, block 3 in it"
            );
            let layout = crate::files::layout(CHUNK, r, r);
            crate::files::put(c, path, data, layout).await.unwrap();
            crate::files::records(c, path).await.remove(0)
        });
        self.diverge_replica(rec.replicas[1], rec.chunk_id, 3, 0xaa);
        self.wait_clean(Duration::from_secs(20));
        rec
    }

    /// The index of the running node whose id is `node_id`.
    pub fn index_of(&self, node_id: u64) -> usize {
        (0..self.nodes.len())
            .find(|&i| self.nodes[i].is_some() && self.node_id(i) == node_id)
            .unwrap_or_else(|| panic!("node {node_id} is not running"))
    }

    /// The node id of running node `i` (from the cluster map).
    pub fn node_id(&self, i: usize) -> u64 {
        self.node_id_at(self.node(i).addr)
    }

    /// The node id of the node whose shard 0 listens on `shard0`, once the
    /// cluster map lists it up there (a restarted node re-announces its
    /// new endpoints when it rejoins).
    pub fn node_id_at(&self, shard0: SocketAddr) -> u64 {
        let shard0 = shard0.to_string();
        let listed = |n: &NodeInfo| n.up && n.shards.first() == Some(&shard0);
        let map = self.wait_map(UP_WITHIN, |map| map.nodes.iter().any(listed));
        map.nodes
            .iter()
            .find(|n| listed(n))
            .expect("listed")
            .node_id
    }

    /// Waits (up to 20 s) until exactly `n` nodes are up in the cluster
    /// map, each heard from ([`exactly_up`]).
    pub fn wait_up(&self, n: usize) {
        self.wait_map(UP_WITHIN, |map| exactly_up(map, n));
    }

    /// Waits until `cond` holds for the cluster map; panics with the map
    /// after `limit`.
    pub fn wait_map(&self, limit: Duration, cond: impl Fn(&ClusterMap) -> bool) -> ClusterMap {
        self.with_control(async |c| {
            let start = Instant::now();
            loop {
                let map = c.cluster_map().await.expect("cluster map");
                if cond(&map) {
                    return map;
                }
                assert!(start.elapsed() < limit, "after {limit:?}: {map:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    }

    /// The control server's view of chunk health (up to 20 problems listed).
    pub fn health(&self) -> ChunkHealth {
        self.with_control(async |c| c.chunk_health(20).await.expect("chunk health"))
    }

    /// Waits until every chunk has R good replicas; returns how long that
    /// took. Panics with the health report after `limit`.
    pub fn wait_clean(&self, limit: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let h = self.health();
            if h.is_clean() {
                return start.elapsed();
            }
            assert!(start.elapsed() < limit, "not clean after {limit:?}: {h:#?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs the `ringfs` CLI with `args` against this cluster, as the
    /// administrator.
    pub fn ringfs(&self, args: &[&str]) -> Ran {
        let mut cmd = std::process::Command::new(binary("ringfs-client", "ringfs"));
        cmd.args(args)
            .env("RINGFS_CONTROL", self.control.addr.to_string())
            .env("RINGFS_CREDENTIAL", self.admin_credential());
        run(&mut cmd)
    }

    /// The administrator's credential file (for the `ringfs` CLI).
    pub fn admin_credential(&self) -> std::path::PathBuf {
        crate::admin_credential(self.dir.path())
    }

    /// The chunk files on the disks of every running node, sorted.
    pub fn chunk_files(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .nodes
            .iter()
            .flatten()
            .flat_map(NodeProcess::chunk_files)
            .collect();
        out.sort();
        out
    }

    /// kill -9 node `i`.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut n) = self.nodes[i].take() {
            n.kill9();
        }
    }

    /// Stops node `i` with SIGTERM (it drains, and checkpoints its
    /// journal) and checks that it exited 0.
    pub fn terminate(&mut self, i: usize) {
        if let Some(mut n) = self.nodes[i].take() {
            let exit = n.terminate();
            assert_eq!(exit.code(), Some(0), "node {i} exit status: {exit}");
        }
    }

    /// Makes node `node_id`'s replica of chunk `chunk_id` differ from the
    /// others at the same version: block `block` rewritten with `fill`
    /// bytes and a matching CRC while the node is down
    /// ([`crate::files::diverge_chunk_file`]), which no correct node ever
    /// does and only a comparison of replicas finds. Returns once the map
    /// lists the node up again.
    pub fn diverge_replica(&mut self, node_id: u64, chunk_id: u128, block: usize, fill: u8) {
        let i = self.index_of(node_id);
        let file = self.node(i).chunk_file(chunk_id);
        // The last write sits in the node's journal until a checkpoint,
        // which every start runs: after one restart the header on disk is
        // current.
        self.kill9(i);
        self.start_node(i, &[]);
        self.node_id(i);
        self.kill9(i);
        crate::files::diverge_chunk_file(&file, block, fill);
        self.start_node(i, &[]);
        self.node_id(i);
    }

    /// kill -9 every node but `i`, and waits until the map shows only it up.
    pub fn keep_only(&mut self, i: usize) {
        for j in (0..self.nodes.len()).filter(|&j| j != i) {
            self.kill9(j);
        }
        self.wait_up(1);
    }

    /// kill -9 the control server (its data stays).
    pub fn kill_control9(&mut self) {
        self.control.kill9();
    }

    /// Starts the control server again on the same address and data, with
    /// these flags (after [`Cluster::kill_control9`]).
    pub fn restart_control(&mut self, flags: &[&str]) {
        self.control.kill9();
        let addr = self.control.addr.to_string();
        self.control = ControlProcess::start(self.dir.path(), &addr, flags);
    }
}

/// Whether exactly `n` nodes are up in `map`, each heard from by the
/// control server that answered: one that just took over (a restart, a new
/// leader) presumes every registered node up until it rejoins or a TTL
/// passes, so "up" alone does not say the nodes are back.
pub(crate) fn exactly_up(map: &ClusterMap, n: usize) -> bool {
    let up: Vec<&NodeInfo> = map.nodes.iter().filter(|node| node.up).collect();
    up.len() == n && up.iter().all(|node| node.last_heartbeat_ago_ms != u64::MAX)
}
