//! Failures under the mount.

use std::fs::{self, File};
use std::io::Read;

use ringfs_tests::Cluster;

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
