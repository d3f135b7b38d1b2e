//! A shard's free list of write-payload buffers.
//!
//! Payload buffers (up to 64 MiB) are too large for the allocator's
//! per-thread arenas, so each used to be a fresh mmap: the kernel zeroed
//! and faulted in every page the socket then copied into, which was a
//! quarter of a node's CPU on sequential writes. Buffers now come back here
//! after their write and are reused by the next payload of the same size.
//!
//! Invariants: shard-local (a thread-local; glommio runs one shard per
//! thread, so there are no locks and nothing shared between cores); at most
//! [`MAX_BYTES`] held per shard, oldest dropped first; only exact sizes are
//! reused, because a buffer's length is what gets written to disk. Contents
//! are not cleared: every user fills the whole buffer (payload plus the
//! zeroed or merged edges) before writing it.

use std::cell::RefCell;
use std::collections::VecDeque;

use glommio::io::DmaBuffer;

/// Bytes of free buffers one shard keeps.
pub const MAX_BYTES: usize = 128 << 20;
/// Smaller buffers come cheaply from the allocator and are not kept.
pub const MIN_POOLED: usize = 1 << 20;

#[derive(Default)]
struct Free {
    bufs: VecDeque<DmaBuffer>,
    bytes: usize,
}

thread_local! {
    static FREE: RefCell<Free> = RefCell::new(Free::default());
}

/// A buffer of exactly `len` bytes, reused if one is free.
pub fn take(len: usize) -> DmaBuffer {
    let reused = FREE.with(|f| {
        let mut f = f.borrow_mut();
        let i = f.bufs.iter().position(|b| b.len() == len)?;
        f.bytes -= len;
        f.bufs.remove(i)
    });
    reused.unwrap_or_else(|| glommio::allocate_dma_buffer(len))
}

/// Returns a buffer for reuse.
pub fn give(buf: DmaBuffer) {
    let len = buf.len();
    if !(MIN_POOLED..=MAX_BYTES).contains(&len) {
        return;
    }
    FREE.with(|f| {
        let mut f = f.borrow_mut();
        while f.bytes + len > MAX_BYTES {
            match f.bufs.pop_front() {
                Some(old) => f.bytes -= old.len(),
                None => break,
            }
        }
        f.bytes += len;
        f.bufs.push_back(buf);
    });
}

/// Bytes held by this shard's free list.
#[cfg(test)]
fn held_bytes() -> usize {
    FREE.with(|f| f.borrow().bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_by_exact_size_and_bounded() {
        ringfs_tests::on_glommio(|| async {
            let a = take(2 << 20);
            let ptr = a.as_ptr();
            give(a);
            assert_eq!(held_bytes(), 2 << 20);
            assert_ne!(take(4 << 20).as_ptr(), ptr, "other sizes are not reused");
            assert_eq!(take(2 << 20).as_ptr(), ptr, "same size reused");
            assert_eq!(held_bytes(), 0);
            give(take(4096));
            assert_eq!(held_bytes(), 0, "small buffers are not kept");
            for _ in 0..(MAX_BYTES / (16 << 20)) + 3 {
                give(take(16 << 20));
                give(glommio::allocate_dma_buffer(16 << 20));
            }
            assert!(held_bytes() <= MAX_BYTES);
        });
    }
}
