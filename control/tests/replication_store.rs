//! The store's side of replication: request ids answered once and
//! forgotten after their retention, and snapshots that round-trip the
//! whole store and refuse a damaged stream without changing anything.

use redb::backends::InMemoryBackend;
use ringfs_control::store::requests::REQUEST_RETENTION;
use ringfs_control::store::{Answer, Batch, FileDefaults, MetaStore, Mutation, Outcome, Request};
use ringfs_control::ControlError;

fn store() -> MetaStore {
    MetaStore::with_backend(InMemoryBackend::new(), FileDefaults::default()).unwrap()
}

fn mkdir(path: &str) -> Mutation {
    Mutation::Mkdir {
        who: ringfs_control::store::Caller::admin(),
        path: path.into(),
        mode: 0,
        now_ns: 1,
    }
}

fn apply(s: &MetaStore, now_ns: i64, requests: Vec<Request>) -> Vec<Result<Outcome, ControlError>> {
    let batch = Batch { now_ns, requests };
    s.apply_batches(&[&batch], &[], true)
        .unwrap()
        .pop()
        .unwrap()
}

#[test]
fn a_request_id_is_applied_once_and_answered_again_until_it_expires() {
    let s = store();
    let id = Some(7u128);
    let first = apply(
        &s,
        1_000,
        vec![Request {
            id,
            mutation: mkdir("/a"),
        }],
    );
    let attr = first[0].clone().expect("the first mkdir applies");
    // Sent again (a lost answer): the first answer, not `exists`.
    let again = apply(
        &s,
        2_000,
        vec![Request {
            id,
            mutation: mkdir("/a"),
        }],
    );
    assert_eq!(again[0].clone().unwrap(), attr);
    // Without the id, the same mutation is a new one and is refused.
    let other = apply(
        &s,
        2_000,
        vec![Request {
            id: None,
            mutation: mkdir("/a"),
        }],
    );
    assert!(matches!(other[0], Err(ControlError::Exists(_))));
    // A refusal is remembered too.
    let refused = apply(
        &s,
        3_000,
        vec![Request {
            id: Some(8),
            mutation: mkdir("/x/y"),
        }],
    );
    let refused_again = apply(
        &s,
        3_000,
        vec![Request {
            id: Some(8),
            mutation: mkdir("/x/y"),
        }],
    );
    assert_eq!(
        refused[0].as_ref().unwrap_err().to_string(),
        refused_again[0].as_ref().unwrap_err().to_string()
    );
    // Past the retention the id is forgotten (by the next batch, which
    // expires ids at its end): the same id is then a new request.
    let later = 1_000 + REQUEST_RETENTION.as_nanos() as i64 + 1;
    apply(&s, later, Vec::new());
    let expired = apply(
        &s,
        later,
        vec![Request {
            id,
            mutation: mkdir("/a"),
        }],
    );
    assert!(
        matches!(expired[0], Err(ControlError::Exists(_))),
        "{expired:?}"
    );
    assert!(s.consistency_problems().unwrap().is_empty());
}

#[test]
fn a_snapshot_round_trips_the_store_and_a_damaged_one_changes_nothing() {
    let s = store();
    let requests = (0..50)
        .map(|i| Request {
            id: Some(i),
            mutation: mkdir(&format!("/d{i:02}")),
        })
        .collect();
    apply(&s, 5, requests);
    let add_user = Mutation::AddUser {
        name: "alice".into(),
        uid: 0,
        gids: Vec::new(),
        admin: false,
        salt: [3; 16],
    };
    apply(
        &s,
        5,
        vec![Request {
            id: None,
            mutation: add_user,
        }],
    );
    let mut snap = Vec::new();
    let bytes = s.export(&mut snap).unwrap();
    assert_eq!(bytes as usize, snap.len());

    let t = store();
    apply(
        &t,
        5,
        vec![Request {
            id: None,
            mutation: mkdir("/other"),
        }],
    );
    t.import(snap.as_slice(), &[]).unwrap();
    let names = |s: &MetaStore| -> Vec<String> {
        s.list("/", "", 1000)
            .unwrap()
            .0
            .into_iter()
            .map(|e| e.name)
            .collect()
    };
    assert_eq!(names(&t), names(&s));
    assert_eq!(t.users().unwrap(), s.users().unwrap());
    assert!(t.user("alice").unwrap().is_some());
    assert!(t.consistency_problems().unwrap().is_empty());
    // The request ids came along: a resent request is answered, not applied.
    let again = apply(
        &t,
        6,
        vec![Request {
            id: Some(3),
            mutation: mkdir("/d03"),
        }],
    );
    assert!(again[0].is_ok());

    // Every damaged byte and every truncation is refused, and the store
    // keeps what it had.
    let u = store();
    apply(
        &u,
        5,
        vec![Request {
            id: None,
            mutation: mkdir("/kept"),
        }],
    );
    for i in (0..snap.len()).step_by(29) {
        let mut bad = snap.clone();
        bad[i] ^= 0x40;
        assert!(u.import(bad.as_slice(), &[]).is_err(), "byte {i} flipped");
        assert!(u.import(&snap[..i], &[]).is_err(), "cut at {i}");
    }
    assert_eq!(names(&u), vec!["kept".to_string()]);
}

#[test]
fn request_ids_are_kept_when_the_store_opens_again_and_one_batch_sends_an_id_twice() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.redb");
    let s = MetaStore::open(&path, FileDefaults::default()).unwrap();
    // The second request of the batch is the first sent again: answered
    // from the same transaction, not applied twice.
    let twice = apply(
        &s,
        1_000,
        vec![
            Request {
                id: Some(1),
                mutation: mkdir("/a"),
            },
            Request {
                id: Some(1),
                mutation: mkdir("/a"),
            },
        ],
    );
    assert_eq!(twice[1].clone().unwrap(), twice[0].clone().unwrap());
    drop(s);

    let s = MetaStore::open(&path, FileDefaults::default()).unwrap();
    assert!(s.answer(1).unwrap().is_some(), "the id outlives a restart");
    let again = apply(
        &s,
        2_000,
        vec![Request {
            id: Some(1),
            mutation: mkdir("/a"),
        }],
    );
    assert_eq!(again[0].clone().unwrap(), twice[0].clone().unwrap());
}

/// A store written before the request answers were keyed by time (ids in
/// table `requests`, their expiry order in `request_times`) keeps its ids
/// when this build opens it, and a snapshot of such a build imports with
/// them.
#[test]
fn request_ids_of_the_older_layout_are_kept_on_open_and_on_import() {
    use redb::{Database, ReadableDatabase, TableDefinition};
    let old_requests: TableDefinition<u128, &[u8]> = TableDefinition::new("requests");
    let old_times: TableDefinition<(i64, u128), ()> = TableDefinition::new("request_times");
    let answer = Answer::Refused(7, "no such file".into());
    // The older row: (batch time, answer), postcard.
    let row = postcard::to_stdvec(&(1_000i64, answer.clone())).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.redb");
    {
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(old_requests)
            .unwrap()
            .insert(5u128, row.as_slice())
            .unwrap();
        txn.open_table(old_times)
            .unwrap()
            .insert((1_000i64, 5u128), ())
            .unwrap();
        txn.commit().unwrap();
    }
    let s = MetaStore::open(&path, FileDefaults::default()).unwrap();
    assert_eq!(s.answer(5).unwrap(), Some(answer.clone()));
    drop(s);
    let db = Database::open(&path).unwrap();
    let tables: Vec<String> = db
        .begin_read()
        .unwrap()
        .list_tables()
        .unwrap()
        .map(|t| redb::TableHandle::name(&t).to_string())
        .collect();
    assert!(
        !tables
            .iter()
            .any(|t| t == "requests" || t == "request_times"),
        "{tables:?}"
    );
    drop(db);

    // A snapshot stream of that build: its tables 7 (id -> time and
    // answer) and 8 (expiry order).
    let mut snap = b"RINGFSM1".to_vec();
    for (table, key, value) in [
        (7u8, 9u128.to_le_bytes().to_vec(), row.clone()),
        (
            8u8,
            [
                1_000i64.to_le_bytes().to_vec(),
                9u128.to_le_bytes().to_vec(),
            ]
            .concat(),
            Vec::new(),
        ),
    ] {
        snap.push(table);
        for field in [key, value] {
            snap.extend_from_slice(&(field.len() as u32).to_le_bytes());
            snap.extend_from_slice(&field);
        }
    }
    snap.push(0xff);
    let crc = crc32c::crc32c(&snap);
    snap.extend_from_slice(&crc.to_le_bytes());
    let t = store();
    t.import(snap.as_slice(), &[]).unwrap();
    assert_eq!(t.answer(9).unwrap(), Some(answer));
}
