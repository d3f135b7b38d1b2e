//! What two mounts of one cluster see of each other (docs/client.md,
//! "Mount consistency").

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use ringfs_tests::Cluster;

use ringfs_tests::files::pattern;

use crate::kit::{self, errno, Mount};

/// The first `len` bytes of `path` read through a new open, with no stat
/// before the read: the kernel refreshes a file's attributes by itself
/// when a read goes past the size it has cached or after any access
/// (atime), which would hide a stale cache; a read within the cached
/// size does not. Then the size, which must be `len`.
fn read_new_open(path: &std::path::Path, len: usize) -> Vec<u8> {
    let f = File::open(path).unwrap();
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(f.metadata().unwrap().len(), len as u64, "size");
    buf
}

/// Close-to-open: once a writer on one mount has closed a file, an open
/// on another mount sees the change, even when the second mount has the
/// old attributes, entry and pages cached for ten minutes.
#[test]
fn a_second_mount_sees_a_change_after_close() {
    if !kit::available(&["fusermount3"]) {
        return;
    }
    let cl = Cluster::start(3);
    let a = Mount::start(cl.control.addr, &[]);
    let long = [
        "--attr-timeout-ms",
        "600000",
        "--entry-timeout-ms",
        "600000",
    ];
    let b = Mount::start(cl.control.addr, &long);
    let n = 300_000;

    // New bytes of the same size (b's page cache holds the old ones).
    fs::write(a.p("f"), pattern(n, 1)).unwrap();
    assert!(read_new_open(&b.p("f"), n) == pattern(n, 1));
    fs::write(a.p("f"), pattern(n, 2)).unwrap();
    assert!(
        read_new_open(&b.p("f"), n) == pattern(n, 2),
        "same size: old bytes"
    );

    // Appended (b's cached size is the old one).
    let mut f = OpenOptions::new().append(true).open(a.p("f")).unwrap();
    f.write_all(&pattern(5000, 3)).unwrap();
    drop(f);
    let mut want = pattern(n, 2);
    want.extend(pattern(5000, 3));
    assert!(
        read_new_open(&b.p("f"), n + 5000) == want,
        "appended: old bytes"
    );

    // Truncated and rewritten shorter.
    fs::write(a.p("f"), pattern(1000, 4)).unwrap();
    assert!(
        read_new_open(&b.p("f"), 1000) == pattern(1000, 4),
        "shorter: old bytes"
    );

    // Replaced by a rename (a new inode under the cached name).
    fs::write(a.p("tmp"), pattern(777, 5)).unwrap();
    fs::rename(a.p("tmp"), a.p("f")).unwrap();
    assert!(
        read_new_open(&b.p("f"), 777) == pattern(777, 5),
        "replaced: old bytes"
    );

    // Created and removed (b caches no negative entries).
    assert_eq!(errno(&fs::read(b.p("new")).unwrap_err()), libc::ENOENT);
    fs::write(a.p("new"), b"hello").unwrap();
    assert_eq!(fs::read(b.p("new")).unwrap(), b"hello", "created");
    fs::remove_file(a.p("new")).unwrap();
    assert_eq!(
        errno(&fs::read(b.p("new")).unwrap_err()),
        libc::ENOENT,
        "removed"
    );
    a.unmount();
    b.unmount();
}

fn block(tag: u8) -> Vec<u8> {
    vec![tag; 1 << 20]
}

/// A file open for writing on one mount cannot be opened for writing on
/// another: that open waits for the first mount's close (FIFO) and fails
/// with EBUSY after `--lease-wait-ms`. Readers are never blocked. Each
/// write lands whole: every 1 MiB block holds one writer's bytes.
#[test]
fn two_mounts_writing_one_file_take_turns() {
    if !kit::available(&["fusermount3"]) {
        return;
    }
    let cl = Cluster::start(3);
    let a = Mount::start(cl.control.addr, &[]);
    let impatient = Mount::start(cl.control.addr, &["--lease-wait-ms", "500"]);
    let patient = Mount::start(cl.control.addr, &["--lease-wait-ms", "60000"]);
    let mib = 1u64 << 20;

    let fa = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(a.p("shared"))
        .unwrap();
    for i in 0..4 {
        fa.write_all_at(&block(b'A'), i * mib).unwrap();
    }

    let t = Instant::now();
    let e = OpenOptions::new()
        .write(true)
        .open(impatient.p("shared"))
        .unwrap_err();
    assert_eq!(errno(&e), libc::EBUSY);
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "{:?}",
        t.elapsed()
    );
    // Readers are not blocked by the writer.
    assert_eq!(
        fs::read(impatient.p("shared")).unwrap(),
        [block(b'A'), block(b'A'), block(b'A'), block(b'A')].concat()
    );

    let path = patient.p("shared");
    let second = std::thread::spawn(move || {
        let fb = OpenOptions::new().write(true).open(path).unwrap();
        let opened = Instant::now();
        fb.write_all_at(&block(b'B'), mib).unwrap();
        fb.write_all_at(&block(b'B'), 2 * mib).unwrap();
        opened
    });
    // The first writer keeps writing while the second one waits.
    std::thread::sleep(Duration::from_secs(1));
    fa.write_all_at(&block(b'A'), 4 * mib).unwrap();
    let closing = Instant::now();
    drop(fa);
    let opened = second.join().unwrap();
    assert!(
        opened >= closing,
        "the second writer got the file before the first one closed it"
    );

    let got = fs::read(a.p("shared")).unwrap();
    let tags: Vec<u8> = got
        .chunks(mib as usize)
        .map(|b| {
            assert!(b.iter().all(|&x| x == b[0]), "a block mixes writers");
            b[0]
        })
        .collect();
    assert_eq!(tags, b"ABBAA");
    a.unmount();
    impatient.unmount();
    patient.unmount();
}
