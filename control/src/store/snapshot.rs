//! Snapshots of the whole store as a byte stream: what a Raft snapshot
//! carries to a new or lagging replica, and what a backup is.
//!
//! Format: the magic `RINGFSM1`, then one record per table row
//! (`table u8, key length u32, key, value length u32, value`, lengths
//! little-endian, keys and values in redb's own byte encodings), then the
//! end mark `0xff` and the CRC32C of everything before it (u32). Rows come
//! from one read transaction, so a snapshot is one consistent state.
//! Importing checks the whole stream (CRC, known tables, bounds) before it
//! writes anything, then replaces every table in one durable transaction.

use std::io::{Read, Write};

use redb::{Key, ReadableDatabase, ReadableTable, TableDefinition, Value, WriteTransaction};

use super::requests::{self, ANSWERS};
use super::tables::{CHUNKS, COUNTERS, DIRENTS, GARBAGE, INODES, NODES, REPLICATION, USERS};
use super::MetaStore;
use crate::error::ControlError;

const MAGIC: &[u8; 8] = b"RINGFSM1";
const END: u8 = 0xff;
/// Largest key or value a snapshot may hold (records are far smaller):
/// a damaged length cannot make an import allocate without bound.
const MAX_FIELD: u32 = 64 << 20;

/// Why a snapshot could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Reading the store, or writing the imported state, failed.
    #[error("metadata store")]
    Store(#[from] ControlError),
    /// The stream could not be read or written.
    #[error("snapshot stream")]
    Io(#[from] std::io::Error),
    /// The stream is not a snapshot, or is damaged.
    #[error("not a valid metadata snapshot: {0}")]
    Invalid(String),
}

impl From<redb::Error> for SnapshotError {
    fn from(e: redb::Error) -> Self {
        SnapshotError::Store(e.into())
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for SnapshotError {
            fn from(e: $t) -> Self {
                SnapshotError::Store(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// Hashes what passes through to the inner writer.
struct Crc<W> {
    inner: W,
    crc: u32,
    bytes: u64,
}

impl<W: Write> Write for Crc<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Rows of the request-id table of older builds (id -> time and answer),
/// moved into [`ANSWERS`] on import.
const OLD_REQUESTS: u8 = 7;
/// Rows of the expiry order of older builds, which [`ANSWERS`]'s keys now
/// give: skipped on import.
const OLD_REQUEST_TIMES: u8 = 8;

/// Replication state stored under one key (opaque to the store).
type ReplicationState = Vec<u8>;

/// Calls `$each!(id, TABLE)` for every table a snapshot holds. The
/// replication table is not among them: the receiver writes its own.
/// Ids 7 and 8 were the request-id tables before [`ANSWERS`]: a snapshot
/// of an older build still imports ([`OLD_REQUESTS`], [`OLD_REQUEST_TIMES`]).
macro_rules! snapshot_tables {
    ($each:ident) => {
        $each!(1, INODES);
        $each!(2, DIRENTS);
        $each!(3, CHUNKS);
        $each!(4, NODES);
        $each!(5, COUNTERS);
        $each!(6, GARBAGE);
        $each!(9, USERS);
        $each!(10, ANSWERS);
    };
}

fn export_table<K: Key + 'static, V: Value + 'static>(
    txn: &redb::ReadTransaction,
    id: u8,
    def: TableDefinition<K, V>,
    out: &mut impl Write,
) -> Result<(), SnapshotError> {
    let table = txn.open_table(def)?;
    for item in table.iter()? {
        let (k, v) = item?;
        let (k, v) = (k.value(), v.value());
        let (k, v) = (K::as_bytes(&k), V::as_bytes(&v));
        out.write_all(&[id])?;
        for field in [k.as_ref(), v.as_ref()] {
            out.write_all(&(field.len() as u32).to_le_bytes())?;
            out.write_all(field)?;
        }
    }
    Ok(())
}

/// One row read from a stream.
struct Row {
    table: u8,
    key: Vec<u8>,
    value: Vec<u8>,
}

fn import_row<K: Key + 'static, V: Value + 'static>(
    txn: &WriteTransaction,
    def: TableDefinition<K, V>,
    row: &Row,
) -> Result<(), SnapshotError> {
    let mut table = txn.open_table(def)?;
    table.insert(K::from_bytes(&row.key), V::from_bytes(&row.value))?;
    Ok(())
}

fn clear_table<K: Key + 'static, V: Value + 'static>(
    txn: &WriteTransaction,
    def: TableDefinition<K, V>,
) -> Result<(), SnapshotError> {
    txn.open_table(def)?.retain(|_, _| false)?;
    Ok(())
}

impl MetaStore {
    /// Writes a snapshot of the whole store (one read transaction) to
    /// `out`; returns its size in bytes.
    pub fn export(&self, out: impl Write) -> Result<u64, SnapshotError> {
        Ok(self.export_with(out, &[])?.0)
    }

    /// Like [`MetaStore::export`] (returns the size too), and returns, read in the same
    /// transaction, the replication state under each of `keys` (what the
    /// snapshot is the state of).
    pub fn export_with(
        &self,
        out: impl Write,
        keys: &[&str],
    ) -> Result<(u64, Vec<Option<ReplicationState>>), SnapshotError> {
        let txn = self.db.begin_read()?;
        let state = {
            let table = txn.open_table(REPLICATION)?;
            keys.iter()
                .map(|k| Ok(table.get(*k)?.map(|v| v.value().to_vec())))
                .collect::<Result<Vec<_>, SnapshotError>>()?
        };
        let mut out = Crc {
            inner: out,
            crc: 0,
            bytes: 0,
        };
        out.write_all(MAGIC)?;
        macro_rules! each {
            ($id:expr, $t:ident) => {
                export_table(&txn, $id, $t, &mut out)?;
            };
        }
        snapshot_tables!(each);
        out.write_all(&[END])?;
        let crc = out.crc;
        out.inner.write_all(&crc.to_le_bytes())?;
        out.flush()?;
        Ok((out.bytes + 4, state))
    }

    /// Replaces the whole store with the snapshot read from `input`, and
    /// stores `replication` (key, value) pairs with it, in one durable
    /// transaction. The stream is checked whole first: a damaged or
    /// truncated snapshot changes nothing.
    pub fn import(
        &self,
        mut input: impl Read,
        replication: &[(&str, &[u8])],
    ) -> Result<(), SnapshotError> {
        let bad = |m: &str| SnapshotError::Invalid(m.to_string());
        let mut crc = 0u32;
        let mut read = |buf: &mut [u8], crc: &mut u32| -> Result<(), SnapshotError> {
            input.read_exact(buf).map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => bad("truncated"),
                _ => SnapshotError::Io(e),
            })?;
            *crc = crc32c::crc32c_append(*crc, buf);
            Ok(())
        };
        let mut magic = [0u8; 8];
        read(&mut magic, &mut crc)?;
        if &magic != MAGIC {
            return Err(bad("wrong magic"));
        }
        let mut rows = Vec::new();
        loop {
            let mut table = [0u8; 1];
            read(&mut table, &mut crc)?;
            if table[0] == END {
                break;
            }
            let mut known = table[0] == OLD_REQUESTS || table[0] == OLD_REQUEST_TIMES;
            macro_rules! is {
                ($id:expr, $t:ident) => {
                    known |= table[0] == $id;
                };
            }
            snapshot_tables!(is);
            if !known {
                return Err(bad(&format!("unknown table {}", table[0])));
            }
            let mut fields = [Vec::new(), Vec::new()];
            for f in &mut fields {
                let mut len = [0u8; 4];
                read(&mut len, &mut crc)?;
                let len = u32::from_le_bytes(len);
                if len > MAX_FIELD {
                    return Err(bad(&format!("a field of {len} bytes")));
                }
                f.resize(len as usize, 0);
                read(f, &mut crc)?;
            }
            let [key, value] = fields;
            rows.push(Row {
                table: table[0],
                key,
                value,
            });
        }
        let expected = crc;
        let mut stored = [0u8; 4];
        read(&mut stored, &mut crc)?;
        if u32::from_le_bytes(stored) != expected {
            return Err(bad("checksum mismatch"));
        }

        let txn = self.db.begin_write()?;
        macro_rules! clear {
            ($id:expr, $t:ident) => {
                clear_table(&txn, $t)?;
            };
        }
        snapshot_tables!(clear);
        for row in &rows {
            if row.table == OLD_REQUESTS {
                let (key, value) = requests::old_row(&row.key, &row.value)
                    .map_err(|e| SnapshotError::Invalid(e.to_string()))?;
                txn.open_table(ANSWERS)?.insert(key, value.as_slice())?;
            }
            macro_rules! import {
                ($id:expr, $t:ident) => {
                    if row.table == $id {
                        import_row(&txn, $t, row)?;
                    }
                };
            }
            snapshot_tables!(import);
        }
        {
            let mut table = txn.open_table(REPLICATION)?;
            for (k, v) in replication {
                table.insert(*k, *v)?;
            }
        }
        self.requests.commit_replaced(txn)?;
        self.users_changed();
        Ok(())
    }
}
