//! One workload's figures: the `--json` document, the printed table.
//!
//! Units: bytes, seconds, MiB/s (2^20 bytes per second), microseconds.
//! `ratio` is ringfs / raw on the same access pattern in the same run
//! (throughput for sequential workloads, operations per second for random
//! ones); for workloads that write file data `ratio_per_copy` is
//! `ratio * replication`, since R copies share the one raw disk.

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::stats::Percentiles;

const MIB: f64 = (1 << 20) as f64;

/// The raw-disk run of the same pattern.
#[derive(Debug, Clone, Serialize)]
pub struct Baseline {
    pub throughput_mib_s: f64,
    pub ops_per_s: f64,
    pub latency_us: Percentiles,
}

/// CPU seconds (user + system) spent during the workload.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CpuSeconds {
    /// None when the cluster is not ours (`run --control`).
    pub control: Option<f64>,
    /// All storage nodes together.
    pub nodes: Option<f64>,
    /// Each storage node, in start order (empty with `run --control`).
    pub per_node: Vec<f64>,
    /// The load generator (this process, or fio).
    pub bench: f64,
    /// The `ringfs mount` process, when the load went through one we
    /// started (`ringfs-bench fio`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mount: Option<f64>,
}

impl CpuSeconds {
    /// Both together (per-node figures added node by node).
    pub fn plus(&self, o: &CpuSeconds) -> CpuSeconds {
        let add = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0.0) + b.unwrap_or(0.0)),
        };
        let n = self.per_node.len().max(o.per_node.len());
        CpuSeconds {
            control: add(self.control, o.control),
            nodes: add(self.nodes, o.nodes),
            per_node: (0..n)
                .map(|i| self.per_node.get(i).unwrap_or(&0.0) + o.per_node.get(i).unwrap_or(&0.0))
                .collect(),
            bench: self.bench + o.bench,
            mount: add(self.mount, o.mount),
        }
    }

    pub fn total(&self) -> f64 {
        self.control.unwrap_or(0.0)
            + self.nodes.unwrap_or(0.0)
            + self.mount.unwrap_or(0.0)
            + self.bench
    }
}

/// Work done per CPU second, over all processes measured.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Efficiency {
    pub mib_per_cpu_s: f64,
    pub ops_per_cpu_s: f64,
}

/// Throughput during one second of the run.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sample {
    /// End of the interval, seconds since the workload started.
    pub second: f64,
    pub throughput_mib_s: f64,
    pub ops_per_s: f64,
}

/// The JSON document of one workload.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub workload: String,
    pub replication: u8,
    pub block_size: usize,
    pub concurrency: usize,
    pub ops: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub throughput_mib_s: f64,
    pub ops_per_s: f64,
    pub latency_us: Percentiles,
    pub cpu_seconds: CpuSeconds,
    pub efficiency: Efficiency,
    pub baseline: Option<Baseline>,
    pub ratio: Option<f64>,
    pub ratio_per_copy: Option<f64>,
    /// Bytes read back and found to be exactly what was written.
    pub verified_bytes: u64,
    pub per_second: Vec<Sample>,
    /// Per phase, for the metadata workload only.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub phases: Vec<crate::workload::PhaseReport>,
    #[serde(skip)]
    pub histogram: Histogram<u64>,
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        workload: &str,
        replication: u8,
        block_size: usize,
        concurrency: usize,
        measured: crate::workload::Measured,
        seconds: f64,
        cpu_seconds: CpuSeconds,
        per_second: Vec<Sample>,
    ) -> Self {
        let seconds = seconds.max(1e-9);
        let cpu = cpu_seconds.total().max(1e-9);
        Report {
            workload: workload.to_string(),
            replication,
            block_size,
            concurrency,
            ops: measured.ops,
            bytes: measured.bytes,
            seconds,
            throughput_mib_s: measured.bytes as f64 / MIB / seconds,
            ops_per_s: measured.ops as f64 / seconds,
            latency_us: Percentiles::of(&measured.histogram),
            cpu_seconds,
            efficiency: Efficiency {
                mib_per_cpu_s: measured.bytes as f64 / MIB / cpu,
                ops_per_cpu_s: measured.ops as f64 / cpu,
            },
            baseline: None,
            ratio: None,
            ratio_per_copy: None,
            verified_bytes: measured.verified_bytes,
            per_second,
            phases: measured.phases,
            histogram: measured.histogram,
        }
    }

    /// Attaches the raw run; `writes`: whether R copies were written.
    pub fn set_baseline(&mut self, raw: &crate::raw_disk::RawResult, writes: bool) {
        let secs = raw.elapsed.as_secs_f64().max(1e-9);
        self.compare(
            Baseline {
                throughput_mib_s: raw.bytes as f64 / MIB / secs,
                ops_per_s: raw.ops as f64 / secs,
                latency_us: Percentiles::of(&raw.latency),
            },
            writes,
        );
    }

    /// Attaches the raw figures `b` and the ratios to them.
    pub fn compare(&mut self, b: Baseline, writes: bool) {
        let ratio = if b.ops_per_s > 0.0 {
            self.ops_per_s / b.ops_per_s
        } else {
            0.0
        };
        self.ratio = Some(ratio);
        self.ratio_per_copy = writes.then(|| ratio * f64::from(self.replication.max(1)));
        self.baseline = Some(b);
    }
}

/// The JSON of a run: one object, or an array when several workloads ran.
pub fn to_json(reports: &[Report]) -> serde_json::Result<String> {
    match reports {
        [one] => serde_json::to_string_pretty(one),
        all => serde_json::to_string_pretty(all),
    }
}

/// Prints the summary table.
pub fn print_table(reports: &[Report]) {
    println!(
        "\n{:<14} {:>9} {:>10} {:>9} {:>8} {:>8} {:>8} {:>8} {:>9} {:>10} {:>7} {:>9}",
        "workload",
        "MiB/s",
        "ops/s",
        "p50 µs",
        "p90 µs",
        "p99 µs",
        "p999 µs",
        "max µs",
        "MiB/cpu·s",
        "raw MiB/s",
        "ratio",
        "per copy"
    );
    for r in reports {
        let l = r.latency_us;
        let mib = |v: Option<f64>| v.map_or_else(|| "-".into(), |v| format!("{v:.1}"));
        let pct = |v: Option<f64>| v.map_or_else(|| "-".into(), |v| format!("{:.0}%", v * 100.0));
        println!(
            "{:<14} {:>9.1} {:>10.0} {:>9} {:>8} {:>8} {:>8} {:>8} {:>9.1} {:>10} {:>7} {:>9}",
            r.workload,
            r.throughput_mib_s,
            r.ops_per_s,
            l.p50,
            l.p90,
            l.p99,
            l.p999,
            l.max,
            r.efficiency.mib_per_cpu_s,
            mib(r.baseline.as_ref().map(|b| b.throughput_mib_s)),
            pct(r.ratio),
            pct(r.ratio_per_copy),
        );
    }
}
