//! Logs of the real binaries: `--log-format json` writes one parseable JSON
//! object per line; `log-level` sets the filter unless `RUST_LOG` is set,
//! which wins.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ringfs_tests::{binary, write_secret, Server};

const WAIT: Duration = Duration::from_secs(30);

/// Starts ringfs-control with `extra` flags and `rust_log`, stops it with
/// SIGTERM (it must exit 0) and returns its stderr.
fn control_stderr(dir: &Path, extra: &[&str], rust_log: Option<&str>) -> String {
    let secret = write_secret(dir);
    let log = dir.join("control.log");
    let mut cmd = Command::new(binary("ringfs-control", "ringfs-control"));
    cmd.args(["--listen", "127.0.0.1:0", "--data"])
        .arg(dir.join("ctl"))
        .arg("--secret-file")
        .arg(&secret)
        .args(extra)
        .env_remove("RUST_LOG")
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()));
    if let Some(v) = rust_log {
        cmd.env("RUST_LOG", v);
    }
    let mut server = Server::spawn(cmd, "ringfs-control listening on ", WAIT).unwrap();
    let status = server
        .terminate(WAIT)
        .expect("ringfs-control ignored SIGTERM");
    assert_eq!(
        status.code(),
        Some(0),
        "ringfs-control after SIGTERM: {status}"
    );
    std::fs::read_to_string(&log).unwrap()
}

/// Parses every line as a JSON object and returns the messages.
fn json_messages(text: &str) -> Vec<String> {
    let mut messages = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(v["level"].is_string(), "no level: {line}");
        assert!(v["timestamp"].is_string(), "no timestamp: {line}");
        messages.push(v["fields"]["message"].as_str().unwrap_or("").to_string());
    }
    messages
}

#[test]
fn control_json_logs_are_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let text = control_stderr(dir.path(), &["--log-format", "json"], None);
    let messages = json_messages(&text);
    assert!(
        messages.iter().any(|m| m == "control server started"),
        "{text}"
    );
    assert!(
        messages
            .iter()
            .any(|m| m == "control server stopped: metadata store closed"),
        "{text}"
    );
}

#[test]
fn log_level_filters_unless_rust_log_is_set() {
    let dir = tempfile::tempdir().unwrap();
    let quiet = control_stderr(dir.path(), &["--log-level", "warn"], None);
    assert!(!quiet.contains("control server started"), "{quiet}");
    let dir = tempfile::tempdir().unwrap();
    let loud = control_stderr(dir.path(), &["--log-level", "warn"], Some("info"));
    assert!(loud.contains("control server started"), "{loud}");
    // A graceful stop closes the metadata store (no repair on next open).
    assert!(loud.contains("metadata store closed"), "{loud}");
}

#[test]
fn node_json_logs_are_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let secret = write_secret(dir.path());
    let log = dir.path().join("node.log");
    let mut cmd = Command::new(binary("ringfs-node", "ringfs-node"));
    // No control server: the node still recovers its shard and listens.
    cmd.args(["--control", "127.0.0.1:9", "--listen", "127.0.0.1"])
        .args(["--cores", "1", "--log-format", "json", "--data"])
        .arg(dir.path().join("node"))
        .arg("--secret-file")
        .arg(&secret)
        .env("RUST_LOG", "info")
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()));
    let node = Server::spawn(cmd, "listening on ", WAIT).unwrap();
    // The link's first failed connection attempt is logged too.
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(&log).unwrap();
        let messages = json_messages(&text);
        if messages.iter().any(|m| m == "shard recovered")
            && messages.iter().any(|m| m.contains("control link"))
        {
            break;
        }
        assert!(start.elapsed() < WAIT, "{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(node);
}
