//! Harness for tests that run the real `ringfs-control` and `ringfs-node`
//! binaries on loopback with temporary directories.
#![allow(dead_code)]

use capnp_rpc::{rpc_twoparty_capnp, twoparty, RpcSystem};
use ringfs_schema::control_capnp::control;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio_util::compat::{TokioAsyncReadCompatExt, TokioAsyncWriteCompatExt};

pub const SECRET: &str = "integration-test-cluster-secret";

/// A child process killed (by its pid) when dropped.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn node_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ringfs-node"))
}

/// The `ringfs-control` binary next to `ringfs-node` (built on demand, so
/// `cargo test -p ringfs-node` works on its own).
pub fn control_bin() -> PathBuf {
    let path = node_bin().with_file_name("ringfs-control");
    let profile_release = node_bin()
        .parent()
        .and_then(|p| p.file_name())
        .is_some_and(|n| n == "release");
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args([
        "build",
        "--quiet",
        "-p",
        "ringfs-control",
        "--bin",
        "ringfs-control",
    ]);
    if profile_release {
        cmd.arg("--release");
    }
    let status = cmd
        .status()
        .expect("running cargo build for ringfs-control");
    assert!(status.success(), "building ringfs-control failed");
    assert!(path.exists(), "{} missing", path.display());
    path
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn write_secret(dir: &Path) -> PathBuf {
    let p = dir.join("secret");
    std::fs::write(&p, SECRET).unwrap();
    p
}

pub fn start_control(dir: &Path, port: u16) -> Proc {
    let data = dir.join("control");
    let log = dir.join(format!("control-{port}.log"));
    let secret = write_secret(dir);
    let child = Command::new(control_bin())
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--heartbeat-ms",
            "200",
            "--node-ttl-ms",
            "2000",
        ])
        .arg("--data")
        .arg(&data)
        .arg("--secret-file")
        .arg(&secret)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let p = Proc { child, log };
    wait_until(
        Duration::from_secs(20),
        || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        || format!("control server did not listen: {}", p.log_text()),
    );
    p
}

/// A running node and its shard endpoints (by shard index).
pub struct Node {
    pub proc: Proc,
    pub data: PathBuf,
    pub endpoints: Vec<String>,
}

impl Node {
    /// The endpoint of the shard owning `id`.
    pub fn endpoint_for(&self, id: ringfs_schema::ids::ChunkId) -> String {
        self.endpoints[id.shard(self.endpoints.len())].clone()
    }

    pub fn node_id(&self) -> u64 {
        let text = std::fs::read_to_string(self.data.join("node-identity")).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("node_id = "))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }
}

pub fn start_node(dir: &Path, name: &str, control_port: u16, extra: &[&str]) -> Node {
    let data = dir.join(name);
    let log = dir.join(format!("{name}.log"));
    let out = dir.join(format!("{name}.out"));
    let secret = write_secret(dir);
    let child = Command::new(node_bin())
        .args([
            "--control",
            &format!("127.0.0.1:{control_port}"),
            "--listen",
            "127.0.0.1",
        ])
        .arg("--data")
        .arg(&data)
        .arg("--secret-file")
        .arg(&secret)
        .args(extra)
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let proc = Proc { child, log };
    let shards = extra
        .iter()
        .position(|a| *a == "--cores")
        .map(|i| ringfs_node::parse_cores(extra[i + 1]).unwrap().len())
        .unwrap_or(1);
    let mut endpoints = Vec::new();
    wait_until(
        Duration::from_secs(20),
        || {
            let text = std::fs::read_to_string(&out).unwrap_or_default();
            endpoints = text
                .lines()
                .filter_map(|l| l.split("listening on ").nth(1))
                .map(|s| s.trim().to_string())
                .collect();
            endpoints.len() == shards
        },
        || format!("node {name} did not start: {}", proc.log_text()),
    );
    let node = Node {
        proc,
        data,
        endpoints,
    };
    // Joined: the identity file exists.
    wait_until(
        Duration::from_secs(20),
        || node.data.join("node-identity").exists(),
        || format!("node {name} did not join: {}", node.proc.log_text()),
    );
    node
}

pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool, msg: impl Fn() -> String) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "{}", msg());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A node as the control server's cluster map shows it.
#[derive(Debug, Clone)]
pub struct MapNode {
    pub node_id: u64,
    pub up: bool,
    pub shards: Vec<String>,
    pub total: u64,
    pub used: u64,
    pub reserved: u64,
    pub chunks: u64,
    pub last_heartbeat_ago_ms: u64,
}

/// Fetches the cluster map over Cap'n Proto RPC.
pub fn cluster_map(port: u16) -> Vec<MapNode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let (r, w) = stream.into_split();
        let net = twoparty::VatNetwork::new(
            r.compat(),
            w.compat_write(),
            rpc_twoparty_capnp::Side::Client,
            Default::default(),
        );
        let mut rpc = RpcSystem::new(Box::new(net), None);
        let c: control::Client = rpc.bootstrap(rpc_twoparty_capnp::Side::Server);
        tokio::task::spawn_local(rpc);
        let reply = c.cluster_map_request().send().promise.await.unwrap();
        let map = reply.get().unwrap().get_map().unwrap();
        map.get_nodes()
            .unwrap()
            .iter()
            .map(|n| {
                let cap = n.get_capacity().unwrap();
                MapNode {
                    node_id: n.get_node_id(),
                    up: n.get_up(),
                    shards: n
                        .get_shards()
                        .unwrap()
                        .iter()
                        .map(|s| s.get_address().unwrap().to_string().unwrap())
                        .collect(),
                    total: cap.get_total_bytes(),
                    used: cap.get_used_bytes(),
                    reserved: cap.get_reserved_bytes(),
                    chunks: cap.get_chunk_count(),
                    last_heartbeat_ago_ms: n.get_last_heartbeat_ago_ms(),
                }
            })
            .collect()
    })
}

/// Runs `f` on a glommio executor (the data-plane test client uses glommio TCP).
pub fn on_glommio<F, Fut, T>(f: F) -> T
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T> + 'static,
    T: Send + 'static,
{
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(256 * 1024)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap()
}
