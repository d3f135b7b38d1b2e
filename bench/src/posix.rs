//! The workloads through ordinary file calls on any mounted file system (a
//! ringfs mount, a local disk, another distributed file system):
//! `ringfs-bench run --path DIR`.
//!
//! Same dataset, same verification, same figures as through the client
//! library; the concurrency is threads, each with one call in flight
//! (`pread`/`pwrite`, as fio's psync engine), since these calls block. With
//! `direct` every file is opened with O_DIRECT (buffers page-aligned), so
//! the page cache neither serves reads nor absorbs writes, as in the
//! raw-disk baseline; writes are `O_DSYNC`, so each is durable when it
//! returns, as a ringfs write is.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::time::Instant;

use anyhow::{bail, Context};
use hdrhistogram::Histogram;

use crate::dataset::{xorshift, Dataset, PageAligned, WriteBuf, PAGE};
use crate::live::Live;
use crate::metadata::{Phase, PHASES};
use crate::stats::latency_histogram;
use crate::workload::{Measured, Running, Spec, Workload};

/// Where the dataset's file `f` lives under `dir`.
pub fn local_path(dir: &Path, ds: &Dataset, f: usize) -> PathBuf {
    dir.join(ds.path(f).trim_start_matches('/'))
}

fn open(path: &Path, direct: bool, write: bool, create: bool) -> std::io::Result<File> {
    let mut flags = 0;
    if direct {
        flags |= libc::O_DIRECT;
    }
    if write {
        flags |= libc::O_DSYNC;
    }
    OpenOptions::new()
        .read(true)
        .write(write)
        .create(create)
        .truncate(create)
        .custom_flags(flags)
        .open(path)
}

/// Starts `spec` on the dataset under `dir`, one thread per stream or
/// operation in flight.
pub fn start(dir: &Path, direct: bool, ds: Arc<Dataset>, spec: Spec, live: Arc<Live>) -> Running {
    let dir = dir.to_path_buf();
    if spec.workload == Workload::Metadata {
        let thread = std::thread::spawn(move || {
            let phases = metadata(&dir, spec.concurrency, spec.metadata_files, &live)?;
            Measured::from_phases(phases)
        });
        return Running::new(vec![thread]);
    }
    let threads = (0..spec.concurrency.max(1))
        .map(|t| {
            let (ds, live, dir) = (ds.clone(), live.clone(), dir.clone());
            std::thread::spawn(move || {
                let result = if spec.workload.is_sequential() {
                    seq_stream(&dir, direct, &ds, &spec, &live, t)
                } else {
                    random_ops(&dir, direct, &ds, &spec, &live, t)
                };
                if result.is_err() {
                    live.stop();
                }
                result
            })
        })
        .collect();
    Running::new(threads)
}

/// One sequential stream: files `s, s + concurrency, ...`, front to back.
fn seq_stream(
    dir: &Path,
    direct: bool,
    ds: &Dataset,
    spec: &Spec,
    live: &Live,
    stream: usize,
) -> anyhow::Result<Measured> {
    let block = spec.block_size;
    let write = spec.workload == Workload::SeqWrite;
    let mut acc = Measured::new();
    let mut wbuf = write.then(|| WriteBuf::new(block));
    let mut rbuf = (!write).then(|| PageAligned::new(block));
    for f in (stream..ds.files).step_by(spec.concurrency.max(1)) {
        let path = local_path(dir, ds, f);
        let file = open(&path, direct, write, write)
            .with_context(|| format!("opening {}", path.display()))?;
        let mut offset = 0;
        while offset < ds.file_bytes {
            if live.stopped() {
                bail!("stopped");
            }
            let t = Instant::now();
            if let Some(w) = wbuf.as_mut() {
                file.write_all_at(w.fill(ds, f, offset, 0), offset)
                    .with_context(|| format!("writing {} at {offset}", path.display()))?;
                acc.record(t, block, false);
            } else if let Some(r) = rbuf.as_mut() {
                file.read_exact_at(r, offset)
                    .with_context(|| format!("reading {} at {offset}", path.display()))?;
                acc.record(t, block, true);
                ds.verify(r, f, offset, |p| ds.is_rewritten(f, p))?;
            }
            live.done(block as u64);
            offset += block as u64;
        }
    }
    Ok(acc)
}

/// Random 4 KiB reads and/or overwrites, one at a time, on every file.
fn random_ops(
    dir: &Path,
    direct: bool,
    ds: &Dataset,
    spec: &Spec,
    live: &Live,
    me: usize,
) -> anyhow::Result<Measured> {
    let read_percent = spec.workload.read_percent(spec.read_percent);
    let writes = read_percent < 100;
    let files: Vec<File> = (0..ds.files)
        .map(|f| {
            let path = local_path(dir, ds, f);
            open(&path, direct, writes, false)
                .with_context(|| format!("opening {}", path.display()))
        })
        .collect::<anyhow::Result<_>>()?;
    let mut acc = Measured::new();
    let mut seed = (me as u64) << 32 | 1;
    seed ^= 0x9e37_79b9_7f4a_7c15;
    let mut wbuf = WriteBuf::new(PAGE);
    let mut rbuf = PageAligned::new(PAGE);
    while live.claim() {
        let write = xorshift(&mut seed) % 100 >= u64::from(read_percent);
        let page = xorshift(&mut seed) % ds.pages_per_file();
        let offset = page * PAGE as u64;
        let f = (xorshift(&mut seed) % ds.files as u64) as usize;
        let t = Instant::now();
        if write {
            ds.rewrite_sent(f, page);
            files[f]
                .write_all_at(wbuf.fill(ds, f, offset, 1), offset)
                .with_context(|| format!("writing {} at {offset}", ds.path(f)))?;
            ds.rewrite_acked(f, page);
            acc.record(t, PAGE, false);
        } else {
            let was = ds.is_rewritten(f, page);
            files[f]
                .read_exact_at(&mut rbuf, offset)
                .with_context(|| format!("reading {} at {offset}", ds.path(f)))?;
            acc.record(t, PAGE, true);
            ds.verify(&rbuf, f, offset, |_| was)?;
        }
        live.done(PAGE as u64);
    }
    Ok(acc)
}

/// The metadata workload through file calls: `clients` threads create
/// `files` empty files in a new directory under `dir`, stat them all, then
/// unlink them all, each phase timed between barriers (as
/// [`crate::metadata::run`] does against the control server).
pub fn metadata(
    dir: &Path,
    clients: usize,
    files: usize,
    live: &Live,
) -> anyhow::Result<Vec<Phase>> {
    if clients == 0 || files == 0 {
        bail!("--concurrency and --metadata-files must be at least 1");
    }
    let root = dir.join(format!(
        "bench-metadata-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    std::fs::create_dir(&root).with_context(|| format!("creating {}", root.display()))?;
    let barrier = Barrier::new(clients + 1);
    let (timings, hists) = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..clients)
            .map(|c| {
                let (root, barrier) = (&root, &barrier);
                scope.spawn(move || {
                    let mut hists = Vec::new();
                    let mut error = None;
                    for phase in PHASES {
                        barrier.wait();
                        let mut h = latency_histogram();
                        if error.is_none() {
                            for i in (c..files).step_by(clients) {
                                let p = root.join(format!("f{i}"));
                                let t = Instant::now();
                                let r = match phase {
                                    "create" => OpenOptions::new()
                                        .write(true)
                                        .create_new(true)
                                        .open(&p)
                                        .map(drop),
                                    "stat" => std::fs::metadata(&p).map(drop),
                                    _ => std::fs::remove_file(&p),
                                };
                                if let Err(e) = r {
                                    error = Some(anyhow::anyhow!("{phase} {}: {e}", p.display()));
                                    break;
                                }
                                h.saturating_record(t.elapsed().as_micros().max(1) as u64);
                                live.done(0);
                            }
                        }
                        hists.push(h);
                        barrier.wait();
                    }
                    match error {
                        Some(e) => Err(e),
                        None => Ok(hists),
                    }
                })
            })
            .collect();
        let timings = crate::metadata::time_phases(&barrier);
        let mut merged: Vec<Histogram<u64>> = PHASES.iter().map(|_| latency_histogram()).collect();
        for w in workers {
            let hists = w
                .join()
                .map_err(|_| anyhow::anyhow!("a metadata thread panicked"))??;
            for (m, h) in merged.iter_mut().zip(hists) {
                m.add(h).context("merging histograms")?;
            }
        }
        anyhow::Ok((timings, merged))
    })?;
    std::fs::remove_dir(&root).with_context(|| format!("removing {}", root.display()))?;
    Ok(crate::metadata::phases(timings, hists))
}
