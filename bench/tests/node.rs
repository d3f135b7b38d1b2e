//! `ringfs-bench node` end to end at tiny sizes: a real control server and
//! storage node, every workload through the data-plane protocol as the
//! current protocol version wants it (CRCs, strict versions), and a JSON
//! report with all three workloads.

use std::process::Command;

#[test]
fn the_node_benchmark_runs_its_workloads_against_a_real_node() {
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("node.json");
    let out = Command::new(env!("CARGO_BIN_EXE_ringfs-bench"))
        .env("RUST_LOG", "error")
        .args(["node", "--chunks", "2", "--chunk-bytes", "4194304"])
        .args(["--random-reads", "640", "--json"])
        .arg(&json)
        .arg("--dir")
        .arg(dir.path())
        .output()
        .expect("ringfs-bench runs");
    assert!(
        out.status.success(),
        "ringfs-bench node failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let reports: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("JSON written")).expect("JSON");
    let names: Vec<&str> = reports
        .as_array()
        .expect("an array")
        .iter()
        .map(|r| r["workload"].as_str().expect("a workload name"))
        .collect();
    assert_eq!(names, ["seq_write_1m", "seq_read_1m", "rand_read_4k"]);
    for r in reports.as_array().unwrap() {
        assert!(r["ops"].as_u64().unwrap() > 0, "{r}");
    }
}
