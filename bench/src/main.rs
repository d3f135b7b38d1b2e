//! `ringfs-bench`: load generator and local-cluster launcher.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use ringfs_bench::cluster::{ClusterOptions, LocalCluster};
use ringfs_bench::live::{self, Limit};
use ringfs_bench::report::CpuSeconds;
use ringfs_bench::report::{self, Report};
use ringfs_bench::stats::cpu_seconds;
use ringfs_bench::suite::{self, SuiteOptions};
use ringfs_bench::workload::{Target, Workload};
use ringfs_bench::{fio, node_bench, plot};
use ringfs_client::CreateOptions;

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
    /// Starts a control server and storage nodes as child processes on
    /// loopback (data in a temporary directory), runs the workloads through
    /// the client library, compares each with the raw disk, prints a report
    /// and tears everything down (also on Ctrl-C or failure).
    Local {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(flatten)]
        load: LoadArgs,
        /// Storage nodes to start.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Parent of the cluster's data directory, the filesystem under test
        /// [default: the system temp dir].
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Keep the data directory (and the dataset) afterwards.
        #[arg(long)]
        keep: bool,
        /// Control replicas: 1 runs a single control server; 3 or 5 a
        /// replicated control plane (Raft), the workloads talking to its
        /// leader.
        #[arg(long, default_value_t = 1)]
        control_replicas: usize,
        /// After the workloads, kill the leading control replica this many
        /// times (restarting it in between) while a client creates files,
        /// and report the failover time (kill to the next acknowledged
        /// create), p50 and max. Needs --control-replicas 3 or more.
        #[arg(long, default_value_t = 0)]
        failover_kills: usize,
        /// TLS on every connection: makes its own CA and certificates
        /// (docs/operations.md, "TLS").
        #[arg(long)]
        tls: bool,
    },
    /// Runs the workloads against an existing cluster (--control), or
    /// against any mounted file system through ordinary file calls
    /// (--path: a ringfs mount, a local disk, another distributed file
    /// system), verifying every byte read either way.
    Run {
        #[command(flatten)]
        config: ConfigArgs,
        /// The cluster's control server.
        #[arg(long, required_unless_present = "path", conflicts_with = "path")]
        control: Option<SocketAddr>,
        /// With --control: the credential file to connect with (an
        /// administrator's, or a user's who may create in /).
        #[arg(long, env = "RINGFS_CREDENTIAL", requires = "control")]
        credential: Option<PathBuf>,
        /// A directory to run in, through file calls (pread/pwrite, one
        /// thread per stream or operation in flight, O_DIRECT and O_DSYNC
        /// unless --buffered). --replication then only says how many copies
        /// the file system keeps, for the per-copy ratios.
        #[arg(long)]
        path: Option<PathBuf>,
        /// With --path: go through the page cache (no O_DIRECT, no O_DSYNC).
        #[arg(long, requires = "path")]
        buffered: bool,
        #[command(flatten)]
        load: LoadArgs,
        /// Where the raw baseline writes its files: a directory on the
        /// storage nodes' filesystem (or the disk to compare --path with)
        /// [default: the system temp dir].
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Leave the dataset in the cluster afterwards.
        #[arg(long)]
        keep: bool,
    },
    /// One storage node over loopback: 1 MiB sequential writes and reads (16 in
    /// flight) and 4 KiB random reads (64 in flight), each compared with the
    /// same pattern raw on the same filesystem (io_uring + O_DIRECT).
    /// Starts its own control server and node in a temporary directory.
    Node {
        #[command(flatten)]
        config: ConfigArgs,
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
    /// fio through a ringfs mount and on the raw disk with the same jobs:
    /// 1 MiB sequential write and read, 4 KiB random read and write (4 jobs
    /// each), create/stat/unlink of many empty files. Starts a local
    /// cluster and a mount of it for each --replication value, unless
    /// --path names a directory to run in (any mounted file system).
    Fio {
        #[command(flatten)]
        config: ConfigArgs,
        /// Run the jobs in this directory instead of a local cluster.
        #[arg(long)]
        path: Option<PathBuf>,
        /// Storage nodes of the local cluster.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Replicas per chunk, one mount and run per value (comma
        /// separated) [default: 1,3 as far as --nodes allows]; with --path,
        /// the copies the file system keeps (for the per-copy ratio).
        #[arg(long, value_delimiter = ',')]
        replication: Vec<u8>,
        /// Bytes of the sequential file (the random jobs reuse it).
        #[arg(long, value_parser = size, default_value = "1GiB")]
        size: u64,
        /// How long each random job runs, e.g. 10s.
        #[arg(long, value_parser = duration, default_value = "10s")]
        runtime: Duration,
        /// Files of the metadata job.
        #[arg(long, default_value_t = 10_000)]
        files: usize,
        /// Parent of the cluster's data, the mount point and the raw
        /// directory: the filesystem under test [default: the system temp
        /// dir].
        #[arg(long)]
        dir: Option<PathBuf>,
        /// A flag for `ringfs mount` (repeat for several), e.g.
        /// --mount-flag=--writeback-cache.
        #[arg(long, allow_hyphen_values = true)]
        mount_flag: Vec<String>,
        /// Write the results (an array, one object per job and target) as
        /// JSON.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Runs `ringfs mount` (used by `fio` for its mount).
    #[command(name = "__mount", hide = true)]
    Mount {
        #[arg(long)]
        control: SocketAddr,
        /// The credential file to mount with.
        #[arg(long)]
        credential: PathBuf,
        #[command(flatten)]
        tls: ringfs_ops::tls::TlsFlags,
        #[command(flatten)]
        args: ringfs_client::mount::MountArgs,
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

/// A run described in a file: `ringfs-bench local --config run.toml`.
#[derive(Args)]
struct ConfigArgs {
    /// TOML file whose keys are this command's long flags (flags given here
    /// win), so a run can be kept and repeated.
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Print the effective settings as a config file and exit.
    #[arg(long)]
    print_config: bool,
}

fn main() -> ExitCode {
    use clap::CommandFactory;
    let (cli, matches) = match ringfs_ops::flag_file::parse::<Cli>(None) {
        Ok(parsed) => parsed,
        Err(code) => return code,
    };
    if let Cmd::Local { config, .. }
    | Cmd::Run { config, .. }
    | Cmd::Node { config, .. }
    | Cmd::Fio { config, .. } = &cli.command
    {
        if config.print_config {
            print!(
                "{}",
                ringfs_ops::flag_file::print(&Cli::command(), &matches)
            );
            return ExitCode::SUCCESS;
        }
    }
    let result = match cli.command {
        Cmd::Control { args } => {
            let argv = std::iter::once("ringfs-control".to_string()).chain(args);
            return ringfs_control::cli::main_with_args(argv);
        }
        Cmd::StorageNode { args } => {
            let argv = std::iter::once("ringfs-node".to_string()).chain(args);
            return ringfs_node::cli::main_with_args(argv);
        }
        Cmd::Mount {
            control,
            credential,
            tls,
            args,
        } => ringfs_client::Credential::load(&credential)
            .map_err(anyhow::Error::from)
            .and_then(|cred| {
                let files = tls.resolve(None).map_err(anyhow::Error::msg)?;
                let tls = ringfs_ops::tls::Tls::load_optional(files.as_ref())?;
                ringfs_client::mount::cli::run(&[control], &cred, tls, &args)
            }),
        Cmd::Fio {
            config: _,
            path,
            nodes,
            replication,
            size,
            runtime,
            files,
            dir,
            mount_flag,
            json,
        } => run_fio(FioRun {
            path,
            nodes,
            replication,
            opts: fio::FioOptions {
                size,
                runtime,
                files,
            },
            dir,
            mount_flags: mount_flag,
            json,
        }),
        Cmd::Node {
            config: _,
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
        Cmd::Local {
            config: _,
            load,
            nodes,
            dir,
            keep,
            control_replicas,
            failover_kills,
            tls,
        } => run_local(
            load,
            nodes,
            dir,
            keep,
            control_replicas,
            failover_kills,
            tls,
        ),
        Cmd::Run {
            config: _,
            control,
            credential,
            path,
            buffered,
            load,
            dir,
            keep,
        } => {
            let target = match (control, path) {
                (Some(c), _) => {
                    let Some(file) = credential else {
                        eprintln!("ringfs-bench: --control needs --credential FILE (or RINGFS_CREDENTIAL)");
                        return ExitCode::from(2);
                    };
                    match ringfs_client::Credential::load(&file) {
                        Ok(cred) => Target::Cluster(c, cred),
                        Err(e) => {
                            eprintln!("ringfs-bench: {e}");
                            return ExitCode::FAILURE;
                        }
                    }
                }
                (None, Some(dir)) => Target::Posix {
                    dir,
                    direct: !buffered,
                },
                (None, None) => unreachable!("clap requires --control or --path"),
            };
            run_remote(&target, load, dir, keep)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringfs-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
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

/// Workload knobs shared by `local` and `run`.
#[derive(Args)]
struct LoadArgs {
    /// Workloads to run, comma separated, in this order [default:
    /// seq-write,seq-read,rand-read-4k,rand-write-4k,mixed,metadata].
    #[arg(long, value_delimiter = ',', value_enum)]
    workload: Vec<Workload>,
    /// Replicas per chunk, R [default: `local`: 3, at most --nodes; `run`:
    /// the server's default].
    #[arg(long)]
    replication: Option<u8>,
    /// Durable replicas a write needs, W (1..=R) [default: R].
    #[arg(long)]
    write_quorum: Option<u8>,
    /// Bytes per chunk, e.g. 64MiB [default: the server's, 64 MiB].
    #[arg(long, value_parser = size)]
    chunk_size: Option<u64>,
    /// Bytes of the dataset, all files together (one file per sequential
    /// stream).
    #[arg(long, value_parser = size, default_value = "512MiB")]
    size: u64,
    /// Bytes per I/O of the sequential workloads (a multiple of 4 KiB; the
    /// random ones use 4 KiB).
    #[arg(long, value_parser = size, default_value = "16MiB")]
    block_size: u64,
    /// Sequential streams and dataset files (default 4), operations in
    /// flight of the random workloads (default 32), connections of the
    /// metadata workload (default 16), over all threads.
    #[arg(long)]
    concurrency: Option<usize>,
    /// Writes in flight per sequential write stream, all on the stream's
    /// one descriptor (as fio's iodepth; the raw baseline runs the same).
    /// The random workloads have `--concurrency` in flight over their
    /// files' descriptors already.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    queue_depth: u32,
    /// Load-generator threads, each with its own client.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// How long each random and mixed workload runs, e.g. 10s, 500ms, 2m.
    #[arg(long, value_parser = duration, default_value = "10s")]
    duration: Duration,
    /// Run each random and mixed workload for this many operations instead
    /// of --duration.
    #[arg(long)]
    ops: Option<u64>,
    /// Percent of reads in the mixed workload.
    #[arg(long, default_value_t = 70, value_parser = clap::value_parser!(u8).range(0..=100))]
    read_percent: u8,
    /// Files the metadata workload creates, stats and unlinks.
    #[arg(long, default_value_t = 5000)]
    metadata_files: usize,
    /// Verified reads: every read compares the digests of all replicas of
    /// the chunks it reads before using them (`ringfs get
    /// --verify-replicas`); compare with a run without to see the cost.
    #[arg(long)]
    verify_replicas: bool,
    /// Compare with the raw disk (io_uring + O_DIRECT, same pattern, block
    /// size and depth) in the same run. On by default.
    #[arg(long)]
    baseline: bool,
    /// Skip the raw-disk comparison.
    #[arg(long, conflicts_with = "baseline")]
    no_baseline: bool,
    /// Write the results as JSON (an object, or an array for several
    /// workloads).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Draw throughput over time and latency CDFs to this SVG file.
    #[arg(long)]
    plot: Option<PathBuf>,
}

impl LoadArgs {
    fn suite(&self, replication: u8, baseline_dir: PathBuf, keep: bool) -> SuiteOptions {
        SuiteOptions {
            workloads: if self.workload.is_empty() {
                Workload::STANDARD.to_vec()
            } else {
                self.workload.clone()
            },
            size: self.size,
            block_size: self.block_size as usize,
            concurrency: self.concurrency,
            queue_depth: self.queue_depth as usize,
            threads: self.threads,
            limit: match self.ops {
                Some(n) => Limit::Ops(n),
                None => Limit::Duration(self.duration),
            },
            read_percent: self.read_percent,
            layout: CreateOptions {
                replication,
                write_quorum: self.write_quorum.unwrap_or(0),
                chunk_size: self.chunk_size.unwrap_or(0) as u32,
                ..CreateOptions::default()
            },
            metadata_files: self.metadata_files,
            verify_replicas: self.verify_replicas,
            baseline_dir: (!self.no_baseline).then_some(baseline_dir),
            keep,
        }
    }

    /// Prints the table and writes the JSON and the plot.
    fn finish(&self, reports: &[Report]) -> anyhow::Result<()> {
        report::print_table(reports);
        if let Some(path) = &self.json {
            std::fs::write(path, report::to_json(reports)? + "\n")
                .with_context(|| format!("writing {}", path.display()))?;
            println!("results: {}", path.display());
        }
        if let Some(path) = &self.plot {
            plot::write_svg(path, reports)?;
            println!("plot: {}", path.display());
        }
        Ok(())
    }
}

fn size(s: &str) -> Result<u64, String> {
    ringfs_client::human::parse_size(s)
}

/// "10s", "500ms", "2m" or plain seconds.
fn duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len()));
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 10s, 500ms or 2m"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" | "min" => n * 60.0,
        _ => return Err(format!("unknown unit {unit:?} in {s:?} (use ms, s or m)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
}

fn run_local(
    load: LoadArgs,
    nodes: usize,
    dir: Option<PathBuf>,
    keep: bool,
    control_replicas: usize,
    failover_kills: usize,
    tls: bool,
) -> anyhow::Result<()> {
    if let Some(r) = load.replication.filter(|&r| usize::from(r) > nodes) {
        bail!("--replication {r} needs at least {r} storage nodes (--nodes {nodes})");
    }
    if failover_kills > 0 && control_replicas < 3 {
        bail!("--failover-kills needs --control-replicas 3 or more");
    }
    live::catch_interrupts();
    let exe = std::env::current_exe().context("locating this binary")?;
    let mut cluster = LocalCluster::start(&ClusterOptions {
        launcher: node_bench::Launcher::subcommands(exe, "__control", "__node"),
        nodes,
        control_replicas,
        parent: dir,
        keep,
        tls,
    })?;
    for (i, (pid, addr)) in cluster
        .control_pids()
        .into_iter()
        .zip(&cluster.control_addrs)
        .enumerate()
    {
        if control_replicas > 1 {
            println!("control replica {i} (pid {pid}) listening on {addr}");
        } else {
            println!("control server (pid {pid}) listening on {addr}");
        }
    }
    for (i, pid) in cluster.node_pids().into_iter().enumerate() {
        println!("storage node {} (pid {pid})", i + 1);
    }
    println!("data in {}", cluster.dir().display());
    let replication = load.replication.unwrap_or(nodes.min(3) as u8);
    let opts = load.suite(replication, cluster.dir().to_path_buf(), keep);
    let reports = suite::run(
        &Target::Cluster(cluster.control_addr, cluster.cred.clone()),
        Some(&mut cluster),
        &opts,
    )?;
    if failover_kills > 0 {
        let f = ringfs_bench::failover::run(&mut cluster, failover_kills)?;
        println!(
            "failover (leader killed -> next acknowledged create) over {} kills: p50 {:?}, max {:?}",
            f.samples.len(),
            f.p50(),
            f.max()
        );
    }
    drop(cluster);
    load.finish(&reports)
}

fn run_remote(
    target: &Target,
    load: LoadArgs,
    dir: Option<PathBuf>,
    keep: bool,
) -> anyhow::Result<()> {
    live::catch_interrupts();
    let parent = dir.unwrap_or_else(std::env::temp_dir);
    let raw = tempfile::Builder::new()
        .prefix("ringfs-bench-raw-")
        .tempdir_in(&parent)
        .with_context(|| format!("creating a directory in {}", parent.display()))?;
    let opts = load.suite(
        load.replication.unwrap_or(0),
        raw.path().to_path_buf(),
        keep,
    );
    let reports = suite::run(target, None, &opts)?;
    load.finish(&reports)
}

/// What `ringfs-bench fio` was asked for.
struct FioRun {
    path: Option<PathBuf>,
    nodes: usize,
    replication: Vec<u8>,
    opts: fio::FioOptions,
    dir: Option<PathBuf>,
    mount_flags: Vec<String>,
    json: Option<PathBuf>,
}

fn print_fio_line(target: &str, job: &fio::Job, f: &fio::Figures) {
    println!(
        "{target:<22} {:<14} {:>9.1} MiB/s {:>9.0} ops/s p50 {} µs p99 {} µs",
        job.name,
        f.bytes as f64 / f64::from(1 << 20) / f.seconds.max(1e-9),
        f.ops as f64 / f.seconds.max(1e-9),
        f.latency_us.p50,
        f.latency_us.p99,
    );
}

fn run_fio(o: FioRun) -> anyhow::Result<()> {
    live::catch_interrupts();
    let jobs = fio::jobs(&o.opts);
    let parent = o.dir.clone().unwrap_or_else(std::env::temp_dir);
    let work = tempfile::Builder::new()
        .prefix("ringfs-bench-fio-")
        .tempdir_in(&parent)
        .with_context(|| format!("creating a directory in {}", parent.display()))?;
    let stop_if_interrupted = || {
        if live::interrupted() {
            bail!("interrupted");
        }
        Ok(())
    };

    let raw_dir = work.path().join("raw");
    let mut raw = Vec::new();
    for job in &jobs {
        stop_if_interrupted()?;
        let f = fio::run(&raw_dir, job)?;
        print_fio_line("raw disk", job, &f);
        raw.push(f);
    }
    std::fs::remove_dir_all(&raw_dir).context("removing the raw files")?;

    let mut reports = Vec::new();
    if let Some(path) = &o.path {
        let r = o.replication.first().copied().unwrap_or(1);
        let mut got = Vec::new();
        for job in &jobs {
            stop_if_interrupted()?;
            let f = fio::run(path, job)?;
            print_fio_line(&path.display().to_string(), job, &f);
            let cpu = CpuSeconds {
                bench: f.cpu_seconds,
                ..CpuSeconds::default()
            };
            got.push((f, cpu));
        }
        let _ = std::fs::remove_file(path.join("seq.dat"));
        let _ = std::fs::remove_dir(path.join("meta"));
        reports.push(fio::reports(&jobs, &got, &raw, r));
    } else {
        let exe = std::env::current_exe().context("locating this binary")?;
        let replication: Vec<u8> = if o.replication.is_empty() {
            [1u8, 3]
                .into_iter()
                .filter(|&r| usize::from(r) <= o.nodes)
                .collect()
        } else {
            o.replication.clone()
        };
        if let Some(r) = replication.iter().find(|&&r| usize::from(r) > o.nodes) {
            bail!(
                "--replication {r} needs at least {r} storage nodes (--nodes {})",
                o.nodes
            );
        }
        for r in replication {
            // A fresh cluster per run: the previous run's garbage
            // collection must not run under this one.
            let mut cluster = LocalCluster::start(&ClusterOptions {
                launcher: node_bench::Launcher::subcommands(exe.clone(), "__control", "__node"),
                nodes: o.nodes,
                parent: Some(work.path().to_path_buf()),
                keep: false,
                control_replicas: 1,
                tls: false,
            })?;
            let mnt = work.path().join(format!("mnt-r{r}"));
            std::fs::create_dir(&mnt)?;
            let mut flags = vec!["--replication".to_string(), r.to_string()];
            flags.extend(o.mount_flags.iter().cloned());
            let mount = fio::MountProcess::start(
                &exe,
                cluster.control_addr,
                &cluster.dir().join(ringfs_bench::cluster::CREDENTIAL),
                &mnt,
                &flags,
            )?;
            let label = format!("ringfs mount R={r}");
            let mut got = Vec::new();
            for job in &jobs {
                stop_if_interrupted()?;
                cluster.check()?;
                let (c0, m0) = (cluster.cpu(), cpu_seconds(mount.pid()).unwrap_or(0.0));
                let f = fio::run(&mnt, job)?;
                cluster.check()?;
                let used = cluster.cpu().since(&c0);
                let cpu = CpuSeconds {
                    control: Some(used.control),
                    nodes: Some(used.nodes.iter().sum()),
                    per_node: used.nodes,
                    bench: f.cpu_seconds,
                    mount: Some(cpu_seconds(mount.pid()).unwrap_or(0.0) - m0),
                };
                print_fio_line(&label, job, &f);
                got.push((f, cpu));
            }
            drop(mount);
            reports.push(fio::reports(&jobs, &got, &raw, r));
        }
    }
    for group in &reports {
        if let Some(first) = group.first() {
            println!("\nR={}:", first.replication);
        }
        report::print_table(group);
    }
    let all: Vec<Report> = reports.into_iter().flatten().collect();
    if let Some(path) = &o.json {
        std::fs::write(path, serde_json::to_string_pretty(&all)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        println!("results: {}", path.display());
    }
    Ok(())
}
