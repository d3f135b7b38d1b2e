//! Chunk records a descriptor has read, so that reads do not ask the
//! control server for them every time (a 4 KiB random read used to cost a
//! `getChunks` round trip before its node request).
//!
//! Guarantees:
//! - An entry (a record, or a hole: no record at that index) is served for
//!   at most [`MAX_AGE`] after it was fetched. Every cached record was
//!   committed when fetched, so reads still never see uncommitted data.
//! - What a reader may miss for up to [`MAX_AGE`] is a record another
//!   client replaced (a truncate and rewrite, a chunk written into a hole);
//!   in-place overwrites are seen at once, since they keep the chunk id.
//!   A read that fails with cached records is retried once with fresh ones,
//!   and the descriptor's own writes and size refreshes clear the cache.
//! - At most [`MAX_ENTRIES`] entries per descriptor.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::control::ChunkRecord;

/// How long a fetched record is served from the cache.
pub const MAX_AGE: Duration = Duration::from_secs(1);
/// Entries kept per descriptor; the cache is emptied when full.
pub const MAX_ENTRIES: usize = 1 << 16;

/// Per-descriptor cache of chunk records by chunk index.
///
/// Shared by every descriptor of one file on one client. A fetch that
/// overlapped a clear (a write committing) is not cached: see
/// [`RecordCache::generation`].
#[derive(Debug, Default)]
pub struct RecordCache {
    entries: HashMap<u64, (Option<ChunkRecord>, Instant)>,
    generation: u64,
}

impl RecordCache {
    /// The records of indexes `first..=last` (holes absent) if every index is
    /// cached and younger than [`MAX_AGE`] at `now`.
    pub fn get(&self, first: u64, last: u64, now: Instant) -> Option<HashMap<u64, ChunkRecord>> {
        let mut out = HashMap::new();
        for i in first..=last {
            let (rec, at) = self.entries.get(&i)?;
            if now.saturating_duration_since(*at) >= MAX_AGE {
                return None;
            }
            if let Some(r) = rec {
                out.insert(i, r.clone());
            }
        }
        Some(out)
    }

    /// Taken before a fetch and passed to [`RecordCache::insert`]: records
    /// fetched across a clear may predate the change that cleared.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Remembers what a fetch of `first..=last` started at `at`, in
    /// `generation`, returned.
    pub fn insert(
        &mut self,
        generation: u64,
        first: u64,
        last: u64,
        records: &HashMap<u64, ChunkRecord>,
        at: Instant,
    ) {
        let n = (last - first + 1) as usize;
        if generation != self.generation || n > MAX_ENTRIES {
            return;
        }
        if self.entries.len() + n > MAX_ENTRIES {
            self.entries.clear();
        }
        for i in first..=last {
            self.entries.insert(i, (records.get(&i).cloned(), at));
        }
    }

    /// Forgets everything; fetches in flight will not be cached.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.generation += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(index: u64) -> ChunkRecord {
        ChunkRecord {
            index,
            chunk_id: index.into(),
            replicas: vec![1],
            length: 1,
            version: 1,
        }
    }

    #[test]
    fn serves_fresh_complete_ranges_only() {
        let mut c = RecordCache::default();
        let t = Instant::now();
        let fetched: HashMap<u64, ChunkRecord> = [(2, rec(2))].into();
        c.insert(c.generation(), 1, 3, &fetched, t);
        let got = c.get(1, 3, t).unwrap();
        assert_eq!(got.len(), 1, "holes are cached as absent");
        assert!(got.contains_key(&2));
        assert!(c.get(1, 4, t).is_none(), "index 4 was never fetched");
        assert!(c.get(1, 3, t + MAX_AGE).is_none(), "expired");
        c.clear();
        assert!(c.get(2, 2, t).is_none());
    }

    #[test]
    fn a_fetch_that_overlapped_a_clear_is_not_cached() {
        let mut c = RecordCache::default();
        let t = Instant::now();
        let before = c.generation();
        c.clear(); // a write committed while the fetch was in flight
        c.insert(before, 0, 0, &HashMap::new(), t);
        assert!(c.get(0, 0, t).is_none());
    }
}
