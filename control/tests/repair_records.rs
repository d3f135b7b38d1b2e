//! The repair and garbage-collection mutations of the metadata store: a
//! copy changes a chunk record only if the record is unchanged and the file
//! would not list more than R replicas; garbage entries shrink as nodes
//! confirm their deletes.

use ringfs_control::records::Chunk;
use ringfs_control::store::{CreateOptions, FileDefaults, MetaStore, Mutation, Outcome};
use ringfs_schema::Version;

fn apply(store: &MetaStore, m: Mutation) -> ringfs_control::error::Result<Outcome> {
    store.apply_batch(&[m]).unwrap().remove(0)
}

#[test]
fn copies_update_unchanged_records_only_and_garbage_shrinks_per_node() {
    let dir = tempfile::tempdir().unwrap();
    let store = MetaStore::open(&dir.path().join("meta.redb"), FileDefaults::default()).unwrap();
    for _ in 0..4 {
        apply(
            &store,
            Mutation::Join {
                node_id: 0,
                key: [0; 16],
                new_key: [1; 16],
                shards: vec!["127.0.0.1:1".into()],
            },
        )
        .unwrap();
    }
    let Outcome::Attr(ino, _) = apply(
        &store,
        Mutation::Create {
            who: ringfs_control::store::Caller::admin(),
            path: "/f".into(),
            options: CreateOptions {
                chunk_size: 4096,
                replication: 3,
                write_quorum: 2,
                ..Default::default()
            },
            now_ns: 0,
        },
    )
    .unwrap() else {
        panic!("create")
    };
    let chunk = Chunk {
        id: 99,
        replicas: vec![1, 2, 3],
        length: 4096,
        version: Version::new(7, 5),
    };
    apply(
        &store,
        Mutation::CommitChunks {
            inode: ino,
            epoch: 7,
            chunks: vec![(0, chunk.clone())],
            file_size: 4096,
            now_ns: 0,
        },
    )
    .unwrap();
    let copied = |target, seq, drop: Vec<u64>| Mutation::ReplicaCopied {
        inode: ino,
        index: 0,
        id: 99,
        version: Version::new(7, seq),
        length: 4096,
        target,
        drop,
    };
    // A copy of an older version is refused.
    assert!(apply(&store, copied(4, 4, vec![3])).is_err());
    // Node 3 lost: node 4 replaces it.
    apply(&store, copied(4, 5, vec![3])).unwrap();
    assert_eq!(
        store.chunks(ino, 0, 1).unwrap()[0].1.replicas,
        vec![1, 2, 4]
    );
    // A second copy of the same chunk would make four replicas: refused.
    assert!(apply(&store, copied(3, 5, vec![])).is_err());
    assert_eq!(
        store.chunks(ino, 0, 1).unwrap()[0].1.replicas,
        vec![1, 2, 4]
    );
    // In place (a stale copy on node 2 replaced by a good one): unchanged set.
    apply(&store, copied(2, 5, vec![2])).unwrap();
    assert_eq!(
        store.chunks(ino, 0, 1).unwrap()[0].1.replicas,
        vec![1, 2, 4]
    );

    apply(
        &store,
        Mutation::Unlink {
            who: ringfs_control::store::Caller::admin(),
            path: "/f".into(),
            now_ns: 0,
        },
    )
    .unwrap();
    assert_eq!(store.garbage().unwrap()[0].replicas, vec![1, 2, 4]);
    // The record is gone: a late copy is refused.
    assert!(apply(&store, copied(3, 5, vec![])).is_err());
    apply(
        &store,
        Mutation::GarbageDone {
            id: 99,
            nodes: vec![2],
        },
    )
    .unwrap();
    assert_eq!(store.garbage().unwrap()[0].replicas, vec![1, 4]);
    apply(
        &store,
        Mutation::GarbageDone {
            id: 99,
            nodes: vec![1, 4],
        },
    )
    .unwrap();
    assert!(store.garbage().unwrap().is_empty());
}
