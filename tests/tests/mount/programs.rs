//! Real programs on the mount: cp/cmp, tar/diff, sqlite3, fio.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ringfs_tests::Cluster;

use crate::kit::{self, run, Mount};

const MIN: Duration = Duration::from_secs(60);

/// A GiB of random bytes copied in through one mount and read back through
/// another (an empty page cache: the bytes come from the storage nodes)
/// is the same file. R=1 so the three 1 GiB test nodes hold it.
#[test]
fn a_gib_copied_in_and_out_is_identical() {
    if !kit::available(&["fusermount3", "cmp", "dd"]) {
        return;
    }
    let cl = Cluster::start(3);
    let a = Mount::start(cl.control.addr, &["--replication", "1"]);
    let b = Mount::start(cl.control.addr, &[]);
    let local = tempfile::tempdir().unwrap();
    let src = local.path().join("src.bin");
    run(
        Command::new("dd")
            .arg("if=/dev/urandom")
            .arg(format!("of={}", src.display()))
            .args(["bs=1M", "count=1024", "status=none"]),
        MIN,
    );
    run(Command::new("cp").arg(&src).arg(a.p("big.bin")), 4 * MIN);
    assert_eq!(std::fs::metadata(b.p("big.bin")).unwrap().len(), 1 << 30);
    // Read back through the other mount straight into cmp: a local copy
    // would only add a GiB of local disk traffic to the test.
    run(Command::new("cmp").arg(&src).arg(b.p("big.bin")), 4 * MIN);
    a.unmount();
    b.unmount();
}

/// This repository's sources, untarred onto the mount, are identical to
/// the same archive untarred on the local disk: contents (diff -r), and
/// modes, times and sizes (tar --compare).
#[test]
fn a_source_tree_untars_identically() {
    if !kit::available(&["fusermount3", "tar", "diff"]) {
        return;
    }
    let cl = Cluster::start(3);
    let m = Mount::start(cl.control.addr, &[]);
    let local = tempfile::tempdir().unwrap();
    let tarball = local.path().join("tree.tar");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    // Owned by whoever runs the mount: ringfs has no owners yet.
    run(
        Command::new("tar")
            .arg("-C")
            .arg(&repo)
            .args(["--exclude=target", "--exclude=.git"])
            .arg(format!("--owner=+{uid}"))
            .arg(format!("--group=+{gid}"))
            .arg("-cf")
            .arg(&tarball)
            .args([
                "client",
                "control",
                "storage-node",
                "schema",
                "docs",
                "bench",
            ]),
        MIN,
    );
    let expected = local.path().join("expected");
    std::fs::create_dir(&expected).unwrap();
    run(
        Command::new("tar")
            .arg("-C")
            .arg(&expected)
            .arg("-xf")
            .arg(&tarball),
        MIN,
    );
    std::fs::create_dir(m.p("tree")).unwrap();
    run(
        Command::new("tar")
            .arg("-C")
            .arg(m.p("tree"))
            .arg("-xf")
            .arg(&tarball),
        3 * MIN,
    );
    run(
        Command::new("diff")
            .arg("-r")
            .arg(&expected)
            .arg(m.p("tree")),
        MIN,
    );
    run(
        Command::new("tar")
            .arg("-C")
            .arg(m.p("tree"))
            .arg("--compare")
            .arg("-f")
            .arg(&tarball),
        MIN,
    );
    m.unmount();
}

/// sqlite3 on the mount: 10,000 inserts in 100 transactions, then
/// `PRAGMA integrity_check` and the sums, also from a second mount.
#[test]
fn sqlite_keeps_a_consistent_database() {
    if !kit::available(&["fusermount3", "sqlite3"]) {
        return;
    }
    let cl = Cluster::start(3);
    let m = Mount::start(cl.control.addr, &[]);
    let local = tempfile::tempdir().unwrap();
    let mut sql = String::from(
        "PRAGMA journal_mode=DELETE;\n\
         CREATE TABLE t(id INTEGER PRIMARY KEY, n INTEGER, v TEXT);\n",
    );
    for tx in 0..100 {
        sql.push_str("BEGIN;\n");
        for i in 0..100 {
            let n = tx * 100 + i;
            sql.push_str(&format!(
                "INSERT INTO t(n, v) VALUES({n}, 'row {n} {}');\n",
                "x".repeat(n % 200)
            ));
        }
        sql.push_str("COMMIT;\n");
    }
    let script = local.path().join("load.sql");
    std::fs::write(&script, sql).unwrap();
    let db = m.p("test.db");
    run(
        Command::new("sqlite3")
            .arg(&db)
            .arg(format!(".read {}", script.display())),
        3 * MIN,
    );
    let check = "PRAGMA integrity_check; SELECT count(*), sum(n) FROM t;";
    let expect = "ok\n10000|49995000\n";
    let out = run(Command::new("sqlite3").arg(&db).arg(check), MIN);
    assert_eq!(String::from_utf8_lossy(&out.stdout), expect);
    let other = Mount::start(cl.control.addr, &[]);
    let out = run(
        Command::new("sqlite3").arg(other.p("test.db")).arg(check),
        MIN,
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), expect);
    other.unmount();
    m.unmount();
}

/// fio with checksummed blocks: sequential and random writes, each read
/// back and verified by a later job (a new open: the reads come through
/// the mount, not from the writer's memory). fio exits non-zero on any
/// mismatch.
#[test]
fn fio_verifies_sequential_and_random_io() {
    if !kit::available(&["fusermount3", "fio"]) {
        return;
    }
    let cl = Cluster::start(3);
    let m = Mount::start(cl.control.addr, &[]);
    let local = tempfile::tempdir().unwrap();
    let job = local.path().join("verify.fio");
    std::fs::write(
        &job,
        format!(
            "[global]\n\
             directory={dir}\n\
             ioengine=psync\n\
             direct=1\n\
             verify=crc32c\n\
             verify_fatal=1\n\
             verify_state_save=0\n\
             fallocate=none\n\
             randseed=1234\n\
             \n\
             [seq-write]\n\
             rw=write\nbs=1m\nsize=48m\nfilename=seq.dat\ndo_verify=1\n\
             \n\
             [seq-read]\n\
             stonewall\nrw=read\nbs=1m\nsize=48m\nfilename=seq.dat\nverify_only=1\n\
             \n\
             [rand-write]\n\
             stonewall\nrw=randwrite\nbs=4k\nsize=4m\nfilename=rand.dat\n\
             \n\
             [rand-read]\n\
             stonewall\nrw=randread\nbs=4k\nsize=4m\nfilename=rand.dat\nverify_only=1\n",
            dir = m.path.display()
        ),
    )
    .unwrap();
    let out = run(
        Command::new("fio")
            .arg(&job)
            .arg("--output-format=terse")
            .current_dir(local.path()),
        4 * MIN,
    );
    // Terse v3: field 5 is each job's error; all four jobs ran clean.
    let text = String::from_utf8_lossy(&out.stdout);
    let jobs: Vec<(&str, &str)> = text
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(';').collect();
            (f.len() > 5).then(|| (f[2], f[4]))
        })
        .collect();
    assert_eq!(
        jobs,
        [
            ("seq-write", "0"),
            ("seq-read", "0"),
            ("rand-write", "0"),
            ("rand-read", "0")
        ],
        "{text}"
    );
    m.unmount();
}
