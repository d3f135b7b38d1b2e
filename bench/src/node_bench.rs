//! `ringfs-bench node`: drives one storage node over loopback and compares
//! it with the raw disk.
//!
//! It starts its own control server and a node (data in a temporary
//! directory), then runs, over the data-plane protocol:
//! - `seq_write_1m`: 1 MiB writes, 16 in flight (16 chunks written front to
//!   back concurrently: one chunk takes one write at a time),
//! - `seq_read_1m`: 1 MiB reads of those chunks, 16 in flight,
//! - `rand_read_4k`: 4 KiB reads at random aligned offsets, 64 in flight,
//!
//! and the same patterns with io_uring + O_DIRECT on files in the same
//! directory ([`crate::raw_disk`]); each report carries the ratio
//! node / raw (throughput for sequential workloads, IOPS for random reads).

use crate::cluster::command;
use crate::raw_disk::{self, Pattern};
use crate::report::Baseline;
use crate::stats::Percentiles;
use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use ringfs_node::peer::Peer;
use ringfs_ops::launch::Server;
use ringfs_schema::frame::{Header, Op, Status, Token};
use ringfs_schema::ids::{mix64, ChunkId};
use ringfs_schema::Version;
use serde::Serialize;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// How long a server may take to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How to start the servers: a program and leading arguments each.
#[derive(Debug, Clone)]
pub struct Launcher {
    /// e.g. `[<bench exe>, "__control"]` or `[".../ringfs-control"]`.
    pub control: Vec<OsString>,
    /// e.g. `[<bench exe>, "__node"]` or `[".../ringfs-node"]`.
    pub node: Vec<OsString>,
}

impl Launcher {
    /// `ringfs-control` and `ringfs-node` next to the running executable.
    pub fn sibling_binaries() -> anyhow::Result<Self> {
        let exe = std::env::current_exe()?;
        Ok(Self {
            control: vec![exe.with_file_name("ringfs-control").into()],
            node: vec![exe.with_file_name("ringfs-node").into()],
        })
    }

    /// Hidden subcommands of one binary, e.g. `__control` and `__node`.
    pub fn subcommands(exe: PathBuf, control: &str, node: &str) -> Self {
        Self {
            control: vec![exe.clone().into(), control.into()],
            node: vec![exe.into(), node.into()],
        }
    }
}

/// Knobs of the node benchmark.
#[derive(Debug, Clone)]
pub struct Options {
    pub launcher: Launcher,
    /// Parent of the temporary directory (node data and raw files); the
    /// system temp dir if None.
    pub dir: Option<PathBuf>,
    /// The node's `--cores` (default "1,": one shard on core 1).
    pub node_cores: String,
    /// Core the load generator is pinned to (default 0).
    pub client_core: usize,
    /// Chunks (and raw files) of the sequential workloads.
    pub chunks: usize,
    /// Bytes per chunk / raw file.
    pub chunk_bytes: u64,
    /// Operations of the random-read workload.
    pub random_reads: u64,
}

impl Options {
    pub fn new(launcher: Launcher) -> Self {
        Self {
            launcher,
            dir: None,
            node_cores: "1,".into(),
            client_core: 0,
            chunks: 16,
            chunk_bytes: 64 << 20,
            random_reads: 200_000,
        }
    }
}

/// One workload's figures (the JSON array element).
#[derive(Debug, Clone, Serialize)]
pub struct WorkloadReport {
    pub workload: String,
    pub block_bytes: usize,
    pub in_flight: usize,
    pub ops: u64,
    pub seconds: f64,
    pub throughput_mib_s: f64,
    pub ops_per_s: f64,
    pub latency_us: Percentiles,
    pub baseline: Baseline,
    /// Node / raw: throughput for sequential workloads, ops/s for random reads.
    pub ratio: f64,
}

/// Runs the benchmark; returns one report per workload.
pub fn run(opts: &Options) -> anyhow::Result<Vec<WorkloadReport>> {
    let parent = opts.dir.clone().unwrap_or_else(std::env::temp_dir);
    let tmp = tempfile::tempdir_in(&parent)
        .with_context(|| format!("temporary directory in {}", parent.display()))?;
    let dir = tmp.path();
    let secret = dir.join("secret");
    let secret_text = crate::cluster::random_secret();
    crate::cluster::write_secret(&secret, &secret_text)?;
    // The load generator holds the secret, so it issues the capabilities
    // the control server would hand a client (key id 1, the default).
    let keys = ringfs_ops::capability::CapabilityKeys::new(secret_text.trim().as_bytes(), 1);

    let mut cmd = command(&opts.launcher.control)?;
    cmd.args(["--listen", "127.0.0.1:0"])
        .arg("--data")
        .arg(dir.join("control"))
        .arg("--secret-file")
        .arg(&secret)
        .stderr(Stdio::null());
    let control = Server::spawn(cmd, "listening on ", START_TIMEOUT)
        .context("starting the control server")?;

    let shards = ringfs_node_shards(&opts.node_cores)?;
    let node_data = dir.join("node");
    let mut cmd = command(&opts.launcher.node)?;
    cmd.args([
        "--control",
        &control.addr.to_string(),
        "--listen",
        "127.0.0.1",
    ])
    .args(["--cores", &opts.node_cores])
    .arg("--data")
    .arg(&node_data)
    .arg("--secret-file")
    .arg(&secret)
    .stderr(Stdio::null());
    let (_node, endpoints) = Server::spawn_all(cmd, "listening on ", shards, START_TIMEOUT)
        .context("starting the node")?;
    let endpoints: Vec<String> = endpoints.iter().map(ToString::to_string).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !node_data.join("node-identity").exists() {
        if Instant::now() > deadline {
            bail!("the node did not join the control server within 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    let o = opts.clone();
    let node_results =
        glommio::LocalExecutorBuilder::new(glommio::Placement::Fixed(opts.client_core))
            .io_memory(1 << 20)
            .name("node-bench-client")
            .spawn(move || async move { drive_node(&o, &endpoints, keys).await })
            .map_err(|e| anyhow::anyhow!("starting the load generator: {e}"))?
            .join()
            .map_err(|e| anyhow::anyhow!("load generator: {e}"))??;

    let raw_dir = dir.join("raw");
    let mib = 1 << 20;
    let raw = [
        raw_disk::run(
            &raw_dir,
            opts.chunks,
            opts.chunk_bytes,
            mib,
            16,
            1,
            Pattern::SeqWrite,
        )?,
        raw_disk::run(
            &raw_dir,
            opts.chunks,
            opts.chunk_bytes,
            mib,
            16,
            1,
            Pattern::SeqRead,
        )?,
        raw_disk::run(
            &raw_dir,
            opts.chunks,
            opts.chunk_bytes,
            4096,
            64,
            1,
            Pattern::Random {
                ops: opts.random_reads,
                seed: 0x1234_5678,
                read_percent: 100,
            },
        )?,
    ];
    let mut reports = Vec::new();
    for (n, r) in node_results.into_iter().zip(raw) {
        let secs = r.elapsed.as_secs_f64();
        let baseline = Baseline {
            throughput_mib_s: r.bytes as f64 / mib as f64 / secs,
            ops_per_s: r.ops as f64 / secs,
            latency_us: Percentiles::of(&r.latency),
        };
        let ratio = if n.workload.starts_with("rand") {
            n.ops_per_s / baseline.ops_per_s
        } else {
            n.throughput_mib_s / baseline.throughput_mib_s
        };
        reports.push(WorkloadReport {
            baseline,
            ratio,
            ..n
        });
    }
    Ok(reports)
}

fn ringfs_node_shards(cores: &str) -> anyhow::Result<usize> {
    Ok(ringfs_node::parse_cores(cores)?.len())
}

/// A chunk the load generator writes and reads, with its shard's connection.
struct Target {
    id: ChunkId,
    token: Token,
    peer: Rc<Peer>,
}

struct Measured {
    ops: u64,
    bytes: u64,
    elapsed: Duration,
    latency: Histogram<u64>,
}

impl Measured {
    fn report(self, workload: &str, block: usize, in_flight: usize) -> WorkloadReport {
        let secs = self.elapsed.as_secs_f64();
        WorkloadReport {
            workload: workload.into(),
            block_bytes: block,
            in_flight,
            ops: self.ops,
            seconds: secs,
            throughput_mib_s: self.bytes as f64 / (1 << 20) as f64 / secs,
            ops_per_s: self.ops as f64 / secs,
            latency_us: Percentiles::of(&self.latency),
            baseline: Baseline {
                throughput_mib_s: 0.0,
                ops_per_s: 0.0,
                latency_us: Percentiles::default(),
            },
            ratio: 0.0,
        }
    }
}

async fn drive_node(
    opts: &Options,
    endpoints: &[String],
    keys: ringfs_ops::capability::CapabilityKeys,
) -> anyhow::Result<Vec<WorkloadReport>> {
    const CLIENT: u64 = 1;
    let shards = endpoints.len();
    // A few connections per shard; chunks are spread over all shards.
    let mut peers = Vec::new();
    for ep in endpoints {
        let mut conns = Vec::new();
        for _ in 0..4 {
            conns.push(Peer::connect_issuing(ep, keys.clone()).await?);
        }
        peers.push(conns);
    }
    let mut targets = Vec::new();
    for i in 0..opts.chunks {
        let shard = i % shards;
        let peer = peers[shard][(i / shards) % 4].clone();
        let mut h = Header::request(0, Op::Reserve);
        h.client_id = CLIENT;
        h.reserve_bytes = opts.chunk_bytes;
        h.lease_ms = 600_000;
        let (r, _) = peer.call(h, &[]).await?;
        if r.status != Status::Ok {
            bail!("reserve failed: {:?} {}", r.status, r.message);
        }
        targets.push(Target {
            id: r.chunk_id,
            token: r.token,
            peer,
        });
    }
    let targets = Rc::new(targets);
    let mib = 1usize << 20;
    let blocks = opts.chunk_bytes / mib as u64;
    let payload = Rc::new(vec![0x5au8; mib]);
    // Every write is 1 MiB at a 1 MiB offset, so its CRCs (per 4 KiB piece,
    // protocol 2) are the same for all of them: computed once, off the clock.
    let crcs = Rc::new(ringfs_schema::crc::piece_crcs(0, &payload));

    // Sequential writes: stream s writes chunk s front to back.
    let write = run_streams(
        targets.clone(),
        targets.len(),
        move |t: Rc<Vec<Target>>, s: usize, k: u64| {
            let (payload, crcs) = (payload.clone(), crcs.clone());
            async move {
                if k >= blocks {
                    return Ok(None);
                }
                let tg = &t[s];
                let mut h = Header::request(0, Op::Write);
                h.chunk_id = tg.id;
                h.offset = k * mib as u64;
                h.token = tg.token.clone();
                // Strict versions: write k goes on top of write k - 1.
                h.expected = if k == 0 {
                    Version::NONE
                } else {
                    Version::new(1, k)
                };
                h.version = Version::new(1, k + 1);
                h.crcs = crcs.to_vec();
                let (r, _) = tg.peer.call(h, &payload).await?;
                if r.status != Status::Ok {
                    bail!("write failed: {:?} {}", r.status, r.message);
                }
                Ok(Some(mib as u64))
            }
        },
    )
    .await?;
    let read = run_streams(
        targets.clone(),
        targets.len(),
        move |t: Rc<Vec<Target>>, s: usize, k: u64| async move {
            if k >= blocks {
                return Ok(None);
            }
            let tg = &t[s];
            let mut h = Header::request(0, Op::Read);
            h.chunk_id = tg.id;
            h.offset = k * mib as u64;
            h.length = mib as u32;
            h.token = tg.token.clone();
            let (r, data) = tg.peer.call(h, &[]).await?;
            if r.status != Status::Ok || data.len() != mib {
                bail!(
                    "read failed: {:?} {} ({} bytes)",
                    r.status,
                    r.message,
                    data.len()
                );
            }
            Ok(Some(mib as u64))
        },
    )
    .await?;
    let per_stream = opts.random_reads / 64;
    let chunk_pages = opts.chunk_bytes / 4096;
    let rand = run_streams(
        targets.clone(),
        64,
        move |t: Rc<Vec<Target>>, s: usize, k: u64| async move {
            if k >= per_stream {
                return Ok(None);
            }
            let mut x = mix64((s as u64) << 32 | k);
            let tg = &t[(x % t.len() as u64) as usize];
            x = mix64(x);
            let mut h = Header::request(0, Op::Read);
            h.chunk_id = tg.id;
            h.offset = (x % chunk_pages) * 4096;
            h.length = 4096;
            h.token = tg.token.clone();
            let (r, data) = tg.peer.call(h, &[]).await?;
            if r.status != Status::Ok || data.len() != 4096 {
                bail!("random read failed: {:?} {}", r.status, r.message);
            }
            Ok(Some(4096))
        },
    )
    .await?;
    Ok(vec![
        write.report("seq_write_1m", mib, targets.len()),
        read.report("seq_read_1m", mib, targets.len()),
        rand.report("rand_read_4k", 4096, 64),
    ])
}

/// Runs `streams` concurrent loops; loop `s` calls `op(targets, s, k)` for
/// k = 0, 1, ... until it returns `None`, timing every call.
async fn run_streams<F, Fut>(
    targets: Rc<Vec<Target>>,
    streams: usize,
    op: F,
) -> anyhow::Result<Measured>
where
    F: Fn(Rc<Vec<Target>>, usize, u64) -> Fut + Clone + 'static,
    Fut: std::future::Future<Output = anyhow::Result<Option<u64>>> + 'static,
{
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for s in 0..streams {
        let op = op.clone();
        let targets = targets.clone();
        tasks.push(glommio::spawn_local(async move {
            let mut h = Histogram::<u64>::new_with_bounds(1, 100_000_000, 3).expect("bounds");
            let (mut ops, mut bytes) = (0u64, 0u64);
            for k in 0.. {
                let start = Instant::now();
                match op(targets.clone(), s, k).await? {
                    None => break,
                    Some(b) => {
                        h.saturating_record(start.elapsed().as_micros() as u64);
                        ops += 1;
                        bytes += b;
                    }
                }
            }
            Ok::<_, anyhow::Error>((ops, bytes, h))
        }));
    }
    let mut latency = Histogram::<u64>::new_with_bounds(1, 100_000_000, 3).expect("bounds");
    let (mut ops, mut bytes) = (0, 0);
    for t in tasks {
        let (o, b, h) = t.await?;
        ops += o;
        bytes += b;
        latency
            .add(&h)
            .map_err(|e| anyhow::anyhow!("merging histograms: {e}"))?;
    }
    Ok(Measured {
        ops,
        bytes,
        elapsed: t0.elapsed(),
        latency,
    })
}

/// A human-readable table of the reports.
pub fn print_table(reports: &[WorkloadReport]) {
    println!(
        "{:<14} {:>10} {:>10} {:>8} {:>8} {:>8} | {:>10} {:>10} | {:>6}",
        "workload",
        "MiB/s",
        "ops/s",
        "p50 us",
        "p99 us",
        "p999 us",
        "raw MiB/s",
        "raw ops/s",
        "ratio"
    );
    for r in reports {
        println!(
            "{:<14} {:>10.1} {:>10.0} {:>8} {:>8} {:>8} | {:>10.1} {:>10.0} | {:>5.0}%",
            r.workload,
            r.throughput_mib_s,
            r.ops_per_s,
            r.latency_us.p50,
            r.latency_us.p99,
            r.latency_us.p999,
            r.baseline.throughput_mib_s,
            r.baseline.ops_per_s,
            r.ratio * 100.0
        );
    }
}
