//! Rules of docs/protocol.md that a client written from the document
//! relies on, checked against the real control server: the one chunk-size
//! limit, `getChunks` paging with `more`, and `hello` first.

use std::time::Duration;

use ringfs_client::control::{Capacity, ChunkRecord};
use ringfs_client::{ControlClient, CreateOptions, Error, Version};
use ringfs_tests::{local, ControlProcess};

/// The largest chunk a node stores (docs/protocol.md, "Namespace").
const MAX_CHUNK: u32 = 64 << 20;

#[test]
fn chunk_sizes_the_nodes_cannot_store_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = ControlProcess::start(dir.path(), "127.0.0.1:0", &[]);
    local(async {
        let c = ControlClient::connect(server.addr, &ringfs_tests::admin())
            .await
            .unwrap();
        let opts = |chunk_size| CreateOptions {
            chunk_size,
            ..Default::default()
        };
        for size in [MAX_CHUNK + 4096, 128 << 20, 1 << 30] {
            let r = c.create(&format!("/cs{size}"), opts(size)).await;
            assert!(
                matches!(&r, Err(Error::InvalidArgument(m)) if m.contains("64 MiB")),
                "chunk size {size}: {r:?}"
            );
            assert!(c.stat(&format!("/cs{size}")).await.is_err(), "half-applied");
        }
        let a = c.create("/max", opts(MAX_CHUNK)).await.unwrap();
        assert_eq!(a.chunk_size, MAX_CHUNK);
    });
}

#[test]
fn get_chunks_says_when_it_cut_the_answer() {
    let dir = tempfile::tempdir().unwrap();
    let server = ControlProcess::start(dir.path(), "127.0.0.1:0", &[]);
    local(async {
        let c = ControlClient::connect(server.addr, &ringfs_tests::cluster())
            .await
            .unwrap();
        let shards = vec!["127.0.0.1:7001".to_string()];
        let node = c
            .join(0, &[0; 16], &shards, Capacity::default())
            .await
            .unwrap()
            .node_id;
        let opts = CreateOptions {
            chunk_size: 4096,
            replication: 1,
            ..Default::default()
        };
        c.create("/sparse", opts).await.unwrap();
        let w = c.open("/sparse", true, Duration::ZERO).await.unwrap();
        let rec = |index: u64| ChunkRecord {
            index,
            chunk_id: 1000 + index as u128,
            replicas: vec![node],
            length: 4096,
            version: Version::new(w.write_epoch, 1),
            capability: Some(ringfs_tests::lease_capability(&w, 1000 + index as u128)),
        };
        // 4096 records at even indexes, then 3 more far out: one call
        // cannot answer them all.
        let first: Vec<ChunkRecord> = (0..4096).map(|i| rec(2 * i)).collect();
        let far: Vec<ChunkRecord> = [9000, 9001, 20_000].map(rec).to_vec();
        w.commit_chunks(&first, 8192 * 4096).await.unwrap();
        w.commit_chunks(&far, 20_001 * 4096).await.unwrap();

        let (page, more) = w.get_chunk_page(0, u32::MAX).await.unwrap();
        assert_eq!(page.len(), 4096);
        assert!(more, "a cut answer must say so");
        assert_eq!(page.last().unwrap().index, 8190);
        let (rest, more) = w.get_chunk_page(8191, u32::MAX).await.unwrap();
        assert_eq!(
            rest.iter().map(|r| r.index).collect::<Vec<_>>(),
            [9000, 9001, 20_000]
        );
        assert!(!more);
        // A range holding exactly 4096 records is whole.
        let (page, more) = w.get_chunk_page(0, 8191).await.unwrap();
        assert_eq!((page.len(), more), (4096, false));
        // The client library follows `more`.
        assert_eq!(w.get_chunks(0, u32::MAX).await.unwrap().len(), 4099);
    });
}
