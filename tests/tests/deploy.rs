//! deploy/: the install script places everything where the units expect it
//! and never overwrites an operator's files; the systemd units pass
//! `systemd-analyze verify` (where the machine has it).

use std::path::{Path, PathBuf};
use std::process::Command;

use ringfs_tests::{binary, run, run_ok, Server, START_WITHIN};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The directory holding freshly built ringfs-control, ringfs-node and ringfs.
fn bin_dir() -> PathBuf {
    binary("ringfs-node", "ringfs-node");
    binary("ringfs-client", "ringfs");
    binary("ringfs-control", "ringfs-control")
        .parent()
        .unwrap()
        .to_path_buf()
}

#[test]
fn install_script_lays_out_a_server_and_keeps_existing_files() {
    let root = tempfile::tempdir().unwrap();
    let install = |root: &Path| {
        run_ok(
            Command::new("bash")
                .arg(repo().join("deploy/install.sh"))
                .arg("--bin-dir")
                .arg(bin_dir())
                .arg("--root")
                .arg(root),
        );
    };
    install(root.path());
    let r = root.path();
    for f in [
        "usr/local/bin/ringfs-control",
        "usr/local/bin/ringfs-node",
        "usr/local/bin/ringfs",
        "etc/systemd/system/ringfs-control.service",
        "etc/systemd/system/ringfs-node@.service",
        "etc/systemd/system/ringfs-mount@.service",
        "etc/ringfs/control.toml",
        "etc/ringfs/node.toml.example",
    ] {
        assert!(r.join(f).is_file(), "{f} missing");
    }
    let secret = std::fs::read_to_string(r.join("etc/ringfs/secret")).unwrap();
    assert!(
        secret.trim().len() >= 40,
        "a 32-byte base64 secret: {secret:?}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(r.join("etc/ringfs/secret"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o077,
        0,
        "the secret is the owner's only (the servers refuse it otherwise): {mode:o}"
    );

    // A second run (an upgrade) keeps the secret and an edited config.
    std::fs::write(
        r.join("etc/ringfs/control.toml"),
        "listen = \"10.1.2.3:7700\"\n",
    )
    .unwrap();
    install(r);
    assert_eq!(
        std::fs::read_to_string(r.join("etc/ringfs/secret")).unwrap(),
        secret
    );
    assert!(std::fs::read_to_string(r.join("etc/ringfs/control.toml"))
        .unwrap()
        .contains("10.1.2.3"));
}

#[test]
fn the_example_configs_are_accepted_by_the_servers() {
    // The examples must parse: start a control server and a node with them
    // (addresses and paths pointed at loopback and a temp dir) and see them
    // serve.
    let dir = tempfile::tempdir().unwrap();
    let example = std::fs::read_to_string(repo().join("deploy/control.toml")).unwrap();
    let secret = ringfs_tests::write_secret(dir.path());
    let config = example
        .replace("0.0.0.0:7700", "127.0.0.1:0")
        .replace(
            "/var/lib/ringfs/control",
            dir.path().join("ctl").to_str().unwrap(),
        )
        .replace("/etc/ringfs/secret", secret.to_str().unwrap());
    let config = uncomment_optional(&config);
    let path = dir.path().join("control.toml");
    std::fs::write(&path, config).unwrap();
    let mut cmd = Command::new(binary("ringfs-control", "ringfs-control"));
    cmd.arg("--config").arg(&path);
    let control = Server::spawn(cmd, "ringfs-control listening on ", START_WITHIN)
        .expect("ringfs-control starts with deploy/control.toml");

    let example = std::fs::read_to_string(repo().join("deploy/node.toml")).unwrap();
    let config = example
        .replace("10.0.0.1:7700", &control.addr.to_string())
        .replace("10.0.0.5", "127.0.0.1")
        .replace(
            "/var/lib/ringfs/node-sdb",
            dir.path().join("node").to_str().unwrap(),
        )
        .replace("/etc/ringfs/secret", secret.to_str().unwrap())
        .replace("cores = [0, 1]", "cores = [0]")
        .replace("base-port = 7100", "base-port = 0");
    let config = uncomment_optional(&config);
    let path = dir.path().join("node.toml");
    std::fs::write(&path, config).unwrap();
    let mut cmd = Command::new(binary("ringfs-node", "ringfs-node"));
    cmd.arg("--config").arg(&path);
    Server::spawn(cmd, "ringfs-node: shard ", START_WITHIN)
        .expect("ringfs-node starts with deploy/node.toml");
}

/// Turns on the commented logging and metrics keys of an example (metrics
/// on an ephemeral loopback port), so that they are checked too.
fn uncomment_optional(config: &str) -> String {
    let out: String = config
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(rest) if rest.starts_with("metrics = ") => "metrics = \"127.0.0.1:0\"".into(),
            Some(rest) if rest.starts_with("log-") => rest.to_string(),
            _ => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(out.contains("\nmetrics = ") && out.contains("\nlog-format = "));
    out + "\n"
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        ringfs_tests::skip_unless_required(
            "RINGFS_REQUIRE_SYSTEMD",
            "systemd-analyze",
            "apt-get install systemd",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let bins = bin_dir();
    // verify checks that ExecStart is executable: point it at the build.
    let units = [
        ("ringfs-control.service", "ringfs-control.service"),
        ("ringfs-node@.service", "ringfs-node@sdb.service"),
        ("ringfs-mount@.service", "ringfs-mount@mnt-ringfs.service"),
    ];
    let mut paths = Vec::new();
    for (src, dst) in units {
        let text = std::fs::read_to_string(repo().join("deploy").join(src))
            .unwrap()
            .replace("/usr/local/bin/", &format!("{}/", bins.display()));
        let p = dir.path().join(dst);
        std::fs::write(&p, text).unwrap();
        paths.push(p);
    }
    let ran = run(Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&paths));
    let stderr = ran.stderr;
    assert_eq!(
        ran.code,
        Some(0),
        "systemd-analyze verify failed:\n{stderr}"
    );
    // It only warns about unknown or malformed settings: none allowed.
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains(dir.path().to_str().unwrap()) || l.contains("ringfs"))
        .collect();
    assert!(
        ours.is_empty(),
        "warnings about the units:\n{}",
        ours.join("\n")
    );
}
