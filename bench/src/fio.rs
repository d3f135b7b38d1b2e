//! `ringfs-bench fio`: the same fio jobs through a ringfs mount and on the
//! raw disk in one run, reported like the other workloads (ratios to raw,
//! JSON).
//!
//! Jobs (each its own fio process, in order):
//! - `seq-write`: 1 MiB writes, psync, one job, `end_fsync=1`, buffered.
//! - `seq-read`: 1 MiB reads of that file, psync, one job, buffered (fio
//!   drops the file's cached pages first).
//! - `rand-read-4k`: 4 KiB random reads of it, 4 jobs at queue depth 1,
//!   O_DIRECT (the page cache would serve a file this size otherwise).
//! - `rand-write-4k`: 4 KiB random overwrites, 4 jobs at queue depth 1,
//!   O_DIRECT and O_DSYNC (durable when they return, as ringfs writes are).
//! - `metadata`: create, stat and unlink of `files` empty files (fio's
//!   filecreate, filestat and filedelete engines), one phase each.
//!
//! fio's own latency percentiles (completion latency) are reported; its
//! CPU time counts as the load generator's.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};

use crate::report::{Baseline, CpuSeconds, Report};
use crate::stats::Percentiles;
use crate::workload::{Measured, PhaseReport};

const MIB: f64 = (1 << 20) as f64;

/// Sizes of a fio run.
#[derive(Debug, Clone, Copy)]
pub struct FioOptions {
    /// Bytes of the sequential file (which the random jobs reuse).
    pub size: u64,
    /// How long each random job runs.
    pub runtime: Duration,
    /// Files of the metadata job.
    pub files: usize,
}

/// One fio job.
#[derive(Debug, Clone)]
pub struct Job {
    pub name: &'static str,
    /// The job's section, without `[global]`.
    section: String,
    /// Whether its figures are in fio's `write` stats (else `read`).
    pub writes: bool,
    pub block_size: usize,
    pub jobs: usize,
}

/// The standard jobs; metadata is three (create, stat, unlink).
pub fn jobs(o: &FioOptions) -> Vec<Job> {
    let size = o.size;
    let runtime = o.runtime.as_secs().max(1);
    let seq = |name, rw: &str, extra: &str, writes| Job {
        name,
        section: format!(
            "[{name}]\nrw={rw}\nbs=1m\nnumjobs=1\nioengine=psync\nsize={size}\n\
             filename=seq.dat\n{extra}"
        ),
        writes,
        block_size: 1 << 20,
        jobs: 1,
    };
    let random = |name, rw: &str, extra: &str, writes| Job {
        name,
        section: format!(
            "[{name}]\nrw={rw}\nbs=4k\nnumjobs=4\niodepth=1\nioengine=psync\ndirect=1\n\
             size={size}\nfilename=seq.dat\ntime_based=1\nruntime={runtime}\n{extra}"
        ),
        writes,
        block_size: 4096,
        jobs: 4,
    };
    let meta = |name, engine: &str| Job {
        name,
        section: format!(
            "[{name}]\nioengine={engine}\nnrfiles={files}\nfilesize=4k\nopenfiles=1\n\
             filename_format=meta/f.$filenum\n",
            files = o.files
        ),
        writes: false,
        block_size: 0,
        jobs: 1,
    };
    vec![
        seq("seq-write", "write", "end_fsync=1\n", true),
        seq("seq-read", "read", "", false),
        random("rand-read-4k", "randread", "", false),
        random("rand-write-4k", "randwrite", "sync=dsync\n", true),
        meta("create", "filecreate"),
        meta("stat", "filestat"),
        meta("unlink", "filedelete"),
    ]
}

/// What fio measured of one job.
#[derive(Debug, Clone)]
pub struct Figures {
    pub ops: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub latency_us: Percentiles,
    /// fio's CPU time (user + system).
    pub cpu_seconds: f64,
}

/// Runs `job` in `dir` and returns fio's figures.
pub fn run(dir: &Path, job: &Job) -> anyhow::Result<Figures> {
    std::fs::create_dir_all(dir.join("meta"))
        .with_context(|| format!("creating {}", dir.join("meta").display()))?;
    let text = format!(
        "[global]\ndirectory={}\ngroup_reporting=1\nfallocate=none\n\n{}",
        dir.display(),
        job.section
    );
    let out = Command::new("fio")
        .args(["--output-format=json", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("piped")
                .write_all(text.as_bytes())?;
            child.wait_with_output()
        })
        .context("running fio (apt-get install fio)")?;
    if !out.status.success() {
        bail!(
            "fio {} in {} failed ({}): {}",
            job.name,
            dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse(&out.stdout, job).with_context(|| format!("reading fio's report of {}", job.name))
}

fn parse(json: &[u8], job: &Job) -> anyhow::Result<Figures> {
    let v: serde_json::Value = serde_json::from_slice(json)?;
    let j = &v["jobs"][0];
    let s = &j[if job.writes { "write" } else { "read" }];
    let num = |x: &serde_json::Value| x.as_f64().unwrap_or(0.0);
    let ops = s["total_ios"].as_u64().context("no total_ios")?;
    let iops = num(&s["iops"]);
    let seconds = if iops > 0.0 { ops as f64 / iops } else { 0.0 };
    let clat = &s["clat_ns"];
    let pct = |k: &str| (num(&clat["percentile"][k]) / 1000.0) as u64;
    let cpu = (num(&j["usr_cpu"]) + num(&j["sys_cpu"])) / 100.0 * seconds * job.jobs as f64;
    Ok(Figures {
        ops,
        bytes: s["io_bytes"].as_u64().unwrap_or(0),
        seconds,
        latency_us: Percentiles {
            p50: pct("50.000000"),
            p90: pct("90.000000"),
            p99: pct("99.000000"),
            p999: pct("99.900000"),
            max: (num(&clat["max"]) / 1000.0) as u64,
        },
        cpu_seconds: cpu,
    })
}

/// One job's report: `f` through ringfs, `raw` on the raw disk; the three
/// metadata jobs make one report with phases (see [`reports`]).
fn report(job: &Job, f: &Figures, cpu: CpuSeconds, replication: u8) -> Report {
    let measured = Measured {
        ops: f.ops,
        bytes: f.bytes,
        verified_bytes: 0,
        histogram: crate::stats::latency_histogram(),
        phases: Vec::new(),
    };
    let mut r = Report::new(
        job.name,
        replication,
        job.block_size,
        job.jobs,
        measured,
        f.seconds,
        cpu,
        Vec::new(),
    );
    r.latency_us = f.latency_us;
    r
}

fn baseline(f: &Figures) -> Baseline {
    let secs = f.seconds.max(1e-9);
    Baseline {
        throughput_mib_s: f.bytes as f64 / MIB / secs,
        ops_per_s: f.ops as f64 / secs,
        latency_us: f.latency_us,
    }
}

/// The phases of the metadata job as one: their operations over their
/// summed time; the slowest phase's latencies stand for the whole.
fn combined(phases: &[&Figures]) -> Figures {
    Figures {
        ops: phases.iter().map(|f| f.ops).sum(),
        bytes: 0,
        seconds: phases.iter().map(|f| f.seconds).sum(),
        latency_us: phases
            .iter()
            .max_by_key(|f| f.latency_us.p50)
            .map(|f| f.latency_us)
            .unwrap_or_default(),
        cpu_seconds: phases.iter().map(|f| f.cpu_seconds).sum(),
    }
}

/// Reports for the jobs of one target (`got`, with the CPU each job cost)
/// against the raw run of the same jobs, in order; the metadata phases
/// become one `metadata` report.
pub fn reports(
    jobs: &[Job],
    got: &[(Figures, CpuSeconds)],
    raw: &[Figures],
    replication: u8,
) -> Vec<Report> {
    let mut out = Vec::new();
    let mut meta: Vec<(&Job, &Figures, &Figures, &CpuSeconds)> = Vec::new();
    for ((job, (f, cpu)), raw) in jobs.iter().zip(got).zip(raw) {
        if job.block_size == 0 {
            meta.push((job, f, raw, cpu));
            continue;
        }
        let mut r = report(job, f, cpu.clone(), replication);
        r.compare(baseline(raw), job.writes);
        out.push(r);
    }
    if !meta.is_empty() {
        let ringfs: Vec<&Figures> = meta.iter().map(|m| m.1).collect();
        let raw: Vec<&Figures> = meta.iter().map(|m| m.2).collect();
        let cpu = meta
            .iter()
            .fold(CpuSeconds::default(), |acc, m| acc.plus(m.3));
        let job = Job {
            name: "metadata",
            section: String::new(),
            writes: false,
            block_size: 0,
            jobs: 1,
        };
        let mut r = report(&job, &combined(&ringfs), cpu, replication);
        r.phases = meta
            .iter()
            .map(|(j, f, _, _)| PhaseReport {
                phase: j.name,
                ops: f.ops,
                seconds: f.seconds,
                ops_per_s: f.ops as f64 / f.seconds.max(1e-9),
                latency_us: f.latency_us,
            })
            .collect();
        r.compare(baseline(&combined(&raw)), false);
        out.push(r);
    }
    out
}

/// A `ringfs mount` child process (the bench's own hidden `__mount`), so
/// the jobs go through a real mount of the local cluster. Dropping it
/// unmounts (SIGTERM; a lazy unmount if it does not go).
pub struct MountProcess {
    child: Child,
    pub path: PathBuf,
}

impl MountProcess {
    /// Mounts the cluster at `control` on `path` (an empty directory) with
    /// `args` (flags of `ringfs mount`).
    pub fn start(
        exe: &Path,
        control: std::net::SocketAddr,
        credential: &Path,
        path: &Path,
        args: &[String],
    ) -> anyhow::Result<Self> {
        let mut cmd = Command::new(exe);
        cmd.arg("__mount")
            .arg("--control")
            .arg(control.to_string())
            .arg("--credential")
            .arg(credential)
            .arg(path)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .process_group(0);
        // SAFETY: prctl is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().context("starting the mount")?;
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            BufReader::new(out).read_line(&mut line)?;
        }
        if !line.starts_with(ringfs_client::mount::cli::READY) {
            let _ = child.kill();
            let status = child.wait()?;
            bail!("the mount on {} did not start ({status})", path.display());
        }
        Ok(MountProcess {
            child,
            path: path.to_path_buf(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for MountProcess {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        for _ in 0..500 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = ringfs_client::mount::lazy_unmount(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_figures_of_fio_json() {
        let job = &jobs(&FioOptions {
            size: 1 << 20,
            runtime: Duration::from_secs(1),
            files: 10,
        })[0];
        let json = br#"{"jobs":[{"jobname":"seq-write","usr_cpu":10.0,"sys_cpu":30.0,
            "write":{"io_bytes":4194304,"total_ios":4,"iops":2.0,
              "clat_ns":{"max":900000.0,"percentile":{"50.000000":400000,
                "90.000000":500000,"99.000000":800000,"99.900000":900000}}},
            "read":{"io_bytes":0,"total_ios":0,"iops":0.0,"clat_ns":{}}}]}"#;
        let f = parse(json, job).unwrap();
        assert_eq!((f.ops, f.bytes), (4, 4 << 20));
        assert!((f.seconds - 2.0).abs() < 1e-9);
        assert_eq!(f.latency_us.p50, 400);
        assert_eq!(f.latency_us.max, 900);
        assert!((f.cpu_seconds - 0.8).abs() < 1e-9);
    }
}
