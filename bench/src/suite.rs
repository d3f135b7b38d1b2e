//! A benchmark run: the chosen workloads one after another against one
//! cluster, each watched by a monitor and followed by its raw-disk baseline.
//!
//! The monitor (the calling thread) samples throughput every second, draws
//! the progress line, and stops the run at once when a cluster process
//! exits or SIGINT/SIGTERM arrives; the caller then tears the cluster down.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use ringfs_client::CreateOptions;

use crate::cluster::LocalCluster;
use crate::dataset::{Dataset, PAGE};
use crate::live::{interrupted, Limit, Live};
use crate::raw_disk::{self, Pattern};
use crate::report::{CpuSeconds, Report, Sample};
use crate::stats::cpu_seconds;
use crate::workload::{self, Measured, Spec, Target, Workload};

/// Streams of the sequential workloads (and files of the dataset) unless
/// `--concurrency` says otherwise.
pub const DEFAULT_SEQ_CONCURRENCY: usize = 4;
/// Operations in flight of the random workloads by default.
pub const DEFAULT_RANDOM_CONCURRENCY: usize = 32;
/// Connections of the metadata workload by default.
pub const DEFAULT_METADATA_CONCURRENCY: usize = 16;

/// What to run.
#[derive(Debug, Clone)]
pub struct SuiteOptions {
    pub workloads: Vec<Workload>,
    /// Bytes of the dataset (all files together).
    pub size: u64,
    /// Bytes per I/O of the sequential workloads.
    pub block_size: usize,
    /// Overrides the per-workload default concurrency.
    pub concurrency: Option<usize>,
    /// Writes in flight per sequential write stream.
    pub queue_depth: usize,
    pub threads: usize,
    /// End of the random and mixed workloads.
    pub limit: Limit,
    pub read_percent: u8,
    pub layout: CreateOptions,
    pub metadata_files: usize,
    /// Reads are verified reads (digests of every replica compared).
    pub verify_replicas: bool,
    /// Where to run the raw baseline (the storage filesystem); None: no
    /// baseline.
    pub baseline_dir: Option<PathBuf>,
    /// Leave the dataset in the cluster afterwards.
    pub keep: bool,
}

impl SuiteOptions {
    fn concurrency(&self, w: Workload) -> usize {
        self.concurrency.unwrap_or(match w {
            Workload::SeqWrite | Workload::SeqRead => DEFAULT_SEQ_CONCURRENCY,
            Workload::Metadata => DEFAULT_METADATA_CONCURRENCY,
            _ => DEFAULT_RANDOM_CONCURRENCY,
        })
    }

    /// The dataset's shape: one file per sequential stream, each a whole
    /// number of blocks.
    fn dataset_shape(&self) -> anyhow::Result<(usize, u64)> {
        let files = self.concurrency.unwrap_or(DEFAULT_SEQ_CONCURRENCY).max(1);
        let block = self.block_size as u64;
        if block == 0 || !block.is_multiple_of(PAGE as u64) {
            bail!("--block-size must be a non-zero multiple of 4 KiB, got {block}");
        }
        let file_bytes = self.size / files as u64 / block * block;
        if file_bytes == 0 {
            bail!(
                "--size {} is too small for {files} files of at least one {block}-byte block",
                self.size
            );
        }
        Ok((files, file_bytes))
    }
}

/// Runs the workloads against `target`. With `cluster` (our own
/// processes) CPU time is measured per process and a process that exits
/// fails the run.
pub fn run(
    target: &Target,
    mut cluster: Option<&mut LocalCluster>,
    o: &SuiteOptions,
) -> anyhow::Result<Vec<Report>> {
    let (files, file_bytes) = o.dataset_shape()?;
    let root = format!(
        "/ringfs-bench-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
    );
    let ds = Arc::new(Dataset::new(root.clone(), files, file_bytes, random_u64()));
    match target {
        Target::Cluster(control, cred) => crate::local(async {
            let c = crate::tls::control(*control, cred).await?;
            c.mkdir(&root, 0).await?;
            anyhow::Ok(())
        }),
        Target::Posix { dir, .. } => std::fs::create_dir(dir.join(&root[1..])).map_err(Into::into),
    }
    .with_context(|| format!("creating {root}"))?;
    let mut replication = match target {
        Target::Cluster(..) => o.layout.replication,
        // Whatever the file system does; --replication says it, for the
        // per-copy ratios.
        Target::Posix { .. } => o.layout.replication.max(1),
    };
    println!(
        "dataset: {files} files of {} in {root} (R={}, chunk {}){}",
        ringfs_client::human::size(file_bytes),
        if replication == 0 {
            "default".to_string()
        } else {
            replication.to_string()
        },
        if o.layout.chunk_size == 0 {
            "default".to_string()
        } else {
            ringfs_client::human::size(u64::from(o.layout.chunk_size))
        },
        if o.verify_replicas {
            ", verified reads"
        } else {
            ""
        },
    );

    let mut dataset_written = false;
    let mut raw_written = false;
    let mut reports = Vec::new();
    for &w in &o.workloads {
        let spec = Spec {
            workload: w,
            block_size: o.block_size,
            concurrency: o.concurrency(w).max(1),
            threads: o.threads.max(1),
            read_percent: o.read_percent,
            layout: o.layout,
            metadata_files: o.metadata_files,
            verify_replicas: o.verify_replicas,
            queue_depth: o.queue_depth.max(1),
        };
        if w.needs_dataset() && !dataset_written {
            let prep = Spec {
                workload: Workload::SeqWrite,
                concurrency: files,
                ..spec
            };
            monitored(
                target,
                &mut cluster,
                &ds,
                prep,
                Limit::Ops(u64::MAX),
                "preparing the dataset",
            )?;
            dataset_written = true;
        }
        let limit = match w {
            Workload::SeqWrite | Workload::SeqRead | Workload::Metadata => Limit::Ops(u64::MAX),
            _ => o.limit,
        };
        let (measured, seconds, samples, cpu) =
            monitored(target, &mut cluster, &ds, spec, limit, w.name())?;
        dataset_written |= w == Workload::SeqWrite;
        if let (0, true, Target::Cluster(control, cred)) = (replication, dataset_written, target) {
            // The server's default: report what the files really have.
            replication = file_replication(*control, cred, &ds)?;
        }
        let mut report = Report::new(
            w.name(),
            replication,
            spec.io_bytes(),
            spec.concurrency,
            measured,
            seconds,
            cpu,
            samples,
        );
        if let Some(dir) = &o.baseline_dir {
            let raw = match (w, target) {
                // The same file calls on the raw file system.
                (Workload::Metadata, Target::Posix { .. }) => {
                    Some(metadata_baseline(&dir.join("raw-baseline"), &spec)?)
                }
                _ => baseline(dir, &ds, &spec, report.ops, &mut raw_written)?,
            };
            if let Some(raw) = raw {
                report.set_baseline(&raw, w.writes());
            }
        }
        print_line(&report);
        reports.push(report);
    }
    if !o.keep {
        remove_dataset(target, &ds).context("removing the dataset")?;
    }
    Ok(reports)
}

/// Runs one workload under the monitor. Returns what it measured, its wall
/// time, the per-second samples and the CPU it cost.
fn monitored(
    target: &Target,
    cluster: &mut Option<&mut LocalCluster>,
    ds: &Arc<Dataset>,
    spec: Spec,
    limit: Limit,
    label: &str,
) -> anyhow::Result<(Measured, f64, Vec<Sample>, CpuSeconds)> {
    let live = Arc::new(Live::new(limit));
    let cpu0 = cluster.as_deref().map(LocalCluster::cpu);
    let bench0 = own_cpu();
    let bar = progress_bar(label, &spec, limit, ds);
    let t0 = Instant::now();
    let running = workload::start(target, ds.clone(), spec, live.clone());
    let mut timeline = Timeline::new(t0);
    let check = |cluster: &mut Option<&mut LocalCluster>| -> anyhow::Result<()> {
        if interrupted() {
            bail!("interrupted");
        }
        match cluster.as_deref_mut() {
            Some(c) => c.check(),
            None => Ok(()),
        }
    };
    while !running.is_finished() {
        std::thread::sleep(Duration::from_millis(50));
        if let Err(e) = check(cluster) {
            live.stop();
            bar.abandon();
            return Err(e.context(format!("{label} failed")));
        }
        let now = Instant::now();
        if now.duration_since(timeline.last.0) >= Duration::from_secs(1) {
            let (s, ops, bytes) = timeline.sample(&live, now);
            bar.set_position(match (spec.workload.is_sequential(), limit) {
                (true, _) => bytes,
                (false, Limit::Duration(_)) => now.duration_since(t0).as_secs(),
                (false, Limit::Ops(_)) => ops,
            });
            bar.set_message(format!(
                "{:.0} MiB/s {:.0} ops/s",
                s.throughput_mib_s, s.ops_per_s
            ));
        }
    }
    let seconds = t0.elapsed().as_secs_f64();
    if timeline.last.0.elapsed() >= Duration::from_millis(200) || timeline.samples.is_empty() {
        timeline.sample(&live, Instant::now());
    }
    bar.finish_and_clear();
    let result = running.join();
    // A crashed process explains a failed (or luckily finished) workload
    // better than the client's error does.
    check(cluster).with_context(|| format!("{label} failed"))?;
    let measured = result.with_context(|| format!("{label} failed"))?;
    let used = cpu0.and_then(|c0| Some(cluster.as_deref()?.cpu().since(&c0)));
    let cpu = CpuSeconds {
        control: used.as_ref().map(|u| u.control),
        nodes: used.as_ref().map(|u| u.nodes.iter().sum()),
        per_node: used.map(|u| u.nodes).unwrap_or_default(),
        bench: own_cpu() - bench0,
        mount: None,
    };
    Ok((measured, seconds, timeline.samples, cpu))
}

/// Per-second throughput samples of a running workload.
struct Timeline {
    t0: Instant,
    /// Time, operations and bytes at the previous sample.
    last: (Instant, u64, u64),
    samples: Vec<Sample>,
}

impl Timeline {
    fn new(t0: Instant) -> Self {
        Timeline {
            t0,
            last: (t0, 0, 0),
            samples: Vec::new(),
        }
    }

    /// Records the interval since the previous sample; returns it with the
    /// totals so far.
    fn sample(&mut self, live: &Live, now: Instant) -> (Sample, u64, u64) {
        let (ops, bytes) = live.totals();
        let (t, last_ops, last_bytes) = self.last;
        let dt = now.duration_since(t).as_secs_f64().max(1e-9);
        let s = Sample {
            second: now.duration_since(self.t0).as_secs_f64(),
            throughput_mib_s: (bytes - last_bytes) as f64 / (1 << 20) as f64 / dt,
            ops_per_s: (ops - last_ops) as f64 / dt,
        };
        self.last = (now, ops, bytes);
        self.samples.push(s);
        (s, ops, bytes)
    }
}

fn own_cpu() -> f64 {
    cpu_seconds(std::process::id()).unwrap_or(0.0)
}

fn progress_bar(label: &str, spec: &Spec, limit: Limit, ds: &Dataset) -> ProgressBar {
    let (len, template) = match (spec.workload, limit) {
        (w, _) if w.is_sequential() => (
            ds.total_bytes(),
            "{prefix:>20} [{bar:30}] {bytes}/{total_bytes} {msg} eta {eta}",
        ),
        (Workload::Metadata, _) => (
            3 * spec.metadata_files as u64,
            "{prefix:>20} [{bar:30}] {pos}/{len} ops {msg}",
        ),
        (_, Limit::Duration(d)) => (d.as_secs(), "{prefix:>20} [{bar:30}] {pos}/{len} s {msg}"),
        (_, Limit::Ops(n)) => (n, "{prefix:>20} [{bar:30}] {pos}/{len} ops {msg}"),
    };
    let bar = ProgressBar::new(len).with_prefix(label.to_string());
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// The same access pattern straight on the disk under `dir`.
fn baseline(
    dir: &std::path::Path,
    ds: &Dataset,
    spec: &Spec,
    ringfs_ops: u64,
    raw_written: &mut bool,
) -> anyhow::Result<Option<raw_disk::RawResult>> {
    let raw_dir = dir.join("raw-baseline");
    let depth = spec.concurrency;
    // Sequential writes: as many in flight per stream as ringfs had.
    let per_stream = match spec.workload {
        Workload::SeqWrite => spec.queue_depth.max(1),
        _ => 1,
    };
    let seq = |pattern| {
        raw_disk::run(
            &raw_dir,
            ds.files,
            ds.file_bytes,
            spec.block_size,
            depth * per_stream,
            per_stream,
            pattern,
        )
        .with_context(|| format!("raw baseline in {}", raw_dir.display()))
    };
    let result = match spec.workload {
        Workload::Metadata => return Ok(None),
        Workload::SeqWrite => seq(Pattern::SeqWrite)?,
        _ => {
            if !*raw_written {
                seq(Pattern::SeqWrite)?;
            }
            match spec.workload {
                Workload::SeqRead => seq(Pattern::SeqRead)?,
                w => raw_disk::run(
                    &raw_dir,
                    ds.files,
                    ds.file_bytes,
                    PAGE,
                    depth,
                    1,
                    Pattern::Random {
                        // As many as ringfs did, so both runs see the same mix.
                        ops: ringfs_ops.max(1000),
                        seed: random_u64() | 1,
                        read_percent: w.read_percent(spec.read_percent),
                    },
                )
                .with_context(|| format!("raw baseline in {}", raw_dir.display()))?,
            }
        }
    };
    *raw_written = true;
    Ok(Some(result))
}

fn print_line(r: &Report) {
    let raw = match (&r.baseline, r.ratio) {
        (Some(b), Some(ratio)) => format!(
            " | raw {:.1} MiB/s {:.0} ops/s, ringfs/raw {:.0}%{}",
            b.throughput_mib_s,
            b.ops_per_s,
            ratio * 100.0,
            r.ratio_per_copy
                .filter(|_| r.replication > 1)
                .map_or(String::new(), |p| format!(" ({:.0}% per copy)", p * 100.0))
        ),
        _ => String::new(),
    };
    println!(
        "{:<14} {:>10} in {:>6.2} s: {:>8.1} MiB/s {:>8.0} ops/s p50 {} µs p99 {} µs, verified {}{raw}",
        r.workload,
        ringfs_client::human::size(r.bytes),
        r.seconds,
        r.throughput_mib_s,
        r.ops_per_s,
        r.latency_us.p50,
        r.latency_us.p99,
        ringfs_client::human::size(r.verified_bytes),
    );
    for p in &r.phases {
        println!(
            "  {:<12} {:>8} ops in {:>6.2} s: {:>8.0} ops/s p50 {} µs p99 {} µs",
            p.phase, p.ops, p.seconds, p.ops_per_s, p.latency_us.p50, p.latency_us.p99
        );
    }
}

/// The POSIX metadata workload on the raw file system under `dir`.
fn metadata_baseline(dir: &std::path::Path, spec: &Spec) -> anyhow::Result<raw_disk::RawResult> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let live = Live::new(Limit::Ops(u64::MAX));
    let phases = crate::posix::metadata(dir, spec.concurrency, spec.metadata_files, &live)
        .with_context(|| format!("metadata baseline in {}", dir.display()))?;
    let mut latency = crate::stats::latency_histogram();
    for p in &phases {
        latency.add(&p.histogram).context("merging histograms")?;
    }
    Ok(raw_disk::RawResult {
        ops: latency.len(),
        bytes: 0,
        elapsed: Duration::from_secs_f64(phases.iter().map(|p| p.seconds).sum()),
        latency,
    })
}

fn remove_dataset(target: &Target, ds: &Dataset) -> anyhow::Result<()> {
    let (control, cred) = match target {
        Target::Cluster(control, cred) => (*control, cred),
        Target::Posix { dir, .. } => {
            for f in 0..ds.files {
                match std::fs::remove_file(crate::posix::local_path(dir, ds, f)) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                    _ => {}
                }
            }
            return Ok(std::fs::remove_dir(dir.join(&ds.root[1..]))?);
        }
    };
    crate::local(async {
        let c = crate::tls::control(control, cred).await?;
        for f in 0..ds.files {
            match c.unlink(&ds.path(f)).await {
                Ok(()) | Err(ringfs_client::Error::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        c.rmdir(&ds.root).await?;
        anyhow::Ok(())
    })
}

/// Replicas per chunk of the dataset's files (R), from the control server.
fn file_replication(
    control: SocketAddr,
    cred: &ringfs_client::Credential,
    ds: &Dataset,
) -> anyhow::Result<u8> {
    crate::local(async {
        let c = crate::tls::control(control, cred).await?;
        anyhow::Ok(c.stat(&ds.path(0)).await?.replication)
    })
}

fn random_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::Instant::now())
}
