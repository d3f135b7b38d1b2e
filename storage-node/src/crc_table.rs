//! A chunk's CRC table: one CRC32C per 4 KiB block, in copy-on-write pages.
//!
//! Every write builds the chunk's next header from the current one while
//! readers and earlier pending writes still use the current one, so the
//! table is shared, not copied: a clone shares every page, and a change
//! copies only the page it touches (4 KiB, a quarter of a 4 MiB stretch of
//! the chunk), where a flat table cost a 64 KiB copy and allocation per
//! 4 KiB write of a 64 MiB chunk (6% of a node's CPU in
//! `local --workload rand-write-4k`, plus as much again in the allocator).
//!
//! Invariant: entries past `len` in the last page are zero, so two tables
//! with the same entries compare equal whatever their history.

use std::ops::{Index, Range};
use std::sync::Arc;

/// CRCs per page.
const PAGE: usize = 1024;

type Page = [u32; PAGE];

#[derive(Clone, Default, PartialEq, Eq)]
pub(crate) struct CrcTable {
    pages: Vec<Arc<Page>>,
    len: usize,
}

impl CrcTable {
    /// Number of entries.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Sets entry `i`, copying its page if another table shares it.
    /// Panics if `i` is out of bounds, as indexing does.
    pub(crate) fn set(&mut self, i: usize, crc: u32) {
        assert!(i < self.len, "CRC entry {i} of {}", self.len);
        Arc::make_mut(&mut self.pages[i / PAGE])[i % PAGE] = crc;
    }

    /// Entries `at..at + src.len()` become `src` (which must fit).
    pub(crate) fn copy_from_slice(&mut self, at: usize, src: &[u32]) {
        for (i, &c) in src.iter().enumerate() {
            self.set(at + i, c);
        }
    }

    /// Grows with zero entries or shrinks to `len` entries.
    pub(crate) fn resize(&mut self, len: usize) {
        if len < self.len {
            self.pages.truncate(len.div_ceil(PAGE));
            let used = len % PAGE;
            if used != 0 {
                let last = self.pages.last_mut().expect("a partial page");
                Arc::make_mut(last)[used..].fill(0);
            }
        } else {
            self.pages
                .resize_with(len.div_ceil(PAGE), || Arc::new([0; PAGE]));
        }
        self.len = len;
    }

    /// The entries, in page-sized slices.
    pub(crate) fn slices(&self) -> impl Iterator<Item = &[u32]> {
        self.pages.iter().enumerate().map(|(p, page)| {
            let end = (self.len - p * PAGE).min(PAGE);
            &page[..end]
        })
    }

    /// The entries, in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.slices().flatten().copied()
    }

    /// A copy of entries `range`.
    pub(crate) fn to_vec(&self, range: Range<usize>) -> Vec<u32> {
        assert!(
            range.end <= self.len,
            "CRC entries {range:?} of {}",
            self.len
        );
        self.iter()
            .skip(range.start)
            .take(range.end.saturating_sub(range.start))
            .collect()
    }
}

impl Index<usize> for CrcTable {
    type Output = u32;

    fn index(&self, i: usize) -> &u32 {
        assert!(i < self.len, "CRC entry {i} of {}", self.len);
        &self.pages[i / PAGE][i % PAGE]
    }
}

impl FromIterator<u32> for CrcTable {
    fn from_iter<I: IntoIterator<Item = u32>>(it: I) -> Self {
        let mut t = CrcTable::default();
        for c in it {
            if t.len % PAGE == 0 {
                t.pages.push(Arc::new([0; PAGE]));
            }
            let last = t.pages.last_mut().expect("pushed above");
            Arc::get_mut(last).expect("not shared yet")[t.len % PAGE] = c;
            t.len += 1;
        }
        t
    }
}

impl From<&[u32]> for CrcTable {
    fn from(crcs: &[u32]) -> Self {
        crcs.iter().copied().collect()
    }
}

impl std::fmt::Debug for CrcTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The table behaves as a `Vec<u32>` under resizes and sets, and a
        /// clone taken at any point keeps its entries.
        #[test]
        fn behaves_as_a_vec_and_clones_are_unaffected(
            ops in proptest::collection::vec((0usize..3, 0usize..5000, any::<u32>()), 1..60)
        ) {
            let mut t = CrcTable::default();
            let mut v: Vec<u32> = Vec::new();
            let mut snapshots = Vec::new();
            for (op, n, c) in ops {
                match op {
                    0 => {
                        t.resize(n);
                        v.resize(n, 0);
                    }
                    1 if !v.is_empty() => {
                        let i = n % v.len();
                        t.set(i, c);
                        v[i] = c;
                    }
                    _ => snapshots.push((t.clone(), v.clone())),
                }
                prop_assert_eq!(t.len(), v.len());
                prop_assert_eq!(t.iter().collect::<Vec<_>>(), v.clone());
                prop_assert!(t == v.as_slice().into(), "equal to a table built from its entries");
            }
            for (t, v) in snapshots {
                prop_assert_eq!(t.iter().collect::<Vec<_>>(), v.clone());
                if !v.is_empty() {
                    prop_assert_eq!(t.to_vec(1.min(v.len())..v.len()), v[1.min(v.len())..].to_vec());
                    prop_assert_eq!(t[v.len() - 1], v[v.len() - 1]);
                }
            }
        }
    }

    #[test]
    fn a_change_copies_one_page() {
        let a: CrcTable = (0..3 * PAGE as u32).collect();
        let mut b = a.clone();
        b.set(PAGE + 5, 7);
        assert!(Arc::ptr_eq(&a.pages[0], &b.pages[0]));
        assert!(!Arc::ptr_eq(&a.pages[1], &b.pages[1]));
        assert!(Arc::ptr_eq(&a.pages[2], &b.pages[2]));
        assert_eq!(a[PAGE + 5], PAGE as u32 + 5);
        assert_eq!(b[PAGE + 5], 7);
    }
}
