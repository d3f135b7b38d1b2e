//! POSIX namespace and file semantics through the mount, and what ringfs
//! refuses (with the errno docs/client.md gives).

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::time::{Duration, Instant, SystemTime};

use ringfs_tests::Cluster;

use crate::kit::{self, errno, Mount};

fn names(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn hidden(dir: &std::path::Path) -> Vec<String> {
    names(dir)
        .into_iter()
        .filter(|n| n.starts_with(".ringfs-unlinked-"))
        .collect()
}

#[test]
fn renames_and_unlinks_behave_as_posix_says() {
    if !kit::available(&["fusermount3"]) {
        return;
    }
    let cl = Cluster::start(3);
    let m = Mount::start(cl.control.addr, &[]);

    // Exclusive creates.
    fs::write(m.p("a"), b"aaaa").unwrap();
    let e = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(m.p("a"))
        .unwrap_err();
    assert_eq!(errno(&e), libc::EEXIST);
    fs::create_dir(m.p("d")).unwrap();
    assert_eq!(errno(&fs::create_dir(m.p("d")).unwrap_err()), libc::EEXIST);

    // Rename over an existing file replaces it.
    fs::write(m.p("b"), b"bbbbbbbb").unwrap();
    fs::rename(m.p("b"), m.p("a")).unwrap();
    assert_eq!(fs::read(m.p("a")).unwrap(), b"bbbbbbbb");
    assert_eq!(errno(&fs::metadata(m.p("b")).unwrap_err()), libc::ENOENT);

    // Into a directory; directories over non-empty and empty ones.
    fs::rename(m.p("a"), m.p("d/a")).unwrap();
    assert_eq!(fs::read(m.p("d/a")).unwrap(), b"bbbbbbbb");
    fs::create_dir(m.p("e")).unwrap();
    fs::write(m.p("e/x"), b"x").unwrap();
    assert_eq!(
        errno(&fs::rename(m.p("d"), m.p("e")).unwrap_err()),
        libc::ENOTEMPTY
    );
    assert_eq!(
        errno(&fs::remove_dir(m.p("e")).unwrap_err()),
        libc::ENOTEMPTY
    );
    fs::remove_file(m.p("e/x")).unwrap();
    fs::rename(m.p("d"), m.p("e")).unwrap();
    assert_eq!(fs::read(m.p("e/a")).unwrap(), b"bbbbbbbb");
    assert_eq!(errno(&fs::metadata(m.p("d")).unwrap_err()), libc::ENOENT);
    assert_eq!(
        errno(&fs::rename(m.p("e"), m.p("e/inside")).unwrap_err()),
        libc::EINVAL
    );
    // A file over a directory and the reverse.
    fs::create_dir(m.p("dir")).unwrap();
    fs::write(m.p("file"), b"f").unwrap();
    assert_eq!(
        errno(&fs::rename(m.p("file"), m.p("dir")).unwrap_err()),
        libc::EISDIR
    );
    assert_eq!(
        errno(&fs::rename(m.p("dir"), m.p("file")).unwrap_err()),
        libc::ENOTDIR
    );

    // An unlinked file that is still open keeps working through its
    // descriptor; its name is gone at once, its data at the last close.
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(m.p("open.txt"))
        .unwrap();
    f.write_all(b"before").unwrap();
    let reader = File::open(m.p("open.txt")).unwrap();
    fs::remove_file(m.p("open.txt")).unwrap();
    assert_eq!(
        errno(&fs::metadata(m.p("open.txt")).unwrap_err()),
        libc::ENOENT
    );
    f.write_all_at(b"after", 6).unwrap();
    let mut buf = [0u8; 11];
    reader.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"beforeafter");
    assert_eq!(f.metadata().unwrap().len(), 11);
    assert_eq!(
        hidden(&m.path).len(),
        1,
        "kept under a hidden name meanwhile"
    );
    drop(f);
    drop(reader);
    let start = Instant::now();
    while !hidden(&m.path).is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the hidden file outlived its last close"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // A renamed open file: the descriptor follows it.
    fs::write(m.p("moving"), b"content").unwrap();
    let mut f = File::open(m.p("moving")).unwrap();
    fs::rename(m.p("moving"), m.p("e/moved")).unwrap();
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    assert_eq!(s, "content");
    drop(f);

    // Rename over a file that is open here: the open one lives on.
    fs::write(m.p("victim"), b"old").unwrap();
    let old = File::open(m.p("victim")).unwrap();
    fs::write(m.p("winner"), b"new").unwrap();
    fs::rename(m.p("winner"), m.p("victim")).unwrap();
    assert_eq!(fs::read(m.p("victim")).unwrap(), b"new");
    let mut s = String::new();
    (&old).read_to_string(&mut s).unwrap();
    assert_eq!(s, "old");
    drop(old);
    m.unmount();
}

#[test]
fn file_data_and_attributes_behave_as_posix_says() {
    if !kit::available(&["fusermount3"]) {
        return;
    }
    let cl = Cluster::start(3);
    let m = Mount::start(cl.control.addr, &[]);

    // Append, truncate, extend (the gap reads as zeros), sparse writes.
    fs::write(m.p("f"), b"12345").unwrap();
    let mut f = OpenOptions::new().append(true).open(m.p("f")).unwrap();
    f.write_all(b"678").unwrap();
    drop(f);
    assert_eq!(fs::read(m.p("f")).unwrap(), b"12345678");
    let f = OpenOptions::new().write(true).open(m.p("f")).unwrap();
    f.set_len(3).unwrap();
    f.set_len(6).unwrap();
    f.write_all_at(b"Z", 9).unwrap();
    drop(f);
    assert_eq!(fs::read(m.p("f")).unwrap(), b"123\0\0\0\0\0\0Z");
    // Two write descriptors of one file on one mount: both write at once
    // (they share the mount's write lease; one would otherwise wait for
    // the other's and fail with EBUSY).
    let t = Instant::now();
    let w1 = OpenOptions::new().write(true).open(m.p("f")).unwrap();
    let w2 = OpenOptions::new().write(true).open(m.p("f")).unwrap();
    w1.write_all_at(b"A", 0).unwrap();
    w2.write_all_at(b"B", 1).unwrap();
    drop((w1, w2));
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_eq!(&fs::read(m.p("f")).unwrap()[..3], b"AB3");
    // truncate(2) by path, without an open descriptor.
    let c = std::ffi::CString::new(m.p("f").as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid path.
    assert_eq!(unsafe { libc::truncate(c.as_ptr(), 2) }, 0);
    assert_eq!(fs::read(m.p("f")).unwrap(), b"AB");
    // O_TRUNC.
    fs::write(m.p("f"), b"x").unwrap();
    assert_eq!(fs::read(m.p("f")).unwrap(), b"x");

    // chmod and utimes are stored.
    fs::set_permissions(m.p("f"), fs::Permissions::from_mode(0o640)).unwrap();
    let when = SystemTime::UNIX_EPOCH + Duration::new(1_600_000_000, 123_456_789);
    File::options()
        .write(true)
        .open(m.p("f"))
        .unwrap()
        .set_modified(when)
        .unwrap();
    let md = fs::metadata(m.p("f")).unwrap();
    assert_eq!(md.mode() & 0o7777, 0o640);
    assert_eq!(md.modified().unwrap(), when);
    fs::create_dir(m.p("d")).unwrap();
    fs::set_permissions(m.p("d"), fs::Permissions::from_mode(0o700)).unwrap();
    assert_eq!(fs::metadata(m.p("d")).unwrap().mode() & 0o7777, 0o700);
    // A second mount sees them (from the control server).
    let other = Mount::start(cl.control.addr, &[]);
    let md = fs::metadata(other.p("f")).unwrap();
    assert_eq!((md.mode() & 0o7777, md.modified().unwrap()), (0o640, when));
    other.unmount();

    // What does not exist: hard links, symbolic links, special files,
    // extended attributes, other owners.
    assert_eq!(
        errno(&fs::hard_link(m.p("f"), m.p("link")).unwrap_err()),
        libc::EPERM
    );
    assert_eq!(
        errno(&std::os::unix::fs::symlink("f", m.p("sym")).unwrap_err()),
        libc::EPERM
    );
    let fifo = std::ffi::CString::new(m.p("fifo").as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, -1);
    assert_eq!(errno(&std::io::Error::last_os_error()), libc::EPERM);
    let name = c"user.test";
    // SAFETY: valid path, name and value.
    let r = unsafe { libc::setxattr(c.as_ptr(), name.as_ptr(), b"v".as_ptr().cast(), 1, 0) };
    assert_eq!(r, -1);
    assert_eq!(errno(&std::io::Error::last_os_error()), libc::EOPNOTSUPP);
    let md = fs::metadata(m.p("f")).unwrap();
    assert_eq!(
        errno(&std::os::unix::fs::chown(m.p("f"), Some(md.uid() + 1), None).unwrap_err()),
        libc::EPERM
    );
    // Names the control server cannot take.
    assert_eq!(
        errno(&fs::write(m.p(&"n".repeat(256)), b"").unwrap_err()),
        libc::ENAMETOOLONG
    );
    m.unmount();
}

/// A directory of more entries than one page of the control server's
/// listing (1000) lists completely, with attributes.
#[test]
fn a_large_directory_lists_completely() {
    if !kit::available(&["fusermount3"]) {
        return;
    }
    let cl = Cluster::start(3);
    let m = Mount::start(cl.control.addr, &[]);
    let n = 1100;
    fs::create_dir(m.p("big")).unwrap();
    for i in 0..n {
        File::create(m.p(&format!("big/f{i:05}"))).unwrap();
    }
    fs::create_dir(m.p("big/sub")).unwrap();
    let listed = names(&m.p("big"));
    let mut want: Vec<String> = (0..n).map(|i| format!("f{i:05}")).collect();
    want.push("sub".into());
    assert_eq!(listed, want);
    for e in fs::read_dir(m.p("big")).unwrap() {
        let e = e.unwrap();
        let dir = e.file_name() == "sub";
        assert_eq!(e.file_type().unwrap().is_dir(), dir);
        assert_eq!(e.metadata().unwrap().is_dir(), dir);
    }
    fs::remove_dir(m.p("big/sub")).unwrap();
    for i in 0..n {
        fs::remove_file(m.p(&format!("big/f{i:05}"))).unwrap();
    }
    fs::remove_dir(m.p("big")).unwrap();
    m.unmount();
}
