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

/// A new store (in a temporary directory, kept alive by the returned
/// guard) with `nodes` nodes joined: ids 1 to `nodes`.
fn store_with_nodes(nodes: usize) -> (tempfile::TempDir, MetaStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = MetaStore::open(&dir.path().join("meta.redb"), FileDefaults::default()).unwrap();
    for _ in 0..nodes {
        let join = Mutation::Join {
            node_id: 0,
            key: [0; 16],
            new_key: [1; 16],
            shards: vec!["127.0.0.1:1".into()],
        };
        apply(&store, join).unwrap();
    }
    (dir, store)
}

#[test]
fn copies_update_unchanged_records_only_and_garbage_shrinks_per_node() {
    let (_dir, store) = store_with_nodes(4);
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

/// A transaction across files is checked whole before anything is
/// written: one bad record of the second file leaves the first file as it
/// was; a good one swaps both files' records at once (the replaced chunk
/// to garbage, the truncated tail too).
#[test]
fn a_transaction_applies_every_file_or_none() {
    use ringfs_control::store::TxFile;
    let (_dir, store) = store_with_nodes(1);
    let create = |path: &str| {
        let m = Mutation::Create {
            who: ringfs_control::store::Caller::admin(),
            path: path.into(),
            options: CreateOptions {
                chunk_size: 4096,
                replication: 1,
                write_quorum: 1,
                ..Default::default()
            },
            now_ns: 0,
        };
        match apply(&store, m).unwrap() {
            Outcome::Attr(ino, _) => ino,
            other => panic!("{other:?}"),
        }
    };
    let (a, b) = (create("/a"), create("/b"));
    let chunk = |id, epoch| Chunk {
        id,
        replicas: vec![1],
        length: 4096,
        version: Version::new(epoch, 1),
    };
    for (ino, id) in [(a, 10), (b, 20)] {
        let m = Mutation::CommitChunks {
            inode: ino,
            epoch: 5,
            chunks: vec![(0, chunk(id, 5)), (1, chunk(id + 1, 5))],
            file_size: 8192,
            now_ns: 0,
        };
        apply(&store, m).unwrap();
    }
    let tx = |b_epoch| Mutation::CommitTransaction {
        who: ringfs_control::store::Caller::admin(),
        creates: vec![],
        unlinks: vec![],
        files: vec![
            TxFile {
                inode: a,
                epoch: 8,
                truncate_to: u64::MAX,
                chunks: vec![(0, chunk(30, 8))],
                file_size: 8192,
            },
            TxFile {
                inode: b,
                epoch: 9,
                truncate_to: 0,
                chunks: vec![(0, chunk(40, b_epoch))],
                file_size: 4096,
            },
        ],
        now_ns: 1,
    };
    // /b's record was not written under its lease: nothing changes.
    assert!(apply(&store, tx(8)).is_err());
    let ids = |ino| -> Vec<u128> {
        store
            .chunks(ino, 0, 10)
            .unwrap()
            .iter()
            .map(|(_, c)| c.id)
            .collect()
    };
    assert_eq!((ids(a), ids(b)), (vec![10, 11], vec![20, 21]));
    assert!(store.garbage().unwrap().is_empty());
    // Both at once.
    apply(&store, tx(9)).unwrap();
    assert_eq!((ids(a), ids(b)), (vec![30, 11], vec![40]));
    assert_eq!(store.inode(b).unwrap().unwrap().size, 4096);
    let mut garbage: Vec<u128> = store.garbage().unwrap().iter().map(|c| c.id).collect();
    garbage.sort();
    assert_eq!(garbage, vec![10, 20, 21]);
}

/// Creates and unlinks in a transaction: a reserved inode is linked only
/// by the commit, an unlinked file's chunks go to garbage, and every
/// refusal (a path both created and unlinked, a file both written and
/// unlinked, an inode that is not a reserved one, an unlink of a missing
/// file) leaves the store as it was.
#[test]
fn a_transaction_creates_and_unlinks_in_its_one_mutation() {
    use ringfs_control::store::{Caller, TxCreate, TxFile};
    let (_dir, store) = store_with_nodes(1);
    let options = CreateOptions {
        chunk_size: 4096,
        replication: 1,
        write_quorum: 1,
        ..Default::default()
    };
    let ino = |o: Outcome| match o {
        Outcome::Attr(ino, _) => ino,
        other => panic!("{other:?}"),
    };
    let old = ino(apply(
        &store,
        Mutation::Create {
            who: Caller::admin(),
            path: "/old".into(),
            options,
            now_ns: 0,
        },
    )
    .unwrap());
    let chunk = |id, epoch| Chunk {
        id,
        replicas: vec![1],
        length: 4096,
        version: Version::new(epoch, 1),
    };
    apply(
        &store,
        Mutation::CommitChunks {
            inode: old,
            epoch: 5,
            chunks: vec![(0, chunk(10, 5))],
            file_size: 4096,
            now_ns: 0,
        },
    )
    .unwrap();
    let reserved = ino(apply(
        &store,
        Mutation::ReserveInode {
            who: Caller::admin(),
            path: "/new".into(),
            options,
            now_ns: 0,
        },
    )
    .unwrap());
    assert!(
        store.inode(reserved).unwrap().is_none(),
        "reserved, not stored"
    );
    assert!(store.stat("/new").is_err(), "reserved, not linked");
    let tx = |create: &str, create_ino, unlinks: &[&str]| Mutation::CommitTransaction {
        who: Caller::admin(),
        files: vec![TxFile {
            inode: reserved,
            epoch: 8,
            truncate_to: u64::MAX,
            chunks: vec![(0, chunk(30, 8))],
            file_size: 4096,
        }],
        creates: vec![TxCreate {
            inode: create_ino,
            path: create.into(),
            options,
        }],
        unlinks: unlinks.iter().map(|p| p.to_string()).collect(),
        now_ns: 1,
    };
    for (bad, why) in [
        (tx("/new", reserved, &["/new/"]), "created and unlinked"),
        (tx("/new", reserved, &["/old", "/old/"]), "unlinked twice"),
        (
            tx("/new", old, &["/old"]),
            "an inode that is not a reserved one",
        ),
        (
            tx("/new", reserved, &["/missing"]),
            "an unlink of a missing file",
        ),
        (tx("/old", reserved, &[]), "a create of an existing path"),
    ] {
        assert!(apply(&store, bad).is_err(), "{why}");
        assert!(store.stat("/new").is_err(), "{why}: created");
        assert!(store.stat("/old").is_ok(), "{why}: unlinked");
        assert!(store.garbage().unwrap().is_empty(), "{why}");
    }
    apply(&store, tx("/new", reserved, &["/old"])).unwrap();
    let (new_ino, attr) = store.stat("/new").unwrap();
    assert_eq!((new_ino, attr.size), (reserved, 4096));
    assert!(store.stat("/old").is_err());
    let garbage: Vec<u128> = store.garbage().unwrap().iter().map(|c| c.id).collect();
    assert_eq!(garbage, vec![10]);
}
