//! Verified reads (`OpenOptions::verify_replicas`, `ringfs get
//! --verify-replicas`) on real processes: a replica made to differ from the
//! others at the same version, with valid checksums (data and CRC rewritten
//! behind the node's back, which only a comparison of replicas can find),
//! is outvoted, never served, and repaired; with two replicas that
//! disagree, the read fails naming the chunk instead of guessing.

use ringfs_client::{Client, Error, OpenOptions};
use std::time::Duration;

use ringfs_tests::files::{distinct_contents, pattern, wait_replicas_agree};
use ringfs_tests::{with_client, Cluster, FAST_REPAIR};

const SIZE: usize = 64 * 1024;

fn verified() -> OpenOptions {
    OpenOptions {
        verify_replicas: true,
        ..OpenOptions::read()
    }
}

/// Reads all of `path` through one descriptor opened with `opts`.
async fn read_all(c: &Client, path: &str, opts: &OpenOptions) -> Result<Vec<u8>, Error> {
    let fd = c.open(path, opts).await?;
    let mut buf = vec![0u8; SIZE + 1];
    let n = c.pread(fd, 0, &mut buf).await;
    c.close(fd).await?;
    buf.truncate(n?);
    Ok(buf)
}

/// Three replicas, one diverged: every verified read returns the
/// majority's bytes, through the library and the CLI. A write descriptor
/// (write capability on the chunk) replaces the odd replica with a copy of
/// the majority's itself; a read descriptor (the CLI's) reports it and the
/// control server replaces it.
#[test]
fn a_replica_that_differs_at_the_same_version_is_outvoted_and_repaired() {
    let mut cl = Cluster::start_with(3, FAST_REPAIR, &[]);
    let rec = cl.diverged_file("/v3", &pattern(SIZE, 31), 3);
    let want = pattern(SIZE, 31);
    let odd = rec.replicas[1];
    with_client(cl.control.addr, async |c| {
        assert_eq!(distinct_contents(c, "/v3").await, 2, "the replicas differ");
        let writer = OpenOptions {
            write: true,
            ..verified()
        };
        assert!(read_all(c, "/v3", &writer).await.unwrap() == want);
        assert_eq!(c.repairs(), 1, "node {odd}'s replica was repaired");
        assert_eq!(
            distinct_contents(c, "/v3").await,
            1,
            "the replicas agree again"
        );
    });
    // And the CLI, on a second divergence of the same replica.
    let rec = cl.diverged_file("/v3b", &pattern(SIZE, 32), 3);
    let out = cl.dir.path().join("v3b");
    let got = cl.ringfs(&["get", "--verify-replicas", "/v3b", out.to_str().unwrap()]);
    assert_eq!(got.code, Some(0), "{got:#?}");
    assert!(std::fs::read(&out).unwrap() == pattern(SIZE, 32));
    let what = format!("node {}'s replica, reported, repaired", rec.replicas[1]);
    with_client(cl.control.addr, async |c| {
        wait_replicas_agree(c, "/v3b", Duration::from_secs(30), &what).await;
    });
}

/// Two replicas that disagree at one version: no majority, so a verified
/// read fails with `Corrupt` naming the chunk and what each replica holds,
/// repairs nothing, and the CLI exits non-zero with that message.
#[test]
fn two_replicas_that_disagree_fail_a_verified_read() {
    let mut cl = Cluster::start_with(2, FAST_REPAIR, &[]);
    let rec = cl.diverged_file("/v2", &pattern(SIZE, 21), 2);
    let chunk = format!("index {}", rec.index);
    with_client(cl.control.addr, async |c| {
        match read_all(c, "/v2", &verified()).await {
            Err(Error::Corrupt(msg)) => {
                assert!(msg.contains(&chunk) && msg.contains("no majority"), "{msg}");
                for n in &rec.replicas {
                    assert!(msg.contains(&format!("node {n}: version")), "{msg}");
                }
            }
            other => panic!("a verified read of two disagreeing replicas: {other:?}"),
        }
        assert_eq!(c.repairs(), 0);
        assert_eq!(distinct_contents(c, "/v2").await, 2, "nothing was repaired");
    });
    let got = cl.ringfs(&["get", "--verify-replicas", "/v2", "-"]);
    assert_ne!(got.code, Some(0), "{got:#?}");
    assert!(got.stderr.contains("no majority"), "{got:#?}");
}
