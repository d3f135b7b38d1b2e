//! The Python package (client/python, `ringfs`) against a real cluster:
//! round trips of every edge size, overwrites, truncate and append, interop
//! both ways with the `ringfs` CLI, a node killed during a read, bad input
//! raising the right exceptions, and Python's 1 MiB-block throughput next
//! to the Rust CLI's (a figure, printed), transactions across files. The
//! checks are in client/python/tests/*_test.py; this test starts the
//! processes.
//!
//! Needs `python3` with pycapnp 2.x and crc32c (`pip install
//! ./client/python` installs both). Without them the test says so and
//! passes, unless `RINGFS_REQUIRE_PYTHON=1` (as in CI: then it fails).

use std::path::Path;
use std::process::Command;

use ringfs_tests::files::{pattern, wait_replicas_agree};
use ringfs_tests::{binary, with_client, Cluster, NodeOptions, FAST_REPAIR};

fn package_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../client/python")
}

fn python_deps_available() -> bool {
    Command::new("python3")
        .args(["-c", "import capnp, crc32c"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Whether the test can run: false (the test passes, saying so) only
/// outside CI.
fn python_ready() -> bool {
    if python_deps_available() {
        return true;
    }
    ringfs_tests::skip_unless_required(
        "RINGFS_REQUIRE_PYTHON",
        "python3 with pycapnp and crc32c",
        "pip install ./client/python",
    );
    false
}

/// Runs client/python/tests/cluster_test.py with `args` against `cl` and
/// checks that it ended well and said `done`.
fn run_python(cl: &Cluster, args: &[&str], done: &str) {
    run_script(cl, "cluster_test.py", args, done);
}

/// Runs client/python/tests/`script` with `args` against `cl` and checks
/// that it ended well and said `done`.
fn run_script(cl: &Cluster, script: &str, args: &[&str], done: &str) {
    let nodes: Vec<String> = (0..cl.nodes.len())
        .map(|i| {
            let n = cl.node(i);
            format!("{}:{}:{}", cl.node_id(i), n.pid(), n.data.display())
        })
        .collect();
    let out = Command::new("python3")
        .arg(package_dir().join("tests").join(script))
        .args(args)
        // The package from this checkout, not an installed copy.
        .env("PYTHONPATH", package_dir())
        .env("RINGFS_CONTROL", cl.control.addr.to_string())
        .env("RINGFS_CREDENTIAL", cl.admin_credential())
        .env(
            "RINGFS_SECRET_FILE",
            ringfs_tests::write_secret(cl.dir.path()),
        )
        .env("RINGFS_CLI", binary("ringfs-client", "ringfs"))
        .env("RINGFS_NODES", nodes.join(","))
        .env("RINGFS_BENCH_MIB", "16")
        .output()
        .expect("running python3");
    assert_python_ok(&out, done);
}

/// Checks that a Python test script ended well, said `done` and left no
/// asyncio task behind.
fn assert_python_ok(out: &std::process::Output, done: &str) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "python test failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains(done), "{stdout}");
    assert!(
        !stderr.contains("Task was destroyed"),
        "tasks left behind:\n{stderr}"
    );
}

#[test]
fn python_package_round_trips_interops_and_fails_over() {
    if !python_ready() {
        return;
    }
    let cl = Cluster::start(3);
    run_python(&cl, &["bench"], "python cluster test: all ok");
}

/// Transactions across files from Python
/// (client/python/tests/transaction_test.py): readers never see a mix of
/// two-file commits; partial writes and truncation match a reference and
/// stay invisible until the commit; aborts (explicit, by an exception, by
/// leaving `async with`) change nothing; a lease timeout raises `Busy`
/// naming the file and leaves nothing behind; the sync wrapper commits.
#[test]
fn python_package_transactions_are_all_or_nothing() {
    if !python_ready() {
        return;
    }
    let cl = Cluster::start(2);
    run_script(
        &cl,
        "transaction_test.py",
        &[],
        "python transaction test: all ok",
    );
}

/// One node flips a bit in every read answer after its own CRC check: the
/// Python client's check of the CRCs the node sent must catch it and read
/// the other replica.
#[test]
fn python_package_catches_bits_flipped_in_flight() {
    if !python_ready() {
        return;
    }
    let mut cl = Cluster::start(1);
    cl.start_node_with(
        1,
        &NodeOptions {
            failpoints: Some("ops::read::flip_bit=return"),
            ..NodeOptions::default()
        },
    );
    cl.wait_up(2);
    run_python(&cl, &["flip"], "python flip test: all ok");
}

/// Verified reads from Python (`open(..., verify_replicas=True)`): one of
/// three replicas differs at the same version with valid checksums; the
/// Python client reads the majority's bytes and reports the odd replica,
/// which the control server then repairs; with two replicas that disagree
/// the read raises `Corrupt`.
#[test]
fn python_package_verified_reads_outvote_a_diverged_replica() {
    if !python_ready() {
        return;
    }
    let mut cl = Cluster::start_with(3, FAST_REPAIR, &[]);
    let data = pattern(64 * 1024, 71);
    let expected = cl.dir.path().join("expected");
    std::fs::write(&expected, &data).unwrap();
    cl.diverged_file("/v3", &data, 3);
    cl.diverged_file("/v2", &data, 2);
    let expected = expected.to_str().unwrap();
    run_python(&cl, &["verify", expected], "python verify test: all ok");
    // Reported, not repaired by the client: the control server replaces it.
    with_client(cl.control.addr, async |c| {
        let limit = std::time::Duration::from_secs(30);
        wait_replicas_agree(c, "/v3", limit, "the reported replica repaired").await;
    });
}

/// The Python package over TLS (client/python/tests/tls_test.py): a file
/// written and read back byte for byte through a TLS-only control server
/// and node; a plaintext client, a server certificate of another CA, a
/// client certificate of another CA and a key file others may read are
/// each refused, clearly and at once.
#[test]
fn python_package_speaks_tls_and_refuses_what_rust_refuses() {
    use ringfs_tests::tls::{load, tls_flags, Pki};
    if !python_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "ca");
    let stranger = Pki::new(dir.path(), "other-ca");
    let flags = tls_flags(&pki.server("server"));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let control = ringfs_tests::ControlProcess::start(dir.path(), "127.0.0.1:0", &flags);
    let _node = ringfs_tests::NodeProcess::start(dir.path(), "n0", control.addr, &flags);
    let client = pki.client("client");
    let tls = load(&client);
    ringfs_tests::local(async {
        let c = ringfs_client::ControlClient::connect_tls(
            control.addr,
            &ringfs_tests::admin(),
            Some(&tls),
        )
        .await
        .expect("connecting over TLS");
        let start = std::time::Instant::now();
        while !c.cluster_map().await.unwrap().nodes.iter().any(|n| n.up) {
            assert!(start.elapsed() < std::time::Duration::from_secs(20));
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    });
    let intruder = stranger.client("intruder");
    let out = Command::new("python3")
        .arg(package_dir().join("tests/tls_test.py"))
        .env("PYTHONPATH", package_dir())
        .env("RINGFS_CONTROL", control.addr.to_string())
        .env(
            "RINGFS_CREDENTIAL",
            ringfs_tests::admin_credential(dir.path()),
        )
        .env("TLS_CA", &client.ca)
        .env("TLS_CERT", &client.cert)
        .env("TLS_KEY", &client.key)
        .env("OTHER_CA", &intruder.ca)
        .env("INTRUDER_CERT", &intruder.cert)
        .env("INTRUDER_KEY", &intruder.key)
        .env_remove("RINGFS_TLS_CA")
        .env_remove("RINGFS_TLS_CERT")
        .env_remove("RINGFS_TLS_KEY")
        .output()
        .expect("running python3");
    assert_python_ok(&out, "python tls test: all ok");
}
