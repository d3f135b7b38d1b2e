//! Failures under the mount.

use std::fs::{self, File};
use std::io::Read;

use ringfs_tests::{Cluster, ReplicatedCluster, QUICK};

use ringfs_tests::files::pattern;

use crate::kit::{self, Mount};

/// kill -9 of a storage node halfway through a read through the mount:
/// the read completes, every byte right, from the other replicas.
#[test]
fn a_read_survives_a_storage_node_killed_midway() {
    if !kit::available(&["fusermount3"]) {
        return;
    }
    let mut cl = Cluster::start(3);
    let size = 48 << 20;
    let data = pattern(size, 9);
    // 1 MiB chunks, three replicas: the read crosses many chunks, and the
    // killed node holds a replica of each.
    let w = Mount::start(
        cl.control.addr,
        &["--chunk-size", "1MiB", "--replication", "3"],
    );
    fs::write(w.p("f"), &data).unwrap();
    w.unmount();

    // A fresh mount: nothing of the file in its page cache.
    let r = Mount::start(cl.control.addr, &[]);
    let mut f = File::open(r.p("f")).unwrap();
    let mut got = vec![0u8; size];
    let half = size / 3;
    f.read_exact(&mut got[..half]).unwrap();
    cl.kill9(0);
    f.read_exact(&mut got[half..]).unwrap();
    let mut rest = Vec::new();
    assert_eq!(f.read_to_end(&mut rest).unwrap(), 0, "nothing past the end");
    assert!(got == data, "the bytes read differ from those written");
    drop(f);
    r.unmount();
}

/// kill -9 of the control leader under a mount given every replica's
/// address (the leader is the first of them): a file open for writing
/// across the kill is finished and closed, and files made, written,
/// renamed and chmod-ed after it go to the new leader; everything reads
/// back byte for byte through the mount and through a fresh one.
#[test]
fn a_mount_keeps_working_across_a_control_leader_killed() {
    if !kit::available(&["fusermount3"]) {
        return;
    }
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let mut cl = ReplicatedCluster::start(3, 3, QUICK);
    assert_eq!(cl.group.leader(), 0, "the bootstrapped replica leads");
    let addrs = cl.group.running_addrs();
    let m = Mount::start_at(&addrs, &["--chunk-size", "1MiB", "--replication", "3"]);
    let (across, before, after) = (
        pattern(3 << 20, 11),
        pattern(2 << 20, 12),
        pattern(1 << 20, 13),
    );
    fs::create_dir(m.p("d")).unwrap();
    fs::write(m.p("d/before"), &before).unwrap();
    let mut open = File::create(m.p("d/across")).unwrap();
    open.write_all(&across[..1 << 20]).unwrap();
    open.sync_all().unwrap();

    cl.group.kill9(0);
    let failed = |what: &str, e: std::io::Error| -> ! {
        panic!(
            "{what} after the leader was killed: {e}; the mount says: {}",
            m.log()
        )
    };
    open.write_all(&across[1 << 20..])
        .unwrap_or_else(|e| failed("writing d/across", e));
    open.sync_all()
        .unwrap_or_else(|e| failed("syncing d/across", e));
    drop(open);
    fs::write(m.p("d/after"), &after).unwrap();
    fs::rename(m.p("d/before"), m.p("d/moved")).unwrap();
    fs::set_permissions(m.p("d/after"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::create_dir(m.p("d/sub")).unwrap();
    m.unmount();

    let r = Mount::start_at(&addrs, &[]);
    let mut names: Vec<String> = fs::read_dir(r.p("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["across", "after", "moved", "sub"]);
    assert!(
        fs::read(r.p("d/across")).unwrap() == across,
        "d/across differs"
    );
    assert!(
        fs::read(r.p("d/after")).unwrap() == after,
        "d/after differs"
    );
    assert!(
        fs::read(r.p("d/moved")).unwrap() == before,
        "d/moved differs"
    );
    let mode = fs::metadata(r.p("d/after")).unwrap().permissions().mode();
    assert_eq!(mode & 0o7777, 0o600);
    r.unmount();
}
