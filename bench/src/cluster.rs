//! A local cluster: one control server (or a group of control replicas on
//! Raft) and N storage nodes as child processes on loopback, with all their
//! data in one directory.
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
    /// Control replicas: 1 is a single control server (no Raft); more
    /// start a replicated control plane, the first one leading.
    pub control_replicas: usize,
    /// Parent of the cluster's directory (the filesystem under test); the
    /// system temp dir if None.
    pub parent: Option<PathBuf>,
    /// Leave the data directory in place after teardown.
    pub keep: bool,
    /// TLS everywhere: a CA and certificates made in the cluster's
    /// directory, the servers started with them, and this process's
    /// clients set to use them ([`crate::tls::set`]).
    pub tls: bool,
}

/// CPU seconds used so far by the cluster's processes.
#[derive(Debug, Clone, Default)]
pub struct ClusterCpu {
    /// Summed over the control replicas.
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
    /// Control replica `i`; `None` while killed (failover measurement).
    controls: Vec<Option<Server>>,
    nodes: Vec<Server>,
    dir: Dir,
    /// The address of the control server, or of the first replica (which
    /// leads once the group formed).
    pub control_addr: SocketAddr,
    /// Every control replica's address.
    pub control_addrs: Vec<SocketAddr>,
    launcher: Vec<OsString>,
    secret: PathBuf,
    /// The servers' `--tls-*` flags (empty without TLS).
    tls_args: Vec<OsString>,
    /// The built-in administrator's credential (derived from the secret
    /// this cluster was made with): what the workloads connect as.
    pub cred: ringfs_client::Credential,
}

/// The administrator's credential file in the cluster's directory.
pub const CREDENTIAL: &str = "admin.credential";

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
        let root = dir.path().to_path_buf();
        let secret = root.join("secret");
        let secret_text = random_secret();
        write_secret(&secret, &secret_text)?;
        let cred = ringfs_client::Credential::admin(secret_text.as_bytes());
        cred.save(&root.join(CREDENTIAL))
            .context("writing the administrator's credential")?;

        let tls_args = if opts.tls {
            make_tls(&root)?
        } else {
            Vec::new()
        };
        let replicas = opts.control_replicas.max(1);
        let mut cluster = LocalCluster {
            controls: Vec::new(),
            nodes: Vec::new(),
            dir,
            control_addr: "127.0.0.1:0".parse().expect("an address"),
            control_addrs: Vec::new(),
            launcher: opts.launcher.control.clone(),
            secret: secret.clone(),
            tls_args: tls_args.clone(),
            cred,
        };
        for i in 0..replicas {
            let extra: Vec<String> = match (replicas, i) {
                (1, _) => Vec::new(),
                (_, 0) => vec!["--bootstrap".into()],
                _ => vec!["--peers".into(), cluster.control_addrs[0].to_string()],
            };
            let server = cluster
                .spawn_control(i, "127.0.0.1:0", &extra)
                .with_context(|| format!("starting control replica {i}"))?;
            cluster.control_addrs.push(server.addr);
            cluster.controls.push(Some(server));
        }
        cluster.control_addr = cluster.control_addrs[0];
        if replicas > 1 {
            cluster.wait_replicas(replicas)?;
        }
        let control_list = cluster
            .control_addrs
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(",");

        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut nodes = Vec::with_capacity(opts.nodes);
        for i in 0..opts.nodes {
            let mut cmd = command(&opts.launcher.node)?;
            cmd.args(["--control", &control_list])
                .args(["--listen", "127.0.0.1"])
                // One shard per node, spread over the cores.
                .args(["--cores", &format!("{},", i % cpus)])
                .arg("--data")
                .arg(root.join(format!("node-{}", i + 1)))
                .arg("--secret-file")
                .arg(&secret)
                .args(&tls_args);
            quiet_logs(&mut cmd);
            let node = Server::spawn(cmd, "listening on ", START_TIMEOUT)
                .with_context(|| format!("starting storage node {}", i + 1))?;
            nodes.push(node);
        }
        cluster.nodes = nodes;
        cluster.wait_joined(opts.nodes)?;
        Ok(cluster)
    }

    /// Starts control replica `i` (data in `control` for a single server,
    /// `control-<i>` for replicas) on `listen` with `extra` flags.
    fn spawn_control(&self, i: usize, listen: &str, extra: &[String]) -> anyhow::Result<Server> {
        let data = if self.control_addrs.len() <= 1 && extra.is_empty() && i == 0 {
            self.dir.path().join("control")
        } else {
            self.dir.path().join(format!("control-{i}"))
        };
        let mut cmd = command(&self.launcher)?;
        cmd.args(["--listen", listen, "--data"])
            .arg(data)
            .arg("--secret-file")
            .arg(&self.secret)
            .args(&self.tls_args)
            .args(extra);
        quiet_logs(&mut cmd);
        Ok(Server::spawn(
            cmd,
            "ringfs-control listening on ",
            START_TIMEOUT,
        )?)
    }

    /// Waits until the leader counts `want` voters and every replica
    /// applied what the leader has.
    pub fn wait_replicas(&self, want: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let addrs: Vec<SocketAddr> = self
            .control_addrs
            .iter()
            .zip(&self.controls)
            .filter(|(_, s)| s.is_some())
            .map(|(a, _)| *a)
            .collect();
        crate::local(async {
            loop {
                let mut views = Vec::new();
                for a in &addrs {
                    if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(2), async {
                        crate::tls::control(*a, &self.cred)
                            .await?
                            .replication()
                            .await
                    })
                    .await
                    {
                        views.push(s);
                    }
                }
                if let Some(leader) = views.iter().find(|v| v.state == "leader") {
                    let voters = leader.replicas.iter().filter(|r| r.voter).count();
                    let caught_up = views.len() == addrs.len()
                        && views
                            .iter()
                            .all(|v| v.applied_index >= leader.applied_index);
                    if voters == want && caught_up {
                        return Ok(());
                    }
                }
                if Instant::now() > deadline {
                    bail!("the control replicas did not form a group of {want} within {START_TIMEOUT:?}");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    }

    /// The index of the control replica that leads now (asked with
    /// `hello`), waiting up to 30 s for one.
    pub fn leader(&self) -> anyhow::Result<usize> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            for (i, a) in self.control_addrs.iter().enumerate() {
                if self.controls[i].is_none() {
                    continue;
                }
                let leads = crate::local(async {
                    tokio::time::timeout(
                        Duration::from_secs(2),
                        crate::tls::control(*a, &self.cred),
                    )
                    .await
                    .is_ok_and(|c| c.is_ok_and(|c| c.server_info().is_leader))
                });
                if leads {
                    return Ok(i);
                }
            }
            if Instant::now() > deadline {
                bail!("no control replica leads after {START_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// kill -9 control replica `i` (its data stays).
    pub fn kill_control(&mut self, i: usize) {
        if let Some(mut s) = self.controls[i].take() {
            s.kill9();
        }
    }

    /// Starts control replica `i` again on its address, from its data.
    pub fn restart_control(&mut self, i: usize) -> anyhow::Result<()> {
        let addr = self.control_addrs[i].to_string();
        let server = self.spawn_control(i, &addr, &[])?;
        self.controls[i] = Some(server);
        Ok(())
    }

    /// Waits until `want` nodes are up in the cluster map.
    fn wait_joined(&self, want: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        crate::local(async {
            let c = crate::tls::control(self.control_addr, &self.cred).await?;
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

    /// The pid of every running control replica.
    pub fn control_pids(&self) -> Vec<u32> {
        self.controls.iter().flatten().map(Server::pid).collect()
    }

    pub fn node_pids(&self) -> Vec<u32> {
        self.nodes.iter().map(Server::pid).collect()
    }

    /// Fails if any process has exited.
    pub fn check(&mut self) -> anyhow::Result<()> {
        for (i, control) in self.controls.iter_mut().enumerate() {
            let Some(control) = control else { continue };
            if let Some(status) = control.exit_status() {
                bail!(
                    "control server {i} (pid {}) exited unexpectedly: {status}",
                    control.pid()
                );
            }
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
            control: self
                .controls
                .iter()
                .flatten()
                .map(|c| cpu_seconds(c.pid()).unwrap_or(0.0))
                .sum(),
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

/// Makes a CA and a server and a client certificate under `root/tls`,
/// sets this process's clients to use the client's, and returns the
/// servers' `--tls-*` flags.
fn make_tls(root: &Path) -> anyhow::Result<Vec<std::ffi::OsString>> {
    use ringfs_ops::tls::certs::{create_ca, issue, Role};
    let dir = root.join("tls");
    create_ca(&dir).context("creating the cluster CA")?;
    let hosts = ["127.0.0.1".to_string(), "localhost".to_string()];
    let server = issue(&dir, "server", Role::Server, &hosts, 7, &dir)?;
    let client = issue(&dir, "client", Role::Client, &[], 7, &dir)?;
    crate::tls::set(ringfs_ops::tls::Tls::load(&client)?);
    Ok(ringfs_ops::tls::TlsFlags::args(&server))
}

/// Writes a cluster secret to a new file at `path`, owner-only (the
/// servers refuse a secret that group or others may read).
pub fn write_secret(path: &Path, secret: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(secret.as_bytes()))
        .with_context(|| format!("writing the cluster secret {}", path.display()))
}

/// A fresh cluster secret (the token MAC key shared by control and nodes).
pub fn random_secret() -> String {
    use std::hash::{BuildHasher, RandomState};
    (0..4)
        .map(|i| format!("{:016x}", RandomState::new().hash_one(i)))
        .collect()
}
