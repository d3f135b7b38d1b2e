//! Chunk records a descriptor has read, so that reads do not ask the
//! control server for them every time (a 4 KiB random read used to cost a
//! `getChunks` round trip before its node request).
//!
//! Guarantees:
//! - An entry (a record, or a hole: no record at that index) is served for
//!   at most `max_age` after it was fetched ([`DEFAULT_MAX_AGE`], set by
//!   `ClientOptions::record_cache`; zero turns the cache off). Every cached
//!   record was committed when fetched, so reads never see uncommitted data.
//! - The price: a read may return the file as it was when the record was
//!   fetched, up to `max_age` ago. Another client's commit in that window
//!   (a new chunk, a truncate, an overwrite) may be missed, and the read may
//!   be served by a replica that missed that commit, since a read takes a
//!   replica at the cached record's version or newer. Nothing older than the cached record is ever
//!   served. A read that fails with cached records is retried once with
//!   fresh ones, and a client's own writes, truncates and size refreshes
//!   clear its cache, so a client always reads its own writes; an open that
//!   finds the file's version changed clears it too (close-to-open).
//! - At most [`MAX_ENTRIES`] entries per file.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::control::ChunkRecord;

/// How long a fetched record is served from the cache by default.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(1);
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
    /// The file's version at the last open that checked it.
    version: u64,
}

impl RecordCache {
    /// The records of indexes `first..=last` (holes absent) if every index is
    /// cached and younger than `max_age` at `now`.
    pub fn get(
        &self,
        first: u64,
        last: u64,
        now: Instant,
        max_age: Duration,
    ) -> Option<HashMap<u64, ChunkRecord>> {
        let mut out = HashMap::new();
        for i in first..=last {
            let (rec, at) = self.entries.get(&i)?;
            if now.saturating_duration_since(*at) >= max_age {
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

    /// Called at every open with the file's current version: if it changed
    /// since the last open, the file changed (maybe by another client), so
    /// everything cached is forgotten. This gives close-to-open
    /// consistency even while another descriptor keeps the cache alive.
    pub fn revalidate(&mut self, version: u64) {
        if version != self.version {
            self.clear();
            self.version = version;
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
            version: crate::Version::new(1, 1),
            capability: None,
        }
    }

    #[test]
    fn serves_fresh_complete_ranges_only() {
        let mut c = RecordCache::default();
        let t = Instant::now();
        let fetched: HashMap<u64, ChunkRecord> = [(2, rec(2))].into();
        c.insert(c.generation(), 1, 3, &fetched, t);
        let got = c.get(1, 3, t, DEFAULT_MAX_AGE).unwrap();
        assert_eq!(got.len(), 1, "holes are cached as absent");
        assert!(got.contains_key(&2));
        assert!(
            c.get(1, 4, t, DEFAULT_MAX_AGE).is_none(),
            "index 4 was never fetched"
        );
        assert!(
            c.get(1, 3, t + DEFAULT_MAX_AGE, DEFAULT_MAX_AGE).is_none(),
            "expired"
        );
        assert!(
            c.get(1, 3, t, Duration::ZERO).is_none(),
            "a zero age turns it off"
        );
        c.clear();
        assert!(c.get(2, 2, t, DEFAULT_MAX_AGE).is_none());
    }

    #[test]
    fn an_open_that_sees_a_new_version_forgets_everything() {
        let mut c = RecordCache::default();
        let t = Instant::now();
        c.revalidate(3);
        c.insert(c.generation(), 0, 0, &HashMap::new(), t);
        c.revalidate(3);
        assert!(c.get(0, 0, t, DEFAULT_MAX_AGE).is_some(), "same version");
        c.revalidate(4);
        assert!(c.get(0, 0, t, DEFAULT_MAX_AGE).is_none(), "changed");
    }

    #[test]
    fn a_fetch_that_overlapped_a_clear_is_not_cached() {
        let mut c = RecordCache::default();
        let t = Instant::now();
        let before = c.generation();
        c.clear(); // a write committed while the fetch was in flight
        c.insert(before, 0, 0, &HashMap::new(), t);
        assert!(c.get(0, 0, t, DEFAULT_MAX_AGE).is_none());
    }
}
