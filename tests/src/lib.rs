//! Harness for integration tests that start the real ringfs binaries as
//! child processes on loopback, each with its own temporary directory.
//!
//! Binaries are built on first use with the cargo that runs the tests, so
//! `cargo test` alone is enough.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

pub use ringfs_bench::local;
use ringfs_bench::process::Server;

/// The cluster secret every test cluster uses.
pub const SECRET: &str = "ringfs-test-secret-0123456789";

/// Builds `bin` of `package` (once per test process) and returns its path.
pub fn binary(package: &str, bin: &str) -> PathBuf {
    static BUILT: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>
    let profile_dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = profile_dir.join(bin);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if !built.iter().any(|b| b == bin) {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "-p", package, "--bin", bin]);
        if !cfg!(debug_assertions) {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("running cargo build");
        assert!(
            status.success(),
            "cargo build -p {package} --bin {bin} failed"
        );
        built.push(bin.to_string());
    }
    path
}

/// The log filter of child processes: `RINGFS_TEST_LOG`, else `warn`.
fn child_log() -> String {
    std::env::var("RINGFS_TEST_LOG").unwrap_or_else(|_| "warn".into())
}

/// Writes the cluster secret into `dir` and returns the file's path.
pub fn write_secret(dir: &Path) -> PathBuf {
    let p = dir.join("secret");
    std::fs::write(&p, SECRET).expect("writing the secret file");
    p
}

/// A running `ringfs-control`. Dropping it kills the process.
pub struct ControlProcess {
    server: Server,
    pub addr: SocketAddr,
    /// The monitoring endpoint, when started with `--metrics`.
    pub metrics: Option<SocketAddr>,
    pub data: PathBuf,
}

impl ControlProcess {
    /// Starts a control server with its data under `dir/control`, listening
    /// on `listen` (port 0 picks one), plus `extra` flags.
    pub fn start(dir: &Path, listen: &str, extra: &[&str]) -> Self {
        let data = dir.join("control");
        let secret = write_secret(dir);
        let mut cmd = Command::new(binary("ringfs-control", "ringfs-control"));
        cmd.args(["--listen", listen, "--data"])
            .arg(&data)
            .arg("--secret-file")
            .arg(&secret)
            .args(extra)
            .env("RUST_LOG", child_log());
        // With --metrics, the endpoint's "listening on" line comes first.
        let lines = if extra.contains(&"--metrics") { 2 } else { 1 };
        let (server, addrs) =
            Server::spawn_all(cmd, "listening on ", lines, Duration::from_secs(30))
                .expect("starting ringfs-control");
        ControlProcess {
            addr: addrs[lines - 1],
            metrics: (lines == 2).then_some(addrs[0]),
            server,
            data,
        }
    }

    /// kill -9: no chance to flush or clean up.
    pub fn kill9(mut self) {
        self.server.kill9();
    }

    /// The process id (to send signals).
    pub fn pid(&self) -> u32 {
        self.server.pid()
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        self.server.is_running()
    }

    /// SIGTERM, then waits (up to 30 s) for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.server
            .terminate(STOP_WITHIN)
            .expect("ringfs-control did not exit after SIGTERM")
    }
}

/// How long a test waits for a server to stop after SIGTERM.
const STOP_WITHIN: Duration = Duration::from_secs(30);

/// A running `ringfs-node` with one shard. Dropping it kills the process.
pub struct NodeProcess {
    server: Server,
    /// The data-plane endpoint of its shard 0.
    pub addr: SocketAddr,
    pub data: PathBuf,
}

impl NodeProcess {
    /// Starts a storage node with its data under `dir/name`, joining the
    /// control server at `control` with one shard on core 0, plus `extra`
    /// flags. Returns once shard 0 listens (joining follows within a
    /// heartbeat: wait for it in the cluster map).
    pub fn start(dir: &Path, name: &str, control: SocketAddr, extra: &[&str]) -> Self {
        Self::start_on(dir, name, control, "127.0.0.1", None, extra)
    }

    /// Like [`NodeProcess::start`], listening on `listen` (an IP address)
    /// and, with `netns`, run inside that network namespace
    /// (`ip netns exec`, which execs the node: the pid is the node's).
    pub fn start_on(
        dir: &Path,
        name: &str,
        control: SocketAddr,
        listen: &str,
        netns: Option<&str>,
        extra: &[&str],
    ) -> Self {
        let data = dir.join(name);
        let secret = write_secret(dir);
        let node = binary("ringfs-node", "ringfs-node");
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(node);
                c
            }
            None => Command::new(node),
        };
        cmd.arg("--control")
            .arg(control.to_string())
            .args(["--listen", listen, "--cores", "1", "--data"])
            .arg(&data)
            .arg("--secret-file")
            .arg(&secret)
            .args(extra)
            .env("RUST_LOG", child_log());
        let server = Server::spawn(
            cmd,
            "ringfs-node: shard 0 on core 0 listening on ",
            Duration::from_secs(30),
        )
        .expect("starting ringfs-node");
        NodeProcess {
            addr: server.addr,
            server,
            data,
        }
    }

    /// kill -9: no chance to flush or clean up.
    pub fn kill9(mut self) {
        self.server.kill9();
    }

    pub fn pid(&self) -> u32 {
        self.server.pid()
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        self.server.is_running()
    }

    /// How the process ended, if it has.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.server.exit_status()
    }

    /// SIGTERM, then waits (up to 30 s) for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.server
            .terminate(STOP_WITHIN)
            .expect("ringfs-node did not exit after SIGTERM")
    }
}

/// A control server and storage nodes on loopback in a temporary directory,
/// with a short heartbeat (200 ms) and node TTL (1 s) so down nodes show
/// quickly. Dropping it kills every process.
pub struct Cluster {
    pub control: ControlProcess,
    /// `None` once killed.
    pub nodes: Vec<Option<NodeProcess>>,
    pub dir: tempfile::TempDir,
}

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

impl Cluster {
    /// Starts a control server and `nodes` nodes (1 GiB each) and waits
    /// until all of them are up in the cluster map.
    pub fn start(nodes: usize) -> Self {
        Self::start_with(
            nodes,
            &["--heartbeat-ms", "200", "--node-ttl-ms", "1000"],
            &[],
        )
    }

    /// Like [`Cluster::start`] with these control-server flags and extra
    /// node flags.
    pub fn start_with(nodes: usize, control_flags: &[&str], node_flags: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let control = ControlProcess::start(dir.path(), "127.0.0.1:0", control_flags);
        let nodes = (0..nodes)
            .map(|i| {
                let mut flags = vec!["--capacity-bytes", "1073741824"];
                flags.extend_from_slice(node_flags);
                Some(NodeProcess::start(
                    dir.path(),
                    &format!("n{i}"),
                    control.addr,
                    &flags,
                ))
            })
            .collect();
        let c = Cluster {
            control,
            nodes,
            dir,
        };
        c.wait_up(c.nodes.iter().filter(|n| n.is_some()).count());
        c
    }

    /// Waits (up to 20 s) until exactly `n` nodes are up in the cluster map.
    pub fn wait_up(&self, n: usize) {
        let addr = self.control.addr;
        ringfs_client::local(async move {
            let c = ringfs_client::ControlClient::connect(addr)
                .await
                .expect("connecting to the control server");
            let start = std::time::Instant::now();
            loop {
                let map = c.cluster_map().await.expect("cluster map");
                let up = map.nodes.iter().filter(|n| n.up).count();
                if up == n {
                    return;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(20),
                    "{up} nodes up, want {n}: {map:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
    }

    /// kill -9 node `i`.
    pub fn kill9(&mut self, i: usize) {
        if let Some(n) = self.nodes[i].take() {
            n.kill9();
        }
    }

    /// kill -9 the control server (its data stays).
    pub fn kill_control9(&mut self) {
        self.control.server.kill9();
    }

    /// Starts the control server again on the same address and data, with
    /// these flags (after [`Cluster::kill_control9`]).
    pub fn restart_control(&mut self, flags: &[&str]) {
        self.control.server.kill9();
        let addr = self.control.addr.to_string();
        self.control = ControlProcess::start(self.dir.path(), &addr, flags);
    }

    /// Starts node `i` (a new one if `i == nodes.len()`, else a restart
    /// from its data directory, so with its node id) with these flags.
    pub fn start_node(&mut self, i: usize, flags: &[&str]) {
        let mut all = Vec::new();
        if !flags.contains(&"--capacity-bytes") {
            all.extend(["--capacity-bytes", "1073741824"]);
        }
        all.extend_from_slice(flags);
        let n = NodeProcess::start(self.dir.path(), &format!("n{i}"), self.control.addr, &all);
        if i == self.nodes.len() {
            self.nodes.push(Some(n));
        } else {
            assert!(self.nodes[i].is_none(), "node {i} is running");
            self.nodes[i] = Some(n);
        }
    }
}
