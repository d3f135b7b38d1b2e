//! `--metrics` on the real servers: `/healthz` answers while the process
//! lives, a node's `/readyz` flips to ready when it joins and back when its
//! control server goes, `/metrics` counters move by exactly what a small
//! workload did, and the re-replication figures follow a lost replica from
//! backlog to copies done.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ringfs_client::{BlockingClient, OpenOptions};
use ringfs_tests::files::{layout, pattern};
use ringfs_tests::scrape::{get, scrape, value};
use ringfs_tests::{Cluster, ControlProcess, NodeProcess, FAST_REPAIR, QUICK};

const WAIT: Duration = Duration::from_secs(30);

fn wait_status(addr: SocketAddr, path: &str, want: u16) {
    let start = Instant::now();
    loop {
        let (status, body) = get(addr, path);
        if status == want {
            return;
        }
        assert!(start.elapsed() < WAIT, "{path}: {status} {body}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn health_flips_as_the_node_joins_and_counters_follow_a_workload() {
    let dir = tempfile::tempdir().unwrap();
    // Hold the control server's port until it starts: a released probe
    // port can be taken by another test's server (same secret), which the
    // node would then join. A listener that never answers keeps the node
    // unjoined meanwhile.
    let placeholder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let control_addr = placeholder.local_addr().unwrap();

    // The node first, with no control server to join yet.
    let node_flags = ["--capacity-bytes", "1073741824", "--metrics", "127.0.0.1:0"];
    let node = NodeProcess::start(dir.path(), "node", control_addr, &node_flags);
    let node_metrics = node.metrics.expect("node metrics endpoint");
    assert_eq!(get(node_metrics, "/healthz").0, 200);
    let (status, body) = get(node_metrics, "/readyz");
    assert_eq!(
        (status, body.as_str()),
        (503, "not ready: not joined to the control server\n")
    );
    assert_eq!(get(node_metrics, "/nope").0, 404);

    drop(placeholder);
    let control_flags = ["--heartbeat-ms", "200", "--node-ttl-ms", "1000"];
    let control_flags = [&control_flags[..], &["--metrics", "127.0.0.1:0"]].concat();
    let mut control = ControlProcess::start(dir.path(), &control_addr.to_string(), &control_flags);
    let control_metrics = control.metrics.expect("control metrics endpoint");
    assert_eq!(control.addr, control_addr);
    assert_eq!(get(control_metrics, "/healthz").0, 200);
    wait_status(control_metrics, "/readyz", 200);
    // The node's link retries with backoff (at most 5 s) and then joins.
    wait_status(node_metrics, "/readyz", 200);
    let n0 = scrape(node_metrics);
    assert_eq!(value(&n0, "ringfs_node_joined"), 1.0);
    assert_eq!(
        value(&n0, "ringfs_node_capacity_bytes{shard=\"0\"}"),
        1073741824.0
    );

    // Wait until the control server lists the node up, then write and
    // read back one file.
    let client = BlockingClient::connect(control_addr, &ringfs_tests::admin()).unwrap();
    let start = Instant::now();
    while !client.cluster_map().unwrap().nodes.iter().any(|n| n.up) {
        assert!(start.elapsed() < WAIT);
        std::thread::sleep(Duration::from_millis(50));
    }
    let c0 = scrape(control_metrics);
    let n0 = scrape(node_metrics);
    const LEN: usize = 300_000;
    let data = pattern(LEN, 251);
    let fd = client.create("/f", layout(1 << 20, 1, 1)).unwrap();
    assert_eq!(client.write(fd, &data).unwrap(), LEN);
    client.close(fd).unwrap();
    let fd = client.open("/f", &OpenOptions::read()).unwrap();
    let mut back = vec![0u8; LEN];
    assert_eq!(client.pread(fd, 0, &mut back).unwrap(), LEN);
    client.close(fd).unwrap();
    assert_eq!(back, data);
    assert!(client.stat("/missing").is_err());

    let c1 = scrape(control_metrics);
    let n1 = scrape(node_metrics);
    let delta =
        |a: &HashMap<String, f64>, b: &HashMap<String, f64>, k: &str| value(b, k) - value(a, k);
    // The client's create opens the new file for writing: two opens.
    for (op, n) in [("create", 1.0), ("open", 2.0), ("stat", 1.0)] {
        let k = format!("ringfs_control_requests_total{{op=\"{op}\"}}");
        assert_eq!(delta(&c0, &c1, &k), n, "{k}");
    }
    assert_eq!(
        delta(&c0, &c1, "ringfs_control_errors_total{op=\"stat\"}"),
        1.0
    );
    assert_eq!(
        delta(&c0, &c1, "ringfs_control_errors_total{op=\"create\"}"),
        0.0
    );
    assert_eq!(
        delta(
            &c0,
            &c1,
            "ringfs_control_request_duration_seconds_count{op=\"create\"}"
        ),
        1.0
    );
    assert_eq!(value(&c1, "ringfs_control_serving"), 1.0);
    // File-handle calls: both handles closed, the written chunk committed.
    assert_eq!(
        delta(&c0, &c1, "ringfs_control_requests_total{op=\"close\"}"),
        2.0
    );
    assert!(
        delta(
            &c0,
            &c1,
            "ringfs_control_requests_total{op=\"commit_chunks\"}"
        ) >= 1.0
    );
    assert_eq!(
        delta(
            &c0,
            &c1,
            "ringfs_control_errors_total{op=\"commit_chunks\"}"
        ),
        0.0
    );

    assert_eq!(
        delta(&n0, &n1, "ringfs_node_written_bytes_total{shard=\"0\"}"),
        LEN as f64
    );
    assert_eq!(
        delta(&n0, &n1, "ringfs_node_read_bytes_total{shard=\"0\"}"),
        LEN as f64
    );
    assert_eq!(
        delta(
            &n0,
            &n1,
            "ringfs_node_requests_total{shard=\"0\",op=\"reserve\"}"
        ),
        1.0
    );
    let writes = delta(
        &n0,
        &n1,
        "ringfs_node_requests_total{shard=\"0\",op=\"write\"}",
    );
    assert!(writes >= 1.0, "{writes}");
    assert_eq!(
        delta(
            &n0,
            &n1,
            "ringfs_node_request_duration_seconds_count{shard=\"0\",op=\"write\"}"
        ),
        writes
    );
    assert_eq!(
        delta(
            &n0,
            &n1,
            "ringfs_node_errors_total{shard=\"0\",op=\"write\"}"
        ),
        0.0
    );
    assert_eq!(delta(&n0, &n1, "ringfs_node_chunks{shard=\"0\"}"), 1.0);
    assert!(value(&n1, "ringfs_node_used_bytes{shard=\"0\"}") >= LEN as f64);

    // The control server's view, from the node's heartbeats (every 200 ms).
    assert_eq!(value(&c1, "ringfs_control_nodes{state=\"up\"}"), 1.0);
    assert_eq!(value(&c1, "ringfs_control_nodes{state=\"down\"}"), 0.0);
    // A healthy cluster has nothing to re-replicate.
    assert_eq!(value(&c1, "ringfs_control_repair_backlog_chunks"), 0.0);
    assert_eq!(value(&c1, "ringfs_control_repair_copies_in_flight"), 0.0);
    assert_eq!(
        value(&c1, "ringfs_control_cluster_capacity_bytes"),
        1073741824.0
    );
    let start = Instant::now();
    while value(&scrape(control_metrics), "ringfs_control_cluster_chunks")
        != value(&n1, "ringfs_node_chunks{shard=\"0\"}")
    {
        assert!(
            start.elapsed() < WAIT,
            "the chunk count never reached the control server"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // An idle, healthy cluster gives the planner nothing to look for: it
    // plans every 100 ms here but does not scan the chunk map.
    let scans = value(&scrape(control_metrics), "ringfs_control_repair_scans");
    assert!(scans >= 1.0, "the first round scans");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        value(&scrape(control_metrics), "ringfs_control_repair_scans"),
        scans,
        "no scan while idle and healthy"
    );

    // Without its control server the node is alive but no longer ready.
    control.kill9();
    wait_status(node_metrics, "/readyz", 503);
    assert_eq!(get(node_metrics, "/healthz").0, 200);
    assert_eq!(value(&scrape(node_metrics), "ringfs_node_joined"), 0.0);
}

/// Waits until `key` reads `want` at `addr`; returns that scrape.
fn wait_value(addr: SocketAddr, key: &str, want: f64) -> HashMap<String, f64> {
    let start = Instant::now();
    loop {
        let m = scrape(addr);
        if value(&m, key) == want {
            return m;
        }
        assert!(
            start.elapsed() < WAIT,
            "{key} = {}, want {want}",
            value(&m, key)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn repair_backlog_rises_with_a_lost_replica_and_falls_as_copies_finish() {
    const CHUNKS: usize = 4;
    let mut flags = FAST_REPAIR.to_vec();
    flags.extend(["--metrics", "127.0.0.1:0"]);
    let mut cluster = Cluster::start_with(2, &flags, &[]);
    let metrics = cluster.control.metrics.expect("control metrics endpoint");
    let client = BlockingClient::connect(cluster.control.addr, &ringfs_tests::admin()).unwrap();
    let layout = layout(1 << 20, 2, 2);
    let data = pattern(CHUNKS << 20, 253);
    let fd = client.create("/f", layout).unwrap();
    assert_eq!(client.write(fd, &data).unwrap(), data.len());
    client.close(fd).unwrap();
    let m = scrape(metrics);
    assert_eq!(value(&m, "ringfs_control_repair_backlog_chunks"), 0.0);
    assert_eq!(value(&m, "ringfs_control_repair_copies_done"), 0.0);

    // One of the two nodes dies: every chunk is down to one good replica,
    // and with no third node there is nowhere to copy it. The backlog
    // counts them all once the node is down and its grace has passed.
    cluster.kill9(1);
    let m = wait_value(
        metrics,
        "ringfs_control_repair_backlog_chunks",
        CHUNKS as f64,
    );
    assert_eq!(value(&m, "ringfs_control_nodes{state=\"down\"}"), 1.0);
    assert_eq!(value(&m, "ringfs_control_repair_copies_in_flight"), 0.0);
    assert_eq!(value(&m, "ringfs_control_repair_copies_done"), 0.0);

    // A new node gives the copies a target: the backlog drains to zero and
    // exactly one verified copy per chunk is recorded.
    cluster.start_node(2, &[]);
    let m = wait_value(metrics, "ringfs_control_repair_copies_done", CHUNKS as f64);
    let m = if value(&m, "ringfs_control_repair_backlog_chunks") == 0.0 {
        m
    } else {
        wait_value(metrics, "ringfs_control_repair_backlog_chunks", 0.0)
    };
    assert_eq!(value(&m, "ringfs_control_repair_copies_failed"), 0.0);
    assert_eq!(value(&m, "ringfs_control_repair_copies_in_flight"), 0.0);
    // And the data survived the move.
    let fd = client.open("/f", &OpenOptions::read()).unwrap();
    let mut back = vec![0u8; data.len()];
    assert_eq!(client.pread(fd, 0, &mut back).unwrap(), data.len());
    client.close(fd).unwrap();
    assert!(back == data);
}

#[test]
fn the_planner_scans_for_a_short_write_at_once_and_not_while_idle() {
    const CHUNKS: usize = 2;
    // Periodic scans every 10 minutes: within the test only events can
    // make the planner look.
    let more = [
        "--repair-grace-ms",
        "1000",
        "--report-interval-ms",
        "600000",
        "--metrics",
        "127.0.0.1:0",
    ];
    let flags = [QUICK, &more].concat();
    let mut cluster = Cluster::start_with(3, &flags, &[]);
    let metrics = cluster.control.metrics.expect("control metrics endpoint");
    cluster.kill9(2);
    wait_value(metrics, "ringfs_control_nodes{state=\"down\"}", 1.0);
    // Past the dead node's grace (TTL 1 s + grace 1 s + a heartbeat), an
    // idle cluster with nothing to repair stops scanning.
    std::thread::sleep(Duration::from_millis(2500));
    let scans = value(&scrape(metrics), "ringfs_control_repair_scans");
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(
        value(&scrape(metrics), "ringfs_control_repair_scans"),
        scans,
        "no scan while nothing can be repaired"
    );

    // R=3, W=2 with two nodes up: each chunk is committed with two
    // replicas, and the commit alone makes the planner count them.
    let client = BlockingClient::connect(cluster.control.addr, &ringfs_tests::admin()).unwrap();
    let layout = layout(1 << 20, 3, 2);
    let data = pattern(CHUNKS << 20, 241);
    let fd = client.create("/short", layout).unwrap();
    assert_eq!(client.write(fd, &data).unwrap(), data.len());
    client.close(fd).unwrap();
    wait_value(
        metrics,
        "ringfs_control_repair_backlog_chunks",
        CHUNKS as f64,
    );

    // The node comes back: the third replicas are copied.
    cluster.start_node(2, &[]);
    wait_value(metrics, "ringfs_control_repair_copies_done", CHUNKS as f64);
    wait_value(metrics, "ringfs_control_repair_backlog_chunks", 0.0);
}
