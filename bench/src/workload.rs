//! The workloads, driven through the client library exactly as an
//! application would use it.
//!
//! Threads: each load thread owns one [`Client`] (capnp-rpc is
//! single-threaded) and runs its share of the concurrent streams or tasks
//! on its own `LocalSet`. Files a workload writes are split between threads
//! (file `f` belongs to thread `f % threads`) because a write open takes the
//! file's exclusive lease.
//!
//! Every byte read is verified against the [`Dataset`]; a mismatch fails the
//! run.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use anyhow::{bail, Context};
use futures::StreamExt;
use hdrhistogram::Histogram;
use ringfs_client::{Client, CreateOptions, Credential, Fd, OpenOptions};

use crate::dataset::{xorshift, Dataset, WriteBuf, PAGE};
use crate::live::Live;
use crate::stats::latency_histogram;

/// A workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// Each stream writes its files front to back in `block_size` writes.
    SeqWrite,
    /// Each stream reads its files front to back; verified.
    SeqRead,
    /// 4 KiB reads at random page offsets of random files; verified.
    #[value(name = "rand-read-4k")]
    RandRead4k,
    /// 4 KiB overwrites at random page offsets (a new generation).
    #[value(name = "rand-write-4k")]
    RandWrite4k,
    /// Durable creates, then stats, then unlinks of empty files.
    Metadata,
    /// Random 4 KiB reads and overwrites at `read_percent` reads.
    Mixed,
}

impl Workload {
    /// The standard mix, in the order `local` runs it.
    pub const STANDARD: [Workload; 6] = [
        Workload::SeqWrite,
        Workload::SeqRead,
        Workload::RandRead4k,
        Workload::RandWrite4k,
        Workload::Mixed,
        Workload::Metadata,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Workload::SeqWrite => "seq-write",
            Workload::SeqRead => "seq-read",
            Workload::RandRead4k => "rand-read-4k",
            Workload::RandWrite4k => "rand-write-4k",
            Workload::Metadata => "metadata",
            Workload::Mixed => "mixed",
        }
    }

    pub fn is_sequential(self) -> bool {
        matches!(self, Workload::SeqWrite | Workload::SeqRead)
    }

    /// Whether it writes file data (its ratio to raw is per copy, too).
    pub fn writes(self) -> bool {
        matches!(self, Workload::SeqWrite | Workload::RandWrite4k)
    }

    /// Whether it reads or rewrites the dataset, which must exist first.
    pub fn needs_dataset(self) -> bool {
        !matches!(self, Workload::SeqWrite | Workload::Metadata)
    }

    /// Percent of operations that read.
    pub fn read_percent(self, mixed: u8) -> u8 {
        match self {
            Workload::RandRead4k => 100,
            Workload::RandWrite4k => 0,
            _ => mixed,
        }
    }
}

/// How to run one workload.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    pub workload: Workload,
    /// Bytes per I/O of the sequential workloads (random ones use 4 KiB).
    pub block_size: usize,
    /// Streams (sequential), operations in flight (random) or connections
    /// (metadata), over all threads.
    pub concurrency: usize,
    /// Load threads, each with its own client.
    pub threads: usize,
    /// Reads in percent of the mixed workload.
    pub read_percent: u8,
    /// Layout of the files created.
    pub layout: CreateOptions,
    /// Files the metadata workload creates, stats and unlinks.
    pub metadata_files: usize,
    /// Reads are verified reads (`OpenOptions::verify_replicas`).
    pub verify_replicas: bool,
    /// Writes in flight per sequential write stream, on one descriptor
    /// (as fio's iodepth); the raw baseline runs the same.
    pub queue_depth: usize,
}

impl Spec {
    /// How the read workloads open their files.
    fn read_open(&self) -> OpenOptions {
        OpenOptions {
            verify_replicas: self.verify_replicas,
            ..OpenOptions::read()
        }
    }

    /// Bytes per operation.
    pub fn io_bytes(&self) -> usize {
        match self.workload {
            Workload::SeqWrite | Workload::SeqRead => self.block_size,
            Workload::Metadata => 0,
            _ => PAGE,
        }
    }
}

/// What a workload did.
#[derive(Debug, Clone)]
pub struct Measured {
    pub ops: u64,
    pub bytes: u64,
    /// Bytes read and found correct.
    pub verified_bytes: u64,
    /// Per-operation latency, microseconds.
    pub histogram: Histogram<u64>,
    /// The metadata workload's phases (create, stat, unlink); empty otherwise.
    pub phases: Vec<PhaseReport>,
}

/// One phase of the metadata workload.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PhaseReport {
    pub phase: &'static str,
    pub ops: u64,
    pub seconds: f64,
    pub ops_per_s: f64,
    pub latency_us: crate::stats::Percentiles,
}

impl Measured {
    pub(crate) fn new() -> Self {
        Measured {
            ops: 0,
            bytes: 0,
            verified_bytes: 0,
            histogram: latency_histogram(),
            phases: Vec::new(),
        }
    }

    pub(crate) fn record(&mut self, started: Instant, bytes: usize, verified: bool) {
        self.ops += 1;
        self.bytes += bytes as u64;
        if verified {
            self.verified_bytes += bytes as u64;
        }
        self.histogram
            .saturating_record(started.elapsed().as_micros().max(1) as u64);
    }

    /// The metadata workload's phases as one result.
    pub(crate) fn from_phases(phases: Vec<crate::metadata::Phase>) -> anyhow::Result<Self> {
        let mut total = Measured::new();
        for p in phases {
            total.ops += p.ops;
            total
                .histogram
                .add(&p.histogram)
                .context("merging histograms")?;
            total.phases.push(PhaseReport {
                phase: p.name,
                ops: p.ops,
                seconds: p.seconds,
                ops_per_s: p.ops_per_s(),
                latency_us: p.latency,
            });
        }
        Ok(total)
    }

    fn merge(&mut self, other: Measured) -> anyhow::Result<()> {
        self.ops += other.ops;
        self.bytes += other.bytes;
        self.verified_bytes += other.verified_bytes;
        self.phases.extend(other.phases);
        self.histogram
            .add(other.histogram)
            .context("merging histograms")
    }
}

/// A workload running on its load threads.
pub struct Running {
    threads: Vec<JoinHandle<anyhow::Result<Measured>>>,
}

impl Running {
    pub(crate) fn new(threads: Vec<JoinHandle<anyhow::Result<Measured>>>) -> Self {
        Running { threads }
    }

    pub fn is_finished(&self) -> bool {
        self.threads.iter().all(JoinHandle::is_finished)
    }

    /// Waits for every thread; the first error wins.
    pub fn join(self) -> anyhow::Result<Measured> {
        let mut total = Measured::new();
        let mut first_error = None;
        for t in self.threads {
            match t.join() {
                Ok(Ok(m)) => total.merge(m)?,
                Ok(Err(e)) => first_error = first_error.or(Some(e)),
                Err(_) => {
                    first_error = first_error.or(Some(anyhow::anyhow!("a load thread panicked")))
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(total),
        }
    }
}

/// What the workloads run against.
#[derive(Debug, Clone)]
pub enum Target {
    /// A ringfs cluster (its control server, and the credential to use),
    /// through the client library.
    Cluster(SocketAddr, Credential),
    /// A directory of any mounted file system, through file calls (see
    /// [`crate::posix`]); `direct`: O_DIRECT.
    Posix { dir: PathBuf, direct: bool },
}

/// Starts `spec` against `target`. A thread that fails stops the others
/// through `live`.
pub fn start(target: &Target, ds: Arc<Dataset>, spec: Spec, live: Arc<Live>) -> Running {
    let (control, cred) = match target {
        Target::Cluster(control, cred) => (*control, cred.clone()),
        Target::Posix { dir, direct } => return crate::posix::start(dir, *direct, ds, spec, live),
    };
    if spec.workload == Workload::Metadata {
        let thread = std::thread::spawn(move || {
            let phases = crate::metadata::run(
                control,
                &cred,
                spec.concurrency,
                spec.metadata_files,
                spec.threads,
                &live,
            )?;
            Measured::from_phases(phases)
        });
        return Running {
            threads: vec![thread],
        };
    }
    let threads = if spec.workload == Workload::SeqRead || spec.workload == Workload::RandRead4k {
        spec.threads
    } else {
        // Every thread needs a file of its own to write.
        spec.threads.min(ds.files)
    }
    .clamp(1, spec.concurrency.max(1));
    let threads = (0..threads)
        .map(|t| {
            let (ds, live, cred) = (ds.clone(), live.clone(), cred.clone());
            std::thread::spawn(move || {
                let result =
                    crate::local(load_thread(control, &cred, &ds, spec, &live, t, threads));
                if result.is_err() {
                    live.stop();
                }
                result
            })
        })
        .collect();
    Running { threads }
}

async fn load_thread(
    control: SocketAddr,
    cred: &Credential,
    ds: &Dataset,
    spec: Spec,
    live: &Live,
    me: usize,
    threads: usize,
) -> anyhow::Result<Measured> {
    let client = crate::tls::client(control, cred)
        .await
        .context("connecting to the control server")?;
    let acc = RefCell::new(Measured::new());
    let result = match spec.workload {
        Workload::SeqWrite | Workload::SeqRead => {
            let streams = (me..spec.concurrency).step_by(threads);
            let streams = streams.map(|s| seq_stream(&client, ds, &spec, live, &acc, s));
            futures::future::try_join_all(streams).await.map(drop)
        }
        _ => random_ops(&client, ds, &spec, live, &acc, me, threads).await,
    };
    result?;
    Ok(acc.into_inner())
}

/// One sequential stream: files `s, s + concurrency, ...`, front to back;
/// writes `queue_depth` in flight on the file's descriptor.
async fn seq_stream(
    client: &Client,
    ds: &Dataset,
    spec: &Spec,
    live: &Live,
    acc: &RefCell<Measured>,
    stream: usize,
) -> anyhow::Result<()> {
    let block = spec.block_size;
    let write = spec.workload == Workload::SeqWrite;
    let depth = if write { spec.queue_depth.max(1) } else { 1 };
    let mut wbufs: Vec<WriteBuf> = if write {
        (0..depth).map(|_| WriteBuf::new(block)).collect()
    } else {
        Vec::new()
    };
    let mut rbuf = (!write).then(|| vec![0u8; block]);
    for f in (stream..ds.files).step_by(spec.concurrency) {
        let path = ds.path(f);
        let opts = if write {
            OpenOptions::create(spec.layout)
        } else {
            spec.read_open()
        };
        let fd = client
            .open(&path, &opts)
            .await
            .with_context(|| format!("opening {path}"))?;
        let mut offset = 0;
        // Writes in flight, in issue order; each gives its buffer back.
        let mut in_flight = futures::stream::FuturesOrdered::new();
        while offset < ds.file_bytes || !in_flight.is_empty() {
            if live.stopped() {
                bail!("stopped");
            }
            if write && (wbufs.is_empty() || offset >= ds.file_bytes) {
                let (w, t): (WriteBuf, Instant) =
                    in_flight.next().await.expect("a write in flight")?;
                acc.borrow_mut().record(t, block, false);
                live.done(block as u64);
                wbufs.push(w);
                continue;
            }
            let t = Instant::now();
            if let Some(mut w) = wbufs.pop() {
                let path = &path;
                in_flight.push_back(async move {
                    let data = w.fill(ds, f, offset, 0);
                    client
                        .pwrite(fd, offset, data)
                        .await
                        .with_context(|| format!("writing {path} at {offset}"))?;
                    anyhow::Ok((w, t))
                });
            } else if let Some(r) = rbuf.as_mut() {
                let n = client
                    .pread(fd, offset, r)
                    .await
                    .with_context(|| format!("reading {path} at {offset}"))?;
                if n != block {
                    bail!("{path}: short read of {n} bytes at {offset}, expected {block}");
                }
                acc.borrow_mut().record(t, block, true);
                ds.verify(r, f, offset, |p| ds.is_rewritten(f, p))?;
                live.done(block as u64);
            }
            offset += block as u64;
        }
        drop(in_flight);
        client
            .close(fd)
            .await
            .with_context(|| format!("closing {path}"))?;
    }
    Ok(())
}

/// Random 4 KiB reads and/or overwrites, `concurrency / threads` in flight.
async fn random_ops(
    client: &Client,
    ds: &Dataset,
    spec: &Spec,
    live: &Live,
    acc: &RefCell<Measured>,
    me: usize,
    threads: usize,
) -> anyhow::Result<()> {
    let read_percent = spec.workload.read_percent(spec.read_percent);
    let mut readers: Vec<Fd> = Vec::new();
    if read_percent > 0 {
        for f in 0..ds.files {
            let fd = client
                .open(&ds.path(f), &spec.read_open())
                .await
                .with_context(|| format!("opening {}", ds.path(f)))?;
            readers.push(fd);
        }
    }
    // (file, fd) of the files this thread writes.
    let mut writers: Vec<(usize, Fd)> = Vec::new();
    if read_percent < 100 {
        for f in (me..ds.files).step_by(threads) {
            let opts = OpenOptions {
                write: true,
                ..OpenOptions::default()
            };
            let fd = client
                .open(&ds.path(f), &opts)
                .await
                .with_context(|| format!("opening {} for writing", ds.path(f)))?;
            writers.push((f, fd));
        }
    }
    let tasks = spec.concurrency / threads + usize::from(me < spec.concurrency % threads);
    let task = |i: usize| {
        let (readers, writers) = (&readers, &writers);
        async move {
            let mut seed = (me as u64) << 32 | i as u64 | 1;
            seed ^= 0x9e37_79b9_7f4a_7c15;
            let mut wbuf = WriteBuf::new(PAGE);
            let mut rbuf = vec![0u8; PAGE];
            while live.claim() {
                let write = xorshift(&mut seed) % 100 >= u64::from(read_percent);
                let page = xorshift(&mut seed) % ds.pages_per_file();
                let offset = page * PAGE as u64;
                let t = Instant::now();
                if write {
                    let (f, fd) = writers[(xorshift(&mut seed) % writers.len() as u64) as usize];
                    ds.rewrite_sent(f, page);
                    let data = wbuf.fill(ds, f, offset, 1);
                    client
                        .pwrite(fd, offset, data)
                        .await
                        .with_context(|| format!("writing {} at {offset}", ds.path(f)))?;
                    ds.rewrite_acked(f, page);
                    acc.borrow_mut().record(t, PAGE, false);
                } else {
                    let f = (xorshift(&mut seed) % ds.files as u64) as usize;
                    let was = ds.is_rewritten(f, page);
                    let n = client
                        .pread(readers[f], offset, &mut rbuf)
                        .await
                        .with_context(|| format!("reading {} at {offset}", ds.path(f)))?;
                    if n != PAGE {
                        bail!("{}: short read of {n} bytes at {offset}", ds.path(f));
                    }
                    acc.borrow_mut().record(t, PAGE, true);
                    ds.verify(&rbuf, f, offset, |_| was)?;
                }
                live.done(PAGE as u64);
            }
            anyhow::Ok(())
        }
    };
    futures::future::try_join_all((0..tasks).map(task)).await?;
    for fd in readers
        .into_iter()
        .chain(writers.into_iter().map(|(_, fd)| fd))
    {
        client.close(fd).await.context("closing a file")?;
    }
    Ok(())
}
