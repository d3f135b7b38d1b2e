//! A local cluster: one control server and N storage nodes as child
//! processes on loopback, with all their data in one directory.
//!
//! Guarantees:
//! - [`LocalCluster::start`] returns only once every node has joined and is
//!   up in the cluster map; on any failure what was started is torn down.
//! - Dropping the cluster kills every process (kill -9: a benchmark keeps no
//!   state worth flushing) and removes the directory unless `keep` was set.
//! - [`LocalCluster::check`] reports a process that exited on its own, so a
//!   crashed node fails a run at once instead of skewing its figures.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::node_bench::Launcher;
use crate::stats::cpu_seconds;
use ringfs_ops::launch::Server;

/// How long a server may take to print its address, and the nodes to join.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// What to start.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub launcher: Launcher,
    /// Storage nodes (each one shard).
    pub nodes: usize,
    /// Parent of the cluster's directory (the filesystem under test); the
    /// system temp dir if None.
    pub parent: Option<PathBuf>,
    /// Leave the data directory in place after teardown.
    pub keep: bool,
}

/// CPU seconds used so far by the cluster's processes.
#[derive(Debug, Clone, Default)]
pub struct ClusterCpu {
    pub control: f64,
    /// Per storage node, in start order.
    pub nodes: Vec<f64>,
}

impl ClusterCpu {
    pub fn since(&self, earlier: &ClusterCpu) -> ClusterCpu {
        ClusterCpu {
            control: self.control - earlier.control,
            nodes: self
                .nodes
                .iter()
                .zip(&earlier.nodes)
                .map(|(now, then)| now - then)
                .collect(),
        }
    }
}

/// A running local cluster.
pub struct LocalCluster {
    // Field order is drop order: processes die before the directory goes.
    control: Server,
    nodes: Vec<Server>,
    dir: Dir,
    pub control_addr: SocketAddr,
}

/// The cluster's directory: removed on drop unless kept.
enum Dir {
    Temp(tempfile::TempDir),
    Kept(PathBuf),
}

impl Dir {
    fn path(&self) -> &Path {
        match self {
            Dir::Temp(t) => t.path(),
            Dir::Kept(p) => p,
        }
    }
}

impl LocalCluster {
    pub fn start(opts: &ClusterOptions) -> anyhow::Result<Self> {
        if opts.nodes == 0 {
            bail!("a cluster needs at least one storage node (--nodes)");
        }
        let parent = opts.parent.clone().unwrap_or_else(std::env::temp_dir);
        let tmp = tempfile::Builder::new()
            .prefix("ringfs-local-")
            .tempdir_in(&parent)
            .with_context(|| format!("creating a directory in {}", parent.display()))?;
        let dir = if opts.keep {
            Dir::Kept(tmp.keep())
        } else {
            Dir::Temp(tmp)
        };
        let root = dir.path();
        let secret = root.join("secret");
        std::fs::write(&secret, random_secret()).context("writing the cluster secret")?;

        let mut cmd = command(&opts.launcher.control)?;
        cmd.args(["--listen", "127.0.0.1:0", "--data"])
            .arg(root.join("control"))
            .arg("--secret-file")
            .arg(&secret);
        quiet_logs(&mut cmd);
        let control = Server::spawn(cmd, "ringfs-control listening on ", START_TIMEOUT)
            .context("starting the control server")?;
        let control_addr = control.addr;

        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut nodes = Vec::with_capacity(opts.nodes);
        for i in 0..opts.nodes {
            let mut cmd = command(&opts.launcher.node)?;
            cmd.args(["--control", &control_addr.to_string()])
                .args(["--listen", "127.0.0.1"])
                // One shard per node, spread over the cores.
                .args(["--cores", &format!("{},", i % cpus)])
                .arg("--data")
                .arg(root.join(format!("node-{}", i + 1)))
                .arg("--secret-file")
                .arg(&secret);
            quiet_logs(&mut cmd);
            let node = Server::spawn(cmd, "listening on ", START_TIMEOUT)
                .with_context(|| format!("starting storage node {}", i + 1))?;
            nodes.push(node);
        }
        let cluster = LocalCluster {
            control,
            nodes,
            dir,
            control_addr,
        };
        cluster.wait_joined(opts.nodes)?;
        Ok(cluster)
    }

    /// Waits until `want` nodes are up in the cluster map.
    fn wait_joined(&self, want: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        crate::local(async {
            let c = ringfs_client::ControlClient::connect(self.control_addr).await?;
            loop {
                let up = c.cluster_map().await?.nodes.iter().filter(|n| n.up).count();
                if up >= want {
                    return Ok(());
                }
                if Instant::now() > deadline {
                    bail!("only {up} of {want} storage nodes joined within {START_TIMEOUT:?}");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    }

    /// The cluster's data directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn control_pid(&self) -> u32 {
        self.control.pid()
    }

    pub fn node_pids(&self) -> Vec<u32> {
        self.nodes.iter().map(Server::pid).collect()
    }

    /// Fails if any process has exited.
    pub fn check(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.control.exit_status() {
            bail!(
                "the control server (pid {}) exited unexpectedly: {status}",
                self.control.pid()
            );
        }
        for (i, node) in self.nodes.iter_mut().enumerate() {
            if let Some(status) = node.exit_status() {
                bail!(
                    "storage node {} (pid {}) exited unexpectedly: {status}",
                    i + 1,
                    node.pid()
                );
            }
        }
        Ok(())
    }

    /// CPU time of the cluster's processes so far (a process that is gone
    /// counts as zero).
    pub fn cpu(&self) -> ClusterCpu {
        ClusterCpu {
            control: cpu_seconds(self.control.pid()).unwrap_or(0.0),
            nodes: self
                .nodes
                .iter()
                .map(|n| cpu_seconds(n.pid()).unwrap_or(0.0))
                .collect(),
        }
    }
}

/// A command from a launcher's argv (program and leading arguments).
pub(crate) fn command(argv: &[OsString]) -> anyhow::Result<Command> {
    let (prog, args) = argv.split_first().context("empty launcher command")?;
    let mut c = Command::new(prog);
    c.args(args);
    Ok(c)
}

/// Servers log warnings and errors only, unless RUST_LOG says otherwise.
fn quiet_logs(cmd: &mut Command) {
    cmd.env(
        "RUST_LOG",
        std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
    );
}

/// A fresh cluster secret (the token MAC key shared by control and nodes).
pub fn random_secret() -> String {
    use std::hash::{BuildHasher, RandomState};
    (0..4)
        .map(|i| format!("{:016x}", RandomState::new().hash_one(i)))
        .collect()
}
