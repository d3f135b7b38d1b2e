//! The benchmark's files and what is in them, so every read can be checked.
//!
//! A dataset is `files` files of `file_bytes` each under one directory. Every
//! 4 KiB page holds one of [`BASE_PAGES`] pseudo-random base pages with a
//! 16-byte stamp at its start: (file, generation, page index), XORed with a
//! per-run nonce. A misplaced, stale, torn or corrupted page therefore fails
//! verification, and so does data left by an earlier run.
//!
//! Generations: pages start at generation 0; the random-write workloads
//! write generation 1. Two bitmaps track them without locks: `pending` is
//! set before a rewrite is sent, `rewritten` once it is acknowledged. A read
//! must see generation 1 if the page was rewritten before the read started,
//! generation 0 if no rewrite was ever sent, and may see either otherwise.

use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes per page: the unit of stamping, verification and random I/O.
pub const PAGE: usize = 4096;
/// Distinct base pages (256 KiB of random data): enough that no two nearby
/// pages are equal, small enough to stay in cache.
pub const BASE_PAGES: usize = 64;
const STAMP: usize = 16;

/// The files of one benchmark run.
pub struct Dataset {
    /// Remote directory holding the files.
    pub root: String,
    pub files: usize,
    /// Bytes per file, a multiple of [`PAGE`].
    pub file_bytes: u64,
    nonce: u64,
    base: Vec<u8>,
    pending: Vec<AtomicU64>,
    rewritten: Vec<AtomicU64>,
}

/// A mismatch found by [`Dataset::verify`].
#[derive(Debug, thiserror::Error)]
#[error("{path} at offset {offset}: {what}")]
pub struct Mismatch {
    pub path: String,
    pub offset: u64,
    pub what: String,
}

impl Dataset {
    pub fn new(root: String, files: usize, file_bytes: u64, nonce: u64) -> Self {
        assert!(file_bytes.is_multiple_of(PAGE as u64), "file size in pages");
        let mut seed = nonce | 1;
        let mut base = vec![0u8; BASE_PAGES * PAGE];
        for w in base.chunks_exact_mut(8) {
            w.copy_from_slice(&xorshift(&mut seed).to_le_bytes());
        }
        let bits = files as u64 * (file_bytes / PAGE as u64);
        let words = bits.div_ceil(64) as usize;
        let bitmap = || (0..words).map(|_| AtomicU64::new(0)).collect();
        Dataset {
            root,
            files,
            file_bytes,
            nonce,
            base,
            pending: bitmap(),
            rewritten: bitmap(),
        }
    }

    pub fn path(&self, file: usize) -> String {
        format!("{}/data-{file}", self.root)
    }

    pub fn pages_per_file(&self) -> u64 {
        self.file_bytes / PAGE as u64
    }

    pub fn total_bytes(&self) -> u64 {
        self.file_bytes * self.files as u64
    }

    fn bit(&self, file: usize, page: u64) -> (usize, u64) {
        let i = file as u64 * self.pages_per_file() + page;
        ((i / 64) as usize, 1 << (i % 64))
    }

    /// Marks a page as about to be rewritten with generation 1.
    pub fn rewrite_sent(&self, file: usize, page: u64) {
        let (w, m) = self.bit(file, page);
        self.pending[w].fetch_or(m, Ordering::SeqCst);
    }

    /// Marks a page's rewrite as acknowledged.
    pub fn rewrite_acked(&self, file: usize, page: u64) {
        let (w, m) = self.bit(file, page);
        self.rewritten[w].fetch_or(m, Ordering::SeqCst);
    }

    /// Whether a rewrite of the page has been acknowledged.
    pub fn is_rewritten(&self, file: usize, page: u64) -> bool {
        let (w, m) = self.bit(file, page);
        self.rewritten[w].load(Ordering::SeqCst) & m != 0
    }

    fn is_pending(&self, file: usize, page: u64) -> bool {
        let (w, m) = self.bit(file, page);
        self.pending[w].load(Ordering::SeqCst) & m != 0
    }

    fn stamp(&self, file: usize, page: u64, generation: u32) -> [u8; STAMP] {
        let mut s = [0u8; STAMP];
        s[..4].copy_from_slice(&(file as u32).to_le_bytes());
        s[4..8].copy_from_slice(&generation.to_le_bytes());
        s[8..].copy_from_slice(&page.to_le_bytes());
        for (b, k) in s.iter_mut().zip(self.nonce.to_le_bytes().iter().cycle()) {
            *b ^= k;
        }
        s
    }

    fn base_page(&self, page: u64) -> &[u8] {
        let i = (page % BASE_PAGES as u64) as usize * PAGE;
        &self.base[i..i + PAGE]
    }

    /// Verifies `buf`, read from `file` at `offset` (both page-aligned).
    /// `rewritten_at_start(page)` says whether the page's rewrite was
    /// acknowledged before the read was sent.
    pub fn verify(
        &self,
        buf: &[u8],
        file: usize,
        offset: u64,
        rewritten_at_start: impl Fn(u64) -> bool,
    ) -> Result<(), Mismatch> {
        let first = offset / PAGE as u64;
        for (i, got) in buf.chunks(PAGE).enumerate() {
            let page = first + i as u64;
            let generation = if rewritten_at_start(page) {
                1
            } else if self.stamp(file, page, 0)[..] == got[..STAMP.min(got.len())] {
                0
            } else if self.is_pending(file, page) {
                1
            } else {
                0
            };
            let fail = |what: String| Mismatch {
                path: self.path(file),
                offset: page * PAGE as u64,
                what,
            };
            if got.len() != PAGE {
                return Err(fail(format!("short page of {} bytes", got.len())));
            }
            if got[..STAMP] != self.stamp(file, page, generation) {
                return Err(fail(format!(
                    "wrong page stamp (expected generation {generation})"
                )));
            }
            if got[STAMP..] != self.base_page(page)[STAMP..] {
                return Err(fail("page body differs from what was written".into()));
            }
        }
        Ok(())
    }
}

/// `len` zero bytes starting at a [`PAGE`]-aligned address, as O_DIRECT
/// needs.
pub struct PageAligned {
    buf: Vec<u8>,
    start: usize,
    len: usize,
}

impl PageAligned {
    pub fn new(len: usize) -> Self {
        let buf = vec![0u8; len + PAGE];
        let start = buf.as_ptr().align_offset(PAGE);
        PageAligned { buf, start, len }
    }
}

impl std::ops::Deref for PageAligned {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }
}

impl std::ops::DerefMut for PageAligned {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.start + self.len]
    }
}

/// A write buffer that holds a dataset's content for a given place
/// (page-aligned, so it can be written with O_DIRECT).
pub struct WriteBuf {
    buf: PageAligned,
    /// Base-page phase the body was last laid out for.
    phase: Option<u64>,
}

impl WriteBuf {
    /// A buffer of `len` bytes (a multiple of [`PAGE`]).
    pub fn new(len: usize) -> Self {
        assert!(len.is_multiple_of(PAGE) && len > 0, "whole pages");
        WriteBuf {
            buf: PageAligned::new(len),
            phase: None,
        }
    }

    /// Fills the buffer with the content of `file` at `offset` (page
    /// aligned) in `generation`. Only the stamps are rewritten when the base
    /// layout is the same as last time, so a sequential writer copies 16
    /// bytes per page, not the whole block.
    pub fn fill(&mut self, ds: &Dataset, file: usize, offset: u64, generation: u32) -> &[u8] {
        let first = offset / PAGE as u64;
        let phase = first % BASE_PAGES as u64;
        let same_layout = self.phase == Some(phase);
        for (i, p) in self.buf.chunks_exact_mut(PAGE).enumerate() {
            let page = first + i as u64;
            if !same_layout {
                p.copy_from_slice(ds.base_page(page));
            }
            p[..STAMP].copy_from_slice(&ds.stamp(file, page, generation));
        }
        self.phase = Some(phase);
        &self.buf
    }
}

/// A fast pseudo-random step (xorshift64); `s` must not be 0.
pub fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ds() -> Dataset {
        Dataset::new("/t".into(), 2, 64 * PAGE as u64 * 2, 42)
    }

    #[test]
    fn written_content_verifies_and_damage_is_caught() {
        let ds = ds();
        let mut w = WriteBuf::new(8 * PAGE);
        let data = w.fill(&ds, 1, 8 * PAGE as u64, 0).to_vec();
        ds.verify(&data, 1, 8 * PAGE as u64, |_| false).unwrap();
        // Wrong place, wrong file, a flipped body byte: all caught.
        assert!(ds.verify(&data, 1, 0, |_| false).is_err());
        assert!(ds.verify(&data, 0, 8 * PAGE as u64, |_| false).is_err());
        let mut bad = data.clone();
        bad[3 * PAGE + 100] ^= 1;
        assert!(ds.verify(&bad, 1, 8 * PAGE as u64, |_| false).is_err());
        // Another run's data does not pass.
        let other = Dataset::new("/t".into(), 2, 64 * PAGE as u64 * 2, 43);
        assert!(other.verify(&data, 1, 8 * PAGE as u64, |_| false).is_err());
    }

    #[test]
    fn refilling_a_buffer_at_another_offset_matches_a_fresh_fill() {
        let ds = ds();
        let mut reused = WriteBuf::new(BASE_PAGES * PAGE);
        reused.fill(&ds, 0, 0, 0);
        let a = reused.fill(&ds, 0, (BASE_PAGES * PAGE) as u64, 0).to_vec();
        let b = WriteBuf::new(BASE_PAGES * PAGE)
            .fill(&ds, 0, (BASE_PAGES * PAGE) as u64, 0)
            .to_vec();
        assert_eq!(a, b);
        let mut small = WriteBuf::new(PAGE);
        small.fill(&ds, 0, 0, 0);
        let c = small.fill(&ds, 0, 5 * PAGE as u64, 1).to_vec();
        assert_eq!(c, WriteBuf::new(PAGE).fill(&ds, 0, 5 * PAGE as u64, 1));
    }

    #[test]
    fn generations_follow_the_rewrite_bitmaps() {
        let ds = ds();
        let mut w = WriteBuf::new(PAGE);
        let old = w.fill(&ds, 0, 3 * PAGE as u64, 0).to_vec();
        let new = w.fill(&ds, 0, 3 * PAGE as u64, 1).to_vec();
        // Never rewritten: only generation 0 passes.
        assert!(ds.verify(&new, 0, 3 * PAGE as u64, |_| false).is_err());
        // Sent, not acknowledged: either passes.
        ds.rewrite_sent(0, 3);
        ds.verify(&old, 0, 3 * PAGE as u64, |_| false).unwrap();
        ds.verify(&new, 0, 3 * PAGE as u64, |_| false).unwrap();
        // Acknowledged before the read: the old generation is a lost write.
        ds.rewrite_acked(0, 3);
        let at_start = ds.is_rewritten(0, 3);
        assert!(ds.verify(&old, 0, 3 * PAGE as u64, |_| at_start).is_err());
        ds.verify(&new, 0, 3 * PAGE as u64, |_| at_start).unwrap();
    }
}
