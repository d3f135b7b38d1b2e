//! The metadata workload: `clients` connections create `files` empty files
//! in one directory (each create durable before it is acknowledged), stat
//! them all, then unlink them all. Each phase is timed on its own, between
//! barriers, so one phase's tail does not count in the next.
//!
//! Clients are spread over `threads` load threads; each client has one
//! request in flight, as a program calling the API synchronously would.
//! Creates and unlinks carry a request id, as the client library sends
//! them (the server records each id with its answer).

use std::net::SocketAddr;
use std::sync::{mpsc, Arc, Barrier};
use std::time::Instant;

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use ringfs_client::{ControlClient, CreateOptions, Credential};

use crate::live::Live;
use crate::stats::{latency_histogram, Percentiles};

/// The operations, in the order the phases run.
pub const PHASES: [&str; 3] = ["create", "stat", "unlink"];

/// Result of one phase.
#[derive(Debug, Clone)]
pub struct Phase {
    pub name: &'static str,
    pub ops: u64,
    pub seconds: f64,
    pub latency: Percentiles,
    /// Per-operation latency, microseconds.
    pub histogram: Histogram<u64>,
}

impl Phase {
    pub fn ops_per_s(&self) -> f64 {
        self.ops as f64 / self.seconds
    }
}

/// Runs the workload against the control server at `control`.
pub fn run(
    control: SocketAddr,
    cred: &Credential,
    clients: usize,
    files: usize,
    threads: usize,
    live: &Live,
) -> anyhow::Result<Vec<Phase>> {
    if clients == 0 || files == 0 {
        bail!("--clients and --files must be at least 1");
    }
    let threads = threads.clamp(1, clients);
    let dir = format!(
        "/bench-metadata-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    crate::local(async {
        let c = crate::tls::control(control, cred).await?;
        c.mkdir(&dir, 0)
            .await
            .context("creating the benchmark directory")
    })?;

    // Main thread + load threads meet at a barrier before and after each phase.
    let barrier = Arc::new(Barrier::new(threads + 1));
    let (tx, rx) = mpsc::channel::<anyhow::Result<Vec<Histogram<u64>>>>();
    // Scoped: the load threads borrow `live`; all are joined at the end.
    let (timings, merged) = std::thread::scope(|scope| {
        for t in 0..threads {
            let my_clients: Vec<usize> = (t..clients).step_by(threads).collect();
            let (barrier, tx, dir) = (barrier.clone(), tx.clone(), dir.clone());
            scope.spawn(move || {
                let result = crate::local(load_thread(
                    control, cred, my_clients, clients, files, dir, &barrier, live,
                ));
                let _ = tx.send(result);
            });
        }
        drop(tx);

        let timings = time_phases(&barrier);
        let mut merged: Vec<Histogram<u64>> = PHASES.iter().map(|_| latency_histogram()).collect();
        for result in rx {
            for (m, h) in merged.iter_mut().zip(result?) {
                m.add(h).context("merging histograms")?;
            }
        }
        anyhow::Ok((timings, merged))
    })?;
    crate::local(async {
        let c = crate::tls::control(control, cred).await?;
        c.rmdir(&dir)
            .await
            .context("removing the benchmark directory")
    })?;
    Ok(phases(timings, merged))
}

/// The coordinating side of the phases: for each, waits for every load
/// thread at the barrier, then again when they are done; returns each
/// phase's time between the two.
pub(crate) fn time_phases(barrier: &Barrier) -> Vec<std::time::Duration> {
    PHASES
        .iter()
        .map(|_| {
            barrier.wait();
            let t0 = Instant::now();
            barrier.wait();
            t0.elapsed()
        })
        .collect()
}

/// The phases from their times and merged latency histograms.
pub(crate) fn phases(timings: Vec<std::time::Duration>, hists: Vec<Histogram<u64>>) -> Vec<Phase> {
    PHASES
        .iter()
        .zip(timings)
        .zip(hists)
        .map(|((name, elapsed), h)| Phase {
            name,
            ops: h.len(),
            seconds: elapsed.as_secs_f64(),
            latency: Percentiles::of(&h),
            histogram: h,
        })
        .collect()
}

/// One load thread: connects its clients, then for each phase waits at the
/// barrier, runs its share, and waits again. On an error it keeps meeting
/// the barriers (so the others are not stuck) and reports the first error.
#[allow(clippy::too_many_arguments)]
async fn load_thread(
    control: SocketAddr,
    cred: &Credential,
    my_clients: Vec<usize>,
    clients: usize,
    files: usize,
    dir: String,
    barrier: &Barrier,
    live: &Live,
) -> anyhow::Result<Vec<Histogram<u64>>> {
    let mut conns = Vec::new();
    let mut error = None;
    for _ in &my_clients {
        match crate::tls::control(control, cred).await {
            Ok(c) => conns.push(c),
            Err(e) => error = Some(anyhow::Error::from(e).context("connecting a client")),
        }
    }
    let mut hists = Vec::new();
    for phase in PHASES {
        barrier.wait();
        let mut tasks = Vec::new();
        if error.is_none() {
            for (conn, &client) in conns.iter().zip(&my_clients) {
                tasks.push(client_phase(
                    conn,
                    phase,
                    &dir,
                    (client..files).step_by(clients),
                    live,
                ));
            }
        }
        let mut h = latency_histogram();
        for result in futures::future::join_all(tasks).await {
            match result {
                Ok(ch) => h.add(ch).context("merging histograms")?,
                Err(e) => error = error.or(Some(e)),
            }
        }
        hists.push(h);
        barrier.wait();
    }
    match error {
        Some(e) => Err(e),
        None => Ok(hists),
    }
}

async fn client_phase(
    c: &ControlClient,
    phase: &str,
    dir: &str,
    files: impl Iterator<Item = usize>,
    live: &Live,
) -> anyhow::Result<Histogram<u64>> {
    let mut h = latency_histogram();
    let mut path = String::with_capacity(dir.len() + 16);
    let ids = request_ids();
    for i in files {
        let id = Some(ids ^ ((i as u128) << 64 | phase.len() as u128));
        use std::fmt::Write;
        path.clear();
        write!(path, "{dir}/f{i}").expect("writing to a String");
        let t = Instant::now();
        match phase {
            "create" => {
                let options = CreateOptions {
                    exclusive: true,
                    ..Default::default()
                };
                c.create_as(id, &path, options).await.map(drop)
            }
            "stat" => c.stat(&path).await.map(drop),
            _ => c.unlink_as(id, &path).await,
        }
        .with_context(|| format!("{phase} {path}"))?;
        h.saturating_record(t.elapsed().as_micros().max(1) as u64);
        live.done(0);
    }
    Ok(h)
}

/// A random base for this client's request ids (distinct per run and
/// client; an id is this base mixed with the file number and the phase).
fn request_ids() -> u128 {
    use std::hash::{BuildHasher, RandomState};
    let s = RandomState::new();
    (u128::from(s.hash_one(1u8)) << 64) | u128::from(s.hash_one(2u8))
}
