//! `ringfs-bench`: load generator and local-cluster launcher.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ringfs_bench::process::Server;
use ringfs_bench::stats::cpu_seconds;
use ringfs_bench::{metadata, node_bench};
use serde_json::json;

#[derive(Parser)]
#[command(
    name = "ringfs-bench",
    version,
    about = "ringfs load generator and local-cluster launcher"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Metadata workload: durable creates, stats and unlinks of empty files.
    /// Starts its own control server in a temporary directory unless given --control.
    Metadata {
        /// An existing control server to use instead of starting one.
        #[arg(long)]
        control: Option<SocketAddr>,
        /// Concurrent client connections, each with one request in flight.
        #[arg(long, default_value_t = 16)]
        clients: usize,
        /// Files to create, stat and unlink.
        #[arg(long, default_value_t = 20_000)]
        files: usize,
        /// Load-generator threads the clients are spread over.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Write the results as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// One storage node over loopback: 1 MiB sequential writes and reads (16 in
    /// flight) and 4 KiB random reads (64 in flight), each compared with the
    /// same pattern raw on the same filesystem (io_uring + O_DIRECT).
    /// Starts its own control server and node in a temporary directory.
    Node {
        /// Write the results (an array, one object per workload) as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Parent directory of the node's data and the raw files (the
        /// filesystem under test) [default: the system temp dir].
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Chunks (and raw files) of the sequential workloads.
        #[arg(long, default_value_t = 16)]
        chunks: usize,
        /// Bytes per chunk / raw file.
        #[arg(long, default_value_t = 64 << 20)]
        chunk_bytes: u64,
        /// Operations of the random-read workload.
        #[arg(long, default_value_t = 200_000)]
        random_reads: u64,
        /// The node's --cores.
        #[arg(long, default_value = "1,")]
        node_cores: String,
        /// Core the load generator is pinned to.
        #[arg(long, default_value_t = 0)]
        client_core: usize,
    },
    /// Runs the control server (used by the launcher for its child processes).
    #[command(name = "__control", hide = true, disable_help_flag = true)]
    Control {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Runs a storage node (used by the launcher for its child processes).
    #[command(name = "__node", hide = true, disable_help_flag = true)]
    StorageNode {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Control { args } => {
            let argv = std::iter::once("ringfs-control".to_string()).chain(args);
            return ringfs_control::cli::main_with_args(argv);
        }
        Cmd::StorageNode { args } => {
            let argv = std::iter::once("ringfs-node".to_string()).chain(args);
            return ringfs_node::cli::main_with_args(argv);
        }
        Cmd::Node {
            json,
            dir,
            chunks,
            chunk_bytes,
            random_reads,
            node_cores,
            client_core,
        } => run_node(
            node_bench::Options {
                dir,
                chunks,
                chunk_bytes,
                random_reads,
                node_cores,
                client_core,
                ..node_bench::Options::new(node_bench::Launcher::subcommands(
                    std::env::current_exe().expect("locating this binary"),
                    "__control",
                    "__node",
                ))
            },
            json.as_deref(),
        ),
        Cmd::Metadata {
            control,
            clients,
            files,
            threads,
            json,
        } => run_metadata(control, clients, files, threads, json.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringfs-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Starts a control server as a child process of this binary, with its data
/// in `dir`.
fn start_control(dir: &Path) -> anyhow::Result<Server> {
    let secret = dir.join("secret");
    std::fs::write(&secret, random_secret()).context("writing the cluster secret")?;
    let mut cmd = Command::new(std::env::current_exe().context("locating this binary")?);
    cmd.arg("__control")
        .args(["--listen", "127.0.0.1:0", "--data"])
        .arg(dir.join("control"))
        .arg("--secret-file")
        .arg(&secret)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        );
    Server::spawn(cmd, "ringfs-control listening on ", Duration::from_secs(30))
        .context("starting the control server")
}

/// A JSON object with one member per phase.
fn per_phase(
    phases: &[metadata::Phase],
    f: impl Fn(&metadata::Phase) -> serde_json::Value,
) -> serde_json::Value {
    serde_json::Value::Object(phases.iter().map(|p| (p.name.to_string(), f(p))).collect())
}

fn random_secret() -> String {
    use std::hash::{BuildHasher, RandomState};
    (0..4)
        .map(|i| format!("{:016x}", RandomState::new().hash_one(i)))
        .collect()
}

fn run_node(opts: node_bench::Options, json_out: Option<&Path>) -> anyhow::Result<()> {
    let reports = node_bench::run(&opts)?;
    node_bench::print_table(&reports);
    if let Some(path) = json_out {
        std::fs::write(path, serde_json::to_string_pretty(&reports)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn run_metadata(
    control: Option<SocketAddr>,
    clients: usize,
    files: usize,
    threads: usize,
    json_out: Option<&Path>,
) -> anyhow::Result<()> {
    let tmp = tempfile::Builder::new().prefix("ringfs-bench-").tempdir()?;
    let mut own = None;
    let addr = match control {
        Some(a) => a,
        None => {
            let s = start_control(tmp.path())?;
            let a = s.addr;
            own = Some(s);
            a
        }
    };
    let control_pid = own.as_ref().map(Server::pid);
    let cpu_before = control_pid.and_then(cpu_seconds);
    let bench_before = cpu_seconds(std::process::id());
    println!(
        "metadata: {clients} clients, {files} files, {threads} load threads, control at {addr}"
    );
    let phases = metadata::run(addr, clients, files, threads)?;
    let control_cpu = control_pid
        .and_then(cpu_seconds)
        .zip(cpu_before)
        .map(|(a, b)| a - b);
    let bench_cpu = cpu_seconds(std::process::id())
        .zip(bench_before)
        .map(|(a, b)| a - b);

    println!(
        "{:<8} {:>8} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "op", "ops", "ops/s", "p50 µs", "p90 µs", "p99 µs", "p999 µs", "max µs"
    );
    for p in &phases {
        let l = p.latency;
        println!(
            "{:<8} {:>8} {:>10.0} {:>8} {:>8} {:>8} {:>8} {:>8}",
            p.name,
            p.ops,
            p.ops_per_s(),
            l.p50,
            l.p90,
            l.p99,
            l.p999,
            l.max
        );
    }
    if let Some(cpu) = control_cpu {
        println!(
            "control server CPU: {cpu:.2} s; load generator CPU: {:.2} s",
            bench_cpu.unwrap_or(0.0)
        );
    }
    if let Some(path) = json_out {
        let rate = |name: &str| {
            phases
                .iter()
                .find(|p| p.name == name)
                .map(|p| p.ops_per_s())
        };
        let doc = json!({
            "workload": "metadata",
            "clients": clients,
            "files": files,
            "threads": threads,
            "creates_per_s": rate("create"),
            "stats_per_s": rate("stat"),
            "unlinks_per_s": rate("unlink"),
            "ops": per_phase(&phases, |p| json!(p.ops)),
            "seconds": per_phase(&phases, |p| json!(p.seconds)),
            "latency_us": per_phase(&phases, |p| json!(p.latency)),
            "cpu_seconds": { "control": control_cpu, "bench": bench_cpu },
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    drop(own);
    Ok(())
}
