//! The physical baseline of the node benchmark: the same access patterns run
//! straight against files on the node's filesystem with io_uring and
//! O_DIRECT, no node, no network. Writes use `RWF_DSYNC`, so like the node's
//! acknowledged writes each is durable when it completes.

use crate::dataset::xorshift;
use hdrhistogram::Histogram;
use io_uring::{opcode, types, IoUring};
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

/// Alignment of O_DIRECT buffers and offsets, bytes.
const ALIGN: usize = 4096;

/// What a raw run measured.
#[derive(Debug, Clone)]
pub struct RawResult {
    pub ops: u64,
    pub bytes: u64,
    pub elapsed: Duration,
    /// Per-operation latency, microseconds.
    pub latency: Histogram<u64>,
}

/// An access pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    /// Each file written front to back in `block` units; `depth` files at a time.
    SeqWrite,
    /// Each file read front to back.
    SeqRead,
    /// Uniformly random aligned blocks of random files, for `ops`
    /// operations; `read_percent` of them reads, the rest writes.
    Random {
        ops: u64,
        seed: u64,
        read_percent: u8,
    },
}

/// A 4 KiB-aligned heap buffer for O_DIRECT.
struct AlignedBuf {
    ptr: *mut u8,
    layout: Layout,
}

impl AlignedBuf {
    fn new(len: usize) -> Self {
        let layout = Layout::from_size_align(len.max(ALIGN), ALIGN).expect("valid layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "out of memory");
        Self { ptr, layout }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.ptr, self.layout) }
    }
}

/// Runs `pattern` over `files` files of `file_bytes` each in `dir` (created
/// by `SeqWrite`), `block` bytes per I/O, `depth` I/Os in flight; the
/// sequential patterns as `depth / per_stream` streams with `per_stream`
/// I/Os in flight each.
pub fn run(
    dir: &Path,
    files: usize,
    file_bytes: u64,
    block: usize,
    depth: usize,
    per_stream: usize,
    pattern: Pattern,
) -> std::io::Result<RawResult> {
    if !block.is_multiple_of(ALIGN)
        || !file_bytes.is_multiple_of(block as u64)
        || per_stream == 0
        || depth == 0
        || !depth.is_multiple_of(per_stream)
    {
        return Err(std::io::Error::other(format!(
            "block {block} must be a multiple of {ALIGN} dividing the file size {file_bytes}, \
             depth {depth} > 0 a multiple of the per-stream depth {per_stream} > 0"
        )));
    }
    let streams = depth / per_stream;
    std::fs::create_dir_all(dir)?;
    let handles: Vec<std::fs::File> = (0..files)
        .map(|i| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .custom_flags(libc::O_DIRECT)
                .open(dir.join(format!("raw-{i}")))
        })
        .collect::<Result<_, _>>()?;
    let mut ring = IoUring::new((depth as u32).next_power_of_two().max(8))?;
    let bufs: Vec<AlignedBuf> = (0..depth).map(|_| AlignedBuf::new(block)).collect();
    for b in &bufs {
        // Non-zero data so nothing can shortcut zeros.
        // SAFETY: each buffer is `block` bytes long.
        unsafe { std::ptr::write_bytes(b.ptr, 0x5a, block) };
    }
    let blocks_per_file = file_bytes / block as u64;
    let total_ops = match pattern {
        Pattern::SeqWrite | Pattern::SeqRead => blocks_per_file * files as u64,
        Pattern::Random { ops, .. } => ops,
    };
    let mut seed = match pattern {
        Pattern::Random { seed, .. } => seed | 1,
        _ => 1,
    };
    // Sequential patterns: stream s streams through files s, s+streams,
    // ...; slot i serves stream i % streams.
    let mut next_seq: Vec<(usize, u64)> = (0..streams).map(|s| (s, 0)).collect();
    let mut started = vec![Instant::now(); depth];
    let mut latency = crate::stats::latency_histogram();
    let (mut submitted, mut done, mut bytes) = (0u64, 0u64, 0u64);
    let t0 = Instant::now();

    let mut submit = |ring: &mut IoUring,
                      slot: usize,
                      submitted: &mut u64,
                      started: &mut Vec<Instant>|
     -> bool {
        let mut write = pattern == Pattern::SeqWrite;
        let (file, off) = match pattern {
            Pattern::Random { read_percent, .. } => {
                let f = (xorshift(&mut seed) % files as u64) as usize;
                let b = xorshift(&mut seed) % blocks_per_file;
                write = xorshift(&mut seed) % 100 >= u64::from(read_percent);
                (f, b * block as u64)
            }
            _ => {
                let (f, b) = next_seq[slot % streams];
                if f >= files {
                    return false;
                }
                let next = if b + 1 == blocks_per_file {
                    (f + streams, 0)
                } else {
                    (f, b + 1)
                };
                next_seq[slot % streams] = next;
                (f, b * block as u64)
            }
        };
        let fd = types::Fd(handles[file].as_raw_fd());
        let entry = if write {
            opcode::Write::new(fd, bufs[slot].ptr, block as u32)
                .offset(off)
                .rw_flags(libc::RWF_DSYNC)
                .build()
        } else {
            opcode::Read::new(fd, bufs[slot].ptr, block as u32)
                .offset(off)
                .build()
        }
        .user_data(slot as u64);
        started[slot] = Instant::now();
        // SAFETY: the buffer and fd outlive the operation (we wait for all
        // completions before returning).
        unsafe {
            ring.submission()
                .push(&entry)
                .expect("ring has room for depth entries")
        };
        *submitted += 1;
        true
    };

    let mut in_flight = 0;
    for slot in 0..depth {
        if submitted < total_ops && submit(&mut ring, slot, &mut submitted, &mut started) {
            in_flight += 1;
        }
    }
    while in_flight > 0 {
        ring.submit_and_wait(1)?;
        let completed: Vec<(u64, i32)> = ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        for (slot, res) in completed {
            let slot = slot as usize;
            in_flight -= 1;
            if res < 0 {
                return Err(std::io::Error::from_raw_os_error(-res));
            }
            if res as usize != block {
                return Err(std::io::Error::other(format!(
                    "short I/O: {res} of {block} bytes"
                )));
            }
            latency.saturating_record(started[slot].elapsed().as_micros() as u64);
            done += 1;
            bytes += block as u64;
            if submitted < total_ops && submit(&mut ring, slot, &mut submitted, &mut started) {
                in_flight += 1;
            }
        }
    }
    Ok(RawResult {
        ops: done,
        bytes,
        elapsed: t0.elapsed(),
        latency,
    })
}
