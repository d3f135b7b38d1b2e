//! The `ringfs` CLI against a real control server and three storage nodes.

use std::path::Path;
use std::process::Command;

use ringfs_tests::files::pattern;
use ringfs_tests::{binary, run, run_failing, run_ok, Cluster};

/// `ringfs args` against the cluster.
fn ringfs(cl: &Cluster, args: &[&str]) -> Command {
    let mut cmd = Command::new(binary("ringfs-client", "ringfs"));
    cmd.args(args)
        .env("RINGFS_CONTROL", cl.control.addr.to_string())
        .env("RINGFS_CREDENTIAL", cl.admin_credential());
    cmd
}

/// Runs `ringfs args` and returns its stdout; panics with stderr on failure.
fn ok(cl: &Cluster, args: &[&str]) -> String {
    run_ok(&mut ringfs(cl, args))
}

/// Runs `ringfs args`, expects exit code 1 and returns the stderr line.
fn fails(cl: &Cluster, args: &[&str]) -> String {
    let err = run_failing(&mut ringfs(cl, args), 1);
    assert_eq!(err.lines().count(), 1, "one line on stderr: {err:?}");
    assert!(err.starts_with("ringfs: "), "{err}");
    err
}

fn write_local(dir: &Path, name: &str, data: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn put_get_round_trips_with_r1_and_r3() {
    let cl = Cluster::start(3);
    let local = tempfile::tempdir().unwrap();
    let chunk = 64 * 1024;
    for r in ["1", "3"] {
        for size in [0, 1, 4095, 4096, chunk, chunk + 1, 7 * chunk + 3] {
            let data = pattern(size, size as u64);
            let src = write_local(local.path(), &format!("in-{r}-{size}"), &data);
            let remote = format!("/r{r}-{size}");
            ok(
                &cl,
                &[
                    "put",
                    "--replication",
                    r,
                    "--chunk-size",
                    "64K",
                    &src,
                    &remote,
                ],
            );
            let dst = local.path().join(format!("out-{r}-{size}"));
            ok(&cl, &["get", &remote, dst.to_str().unwrap()]);
            assert!(std::fs::read(&dst).unwrap() == data, "{remote}");
        }
    }
    // stdin to stdout.
    let data = pattern(200_000, 42);
    let mut child = ringfs(&cl, &["put", "--chunk-size", "64K", "-", "/stdin"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(&data).unwrap();
    }
    assert!(child.wait().unwrap().success());
    let out = ringfs(&cl, &["get", "/stdin", "-"]).output().unwrap();
    assert!(out.status.success());
    assert!(out.stdout == data);

    // cat concatenates; --json stat reports the layout.
    let cat = ringfs(&cl, &["cat", "/r3-1", "/r3-4095"]).output().unwrap();
    assert!(cat.status.success());
    let mut want = pattern(1, 1);
    want.extend(pattern(4095, 4095));
    assert!(cat.stdout == want);
    let stat: String = ok(&cl, &["--json", "stat", "/r3-65537"]);
    for field in [
        "\"size\":65537",
        "\"replication\":3",
        "\"chunk_size\":65536",
        "\"kind\":\"file\"",
    ] {
        assert!(stat.contains(field), "{field} in {stat}");
    }
}

#[test]
fn namespace_commands_status_and_errors() {
    let cl = Cluster::start(3);
    let local = tempfile::tempdir().unwrap();
    ok(&cl, &["mkdir", "-p", "/a/b/c"]);
    ok(&cl, &["mkdir", "-p", "/a/b"]);
    let err = fails(&cl, &["mkdir", "/a"]);
    assert!(err.contains("exists"), "{err}");
    let src = write_local(local.path(), "x.txt", b"hello ringfs\n");
    // Into a directory: keeps the file name.
    ok(&cl, &["put", "--chunk-size", "64K", &src, "/a/b/"]);
    assert_eq!(ok(&cl, &["cat", "/a/b/x.txt"]), "hello ringfs\n");
    assert_eq!(ok(&cl, &["ls", "/a/b"]), "c/\nx.txt\n");
    let long = ok(&cl, &["ls", "-l", "/a/b"]);
    assert!(long.contains("13 B"), "{long}");
    assert!(long.lines().any(|l| l.starts_with("drwxr-xr-x")), "{long}");
    assert!(long.lines().any(|l| l.starts_with("-rw-r--r--")), "{long}");
    let json = ok(&cl, &["--json", "ls", "/a/b"]);
    assert!(
        json.starts_with('[') && json.contains("\"name\":\"x.txt\""),
        "{json}"
    );
    ok(&cl, &["mv", "/a/b/x.txt", "/a/y.txt"]);
    ok(&cl, &["mv", "/a/y.txt", "/a/b/c"]);
    assert_eq!(ok(&cl, &["ls", "/a/b/c"]), "y.txt\n");
    let err = fails(&cl, &["rm", "/a"]);
    assert!(err.contains("is a directory"), "{err}");
    ok(&cl, &["rm", "-r", "/a"]);
    assert_eq!(ok(&cl, &["ls", "/"]), "");
    let err = fails(&cl, &["cat", "/nope"]);
    assert!(err.contains("not found"), "{err}");
    let err = fails(
        &cl,
        &["get", "/nope", local.path().join("n").to_str().unwrap()],
    );
    assert!(err.contains("not found"), "{err}");

    let status = ok(&cl, &["status"]);
    assert!(status.starts_with("3 of 3 nodes up"), "{status}");
    let json = ok(&cl, &["--json", "status"]);
    assert!(json.contains("\"nodes_up\":3"), "{json}");

    // A closed stdout (`ringfs status | head -0`) is not a crash.
    let mut child = ringfs(&cl, &["status"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // No control address: a clear error.
    let err = run_failing(
        ringfs(&cl, &["ls", "/"])
            .env_remove("RINGFS_CONTROL")
            .env_remove("RINGFS_CONFIG")
            .env("HOME", local.path()),
        1,
    );
    assert!(err.contains("RINGFS_CONTROL"), "{err}");
    // ... or from the config file.
    let config = local.path().join("client.toml");
    std::fs::write(&config, format!("control = \"{}\"\n", cl.control.addr)).unwrap();
    run_ok(
        ringfs(&cl, &["status"])
            .env_remove("RINGFS_CONTROL")
            .env("RINGFS_CONFIG", &config),
    );
    // Bad usage: clap's exit code 2.
    run_failing(&mut ringfs(&cl, &["put"]), 2);
}

#[test]
fn put_with_write_quorum_three_fails_with_a_node_down_and_two_succeeds() {
    let mut cl = Cluster::start(3);
    let local = tempfile::tempdir().unwrap();
    cl.kill9(0);
    cl.wait_up(2);
    let data = pattern(300_000, 5);
    let src = write_local(local.path(), "q", &data);
    let err = fails(
        &cl,
        &[
            "put",
            "-r",
            "3",
            "-w",
            "3",
            "--chunk-size",
            "64K",
            &src,
            "/q3",
        ],
    );
    assert!(err.contains("2 of the 3 replicas"), "{err}");
    // The failed put leaves nothing behind.
    let err = fails(&cl, &["stat", "/q3"]);
    assert!(err.contains("not found"), "{err}");
    ok(
        &cl,
        &[
            "put",
            "-r",
            "3",
            "-w",
            "2",
            "--chunk-size",
            "64K",
            &src,
            "/q2",
        ],
    );
    let dst = local.path().join("back");
    ok(&cl, &["get", "/q2", dst.to_str().unwrap()]);
    assert!(std::fs::read(&dst).unwrap() == data);
}

/// A stream of `len` bytes: one random block of a prime length repeated,
/// so that no offset error by a multiple of a chunk or a transfer block
/// (powers of two) reads back the bytes it should have.
struct BigStream {
    block: Vec<u8>,
}

impl BigStream {
    fn new() -> Self {
        let mut block = vec![0u8; 1_000_003];
        rand::Rng::fill(&mut rand::rng(), &mut block[..]);
        BigStream { block }
    }

    /// The bytes at `offset..offset + out.len()`.
    fn expected(&self, mut offset: u64, out: &mut [u8]) {
        let mut done = 0;
        while done < out.len() {
            let at = (offset % self.block.len() as u64) as usize;
            let n = (self.block.len() - at).min(out.len() - done);
            out[done..done + n].copy_from_slice(&self.block[at..at + n]);
            done += n;
            offset += n as u64;
        }
    }
}

/// Streams 2 GiB through `put -` and `get ... -` (no local copies: the
/// test's time is ringfs's, not the local disk's) and compares every byte.
#[test]
fn put_and_get_of_a_2_gib_file_are_byte_identical() {
    use std::io::{Read, Write};
    use std::process::Stdio;
    let cl = Cluster::start(3);
    let len: u64 = 2 << 30;
    let stream = std::sync::Arc::new(BigStream::new());
    let mut put = ringfs(&cl, &["put", "--replication", "1", "-", "/big"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = put.stdin.take().unwrap();
    let source = stream.clone();
    let feeder = std::thread::spawn(move || {
        let mut buf = vec![0u8; 4 << 20];
        let mut at = 0u64;
        while at < len {
            let n = buf.len().min((len - at) as usize);
            source.expected(at, &mut buf[..n]);
            stdin.write_all(&buf[..n]).unwrap();
            at += n as u64;
        }
    });
    feeder.join().unwrap();
    assert!(put.wait().unwrap().success(), "put - failed");

    let mut get = ringfs(&cl, &["get", "/big", "-"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = get.stdout.take().unwrap();
    let (mut got, mut want) = (vec![0u8; 4 << 20], vec![0u8; 4 << 20]);
    let mut at = 0u64;
    loop {
        let n = out.read(&mut got).unwrap();
        if n == 0 {
            break;
        }
        assert!(at + n as u64 <= len, "get returned more than {len} bytes");
        stream.expected(at, &mut want[..n]);
        assert!(
            got[..n] == want[..n],
            "get returned other bytes than put stored, in {at}..{}",
            at + n as u64
        );
        at += n as u64;
    }
    assert!(get.wait().unwrap().success(), "get failed");
    assert_eq!(at, len, "get returned {at} of {len} bytes");
}

/// `ringfs fsck` exits 0 on a healthy cluster; with a node down it names the
/// file and chunk that lack replicas and exits 1; `ringfs status` counts the
/// under-replicated chunks; after repair fsck is clean again.
#[test]
fn fsck_and_status_report_under_replicated_chunks_with_paths() {
    let mut cl = Cluster::start_with(3, ringfs_tests::FAST_REPAIR, &[]);
    let local = tempfile::tempdir().unwrap();
    let src = write_local(local.path(), "in", &pattern(300_000, 3));
    ok(
        &cl,
        &["put", "-r", "3", "--chunk-size", "64K", &src, "/data.bin"],
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while run(&mut ringfs(&cl, &["fsck"])).code != Some(0) {
        assert!(std::time::Instant::now() < deadline, "fsck never clean");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let out = ok(&cl, &["fsck"]);
    assert!(out.contains("5 total, 5 healthy"), "{out}");
    // A node down (within its repair grace, nobody to copy to): 2 of 3.
    cl.kill9(0);
    cl.wait_up(2);
    let out = run(&mut ringfs(&cl, &["fsck"]));
    assert_eq!(out.code, Some(1), "{out:?}");
    let stdout = out.stdout;
    assert!(
        stdout.contains("/data.bin: chunk 0 ") && stdout.contains("(2 of 3 good replicas)"),
        "{stdout}"
    );
    assert!(out.stderr.contains("5 of 5 chunks lack"), "{}", out.stderr);
    let status = ok(&cl, &["status"]);
    assert!(status.contains("5 under-replicated"), "{status}");
    let json = ok(&cl, &["--json", "status"]);
    assert!(json.contains("\"under_replicated\":5"), "{json}");
    // A new node: the chunks are copied there and fsck is clean.
    cl.start_node(3, &[]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while run(&mut ringfs(&cl, &["fsck"])).code != Some(0) {
        assert!(std::time::Instant::now() < deadline, "never repaired");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// `ringfs` with only a config file to go on (no RINGFS_CONTROL).
fn ringfs_with_config(config: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(binary("ringfs-client", "ringfs"));
    cmd.args(args)
        .env_remove("RINGFS_CONTROL")
        .env_remove("RINGFS_CREDENTIAL")
        .env("RINGFS_CONFIG", config);
    cmd
}

#[test]
fn a_config_file_sets_the_control_server_and_put_defaults() {
    let cl = Cluster::start(3);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("client.toml");
    std::fs::write(
        &config,
        format!(
            "control = \"{}\"\ncredential = {:?}\nreplication = 2\nchunk-size = \"64KiB\"\n",
            cl.control.addr,
            cl.admin_credential()
        ),
    )
    .unwrap();
    let src = write_local(dir.path(), "in", &pattern(200_000, 7));
    // `replication` applies to put; `ls` and `stat`, which have no such
    // flag, ignore it.
    for args in [
        &["put", src.as_str(), "/two"][..],
        &["put", "-r", "3", src.as_str(), "/three"],
        &["ls", "/"],
    ] {
        run_ok(&mut ringfs_with_config(&config, args));
    }
    for (path, r) in [("/two", 2), ("/three", 3)] {
        let out = run_ok(&mut ringfs_with_config(&config, &["--json", "stat", path]));
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["replication"], r, "{path}: {v}");
        assert_eq!(v["chunk_size"], 65536, "{path}: {v}");
    }
    let text = run(&mut ringfs_with_config(
        &config,
        &["put", "--print-config", "-r", "3", "a", "b"],
    ))
    .stdout;
    assert!(text.contains("replication = 3\n"), "{text}");
    assert!(
        text.contains(&format!("control = \"{}\"\n", cl.control.addr)),
        "{text}"
    );

    std::fs::write(&config, "controll = \"127.0.0.1:1\"\n").unwrap();
    let err = run_failing(&mut ringfs_with_config(&config, &["ls", "/"]), 2);
    assert!(err.contains("unknown key `controll`"), "{err}");
}
