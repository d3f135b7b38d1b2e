//! One server process: a control server or a storage node, started from
//! the real binary with its data in a test's directory.

use crate::{binary, write_secret, Server, START_WITHIN};
use ringfs_schema::ids::ChunkId;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

/// The log filter of child processes: `RINGFS_TEST_LOG`, else `warn`.
fn child_log() -> String {
    std::env::var("RINGFS_TEST_LOG").unwrap_or_else(|_| "warn".into())
}

/// Logging and failpoints of a child: only the failpoints given here, none
/// inherited from the test's own environment.
fn child_env(cmd: &mut Command, failpoints: Option<&str>) {
    cmd.env("RUST_LOG", child_log()).env_remove("FAILPOINTS");
    if let Some(f) = failpoints {
        cmd.env("FAILPOINTS", f);
    }
}

/// A running `ringfs-control`: a [`Server`] (pid, kill -9, exit status)
/// with its addresses. Dropping it kills the process.
pub struct ControlProcess {
    pub(crate) server: Server,
    /// Its RPC address.
    pub addr: SocketAddr,
    /// The monitoring endpoint, when started with `--metrics`.
    pub metrics: Option<SocketAddr>,
    /// Its data directory (`dir/control`).
    pub data: PathBuf,
}

impl ControlProcess {
    /// Starts a control server with its data under `dir/control`, listening
    /// on `listen` (port 0 picks one), plus `extra` flags.
    pub fn start(dir: &Path, listen: &str, extra: &[&str]) -> Self {
        Self::start_with(dir, listen, extra, None)
    }

    /// Like [`ControlProcess::start`], with these `FAILPOINTS` armed.
    pub fn start_with(dir: &Path, listen: &str, extra: &[&str], failpoints: Option<&str>) -> Self {
        Self::start_in(dir, "control", listen, extra, failpoints, None)
    }

    /// Starts a control server with its data under `dir/name`, listening
    /// on `listen`, plus `extra` flags, these `FAILPOINTS` armed, inside
    /// network namespace `netns` if given (`ip netns exec`, which execs the
    /// server: the pid is the server's).
    pub fn start_in(
        dir: &Path,
        name: &str,
        listen: &str,
        extra: &[&str],
        failpoints: Option<&str>,
        netns: Option<&str>,
    ) -> Self {
        let data = dir.join(name);
        let secret = write_secret(dir);
        let control = binary("ringfs-control", "ringfs-control");
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(control);
                c
            }
            None => Command::new(control),
        };
        cmd.args(["--listen", listen, "--data"])
            .arg(&data)
            .arg("--secret-file")
            .arg(&secret)
            .args(extra);
        child_env(&mut cmd, failpoints);
        // With --metrics, the endpoint's line comes first.
        let metrics = extra.contains(&"--metrics");
        let lines = 1 + metrics as usize;
        let (server, addrs) = Server::spawn_all(cmd, "ringfs-control ", lines, START_WITHIN)
            .expect("starting ringfs-control");
        ControlProcess {
            addr: addrs[lines - 1],
            metrics: metrics.then_some(addrs[0]),
            server,
            data,
        }
    }

    /// SIGTERM, then waits (up to 30 s) for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        self.server
            .terminate(START_WITHIN)
            .expect("ringfs-control did not exit after SIGTERM")
    }
}

/// How to start a storage node beyond its required flags.
#[derive(Clone, Debug)]
pub struct NodeOptions<'a> {
    /// Shards, on cores 0.. (`--cores N`).
    pub shards: usize,
    /// The IP address to listen on.
    pub listen: &'a str,
    /// Every control replica's address, when there are several (the node
    /// is then given all of them instead of the one it is started with).
    pub controls: &'a [SocketAddr],
    /// Run inside this network namespace (`ip netns exec`, which execs the
    /// node: the pid is the node's).
    pub netns: Option<&'a str>,
    /// More flags.
    pub flags: &'a [&'a str],
    /// The child's `FAILPOINTS` (see the node's `src/failpoint.rs`).
    pub failpoints: Option<&'a str>,
    /// The cluster secret it is given ([`crate::SECRET`] unless a test
    /// plays a node of another cluster).
    pub secret: &'a str,
}

impl Default for NodeOptions<'_> {
    fn default() -> Self {
        Self {
            shards: 1,
            listen: "127.0.0.1",
            controls: &[],
            netns: None,
            flags: &[],
            failpoints: None,
            secret: crate::SECRET,
        }
    }
}

/// A running `ringfs-node`: a [`Server`] (pid, kill -9, exit status) with
/// its addresses. Dropping it kills the process.
pub struct NodeProcess {
    server: Server,
    /// The data-plane endpoint of its shard 0.
    pub addr: SocketAddr,
    /// The data-plane endpoint of every shard, by shard index.
    pub endpoints: Vec<SocketAddr>,
    /// The monitoring endpoint, when started with `--metrics`.
    pub metrics: Option<SocketAddr>,
    /// Its data directory (`dir/<name>`).
    pub data: PathBuf,
}

impl NodeProcess {
    /// Starts a storage node with its data under `dir/name`, joining the
    /// control server at `control` with one shard on core 0, plus `extra`
    /// flags. Returns once its shards listen (joining follows within a
    /// heartbeat: wait for it in the cluster map).
    pub fn start(dir: &Path, name: &str, control: SocketAddr, extra: &[&str]) -> Self {
        let opts = NodeOptions {
            flags: extra,
            ..NodeOptions::default()
        };
        Self::start_with(dir, name, control, &opts)
    }

    /// Like [`NodeProcess::start`], as `opts` says.
    pub fn start_with(dir: &Path, name: &str, control: SocketAddr, opts: &NodeOptions) -> Self {
        let data = dir.join(name);
        let secret = if opts.secret == crate::SECRET {
            write_secret(dir)
        } else {
            let p = dir.join(format!("secret-{name}"));
            crate::write_private(&p, opts.secret.as_bytes());
            p
        };
        let node = binary("ringfs-node", "ringfs-node");
        let mut cmd = match opts.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(node);
                c
            }
            None => Command::new(node),
        };
        let control = if opts.controls.is_empty() {
            control.to_string()
        } else {
            let list: Vec<String> = opts.controls.iter().map(|a| a.to_string()).collect();
            list.join(",")
        };
        cmd.arg("--control")
            .arg(control)
            .args(["--listen", opts.listen])
            .args(["--cores", &opts.shards.to_string()])
            .arg("--data")
            .arg(&data)
            .arg("--secret-file")
            .arg(&secret)
            .args(opts.flags);
        child_env(&mut cmd, opts.failpoints);
        // With --metrics, the endpoint's line comes before the shards'.
        let metrics = opts.flags.contains(&"--metrics");
        let (server, mut endpoints) = Server::spawn_all(
            cmd,
            "ringfs-node: ",
            opts.shards + metrics as usize,
            START_WITHIN,
        )
        .unwrap_or_else(|e| panic!("starting ringfs-node {name}: {e}"));
        let metrics = metrics.then(|| endpoints.remove(0));
        NodeProcess {
            addr: endpoints[0],
            endpoints,
            metrics,
            server,
            data,
        }
    }

    /// The endpoint of the shard that owns chunk `id`.
    pub fn endpoint_for(&self, id: ChunkId) -> String {
        self.endpoints[id.shard(self.endpoints.len())].to_string()
    }

    /// The path of chunk `id`'s file in this node's data directory (`id`
    /// as the client's chunk records carry it).
    pub fn chunk_file(&self, id: u128) -> PathBuf {
        let id = ChunkId::new((id >> 64) as u64, id as u64);
        self.data
            .join(format!("shard-{}", id.shard(self.endpoints.len())))
            .join(format!("{}.chunk", id.file_stem()))
    }

    /// The names of the chunk files in this node's data directory, sorted.
    pub fn chunk_files(&self) -> Vec<String> {
        let mut out = Vec::new();
        for shard in 0..self.endpoints.len() {
            let dir = self.data.join(format!("shard-{shard}"));
            for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
                let name = e.unwrap().file_name().to_string_lossy().to_string();
                if name.ends_with(".chunk") {
                    out.push(name);
                }
            }
        }
        out.sort();
        out
    }

    /// SIGTERM, then waits (up to 30 s) for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        self.server
            .terminate(START_WITHIN)
            .expect("ringfs-node did not exit after SIGTERM")
    }
}

/// Both servers are a [`Server`] underneath.
macro_rules! deref_to_server {
    ($t:ty) => {
        impl std::ops::Deref for $t {
            type Target = Server;
            fn deref(&self) -> &Server {
                &self.server
            }
        }
        impl std::ops::DerefMut for $t {
            fn deref_mut(&mut self) -> &mut Server {
                &mut self.server
            }
        }
    };
}
deref_to_server!(ControlProcess);
deref_to_server!(NodeProcess);
