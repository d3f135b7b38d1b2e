//! The Raft state machine: the metadata store itself.
//!
//! Applying: the entries openraft hands over are applied in one store
//! transaction (their batches in order, with the last applied log id and
//! the membership in the same transaction), on a blocking-pool thread so
//! that the RPC thread keeps serving. The commit has no fsync: the Raft log
//! holds every applied entry durably until a snapshot covers it, and a
//! replica that crashes re-applies from its last durable applied id. A
//! durable commit follows at least every [`SYNC_EVERY`] and before every
//! snapshot, so the log that must be kept stays short and redb can reuse
//! pages.
//!
//! Snapshots are the store exported as a stream ([`MetaStore::export`]),
//! with a header holding openraft's snapshot meta; the latest one is kept
//! in `DIR/raft-snapshot` (written to a temporary file, fsynced, renamed),
//! so it survives a restart and doubles as a backup. Installing one
//! replaces every table in one durable transaction ([`MetaStore::import`]).
//! A snapshot travels whole in memory (`Cursor<Vec<u8>>`): fine for
//! metadata of millions of files, the limit for more (see
//! docs/architecture.md).

use std::io::{Cursor, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, Entry, EntryPayload, RaftSnapshotBuilder, SnapshotMeta, StorageIOError,
    StoredMembership,
};

use super::{decode, encode, Applied, LogId, StorageError, TypeConfig};
use crate::store::{Answer, Batch, MetaStore};

/// A snapshot file's meta and bytes.
type StoredSnapshot = (SnapshotMeta<u64, BasicNode>, Vec<u8>);

/// Longest time between durable commits of applied entries.
pub const SYNC_EVERY: Duration = Duration::from_secs(1);
const APPLIED: &str = "raft_applied";
const MEMBERSHIP: &str = "raft_membership";
/// Name of the latest snapshot in the data directory.
pub const SNAPSHOT_FILE: &str = "raft-snapshot";

type Membership = StoredMembership<u64, BasicNode>;

fn sm_err(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::write_state_machine(&std::io::Error::other(e.to_string())).into()
}

/// The state machine over the metadata store; clones share it.
#[derive(Clone)]
pub struct StateMachine {
    store: Arc<MetaStore>,
    dir: PathBuf,
    last_sync: Arc<std::sync::Mutex<Instant>>,
}

impl StateMachine {
    /// The state machine of `store`, keeping snapshots in `dir`.
    pub fn new(store: Arc<MetaStore>, dir: PathBuf) -> Self {
        StateMachine {
            store,
            dir,
            last_sync: Arc::new(std::sync::Mutex::new(Instant::now())),
        }
    }

    /// The last applied log id and membership as stored.
    fn stored(&self) -> Result<(Option<LogId>, Membership), StorageError> {
        let applied = match self.store.replication_state(APPLIED).map_err(sm_err)? {
            Some(b) => decode::<Option<LogId>>(&b).map_err(sm_err)?,
            None => None,
        };
        let membership = match self.store.replication_state(MEMBERSHIP).map_err(sm_err)? {
            Some(b) => decode::<Membership>(&b).map_err(sm_err)?,
            None => Membership::default(),
        };
        Ok((applied, membership))
    }

    /// Builds a snapshot now: exports the store (the applied id and
    /// membership read in the same transaction), makes the store durable
    /// up to it, and keeps it as the current snapshot file.
    fn build(&self) -> Result<(SnapshotMeta<u64, BasicNode>, Vec<u8>), StorageError> {
        let mut data = Vec::new();
        let (_, state) = self
            .store
            .export_with(&mut data, &[APPLIED, MEMBERSHIP])
            .map_err(sm_err)?;
        // Whatever the export saw must survive a crash before the log
        // entries it covers are purged.
        self.store.sync().map_err(sm_err)?;
        let applied = match &state[0] {
            Some(b) => decode::<Option<LogId>>(b).map_err(sm_err)?,
            None => None,
        };
        let membership = match &state[1] {
            Some(b) => decode::<Membership>(b).map_err(sm_err)?,
            None => Membership::default(),
        };
        let meta = SnapshotMeta {
            last_log_id: applied,
            last_membership: membership,
            snapshot_id: format!(
                "{}-{}",
                applied.map(|l| l.index).unwrap_or(0),
                crc32c::crc32c(&data)
            ),
        };
        let file = with_header(&meta, &data);
        self.keep(&file)?;
        Ok((meta, file))
    }

    /// Writes `file` as the current snapshot (atomically).
    fn keep(&self, file: &[u8]) -> Result<(), StorageError> {
        let path = self.dir.join(SNAPSHOT_FILE);
        let tmp = self.dir.join(format!("{SNAPSHOT_FILE}.tmp"));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(file)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(&self.dir)?.sync_all()
        };
        write().map_err(|e| StorageIOError::write_snapshot(None, &e).into())
    }

    /// The current snapshot file, if any: its meta and its bytes.
    fn current(&self) -> Result<Option<StoredSnapshot>, StorageError> {
        let bytes = match std::fs::read(self.dir.join(SNAPSHOT_FILE)) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StorageIOError::read_snapshot(None, &e).into()),
        };
        let (meta, _) = split_header(&bytes).map_err(sm_err)?;
        Ok(Some((meta, bytes)))
    }
}

/// `[meta length u32][meta (postcard)][store export]`.
fn with_header(meta: &SnapshotMeta<u64, BasicNode>, data: &[u8]) -> Vec<u8> {
    let m = encode(meta);
    let mut out = Vec::with_capacity(4 + m.len() + data.len());
    out.extend_from_slice(&(m.len() as u32).to_le_bytes());
    out.extend_from_slice(&m);
    out.extend_from_slice(data);
    out
}

/// The meta and the store export of a snapshot file.
pub fn split_header(bytes: &[u8]) -> Result<(SnapshotMeta<u64, BasicNode>, &[u8]), String> {
    let len = bytes
        .get(..4)
        .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
        .ok_or("snapshot shorter than its header")?;
    let m = bytes
        .get(4..4 + len)
        .ok_or("snapshot shorter than its meta")?;
    let meta = decode(m).map_err(|e| format!("snapshot meta: {e}"))?;
    Ok((meta, &bytes[4 + len..]))
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let me = self.clone();
        let (meta, file) = tokio::task::spawn_blocking(move || me.build())
            .await
            .map_err(sm_err)??;
        tracing::info!(snapshot = %meta.snapshot_id, bytes = file.len(), "built a metadata snapshot");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(file)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, Membership), StorageError> {
        self.stored()
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, StorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>>,
    {
        let mut batches: Vec<Option<Batch>> = Vec::new();
        let mut last = None;
        let mut membership = None;
        for e in entries {
            last = Some(e.log_id);
            match e.payload {
                EntryPayload::Normal(b) => batches.push(Some(b)),
                EntryPayload::Blank => batches.push(None),
                EntryPayload::Membership(m) => {
                    membership = Some(Membership::new(Some(e.log_id), m));
                    batches.push(None);
                }
            }
        }
        if last.is_none() {
            return Ok(Vec::new());
        }
        let store = self.store.clone();
        let last_sync = self.last_sync.clone();
        tokio::task::spawn_blocking(move || {
            let applied = encode(&last);
            let membership = membership.map(|m| encode(&m));
            let mut replication: Vec<(&str, &[u8])> = vec![(APPLIED, applied.as_slice())];
            if let Some(m) = &membership {
                replication.push((MEMBERSHIP, m.as_slice()));
            }
            let durable = last_sync.lock().expect("sync time").elapsed() >= SYNC_EVERY;
            let normal: Vec<&Batch> = batches.iter().flatten().collect();
            let mut results = store
                .apply_batches(&normal, &replication, durable)
                .map_err(sm_err)?
                .into_iter();
            if durable {
                *last_sync.lock().expect("sync time") = Instant::now();
            }
            Ok(batches
                .iter()
                .map(|b| match b {
                    Some(_) => Applied(
                        results
                            .next()
                            .unwrap_or_default()
                            .iter()
                            .map(|r| {
                                Answer::of(r)
                                    .unwrap_or(Answer::Refused(0, "storage failure".into()))
                            })
                            .collect(),
                    ),
                    None => Applied::default(),
                })
                .collect())
        })
        .await
        .map_err(sm_err)?
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let me = self.clone();
        let meta = meta.clone();
        let file = snapshot.into_inner();
        tokio::task::spawn_blocking(move || {
            let (_, data) = split_header(&file).map_err(sm_err)?;
            let applied = encode(&meta.last_log_id);
            let membership = encode(&meta.last_membership);
            me.store
                .import(
                    data,
                    &[(APPLIED, applied.as_slice()), (MEMBERSHIP, membership.as_slice())],
                )
                .map_err(|e| sm_err(ringfs_schema::wire_error::describe(&e)))?;
            me.keep(&file)?;
            tracing::info!(snapshot = %meta.snapshot_id, bytes = file.len(), "installed a metadata snapshot");
            Ok(())
        })
        .await
        .map_err(sm_err)?
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        Ok(self.current()?.map(|(meta, bytes)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        }))
    }
}
