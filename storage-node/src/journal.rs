//! A shard's write-ahead journal (the file `journal` in the shard
//! directory): what makes chunk overwrites crash-atomic per 4 KiB block and
//! lets many small writes share one fdatasync (as Ceph BlueStore defers
//! small overwrites through its WAL). The chunk store decides what goes in
//! and applies it (`chunk_store.rs`); this module owns the file format and
//! the group commit.
//!
//! ```text
//! offset 0      superblock slot A (4 KiB)
//! offset 4 KiB  superblock slot B (4 KiB)
//! offset 8 KiB  records, back to back, each a multiple of 4 KiB
//! ```
//! A superblock slot: magic `RFSJRNL1`, `generation` u64, CRC32C u32 of the
//! 20 bytes before it. The valid slot with the larger generation counts; a
//! reset writes generation + 1 to slot `(generation + 1) % 2`, so a torn
//! reset leaves the other slot (and only stale records, see below).
//!
//! A record: a header of [`header_len`] bytes (magic `RFSJREC1`, the
//! generation, the record's own journal offset, chunk id, base and new
//! version, the chunk's new length, the data range's start, its block
//! count, flags, the first block whose CRC changes and the count, the
//! header's CRC32C, then the changed CRCs), followed by the data blocks if
//! the record carries them ([`FLAG_DATA`]). A record without data describes
//! a write whose blocks went straight to a fresh region of the chunk file
//! (never an overwrite), made durable by the chunk file's own fdatasync.
//!
//! Durability: records are written concurrently at reserved offsets; a
//! record counts as durable only once it and every record before it
//! completed and a later fdatasync returned (a durable *prefix*), so replay
//! may stop at the first record that does not verify (torn or never
//! written) without losing one that was acknowledged.
//!
//! After any I/O error the journal refuses every later append
//! ([`Journal::failed`]): what became durable is unknown after a failed
//! fdatasync, so nothing is acknowledged until a restart replays.

use crate::disk::DiskFile;
use futures::channel::oneshot;
use glommio::io::DmaBuffer;
use ringfs_schema::ids::ChunkId;
use ringfs_schema::Version;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io;
use std::rc::Rc;

/// Journal offset of the first record.
pub(crate) const RECORDS_AT: u64 = 2 * SUPER_LEN;
const SUPER_LEN: u64 = 4096;
const SUPER_MAGIC: &[u8; 8] = b"RFSJRNL1";
const REC_MAGIC: &[u8; 8] = b"RFSJREC1";
/// The record carries its data blocks after the header.
pub(crate) const FLAG_DATA: u32 = 1;
const FIXED: usize = 112;
/// A record whose data is at most this many bytes is written as one I/O,
/// its data copied behind the header: a copy of a few KiB costs less than
/// a second I/O (a request, an interrupt, a completion). Larger data is
/// written from its own buffer, next to the header.
const INLINE_DATA: usize = 64 * 1024;
const HDR_CRC_AT: usize = 108;

/// What one record says (the header without its framing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) chunk: ChunkId,
    /// The chunk version the write applies on top of.
    pub(crate) base: Version,
    pub(crate) version: Version,
    /// The chunk's length after the write.
    pub(crate) length: u64,
    /// Chunk offset of the first data block (4 KiB aligned).
    pub(crate) io_start: u64,
    /// Data blocks from `io_start` on.
    pub(crate) blocks: u32,
    pub(crate) flags: u32,
    /// Index of the first block whose CRC the write changes.
    pub(crate) crc_from: u64,
    /// The new CRCs of blocks `crc_from..`.
    pub(crate) crcs: Vec<u32>,
}

/// Bytes of a record header with `crcs` CRCs (a multiple of 4 KiB).
pub(crate) fn header_len(crcs: usize) -> u64 {
    ((FIXED + 4 * crcs) as u64).div_ceil(4096) * 4096
}

impl Record {
    /// Bytes the record takes in the journal, data included.
    pub(crate) fn size(&self) -> u64 {
        let data = if self.flags & FLAG_DATA != 0 {
            self.blocks as u64 * 4096
        } else {
            0
        };
        header_len(self.crcs.len()) + data
    }

    /// The header image for generation `gen` at journal offset `pos`.
    #[cfg(test)]
    fn encode(&self, gen: u64, pos: u64) -> DmaBuffer {
        let mut buf = glommio::allocate_dma_buffer(header_len(self.crcs.len()) as usize);
        self.encode_into(gen, pos, buf.as_bytes_mut());
        buf
    }

    /// Writes the header image for generation `gen` at journal offset
    /// `pos` into `out`, which is [`header_len`] bytes long.
    fn encode_into(&self, gen: u64, pos: u64, out: &mut [u8]) {
        out.fill(0);
        out[..8].copy_from_slice(REC_MAGIC);
        let words = [
            gen,
            pos,
            self.chunk.hi,
            self.chunk.lo,
            self.base.epoch,
            self.base.seq,
            self.version.epoch,
            self.version.seq,
            self.length,
            self.io_start,
        ];
        for (i, w) in words.iter().enumerate() {
            out[8 + 8 * i..16 + 8 * i].copy_from_slice(&w.to_le_bytes());
        }
        out[88..92].copy_from_slice(&self.blocks.to_le_bytes());
        out[92..96].copy_from_slice(&self.flags.to_le_bytes());
        out[96..104].copy_from_slice(&self.crc_from.to_le_bytes());
        out[104..108].copy_from_slice(&(self.crcs.len() as u32).to_le_bytes());
        for (i, c) in self.crcs.iter().enumerate() {
            out[FIXED + 4 * i..FIXED + 4 * i + 4].copy_from_slice(&c.to_le_bytes());
        }
        let crc = crc32c::crc32c(out);
        out[HDR_CRC_AT..HDR_CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
    }

    /// The header's fixed part at `head` (the first 4 KiB of a record):
    /// the record and its header length, if magic, generation and offset
    /// match. The CRC is checked by [`Record::verify_header`] once the
    /// whole header was read.
    pub(crate) fn peek(head: &[u8], gen: u64, pos: u64) -> Option<u64> {
        if head.len() < FIXED || &head[..8] != REC_MAGIC {
            return None;
        }
        let u64_at = |i: usize| u64::from_le_bytes(head[i..i + 8].try_into().expect("8"));
        if u64_at(8) != gen || u64_at(16) != pos {
            return None;
        }
        let n = u32::from_le_bytes(head[104..108].try_into().expect("4")) as usize;
        // A chunk has at most this many blocks; a larger count is damage.
        (n <= crate::chunk_file::MAX_BLOCKS).then(|| header_len(n))
    }

    /// Decodes a whole header image (as long as [`Record::peek`] said).
    pub(crate) fn verify_header(hdr: &[u8]) -> Option<Self> {
        let mut copy = hdr.to_vec();
        copy[HDR_CRC_AT..HDR_CRC_AT + 4].fill(0);
        let stored = u32::from_le_bytes(hdr[HDR_CRC_AT..HDR_CRC_AT + 4].try_into().ok()?);
        if crc32c::crc32c(&copy) != stored {
            return None;
        }
        let u64_at = |i: usize| u64::from_le_bytes(hdr[i..i + 8].try_into().expect("8"));
        let u32_at = |i: usize| u32::from_le_bytes(hdr[i..i + 4].try_into().expect("4"));
        let n = u32_at(104) as usize;
        Some(Self {
            chunk: ChunkId::new(u64_at(24), u64_at(32)),
            base: Version::new(u64_at(40), u64_at(48)),
            version: Version::new(u64_at(56), u64_at(64)),
            length: u64_at(72),
            io_start: u64_at(80),
            blocks: u32_at(88),
            flags: u32_at(92),
            crc_from: u64_at(96),
            crcs: (0..n).map(|i| u32_at(FIXED + 4 * i)).collect(),
        })
    }
}

fn encode_super(gen: u64) -> DmaBuffer {
    let mut buf = glommio::allocate_dma_buffer(SUPER_LEN as usize);
    let out = buf.as_bytes_mut();
    out.fill(0);
    out[..8].copy_from_slice(SUPER_MAGIC);
    out[8..16].copy_from_slice(&gen.to_le_bytes());
    let crc = crc32c::crc32c(&out[..16]);
    out[16..20].copy_from_slice(&crc.to_le_bytes());
    buf
}

fn decode_super(slot: &[u8]) -> Option<u64> {
    if slot.len() < 20 || &slot[..8] != SUPER_MAGIC {
        return None;
    }
    let crc = u32::from_le_bytes(slot[16..20].try_into().expect("4"));
    (crc32c::crc32c(&slot[..16]) == crc)
        .then(|| u64::from_le_bytes(slot[8..16].try_into().expect("8")))
}

/// The generation a journal file's superblock holds (0 for a new or
/// unreadable one: then it holds no record that replay must see, because a
/// superblock is only ever rewritten after a completed checkpoint).
pub(crate) async fn read_generation<F: DiskFile>(file: &F) -> io::Result<u64> {
    let head = file.read_at(0, RECORDS_AT as usize).await?;
    let slot = |i: usize| head.get(i * SUPER_LEN as usize..(i + 1) * SUPER_LEN as usize);
    Ok([slot(0), slot(1)]
        .into_iter()
        .flatten()
        .filter_map(decode_super)
        .max()
        .unwrap_or(0))
}

type Waiter = (u64, oneshot::Sender<Result<(), String>>);

struct State {
    gen: u64,
    /// Where the next record goes.
    next: u64,
    /// Records written (their write completed) beyond `written`, start -> end.
    completed: BTreeMap<u64, u64>,
    /// Every record below this offset completed its write.
    written: u64,
    /// Every record below this offset is durable.
    durable: u64,
    waiters: Vec<Waiter>,
    leader: bool,
    failed: Option<String>,
    syncs: u64,
    records: u64,
}

/// The journal of one shard (not `Send`: it lives on the shard's executor).
pub(crate) struct Journal<F> {
    file: Rc<F>,
    state: Rc<RefCell<State>>,
}

impl<F: DiskFile + 'static> Journal<F> {
    /// The journal in `file`, at generation `gen`, with no records (call
    /// [`Journal::reset`] before the first append).
    pub(crate) fn new(file: F, gen: u64) -> Self {
        Self {
            file: Rc::new(file),
            state: Rc::new(RefCell::new(State {
                gen,
                next: RECORDS_AT,
                completed: BTreeMap::new(),
                written: RECORDS_AT,
                durable: RECORDS_AT,
                waiters: Vec::new(),
                leader: false,
                failed: None,
                syncs: 0,
                records: 0,
            })),
        }
    }

    pub(crate) fn file(&self) -> &F {
        &self.file
    }

    /// Bytes of records since the last reset.
    pub(crate) fn used(&self) -> u64 {
        self.state.borrow().next - RECORDS_AT
    }

    /// Refuses every later append (an I/O error elsewhere left a durable
    /// record whose write was not applied).
    pub(crate) fn poison(&self, why: String) {
        fail(&mut self.state.borrow_mut(), why);
    }

    /// (fdatasync calls, records) so far: fewer syncs than records shows
    /// group commit.
    #[cfg(test)]
    pub(crate) fn stats(&self) -> (u64, u64) {
        let s = self.state.borrow();
        (s.syncs, s.records)
    }

    /// Empties the journal: writes generation + 1 to the other superblock
    /// slot and syncs. Only when no append is in flight and everything the
    /// records describe is durable in the chunk files (a checkpoint).
    pub(crate) async fn reset(&self) -> io::Result<()> {
        let gen = {
            let s = self.state.borrow();
            if let Some(e) = &s.failed {
                // Records may be missing from the prefix: only a restart's
                // replay knows what the journal holds.
                return Err(io::Error::other(e.clone()));
            }
            s.gen + 1
        };
        let slot = (gen % 2) * SUPER_LEN;
        let r = async {
            self.file.write_at(encode_super(gen), slot).await?;
            self.file.fdatasync().await
        }
        .await;
        let mut s = self.state.borrow_mut();
        if let Err(e) = r {
            s.failed = Some(format!("journal reset failed: {e}"));
            return Err(e);
        }
        debug_assert!(s.waiters.is_empty() && s.completed.is_empty());
        s.gen = gen;
        s.next = RECORDS_AT;
        s.written = RECORDS_AT;
        s.durable = RECORDS_AT;
        Ok(())
    }

    /// Appends `rec` (with `data`, its blocks, if it carries them) and
    /// returns once it and every record before it are durable.
    #[cfg(test)]
    pub(crate) async fn append(&self, rec: &Record, data: Option<Rc<DmaBuffer>>) -> io::Result<()> {
        let slot = self.reserve(rec)?;
        self.write(slot, rec, data).await
    }

    /// Reserves `rec`'s place: the next one in the journal, so that it
    /// becomes durable after every record reserved before it (a chunk's
    /// pipelined writes reserve in their order). Fails once the journal
    /// failed. The slot must be passed to [`Journal::write`]; a slot
    /// dropped unwritten fails the journal (later records could never
    /// become durable behind the hole).
    pub(crate) fn reserve(&self, rec: &Record) -> io::Result<Slot> {
        let mut s = self.state.borrow_mut();
        if let Some(e) = &s.failed {
            return Err(io::Error::other(e.clone()));
        }
        let pos = s.next;
        s.next += rec.size();
        s.records += 1;
        Ok(Slot {
            gen: s.gen,
            pos,
            end: s.next,
            state: Some(self.state.clone()),
        })
    }

    /// Writes `rec` (with `data`, its blocks, if it carries them) to its
    /// reserved `slot` and returns once it and every record before it are
    /// durable.
    pub(crate) async fn write(
        &self,
        mut slot: Slot,
        rec: &Record,
        data: Option<Rc<DmaBuffer>>,
    ) -> io::Result<()> {
        let (gen, pos, end) = (slot.gen, slot.pos, slot.end);
        let hlen = header_len(rec.crcs.len()) as usize;
        let inline = data.as_ref().map_or(0, |d| d.len());
        let inline = if inline <= INLINE_DATA { inline } else { 0 };
        let mut image = glommio::allocate_dma_buffer(hlen + inline);
        let bytes = image.as_bytes_mut();
        rec.encode_into(gen, pos, &mut bytes[..hlen]);
        let data = match data {
            Some(d) if inline > 0 => {
                bytes[hlen..].copy_from_slice(d.as_bytes());
                None
            }
            d => d,
        };
        let written = async {
            failpoint!("journal::before_write", |_| Err(
                crate::failpoint::injected("journal::before_write")
            ));
            match data {
                Some(d) => {
                    let (h, d) = futures::join!(
                        self.file.write_at(image, pos),
                        self.file.write_rc_at(d, pos + hlen as u64)
                    );
                    h.and(d).map(|_| ())
                }
                None => self.file.write_at(image, pos).await.map(|_| ()),
            }
        }
        .await;
        // Written (or failed below): no longer a hole if this is dropped.
        slot.state = None;
        let rx = {
            let mut s = self.state.borrow_mut();
            if let Err(e) = written {
                fail(&mut s, format!("journal write failed: {e}"));
                return Err(e);
            }
            s.completed.insert(pos, end);
            loop {
                let w = s.written;
                let Some(e) = s.completed.remove(&w) else {
                    break;
                };
                s.written = e;
            }
            let (tx, rx) = oneshot::channel();
            s.waiters.push((end, tx));
            (rx, !std::mem::replace(&mut s.leader, true))
        };
        let (rx, start_leader) = rx;
        if start_leader {
            glommio::spawn_local(lead(self.file.clone(), self.state.clone())).detach();
        }
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(io::Error::other(e)),
            Err(_) => Err(io::Error::other("journal group commit vanished")),
        }
    }
}

/// A record's reserved place in the journal ([`Journal::reserve`]).
pub(crate) struct Slot {
    gen: u64,
    pos: u64,
    end: u64,
    /// Set until the slot is written: dropping it then fails the journal.
    state: Option<Rc<RefCell<State>>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(state) = self.state.take() {
            fail(
                &mut state.borrow_mut(),
                "a reserved journal record was never written".into(),
            );
        }
    }
}

/// Marks the journal failed and fails every waiter.
fn fail(s: &mut State, why: String) {
    for (_, tx) in s.waiters.drain(..) {
        let _ = tx.send(Err(why.clone()));
    }
    s.failed.get_or_insert(why);
}

/// The group commit: syncs whatever completed prefix exists, wakes the
/// waiters it covers, and repeats while that makes progress. Waiters whose
/// records wait for an earlier one are woken by a later round, started by
/// that earlier record's completion.
async fn lead<F: DiskFile>(file: Rc<F>, state: Rc<RefCell<State>>) {
    loop {
        let target = {
            let mut s = state.borrow_mut();
            if s.failed.is_some() || s.written <= s.durable {
                s.leader = false;
                return;
            }
            s.written
        };
        failpoint!("journal::before_fdatasync", |_| {
            fail(
                &mut state.borrow_mut(),
                "injected by failpoint journal::before_fdatasync".into(),
            );
            state.borrow_mut().leader = false;
        });
        let r = file.fdatasync().await;
        let mut s = state.borrow_mut();
        s.syncs += 1;
        if let Err(e) = r {
            fail(&mut s, format!("journal fdatasync failed: {e}"));
            s.leader = false;
            return;
        }
        s.durable = s.durable.max(target);
        let durable = s.durable;
        let (done, wait): (Vec<_>, Vec<_>) = s.waiters.drain(..).partition(|(e, _)| *e <= durable);
        s.waiters = wait;
        for (_, tx) in done {
            let _ = tx.send(Ok(()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::sim::{SimDisk, SimFile};
    use crate::disk::DiskDir;
    use ringfs_tests::on_glommio;
    use std::cell::Cell;

    /// A simulated file whose write at one chosen offset waits until the
    /// test releases it: writes that complete out of order, which the
    /// simulated disk alone never produces.
    struct Gated {
        inner: SimFile,
        hold_at: u64,
        gate: RefCell<Option<oneshot::Receiver<()>>>,
    }

    impl DiskFile for Gated {
        type Read = <SimFile as DiskFile>::Read;
        async fn read_at(&self, pos: u64, len: usize) -> io::Result<Self::Read> {
            self.inner.read_at(pos, len).await
        }
        fn slice(read: &Self::Read, offset: usize, len: usize) -> Option<Self::Read> {
            SimFile::slice(read, offset, len)
        }
        async fn write_at(&self, buf: DmaBuffer, pos: u64) -> io::Result<usize> {
            if pos == self.hold_at {
                let gate = self.gate.borrow_mut().take();
                if let Some(gate) = gate {
                    let _ = gate.await;
                }
            }
            self.inner.write_at(buf, pos).await
        }
        async fn write_rc_at(&self, buf: Rc<DmaBuffer>, pos: u64) -> io::Result<usize> {
            self.inner.write_rc_at(buf, pos).await
        }
        async fn fdatasync(&self) -> io::Result<()> {
            self.inner.fdatasync().await
        }
        async fn size(&self) -> io::Result<u64> {
            self.inner.size().await
        }
    }

    fn record(seq: u64) -> Record {
        Record {
            chunk: ChunkId::new(1, 2),
            base: Version::new(1, seq - 1),
            version: Version::new(1, seq),
            length: 8192,
            io_start: 4096,
            blocks: 1,
            flags: 0,
            crc_from: 1,
            crcs: vec![seq as u32],
        }
    }

    #[test]
    fn records_round_trip_and_damage_is_not_a_record() {
        on_glommio(|| async { round_trip() });
    }

    fn round_trip() {
        let rec = Record {
            crcs: (0..1500).collect(),
            flags: FLAG_DATA,
            ..record(7)
        };
        let img = rec.encode(3, RECORDS_AT);
        assert_eq!(img.len() as u64, header_len(1500));
        assert_eq!(header_len(1500), 2 * 4096, "1500 CRCs need a second block");
        let bytes = img.as_bytes();
        assert_eq!(Record::peek(bytes, 3, RECORDS_AT), Some(8192));
        assert_eq!(Record::verify_header(bytes), Some(rec));
        // Another generation or offset: a stale record, not this one.
        assert_eq!(Record::peek(bytes, 4, RECORDS_AT), None);
        assert_eq!(Record::peek(bytes, 3, RECORDS_AT + 4096), None);
        let mut torn = bytes.to_vec();
        torn[5000] ^= 1;
        assert_eq!(Record::verify_header(&torn), None);
        assert_eq!(decode_super(encode_super(9).as_bytes()), Some(9));
        assert_eq!(decode_super(&[0; 4096]), None);
    }

    /// A record is acknowledged only when every record before it is
    /// durable too: the second append, whose write completes first, waits
    /// for the first (else a crash could keep it and lose the first, and
    /// replay, which stops at the first bad record, would drop it although
    /// acknowledged).
    #[test]
    fn a_record_is_acknowledged_only_after_every_earlier_one_is_durable() {
        on_glommio(|| async {
            let disk = SimDisk::new();
            let (tx, rx) = oneshot::channel();
            let file = Gated {
                inner: disk.dir().create("journal").await.unwrap(),
                hold_at: RECORDS_AT,
                gate: RefCell::new(Some(rx)),
            };
            let j = Rc::new(Journal::new(file, 1));
            let done = Rc::new(Cell::new((false, false)));
            let first = {
                let (j, done) = (j.clone(), done.clone());
                glommio::spawn_local(async move {
                    j.append(&record(1), None).await.unwrap();
                    done.set((true, done.get().1));
                })
            };
            let second = {
                let (j, done) = (j.clone(), done.clone());
                glommio::spawn_local(async move {
                    j.append(&record(2), None).await.unwrap();
                    done.set((done.get().0, true));
                })
            };
            for _ in 0..20 {
                glommio::executor().yield_now().await;
            }
            assert_eq!(done.get(), (false, false), "the second waits for the first");
            tx.send(()).unwrap();
            first.await;
            second.await;
            assert_eq!(done.get(), (true, true));
            let (syncs, records) = j.stats();
            assert_eq!(records, 2);
            assert!(syncs >= 1);
        });
    }
}
