//! `ringfs-bench local` end to end: a real cluster of child processes, the
//! whole workload mix at tiny sizes, the JSON report, and teardown, also
//! when a storage node is killed in the middle of a run.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ringfs_tests::{run_failing, run_ok, Cluster};

fn bench() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ringfs-bench"));
    c.env("RUST_LOG", "error");
    c
}

fn alive(pid: u32) -> bool {
    // A zombie has been killed already; only a running process counts.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            let state = s.rsplit(')').next().unwrap_or("").trim_start();
            !state.starts_with('Z') && !state.starts_with('X')
        })
        .unwrap_or(false)
}

/// Pids and the data directory announced on stdout.
#[derive(Default, Debug)]
struct Announced {
    pids: Vec<u32>,
    node_pids: Vec<u32>,
    dir: Option<PathBuf>,
}

impl Announced {
    fn parse(&mut self, line: &str) {
        let pid = |l: &str| -> Option<u32> {
            let rest = &l[l.find("(pid ")? + 5..];
            rest[..rest.find(')')?].parse().ok()
        };
        if line.starts_with("control server (pid ") || line.starts_with("storage node ") {
            let p = pid(line).expect("a pid");
            self.pids.push(p);
            if line.starts_with("storage node ") {
                self.node_pids.push(p);
            }
        }
        if let Some(d) = line.strip_prefix("data in ") {
            self.dir = Some(PathBuf::from(d.trim()));
        }
    }

    /// Every process is gone and the data directory removed.
    fn assert_torn_down(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.pids.iter().any(|&p| alive(p)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        for &p in &self.pids {
            assert!(!alive(p), "process {p} survived the bench");
        }
        let dir = self
            .dir
            .as_deref()
            .expect("the data directory was announced");
        assert!(!dir.exists(), "{} was left behind", dir.display());
    }
}

#[test]
fn smoke_run_reports_every_workload_verified_and_tears_down() {
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("out.json");
    let plot = tmp.path().join("out.svg");
    let mut cmd = bench();
    cmd.args([
        "local",
        "--nodes",
        "3",
        "--size",
        "8MiB",
        "--block-size",
        "1MiB",
    ])
    .args([
        "--chunk-size",
        "1MiB",
        "--duration",
        "1s",
        "--metadata-files",
        "60",
    ])
    .args(["--concurrency", "4", "--dir"])
    .arg(tmp.path())
    .arg("--json")
    .arg(&json)
    .arg("--plot")
    .arg(&plot);
    let stdout = run_ok(&mut cmd);

    let mut announced = Announced::default();
    stdout.lines().for_each(|l| announced.parse(l));
    assert_eq!(announced.pids.len(), 4, "control + 3 nodes in:\n{stdout}");
    announced.assert_torn_down();

    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let runs = doc.as_array().expect("an array for several workloads");
    let names: Vec<&str> = runs
        .iter()
        .map(|r| r["workload"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "seq-write",
            "seq-read",
            "rand-read-4k",
            "rand-write-4k",
            "mixed",
            "metadata"
        ]
    );
    for r in runs {
        let name = r["workload"].as_str().unwrap();
        assert!(r["ops"].as_u64().unwrap() > 0, "{name}: no operations");
        assert!(r["seconds"].as_f64().unwrap() > 0.0, "{name}: no time");
        assert_eq!(r["replication"], 3, "{name}");
        for p in ["p50", "p90", "p99", "p999", "max"] {
            assert!(r["latency_us"][p].as_u64().unwrap() > 0, "{name}: {p}");
        }
        assert!(
            r["cpu_seconds"]["nodes"].as_f64().is_some()
                && r["cpu_seconds"]["per_node"].as_array().unwrap().len() == 3,
            "{name}: node CPU"
        );
        if name == "metadata" {
            assert!(r["baseline"].is_null() && r["ratio"].is_null());
            assert_eq!(r["ops"].as_u64().unwrap(), 3 * 60, "create + stat + unlink");
            let phases: Vec<_> = r["phases"].as_array().unwrap().iter().collect();
            assert_eq!(phases.len(), 3);
            assert!(phases
                .iter()
                .all(|p| p["ops"] == 60 && p["ops_per_s"].as_f64().unwrap() > 0.0));
            continue;
        }
        assert!(r["bytes"].as_u64().unwrap() > 0, "{name}: no bytes");
        assert!(r["throughput_mib_s"].as_f64().unwrap() > 0.0, "{name}");
        assert!(
            r["baseline"]["throughput_mib_s"].as_f64().unwrap() > 0.0,
            "{name}: raw"
        );
        assert!(r["ratio"].as_f64().unwrap() > 0.0, "{name}: ratio");
        if matches!(name, "seq-read" | "rand-read-4k" | "mixed") {
            assert!(
                r["verified_bytes"].as_u64().unwrap() > 0,
                "{name}: nothing verified"
            );
        }
    }
    // Sequential workloads move the whole dataset.
    assert_eq!(runs[0]["bytes"], 8 << 20);
    assert_eq!(runs[1]["verified_bytes"], 8 << 20);
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("latency CDF"),
        "an SVG plot"
    );
}

/// Starts a long `local` run and returns once its workload is under way.
fn start_long_run(dir: &Path) -> (std::process::Child, Announced) {
    let mut child = bench()
        .args([
            "local",
            "--nodes",
            "3",
            "--size",
            "64MiB",
            "--block-size",
            "1MiB",
        ])
        .args([
            "--chunk-size",
            "1MiB",
            "--workload",
            "seq-write,rand-read-4k",
        ])
        .args(["--duration", "60s", "--no-baseline", "--dir"])
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut announced = Announced::default();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the bench announced its dataset");
        announced.parse(&line);
        if line.starts_with("dataset: ") {
            break;
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    (child, announced)
}

/// Waits (up to 60 s) for the bench to exit; returns its status and stderr.
fn wait_exit(mut child: std::process::Child) -> (std::process::ExitStatus, String) {
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the bench kept running"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (status, stderr)
}

#[test]
fn a_killed_node_fails_the_run_clearly_and_the_rest_is_torn_down() {
    let tmp = tempfile::tempdir().unwrap();
    let (child, announced) = start_long_run(tmp.path());
    let victim = announced.node_pids[1];
    // SAFETY: kill(2) on a pid our child started and still owns.
    assert_eq!(unsafe { libc::kill(victim as i32, libc::SIGKILL) }, 0);
    let (status, stderr) = wait_exit(child);
    assert!(!status.success(), "the bench must fail");
    assert!(
        stderr.contains(&format!(
            "storage node 2 (pid {victim}) exited unexpectedly"
        )),
        "a clear message naming the node, got:\n{stderr}"
    );
    announced.assert_torn_down();
    assert_dir_empty(tmp.path());
}

#[test]
fn ctrl_c_stops_the_run_and_tears_everything_down() {
    let tmp = tempfile::tempdir().unwrap();
    let (child, announced) = start_long_run(tmp.path());
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let (status, stderr) = wait_exit(child);
    assert!(!status.success());
    assert!(stderr.contains("interrupted"), "got:\n{stderr}");
    announced.assert_torn_down();
    assert_dir_empty(tmp.path());
}

fn assert_dir_empty(dir: &Path) {
    let left: Vec<_> = std::fs::read_dir(dir).unwrap().collect();
    assert!(
        left.is_empty(),
        "left behind in {}: {left:?}",
        dir.display()
    );
}

#[test]
fn run_drives_an_existing_cluster() {
    let cluster = Cluster::start(2);
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("run.json");
    // The run is described by a config file; a flag given too wins.
    let config = tmp.path().join("run.toml");
    std::fs::write(
        &config,
        format!(
            "workload = [\"seq-write\", \"seq-read\"]\nreplication = 1\nsize = \"4MiB\"\n\
             block-size = \"256KiB\"\nchunk-size = \"1MiB\"\nno-baseline = true\njson = {json:?}\n"
        ),
    )
    .unwrap();
    run_ok(
        bench()
            .args(["run", "--control", &cluster.control.addr.to_string()])
            .arg("--credential")
            .arg(cluster.admin_credential())
            .args(["--replication", "2", "--config"])
            .arg(&config),
    );
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(doc[1]["workload"], "seq-read");
    assert_eq!(doc[0]["replication"], 2, "the flag beats the file");
    assert_eq!(doc[1]["verified_bytes"], 4 << 20);
    assert!(doc[0]["baseline"].is_null() && doc[0]["cpu_seconds"]["nodes"].is_null());
    // The dataset was removed again: the namespace is empty.
    let addr = cluster.control.addr;
    let left = ringfs_tests::local(async move {
        let c = ringfs_client::ControlClient::connect(addr, &ringfs_tests::admin())
            .await
            .unwrap();
        c.list("/").await.unwrap()
    });
    assert!(left.is_empty(), "left in the cluster: {left:?}");
}

#[test]
fn config_files_print_back_and_bad_ones_fail_with_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("run.toml");
    std::fs::write(&config, "nodes = 2\nsize = \"1GiB\"\nkeep = true\n").unwrap();
    let text = run_ok(
        bench()
            .args(["local", "--size", "2GiB", "--print-config", "--config"])
            .arg(&config),
    );
    for line in [
        "nodes = 2\n",
        "size = \"2GiB\"\n",
        "keep = true\n",
        "threads = 1\n",
    ] {
        assert!(text.contains(line), "{line:?} in:\n{text}");
    }
    // What it printed is a config file that reads back the same.
    let again = tmp.path().join("again.toml");
    std::fs::write(&again, text.as_bytes()).unwrap();
    let again = run_ok(
        bench()
            .args(["local", "--print-config", "--config"])
            .arg(&again),
    );
    assert_eq!(again, text);

    for (bad, named) in [
        ("nodez = 2\n", "unknown key `nodez`"),
        ("nodes = \"many\"\n", "many"),
    ] {
        std::fs::write(&config, bad).unwrap();
        let err = run_failing(bench().args(["local", "--config"]).arg(&config), 2);
        assert!(err.contains(named), "{err}");
    }
}
