//! The real `ringfs-control` and `ringfs-node` binaries: `--print-config`
//! prints the effective config (file merged under flags) as TOML that reads
//! back as a config file, and a bad config fails with exit code 2 and a
//! one-line message naming the problem.

use std::path::Path;
use std::process::Command;

use ringfs_tests::{binary, run_failing, run_ok, write_secret};

/// Server `bin` with `args`, and `--config config` if given.
fn cmd(bin: &str, args: &[&str], config: Option<&Path>) -> Command {
    let mut cmd = Command::new(binary(bin, bin));
    cmd.args(args);
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    cmd
}

#[test]
fn control_prints_its_effective_config_and_refuses_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let secret = write_secret(dir.path());
    let file = dir.path().join("control.toml");
    std::fs::write(
        &file,
        format!(
            "listen = \"127.0.0.1:7700\"\ndata = {:?}\nsecret-file = {:?}\nnode-ttl-ms = 9000\n",
            dir.path().join("ctl"),
            secret
        ),
    )
    .unwrap();
    let text = run_ok(&mut cmd(
        "ringfs-control",
        &["--print-config", "--heartbeat-ms", "300"],
        Some(&file),
    ));
    assert!(text.contains("listen = \"127.0.0.1:7700\""), "{text}");
    assert!(text.contains("node-ttl-ms = 9000"), "from the file: {text}");
    assert!(text.contains("heartbeat-ms = 300"), "from the flag: {text}");
    assert!(text.contains("default-replication = 3"), "defaults: {text}");
    // The output is itself a valid config file.
    let printed = dir.path().join("printed.toml");
    std::fs::write(&printed, &text).unwrap();
    assert_eq!(
        run_ok(&mut cmd(
            "ringfs-control",
            &["--print-config"],
            Some(&printed),
        )),
        text
    );

    // Unknown key and bad address: exit 2, one line naming the file line.
    std::fs::write(&file, "listen = \"127.0.0.1:7700\"\nsecret_file = \"/x\"\n").unwrap();
    let err = run_failing(&mut cmd("ringfs-control", &[], Some(&file)), 2);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("line 2") && err.contains("unknown field `secret_file`"),
        "{err}"
    );
    std::fs::write(&file, "listen = \"localhost\"\n").unwrap();
    let err = run_failing(&mut cmd("ringfs-control", &[], Some(&file)), 2);
    assert!(err.contains("line 1"), "{err}");
}

#[test]
fn node_prints_its_effective_config_and_refuses_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let secret = write_secret(dir.path());
    let file = dir.path().join("node.toml");
    std::fs::write(
        &file,
        format!(
            "control = \"127.0.0.1:7700\"\ndata = {:?}\nlisten = \"127.0.0.1\"\nsecret-file = {:?}\ncores = [0]\nbase-port = 7100\n",
            dir.path().join("node"),
            secret
        ),
    )
    .unwrap();
    let text = run_ok(&mut cmd(
        "ringfs-node",
        &["--print-config", "--lease-ms", "5000"],
        Some(&file),
    ));
    for want in [
        "control = \"127.0.0.1:7700\"",
        "cores = [0]",
        "base-port = 7100",
        "lease-ms = 5000",
        "io-memory = 4194304",
    ] {
        assert!(text.contains(want), "{want} missing in:\n{text}");
    }
    let printed = dir.path().join("printed.toml");
    std::fs::write(&printed, &text).unwrap();
    assert_eq!(
        run_ok(&mut cmd("ringfs-node", &["--print-config"], Some(&printed),)),
        text
    );

    // A core the machine lacks, given as a flag over a good file.
    let err = run_failing(
        &mut cmd("ringfs-node", &["--cores", "4096,"], Some(&file)),
        2,
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("core 4096 does not exist"), "{err}");
    // A data dir that cannot be created.
    let err = run_failing(
        &mut cmd(
            "ringfs-node",
            &["--data", secret.join("d").to_str().unwrap()],
            Some(&file),
        ),
        2,
    );
    assert!(err.contains("cannot create"), "{err}");
    // Old snake_case keys are unknown now.
    std::fs::write(&file, "base_port = 7100\n").unwrap();
    let err = run_failing(&mut cmd("ringfs-node", &[], Some(&file)), 2);
    assert!(err.contains("unknown field `base_port`"), "{err}");
}
