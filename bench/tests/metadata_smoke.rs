//! The quick-start command, small: `ringfs-bench metadata` starts its own
//! control server, runs every phase and writes well-formed JSON.

use std::process::Command;

#[test]
fn metadata_run_writes_json_with_every_rate() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("m.json");
    let out = Command::new(env!("CARGO_BIN_EXE_ringfs-bench"))
        .args(["metadata", "--clients", "4", "--files", "300", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(doc["workload"], "metadata");
    assert_eq!(
        (doc["clients"].as_u64(), doc["files"].as_u64()),
        (Some(4), Some(300))
    );
    for phase in ["create", "stat", "unlink"] {
        assert_eq!(doc["ops"][phase].as_u64(), Some(300), "{phase}");
        let lat = &doc["latency_us"][phase];
        assert!(lat["p50"].as_u64().unwrap() <= lat["max"].as_u64().unwrap());
    }
    for rate in ["creates_per_s", "stats_per_s", "unlinks_per_s"] {
        assert!(doc[rate].as_f64().unwrap() > 0.0, "{rate}");
    }
    assert!(doc["cpu_seconds"]["control"].as_f64().unwrap() > 0.0);
}

#[test]
fn unreachable_control_server_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_ringfs-bench"))
        .args(["metadata", "--control", "127.0.0.1:1", "--files", "10"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot connect to 127.0.0.1:1"), "{err}");
    assert_eq!(err.lines().count(), 1, "one clear line: {err}");
}
