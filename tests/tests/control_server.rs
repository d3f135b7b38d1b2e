//! The real `ringfs-control` binary on loopback, driven over Cap'n Proto.

use std::time::{Duration, Instant};

use ringfs_client::control::{Capacity, ChunkRecord, Joined};
use ringfs_client::{ControlClient, CreateOptions, Error, Kind, Version};
use ringfs_tests::{local, ControlProcess};

const NO_WAIT: Duration = Duration::ZERO;

async fn join_node(c: &ControlClient, port: u16) -> Joined {
    let shards = vec![format!("127.0.0.1:{port}")];
    c.join(0, &[0; 16], &shards, Capacity::default())
        .await
        .expect("join")
}

#[test]
fn namespace_round_trip_and_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let server = ControlProcess::start(dir.path(), "127.0.0.1:0", &[]);
    local(async {
        let c = ControlClient::connect(server.addr, &ringfs_tests::cluster())
            .await
            .unwrap();
        let d = c.mkdir("/data", 0o750).await.unwrap();
        assert_eq!((d.kind, d.mode), (Kind::Directory, 0o750));
        let opts = CreateOptions {
            chunk_size: 1 << 20,
            replication: 2,
            ..Default::default()
        };
        let f = c.create("/data/a.bin", opts).await.unwrap();
        assert_eq!(
            (f.kind, f.size, f.chunk_size, f.replication, f.write_quorum),
            (Kind::File, 0, 1 << 20, 2, 2)
        );
        // Non-exclusive create of an existing file returns it unchanged.
        assert_eq!(
            c.create("/data/a.bin", CreateOptions::default())
                .await
                .unwrap()
                .inode,
            f.inode
        );
        assert_eq!(c.stat("/data/a.bin").await.unwrap(), f);

        c.rename("/data/a.bin", "/data/b.bin").await.unwrap();
        assert!(matches!(
            c.stat("/data/a.bin").await,
            Err(Error::NotFound(_))
        ));
        assert_eq!(c.stat("/data/b.bin").await.unwrap().inode, f.inode);

        // A big directory is listed in pages, in name order, nothing lost.
        c.mkdir("/big", 0).await.unwrap();
        let creates = (0..2500).map(|i| {
            let c = c.clone();
            async move {
                c.create(&format!("/big/f{i:05}"), CreateOptions::default())
                    .await
            }
        });
        for r in futures_join_all(creates).await {
            r.unwrap();
        }
        let (page, more) = c.list_page("/big", "", 1000).await.unwrap();
        assert_eq!((page.len(), more), (1000, true));
        let all = c.list("/big").await.unwrap();
        assert_eq!(all.len(), 2500);
        assert!(all.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(all[0].0, "f00000");

        // Bad input: typed errors, nothing changes.
        let bad = [
            c.mkdir("", 0).await,
            c.mkdir("relative", 0).await,
            c.mkdir("/data/../x", 0).await,
            c.mkdir("/data/./x", 0).await,
            c.mkdir("/data//x", 0).await,
            c.mkdir(&format!("/{}", "n".repeat(256)), 0).await,
        ];
        for r in bad {
            assert!(matches!(r, Err(Error::InvalidArgument(_))), "{r:?}");
        }
        assert!(matches!(
            c.mkdir("/data/b.bin/x", 0).await,
            Err(Error::NotDirectory(_))
        ));
        assert!(matches!(
            c.create("/missing/x", CreateOptions::default()).await,
            Err(Error::NotFound(_))
        ));
        assert!(matches!(c.mkdir("/data", 0).await, Err(Error::Exists(_))));
        let excl = CreateOptions {
            exclusive: true,
            ..Default::default()
        };
        assert!(matches!(
            c.create("/data/b.bin", excl).await,
            Err(Error::Exists(_))
        ));
        assert!(matches!(c.rmdir("/data").await, Err(Error::NotEmpty(_))));
        assert!(matches!(
            c.unlink("/data").await,
            Err(Error::IsDirectory(_))
        ));
        assert!(matches!(
            c.rmdir("/data/b.bin").await,
            Err(Error::NotDirectory(_))
        ));
        assert!(matches!(
            c.rename("/data", "/data/sub").await,
            Err(Error::InvalidArgument(_))
        ));
        let bad_layout = CreateOptions {
            chunk_size: 1000,
            ..Default::default()
        };
        assert!(matches!(
            c.create("/data/c", bad_layout).await,
            Err(Error::InvalidArgument(_))
        ));
        let bad_quorum = CreateOptions {
            replication: 2,
            write_quorum: 3,
            ..Default::default()
        };
        assert!(matches!(
            c.create("/data/c", bad_quorum).await,
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(c.stat("/data/c").await, Err(Error::NotFound(_))));
        // A node with another cluster's secret is not even let in.
        let wrong = ringfs_client::Credential::cluster(b"wrong secret, long enough");
        assert!(matches!(
            ControlClient::connect(server.addr, &wrong).await,
            Err(Error::Unauthenticated(_))
        ));
        assert!(matches!(
            c.join(0, &[0; 16], &["not an address".into()], Capacity::default())
                .await,
            Err(Error::InvalidArgument(_))
        ));

        // A read handle may not commit; a closed handle is stale.
        let r = c.open("/data/b.bin", false, NO_WAIT).await.unwrap();
        assert!(matches!(r.set_size(10).await, Err(Error::NoLease(_))));
        let w = c.open("/data/b.bin", true, NO_WAIT).await.unwrap();
        w.set_size(10).await.unwrap();
        let w2 = c.open("/data/b.bin", false, NO_WAIT).await.unwrap();
        w.close().await.unwrap();
        assert_eq!(w2.attr().await.unwrap().size, 10);

        // Empty directories go; the tree is as we left it.
        c.unlink("/data/b.bin").await.unwrap();
        c.rmdir("/data").await.unwrap();
        let root: Vec<_> = c
            .list("/")
            .await
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(root, vec!["big".to_string()]);
    });
}

/// `join_all` without another crate: runs the futures concurrently on the
/// local set and collects their outputs in order.
async fn futures_join_all<F>(futs: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + 'static,
    F::Output: 'static,
{
    let handles: Vec<_> = futs.into_iter().map(tokio::task::spawn_local).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.expect("task"));
    }
    out
}

#[test]
fn chunk_map_commits_and_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let server = ControlProcess::start(dir.path(), "127.0.0.1:0", &[]);
    local(async {
        let c = ControlClient::connect(server.addr, &ringfs_tests::cluster())
            .await
            .unwrap();
        let n1 = join_node(&c, 7001).await.node_id;
        let n2 = join_node(&c, 7002).await.node_id;
        let opts = CreateOptions {
            chunk_size: 4096,
            replication: 2,
            write_quorum: 1,
            ..Default::default()
        };
        c.create("/f", opts).await.unwrap();
        let w = c.open("/f", true, NO_WAIT).await.unwrap();
        let epoch = w.write_epoch;
        assert!(epoch > 0, "a write handle has a write epoch");
        let chunk = |index, id, length, seq| ChunkRecord {
            index,
            chunk_id: id,
            replicas: vec![n1, n2],
            length,
            version: Version::new(epoch, seq),
            capability: Some(ringfs_tests::lease_capability(&w, id)),
        };
        let a = w
            .commit_chunks(&[chunk(0, 10, 4096, 1), chunk(1, 11, 100, 1)], 4196)
            .await
            .unwrap();
        assert_eq!(a.attr.size, 4196);
        assert_eq!(w.get_chunks(0, 10).await.unwrap().len(), 2);

        // Invalid commits are refused whole: chunk 0 may not go back to an
        // older version.
        let stale = w
            .commit_chunks(&[chunk(2, 12, 10, 1), chunk(0, 10, 4096, 0)], 8202)
            .await;
        assert!(matches!(stale, Err(Error::InvalidArgument(_))), "{stale:?}");
        let past_size = w.commit_chunks(&[chunk(2, 12, 10, 1)], 8200).await;
        assert!(matches!(past_size, Err(Error::InvalidArgument(_))));
        let unknown_node = ChunkRecord {
            replicas: vec![n1, 999],
            ..chunk(2, 12, 10, 1)
        };
        assert!(matches!(
            w.commit_chunks(&[unknown_node], 8202).await,
            Err(Error::InvalidArgument(_))
        ));
        let too_long = chunk(2, 12, 4097, 1);
        assert!(matches!(
            w.commit_chunks(&[too_long], 20000).await,
            Err(Error::InvalidArgument(_))
        ));
        assert_eq!(w.attr().await.unwrap().size, 4196);
        assert_eq!(w.get_chunks(0, 10).await.unwrap().len(), 2);

        // A new chunk must be written under this lease (its epoch)...
        let foreign = ChunkRecord {
            version: Version::new(epoch + 1000, 1),
            ..chunk(2, 12, 10, 1)
        };
        let r = w.commit_chunks(&[foreign], 8202).await;
        assert!(matches!(r, Err(Error::InvalidArgument(_))), "{r:?}");
        let older = ChunkRecord {
            version: Version::new(epoch - 1, 9),
            ..chunk(2, 12, 10, 1)
        };
        let r = w.commit_chunks(&[older], 8202).await;
        assert!(matches!(r, Err(Error::InvalidArgument(_))), "{r:?}");

        // Overwrite with a newer version, or the same one with other
        // replicas; truncate drops and trims chunks.
        w.commit_chunks(&[chunk(0, 10, 4096, 2)], 4196)
            .await
            .unwrap();
        let fewer = ChunkRecord {
            replicas: vec![n2],
            ..chunk(0, 10, 4096, 2)
        };
        w.commit_chunks(&[fewer], 4196).await.unwrap();
        let a = w.set_size(1000).await.unwrap();
        assert_eq!(a.size, 1000);
        let left = w.get_chunks(0, 10).await.unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(
            (left[0].length, left[0].version, left[0].replicas.clone()),
            (1000, Version::new(epoch, 2), vec![n2])
        );
        // Chunk 11 was dropped by the truncate: committing it again would
        // commit a hole (it is being deleted).
        let r = w.commit_chunks(&[chunk(1, 11, 100, 3)], 4196).await;
        assert!(
            matches!(&r, Err(Error::InvalidArgument(m)) if m.contains("dropped")),
            "{r:?}"
        );
        // A later lease has a higher epoch.
        w.close().await.unwrap();
        let w2 = c.open("/f", true, NO_WAIT).await.unwrap();
        assert!(w2.write_epoch > epoch);
    });
}

#[test]
fn acknowledged_metadata_survives_kill9() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ControlProcess::start(dir.path(), "127.0.0.1:0", &[]);
    let (node, inodes) = local(async {
        let c = ControlClient::connect(server.addr, &ringfs_tests::cluster())
            .await
            .unwrap();
        let joined = join_node(&c, 7001).await;
        c.mkdir("/keep", 0).await.unwrap();
        let creates = (0..300).map(|i| {
            let c = c.clone();
            async move {
                c.create(
                    &format!("/keep/{i}"),
                    CreateOptions {
                        replication: 1,
                        ..Default::default()
                    },
                )
                .await
            }
        });
        let mut inodes = Vec::new();
        for r in futures_join_all(creates).await {
            inodes.push(r.unwrap().inode);
        }
        let w = c.open("/keep/7", true, NO_WAIT).await.unwrap();
        let rec = ChunkRecord {
            index: 0,
            chunk_id: 77,
            replicas: vec![joined.node_id],
            length: 5,
            version: Version::new(w.write_epoch, 1),
            capability: Some(ringfs_tests::lease_capability(&w, 77)),
        };
        w.commit_chunks(&[rec], 5).await.unwrap();
        (joined, inodes)
    });
    // Every acknowledgement above happened before this kill.
    server.kill9();
    let server = ControlProcess::start(dir.path(), "127.0.0.1:0", &[]);
    local(async {
        let c = ControlClient::connect(server.addr, &ringfs_tests::cluster())
            .await
            .unwrap();
        let listed = c.list("/keep").await.unwrap();
        assert_eq!(listed.len(), 300);
        for (i, ino) in inodes.iter().enumerate() {
            assert_eq!(c.stat(&format!("/keep/{i}")).await.unwrap().inode, *ino);
        }
        let r = c.open("/keep/7", false, NO_WAIT).await.unwrap();
        assert_eq!(r.attr.size, 5);
        assert_eq!(r.get_chunks(0, 1).await.unwrap()[0].chunk_id, 77);
        // The node keeps its id with its key, and new inodes never reuse old numbers.
        let again = c
            .join(
                node.node_id,
                &node.node_key,
                &["127.0.0.1:7001".into()],
                Capacity::default(),
            )
            .await
            .unwrap();
        assert_eq!(again.node_id, node.node_id);
        let fresh = c
            .create("/keep/new", CreateOptions::default())
            .await
            .unwrap();
        assert!(fresh.inode > *inodes.iter().max().unwrap());
    });
}

#[test]
fn writers_queue_fifo_and_time_out_busy() {
    let dir = tempfile::tempdir().unwrap();
    let server = ControlProcess::start(dir.path(), "127.0.0.1:0", &[]);
    local(async {
        let a = ControlClient::connect(server.addr, &ringfs_tests::cluster())
            .await
            .unwrap();
        let b = ControlClient::connect(server.addr, &ringfs_tests::cluster())
            .await
            .unwrap();
        let c = ControlClient::connect(server.addr, &ringfs_tests::cluster())
            .await
            .unwrap();
        a.create("/f", CreateOptions::default()).await.unwrap();
        let wa = a.open("/f", true, NO_WAIT).await.unwrap();

        // A short wait ends in a clear busy error.
        let t = Instant::now();
        let busy = b.open("/f", true, Duration::from_millis(300)).await;
        assert!(matches!(busy, Err(Error::Busy(_))), "{busy:?}");
        assert!(t.elapsed() >= Duration::from_millis(300));
        // Readers are not blocked by the writer.
        c.open("/f", false, NO_WAIT).await.unwrap();

        // b queues first, then c: when a closes, b gets the lease, then c.
        let wb = tokio::task::spawn_local(async move {
            b.open("/f", true, Duration::from_secs(20))
                .await
                .map(|h| (b, h))
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let wc = tokio::task::spawn_local(async move {
            c.open("/f", true, Duration::from_secs(20))
                .await
                .map(|h| (c, h))
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!wb.is_finished() && !wc.is_finished());
        wa.close().await.unwrap();
        let (_b, hb) = wb.await.unwrap().unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!wc.is_finished(), "c must wait behind b");
        hb.set_size(1).await.unwrap();
        hb.close().await.unwrap();
        let (_c, hc) = wc.await.unwrap().unwrap();
        hc.set_size(2).await.unwrap();
    });
}

#[test]
fn lease_is_released_when_the_client_disconnects() {
    let dir = tempfile::tempdir().unwrap();
    let server = ControlProcess::start(dir.path(), "127.0.0.1:0", &[]);
    local(async {
        let a = ControlClient::connect(server.addr, &ringfs_tests::cluster())
            .await
            .unwrap();
        let b = ControlClient::connect(server.addr, &ringfs_tests::cluster())
            .await
            .unwrap();
        a.create("/f", CreateOptions::default()).await.unwrap();
        let handle = a.open("/f", true, NO_WAIT).await.unwrap();
        let waiter = tokio::task::spawn_local(async move {
            b.open("/f", true, Duration::from_secs(20))
                .await
                .map(|_| ())
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!waiter.is_finished());
        // The client goes away without closing: its connection drops.
        drop(handle);
        drop(a);
        let t = Instant::now();
        waiter.await.unwrap().unwrap();
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "lease freed by the disconnect, not a timeout"
        );
    });
}

#[test]
fn membership_heartbeats_down_marking_and_subscription() {
    let dir = tempfile::tempdir().unwrap();
    let server = ControlProcess::start(
        dir.path(),
        "127.0.0.1:0",
        &["--heartbeat-ms", "100", "--node-ttl-ms", "400"],
    );
    local(async {
        let watcher = ControlClient::connect(server.addr, &ringfs_tests::cluster())
            .await
            .unwrap();
        let (map0, mut sub) = watcher.subscribe().await.unwrap();
        assert!(map0.nodes.is_empty());

        let node = ControlClient::connect(server.addr, &ringfs_tests::cluster())
            .await
            .unwrap();
        let joined = join_node(&node, 7001).await;
        assert_eq!(
            (joined.heartbeat, joined.ttl),
            (Duration::from_millis(100), Duration::from_millis(400))
        );
        let m1 = tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .unwrap()
            .unwrap();
        assert!(m1.epoch > map0.epoch);
        assert_eq!(m1.nodes.len(), 1);
        assert!(m1.nodes[0].up);
        assert_eq!(m1.nodes[0].shards, vec!["127.0.0.1:7001".to_string()]);

        // Heartbeats keep it up and carry the capacity.
        let cap = Capacity {
            total: 1000,
            used: 10,
            reserved: 5,
            chunks: 2,
        };
        let mut last_beat = Instant::now();
        for _ in 0..6 {
            last_beat = Instant::now();
            let (_, report_wanted) = node
                .heartbeat(joined.node_id, &joined.node_key, cap)
                .await
                .unwrap();
            assert!(report_wanted);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let map = watcher.cluster_map().await.unwrap();
        assert!(map.nodes[0].up);
        assert_eq!(map.nodes[0].capacity, cap);
        assert!(matches!(
            node.heartbeat(joined.node_id, &[9; 16], cap).await,
            Err(Error::PermissionDenied(_))
        ));

        // Silence past the TTL: down, and the subscriber hears of it. The
        // TTL counts from the last good heartbeat (the server received it
        // no earlier than we sent it), not from when we start waiting.
        let down = tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .unwrap()
            .unwrap();
        assert!(!down.nodes[0].up);
        assert!(down.epoch > m1.epoch);
        assert!(
            last_beat.elapsed() >= Duration::from_millis(400),
            "marked down before the 400 ms TTL: {:?} after the last heartbeat",
            last_beat.elapsed()
        );

        // A heartbeat brings it back up.
        node.heartbeat(joined.node_id, &joined.node_key, cap)
            .await
            .unwrap();
        let up = tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .unwrap()
            .unwrap();
        assert!(up.nodes[0].up);
        assert!(up.epoch > down.epoch);
    });
}
