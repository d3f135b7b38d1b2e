//! Space reservations and chunk-id minting of one shard.
//!
//! A reservation promises `bytes` of space to a new chunk until the write
//! lock granted with it is released or its lease lapses. Outstanding
//! reserved space is `bytes - length written so far` per reservation; a new
//! reservation is refused when `free - outstanding < bytes`.

use ringfs_schema::ids::ChunkId;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ReserveError {
    #[error("no space: {wanted} bytes wanted, {free} free of which {reserved} already reserved")]
    NoSpace {
        wanted: u64,
        free: u64,
        reserved: u64,
    },
    #[error("{0} reservations are outstanding, the most this shard keeps")]
    TooMany(usize),
    #[error("chunk-id counter {path}: {err}")]
    Counter { path: String, err: String },
}

/// One outstanding reservation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reservation {
    /// Disk bytes the chunk will occupy (header included).
    pub bytes: u64,
    pub client: u64,
    /// Generation of the write lock granted with the reservation.
    pub generation: u64,
}

/// The reservations of one shard, at most `max` of them.
#[derive(Debug)]
pub struct Reservations {
    by_chunk: HashMap<ChunkId, Reservation>,
    max: usize,
}

impl Reservations {
    pub fn new(max: usize) -> Self {
        Self {
            by_chunk: HashMap::new(),
            max,
        }
    }

    pub fn get(&self, id: ChunkId) -> Option<Reservation> {
        self.by_chunk.get(&id).copied()
    }

    /// Outstanding reserved bytes; `length_of` gives a chunk's written length.
    pub fn outstanding(&self, length_of: impl Fn(ChunkId) -> u64) -> u64 {
        self.by_chunk
            .iter()
            .map(|(id, r)| r.bytes.saturating_sub(length_of(*id)))
            .sum()
    }

    /// Checks `wanted` against `free` and the outstanding reservations, and
    /// the number of reservations against the bound.
    pub fn check(&self, wanted: u64, free: u64, outstanding: u64) -> Result<(), ReserveError> {
        if self.by_chunk.len() >= self.max {
            return Err(ReserveError::TooMany(self.by_chunk.len()));
        }
        if free.saturating_sub(outstanding) < wanted {
            return Err(ReserveError::NoSpace {
                wanted,
                free,
                reserved: outstanding,
            });
        }
        Ok(())
    }

    pub fn insert(&mut self, id: ChunkId, r: Reservation) {
        self.by_chunk.insert(id, r);
    }

    /// Drops the reservation of `id` if it was made with lock `generation`
    /// of `client` (called when that lock is released or expires).
    pub fn lock_released(&mut self, id: ChunkId, client: u64, generation: u64) -> bool {
        if self
            .by_chunk
            .get(&id)
            .is_some_and(|r| r.client == client && r.generation == generation)
        {
            self.by_chunk.remove(&id);
            return true;
        }
        false
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.by_chunk.is_empty()
    }
}

/// Mints chunk ids for one shard: `hi` = node id, `lo` = `k << 16 | shard`
/// for a persistent per-shard counter `k`, skipping ids that would hash to
/// another shard. The counter is persisted in leaps of [`LEAP`] (a restart
/// skips the unused rest of a leap), so minting rarely touches the disk and
/// an id is never minted twice.
pub struct IdMinter {
    path: PathBuf,
    next: u64,
    limit: u64,
}

/// Counter values persisted ahead at a time.
pub const LEAP: u64 = 4096;

impl IdMinter {
    /// Loads the counter stored at `path` (0 if absent).
    pub fn open(path: &Path) -> Result<Self, ReserveError> {
        let err = |e: String| ReserveError::Counter {
            path: path.display().to_string(),
            err: e,
        };
        let next = match std::fs::read_to_string(path) {
            Ok(s) => s.trim().parse::<u64>().map_err(|e| err(e.to_string()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(err(e.to_string())),
        };
        Ok(Self {
            path: path.to_path_buf(),
            next,
            limit: next,
        })
    }

    /// A new id for `node_id` owned by `shard` of `shards`.
    pub fn mint(
        &mut self,
        node_id: u64,
        shard: usize,
        shards: usize,
    ) -> Result<ChunkId, ReserveError> {
        loop {
            if self.next >= self.limit {
                let limit = self.next + LEAP;
                persist(&self.path, limit).map_err(|e| ReserveError::Counter {
                    path: self.path.display().to_string(),
                    err: e.to_string(),
                })?;
                self.limit = limit;
            }
            let k = self.next;
            self.next += 1;
            let id = ChunkId::new(node_id, (k << 16) | shard as u64);
            if id.shard(shards) == shard {
                return Ok(id);
            }
        }
    }
}

/// Durably replaces the file at `path` with `value` (write, fsync, rename,
/// fsync of the directory).
fn persist(path: &Path, value: u64) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    writeln!(f, "{value}")?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_when_free_minus_reserved_is_too_small() {
        let mut r = Reservations::new(usize::MAX);
        assert!(r.check(100, 100, 0).is_ok());
        r.insert(
            ChunkId::new(1, 1),
            Reservation {
                bytes: 60,
                client: 1,
                generation: 1,
            },
        );
        let out = r.outstanding(|_| 0);
        assert_eq!(out, 60);
        assert!(matches!(
            r.check(50, 100, out),
            Err(ReserveError::NoSpace { .. })
        ));
        assert!(r.check(40, 100, out).is_ok());
        // Written bytes no longer count as reserved.
        assert_eq!(r.outstanding(|_| 50), 10);
        assert!(
            !r.lock_released(ChunkId::new(1, 1), 1, 2),
            "other generation"
        );
        assert!(r.lock_released(ChunkId::new(1, 1), 1, 1));
        assert!(r.is_empty());
    }

    #[test]
    fn minted_ids_are_unique_owned_by_the_shard_and_survive_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("counter");
        let mut seen = std::collections::HashSet::new();
        for _round in 0..2 {
            let mut m = IdMinter::open(&path).unwrap();
            for _ in 0..100 {
                let id = m.mint(7, 1, 3).unwrap();
                assert_eq!(id.hi, 7);
                assert_eq!(id.shard(3), 1);
                assert!(seen.insert(id), "duplicate id {id}");
            }
        }
    }
}
