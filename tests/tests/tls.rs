//! TLS everywhere (docs/operations.md, "TLS"): control replicas, storage
//! nodes and a client over TLS only, byte for byte; a plaintext peer, a
//! certificate of another CA (client's or server's) and a key file others
//! may read are each refused, clearly and without hanging.

use ringfs_client::node_conn::NodeConn;
use ringfs_client::{Client, ClientOptions, ControlClient, CreateOptions, Error};
use ringfs_ops::tls::TlsFiles;
use ringfs_schema::frame::{Header, Op};
use ringfs_schema::wire_error::describe;
use ringfs_tests::files::{get, pattern, put};
use ringfs_tests::tls::{load, tls_flags, Pki};
use ringfs_tests::{admin, local, ControlProcess, NodeOptions, NodeProcess, FAST_RAFT};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// A single TLS control server and one TLS node, with `server`'s files.
fn tls_cluster(dir: &Path, server: &TlsFiles) -> (ControlProcess, NodeProcess) {
    let flags = tls_flags(server);
    let control = ControlProcess::start(dir, "127.0.0.1:0", &strs(&flags));
    let node = NodeProcess::start(dir, "n0", control.addr, &strs(&flags));
    (control, node)
}

/// Waits until `n` nodes are up, asking over `tls`.
async fn wait_nodes(c: &Client, n: usize) {
    let start = Instant::now();
    loop {
        let map = c.cluster_map().await.expect("cluster map");
        if map.nodes.iter().filter(|m| m.up).count() == n {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{map:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A data-plane request (any answer will do): whether the node answered.
async fn node_answers(addr: &str, tls: Option<&ringfs_ops::tls::Tls>) -> Result<(), Error> {
    let conn = NodeConn::connect(addr, tls).await?;
    let mut h = Header::request(0, Op::Reserve);
    h.client_id = 7;
    h.reserve_bytes = 4096;
    h.lease_ms = 1000;
    conn.call(h, &[], Duration::from_secs(10)).await.map(|_| ())
}

#[test]
fn a_tls_cluster_serves_a_client_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "ca");
    let server = pki.server("server");
    let client = pki.client("client");
    let flags = tls_flags(&server);
    let mut first: Vec<&str> = FAST_RAFT.to_vec();
    first.push("--bootstrap");
    first.extend(strs(&flags));
    let c0 = ControlProcess::start_in(dir.path(), "c0", "127.0.0.1:0", &first, None, None);
    let peers = c0.addr.to_string();
    let mut second: Vec<&str> = FAST_RAFT.to_vec();
    second.extend(["--peers", &peers]);
    second.extend(strs(&flags));
    let c1 = ControlProcess::start_in(dir.path(), "c1", "127.0.0.1:0", &second, None, None);
    let controls: [SocketAddr; 2] = [c0.addr, c1.addr];
    let node_flags = strs(&flags);
    let _nodes: Vec<NodeProcess> = (0..2)
        .map(|i| {
            let opts = NodeOptions {
                controls: &controls,
                flags: &node_flags,
                ..NodeOptions::default()
            };
            NodeProcess::start_with(dir.path(), &format!("n{i}"), c0.addr, &opts)
        })
        .collect();
    let tls = load(&client);
    local(async {
        let c = Client::connect_tls(&controls, &admin(), ClientOptions::default(), Some(tls))
            .await
            .expect("connecting over TLS");
        // The second replica joined the group over TLS (Raft between
        // replicas, and its addReplica call).
        let start = Instant::now();
        loop {
            let r = c.control().replication().await.unwrap();
            if r.replicas.iter().filter(|x| x.voter).count() == 2 {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(20), "{r:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        wait_nodes(&c, 2).await;
        // Two replicas per chunk: the chain forward is node to node, TLS.
        let data = pattern(3 * MIB + 12_345, 14);
        let layout = CreateOptions {
            chunk_size: MIB as u32,
            replication: 2,
            write_quorum: 2,
            ..CreateOptions::default()
        };
        put(&c, "/f", &data, layout).await.unwrap();
        assert!(get(&c, "/f").await.unwrap() == data, "read back differs");
    });
    // The CLI with the flags.
    let mut cli = std::process::Command::new(ringfs_tests::binary("ringfs-client", "ringfs"));
    cli.args(["--control", &controls[0].to_string(), "ls", "/"])
        .args(tls_flags(&client))
        .env(
            "RINGFS_CREDENTIAL",
            ringfs_tests::admin_credential(dir.path()),
        );
    let listed = ringfs_tests::run_ok(&mut cli);
    assert!(listed.contains('f'), "{listed}");
}

#[test]
fn a_plaintext_peer_is_refused_not_hung() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "ca");
    let (control, node) = tls_cluster(dir.path(), &pki.server("server"));
    let client = load(&pki.client("client"));
    local(async {
        let started = Instant::now();
        let e = ControlClient::connect(control.addr, &admin())
            .await
            .err()
            .expect("a plaintext client is refused");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "took {:?}",
            started.elapsed()
        );
        let msg = describe(&e);
        assert!(msg.contains("TLS"), "{msg}");
        // Plaintext on the data plane: the connection is closed, the call
        // fails at once (no answer is read from a handshake's bytes).
        let started = Instant::now();
        let e = node_answers(&node.addr.to_string(), None)
            .await
            .expect_err("a plaintext data-plane client is refused");
        assert!(started.elapsed() < Duration::from_secs(5), "{e}");
        // The same requests over TLS are served.
        ControlClient::connect_tls(control.addr, &admin(), Some(&client))
            .await
            .expect("a TLS client is served");
        node_answers(&node.addr.to_string(), Some(&client))
            .await
            .expect("a TLS data-plane client is served");
    });
}

#[test]
fn certificates_of_another_ca_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "ca");
    let stranger = Pki::new(dir.path(), "other-ca");
    let (control, node) = tls_cluster(dir.path(), &pki.server("server"));
    // Trusts the cluster's CA, but presents a certificate of another.
    let foreign = stranger.client("intruder");
    let intruder = load(&TlsFiles {
        ca: pki.client("probe").ca,
        ..foreign
    });
    // A server whose certificate is another CA's (and which would accept
    // the cluster's clients: only the client's check can refuse it).
    let impostor_files = TlsFiles {
        ca: pki.client("probe2").ca,
        ..stranger.server("impostor")
    };
    let impostor = ControlProcess::start_in(
        dir.path(),
        "impostor",
        "127.0.0.1:0",
        &strs(&tls_flags(&impostor_files)),
        None,
        None,
    );
    let client = load(&pki.client("client"));
    local(async {
        let e = ControlClient::connect_tls(control.addr, &admin(), Some(&intruder))
            .await
            .err()
            .expect("a client certificate of another CA is refused");
        eprintln!("foreign client, control: {}", describe(&e));
        let e = node_answers(&node.addr.to_string(), Some(&intruder))
            .await
            .expect_err("a client certificate of another CA is refused by a node");
        eprintln!("foreign client, node: {}", describe(&e));
        let e = ControlClient::connect_tls(impostor.addr, &admin(), Some(&client))
            .await
            .err()
            .expect("a server certificate of another CA is refused");
        assert!(matches!(e, Error::Unauthenticated(_)), "{e:?}");
        assert!(e.to_string().contains("certificate"), "{e}");
        // The cluster's own certificates work against the same servers.
        ControlClient::connect_tls(control.addr, &admin(), Some(&client))
            .await
            .expect("the cluster's client certificate is accepted");
        node_answers(&node.addr.to_string(), Some(&client))
            .await
            .expect("the cluster's client certificate is accepted by a node");
    });
}

/// Runs `cmd`, which must refuse to start: exit code 2 within 30 s (a
/// server that starts anyway is killed and the test fails); its stderr.
fn refused_at_start(cmd: &mut std::process::Command) -> String {
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting a server");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} started although its key file is readable by others");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(2), "{cmd:?}: {err}");
    err
}

#[test]
fn a_key_file_others_may_read_is_refused_at_start() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "ca");
    let server = pki.server("server");
    std::fs::set_permissions(&server.key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let secret = ringfs_tests::write_secret(dir.path());
    let mut control =
        std::process::Command::new(ringfs_tests::binary("ringfs-control", "ringfs-control"));
    control
        .args(["--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path().join("control"))
        .arg("--secret-file")
        .arg(&secret)
        .args(tls_flags(&server));
    let refused = refused_at_start(&mut control);
    assert!(refused.contains("chmod 600"), "{refused}");
    let mut node = std::process::Command::new(ringfs_tests::binary("ringfs-node", "ringfs-node"));
    node.args([
        "--control",
        "127.0.0.1:1",
        "--listen",
        "127.0.0.1",
        "--cores",
        "1",
    ])
    .arg("--data")
    .arg(dir.path().join("n0"))
    .arg("--secret-file")
    .arg(&secret)
    .args(tls_flags(&server));
    let refused = refused_at_start(&mut node);
    assert!(refused.contains("chmod 600"), "{refused}");
}
