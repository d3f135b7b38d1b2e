//! The read path of the replica protocol: reads fail over between
//! replicas; every block a node returns is checked against the CRC it
//! stored (so a bit flipped on the node, on the wire or in this process is
//! caught, and that replica is treated as damaged); a replica behind the
//! record is never served. A replica that failed its checksum is repaired
//! from a good one after the read, copy-then-swap, and reported.
//!
//! A verified read (`OpenOptions::verify_replicas`) first compares the
//! digests of every replica of each chunk it reads and serves only content
//! a strict majority of the record's replicas agree on; see
//! [`ChunkIo::read_verified`].

use std::collections::HashMap;

use futures::{StreamExt, TryStreamExt};
use ringfs_schema::crc::CRC_BLOCK;
use ringfs_schema::frame::{LockMode, Op, Status};
use ringfs_schema::{ChunkId, Version};

use crate::chunk_io::{chunk_id, ms, ChunkIo, ReplicaDigest, PIPELINE};
use crate::control::ChunkRecord;
use crate::error::{Error, Result};
use crate::node_conn::status_error;
use crate::replica_policy as policy;

impl ChunkIo {
    /// Reads `buf` at file `offset` from the chunks in `records` (by index;
    /// holes absent), chunk pieces concurrently; with `verify`, each piece
    /// is a verified read ([`ChunkIo::read_verified`]). The records'
    /// capabilities were kept when they were fetched (`Client::records`).
    pub(crate) async fn read_range(
        &self,
        records: &HashMap<u64, ChunkRecord>,
        cs: u64,
        offset: u64,
        buf: &mut [u8],
        verify: bool,
    ) -> Result<()> {
        let mut pieces = Vec::new();
        let mut rest = buf;
        let mut at = offset;
        while !rest.is_empty() {
            let index = at / cs;
            let in_chunk = at - index * cs;
            let take = ((cs - in_chunk) as usize).min(rest.len());
            let (piece, tail) = rest.split_at_mut(take);
            pieces.push((records.get(&index).cloned(), in_chunk, piece));
            rest = tail;
            at += take as u64;
        }
        futures::stream::iter(
            pieces
                .into_iter()
                .map(|(rec, off, piece)| self.read_piece(rec, cs, off, piece, verify)),
        )
        .buffer_unordered(PIPELINE)
        .try_collect::<Vec<()>>()
        .await?;
        Ok(())
    }

    /// Fills `buf` with the chunk bytes at `offset` of record `rec` (`None`:
    /// a hole), failing over between replicas (or, with `verify`, from a
    /// majority of them).
    async fn read_piece(
        &self,
        rec: Option<ChunkRecord>,
        chunk_size: u64,
        offset: u64,
        buf: &mut [u8],
        verify: bool,
    ) -> Result<()> {
        let Some(rec) = rec else {
            buf.fill(0);
            return Ok(());
        };
        let valid = (rec.length as u64)
            .saturating_sub(offset)
            .min(buf.len() as u64) as usize;
        buf[valid..].fill(0);
        if valid == 0 {
            return Ok(());
        }
        if verify {
            return self
                .read_verified(&rec, chunk_size, offset, &mut buf[..valid])
                .await;
        }
        let id = chunk_id(rec.chunk_id);
        let order = policy::read_order(
            &rec.replicas,
            rec.index,
            |n| self.is_up(n),
            |n| {
                self.endpoint(id, n)
                    .map_or(0, |addr| self.pool.in_flight(&addr))
            },
        );
        let mut errors = Vec::new();
        let mut corrupt = Vec::new();
        for node_id in order {
            match self
                .read_replica(id, node_id, rec.version, offset, &mut buf[..valid])
                .await
            {
                Ok(good_version) => {
                    self.repair_and_report(&rec, &corrupt, node_id, good_version, chunk_size)
                        .await;
                    return Ok(());
                }
                Err(e) => {
                    if matches!(e, Error::Corrupt(_)) {
                        corrupt.push(node_id);
                    }
                    errors.push(e);
                }
            }
        }
        for &bad in &corrupt {
            self.cluster.report_bad(rec.chunk_id, bad, false).await;
        }
        let msg = format!(
            "chunk {id} (index {}): no replica could be read: {}",
            rec.index,
            errors
                .iter()
                .map(Error::describe)
                .collect::<Vec<_>>()
                .join("; ")
        );
        Err(policy::read_failure(&errors, msg))
    }

    /// A verified read of `buf.len()` bytes at `offset` of `rec`: asks every
    /// replica for its digest (version, length, BLAKE3 of its stored CRCs)
    /// and serves the content a strict majority of the record's replicas
    /// hold ([`policy::vote`]), read from one of them at exactly that
    /// version and checked block by block as every read is. Replicas the
    /// vote finds wrong (another content at that version, or behind the
    /// record) are replaced by a copy of the majority's, copy-then-swap,
    /// and reported to the control server. Without a majority: a write in
    /// flight is waited out (up to [`VERIFY_ATTEMPTS`] votes), otherwise
    /// [`Error::Corrupt`] naming the chunk and what each replica holds.
    ///
    /// A digest covers the whole replica, not only the bytes read, so a
    /// verified 4 KiB read costs one small request per replica on top of
    /// the read. The CRCs it compares are 32-bit per 4 KiB block: this
    /// catches replicas that diverged by damage or by a bug, not an
    /// attacker who can write chunk files and forge CRC collisions.
    async fn read_verified(
        &self,
        rec: &ChunkRecord,
        chunk_size: u64,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<()> {
        let id = chunk_id(rec.chunk_id);
        // What the last vote saw, for the error: described only on failure.
        let mut digests = Vec::new();
        let mut read_errors = Vec::new();
        for attempt in 0..VERIFY_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(VERIFY_BACKOFF * attempt).await;
            }
            digests = futures::future::join_all(
                rec.replicas
                    .iter()
                    .map(|&node| async move { (node, self.digest(id, node).await) }),
            )
            .await;
            read_errors.clear();
            let answers: Vec<(u64, Option<&ReplicaDigest>)> =
                digests.iter().map(|(n, d)| (*n, d.as_ref().ok())).collect();
            let (version, agree, odd) = match policy::vote(rec.version, &answers) {
                policy::Vote::Majority {
                    version,
                    agree,
                    odd,
                } => (version, agree, odd),
                policy::Vote::Unsettled => continue,
                policy::Vote::NoMajority => break,
            };
            let mut served = None;
            for &node in &agree {
                match self.read_replica(id, node, version, offset, buf).await {
                    Ok(v) if v == version => {
                        served = Some(node);
                        break;
                    }
                    // Written since its digest: vote again.
                    Ok(_) => break,
                    Err(e) => read_errors.push((node, e)),
                }
            }
            let Some(good) = served else { continue };
            self.repair_and_report(rec, &odd, good, version, chunk_size)
                .await;
            return Ok(());
        }
        buf.fill(0);
        if !read_errors.is_empty() {
            // A majority agreed, but none of it could be read.
            let msg = format!(
                "chunk {id} (index {}): verified read: the majority's replicas could not be \
                 read: {}",
                rec.index,
                read_errors
                    .iter()
                    .map(|(n, e)| format!("node {n}: {}", e.describe()))
                    .collect::<Vec<_>>()
                    .join("; ")
            );
            let errors: Vec<Error> = read_errors.into_iter().map(|(_, e)| e).collect();
            return Err(policy::read_failure(&errors, msg));
        }
        Err(Error::Corrupt(format!(
            "chunk {id} (index {}): verified read: no majority of its {} replicas holds one \
             content at version {} or newer: {}",
            rec.index,
            rec.replicas.len(),
            rec.version,
            describe_digests(&digests),
        )))
    }

    /// Repairs each replica of `rec` in `bad` from `good`'s at `version`
    /// ([`ChunkIo::repair`]) and reports it to the control server, saying
    /// whether the repair worked. Best effort: the read that found them
    /// succeeded, and a failed repair leaves a replica as it was (refusing
    /// reads, or outvoted) for the control server to replace.
    async fn repair_and_report(
        &self,
        rec: &ChunkRecord,
        bad: &[u64],
        good: u64,
        version: Version,
        chunk_size: u64,
    ) {
        let id = chunk_id(rec.chunk_id);
        for &bad in bad {
            // Only with write on the chunk (a write descriptor's records):
            // a reader's is left to the control server, which the report
            // asks.
            let repaired = self.may_write(id)
                && self
                    .repair(id, bad, good, version, chunk_size)
                    .await
                    .is_ok();
            if repaired {
                self.repairs.set(self.repairs.get() + 1);
            }
            self.cluster.report_bad(rec.chunk_id, bad, repaired).await;
        }
    }

    /// Replaces `bad`'s replica of chunk `id` (it failed its checksum) with
    /// a copy of `good`'s, at `good_version` (`chunk_size` bytes reserved
    /// if `bad` lost the chunk): copy-then-swap on `bad`, fenced on the
    /// version it holds, so a failed repair leaves it as it was and a
    /// replica a write made newer meanwhile is never replaced.
    async fn repair(
        &self,
        id: ChunkId,
        bad: u64,
        good: u64,
        good_version: Version,
        chunk_size: u64,
    ) -> Result<()> {
        let held = match self.info(id, bad).await {
            Ok((v, _)) => v,
            Err(Error::NotFound(_)) => Version::NONE,
            Err(e) => return Err(e),
        };
        if held > good_version {
            return Err(Error::StaleVersion(format!(
                "chunk {id}: node {bad} holds {held}, newer than the good replica's {good_version}"
            )));
        }
        self.copy_replica(id, good, good_version, bad, held, chunk_size)
            .await
    }

    /// Reads `buf.len()` bytes at `offset` of `node_id`'s replica of `id`,
    /// which must be at `version` or newer, checking every block against
    /// its stored CRC; returns the replica's version.
    async fn read_replica(
        &self,
        id: ChunkId,
        node_id: u64,
        version: Version,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<Version> {
        let addr = self.endpoint(id, node_id)?;
        let mut h = self.request(Op::Read, id);
        h.offset = offset;
        h.length = buf.len() as u32;
        h.client_id = self.client_id;
        h.implicit_lock = LockMode::Read;
        h.timeout_ms = ms(self.options.lock_wait);
        let (r, payload) = self.call(&addr, h, &[], true).await?;
        if r.status != Status::Ok {
            return Err(status_error(&r, &addr));
        }
        // A replica behind the committed record (it missed a write) must
        // not be served: try another.
        let skip = offset.checked_sub(r.offset).map(|s| s as usize);
        let got = skip.map_or(0, |s| payload.len().saturating_sub(s));
        if !policy::replica_is_current(r.version, version, got, buf.len()) {
            return Err(Error::unavailable(format!(
                "storage node {addr}: replica of chunk {id} is stale (version {} < {version} \
                 or {got} of {} bytes)",
                r.version,
                buf.len()
            )));
        }
        let checked = verify_into(r.offset, &payload, &r.crcs, skip.unwrap_or(0), buf);
        crate::node_conn::recycle_payload(payload);
        if let Err(block) = checked {
            return Err(Error::Corrupt(format!(
                "storage node {addr}: chunk {id}: block {block} does not match the CRC the node \
                 stored (damaged on the node, on the wire or in memory)"
            )));
        }
        Ok(r.version)
    }
}

/// How many times a verified read asks for digests before it gives up on
/// replicas that stay at different versions (a write in flight).
const VERIFY_ATTEMPTS: u32 = 5;
/// Pause before the n-th vote of a verified read, times n.
const VERIFY_BACKOFF: std::time::Duration = std::time::Duration::from_millis(20);

/// What each replica answered to `digest`, for an error message.
fn describe_digests(digests: &[(u64, Result<ReplicaDigest>)]) -> String {
    digests
        .iter()
        .map(|(n, d)| match d {
            Ok(d) => format!("node {n}: {d}"),
            Err(e) => format!("node {n}: {}", e.describe()),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Checks every block of a read answer `data` (from chunk offset `start`,
/// a block boundary) against the CRCs the node stored, and copies
/// `data[skip..skip + dst.len()]` into `dst` block by block as each passes,
/// so the copy reads what the checksum just brought into the cache (one
/// trip through memory instead of two). Err: the index of the first block
/// that fails (or of the first one without a CRC); `dst` is then zeroed,
/// never left holding unverified bytes. `skip + dst.len()` must not exceed
/// `data.len()`.
fn verify_into(
    start: u64,
    data: &[u8],
    crcs: &[u32],
    skip: usize,
    dst: &mut [u8],
) -> std::result::Result<(), u64> {
    if !start.is_multiple_of(CRC_BLOCK) {
        dst.fill(0);
        return Err(0);
    }
    let end = skip + dst.len();
    for (i, block) in data.chunks(CRC_BLOCK as usize).enumerate() {
        if crcs.get(i) != Some(&crc32c::crc32c(block)) {
            dst.fill(0);
            return Err(start / CRC_BLOCK + i as u64);
        }
        let lo = (i * CRC_BLOCK as usize).max(skip);
        let hi = (i * CRC_BLOCK as usize + block.len()).min(end);
        if lo < hi {
            dst[lo - skip..hi - skip].copy_from_slice(&data[lo..hi]);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_checked_against_their_stored_crcs_and_copied() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        let crcs: Vec<u32> = data.chunks(4096).map(crc32c::crc32c).collect();
        let mut dst = vec![0u8; 9_000];
        assert_eq!(verify_into(8192, &data, &crcs, 500, &mut dst), Ok(()));
        assert_eq!(dst, data[500..9_500], "the requested window, copied");
        let mut bad = data.clone();
        bad[9000] ^= 0x10;
        assert_eq!(verify_into(8192, &bad, &crcs, 500, &mut dst), Err(4));
        assert!(
            dst.iter().all(|&b| b == 0),
            "nothing unverified left behind"
        );
        assert_eq!(
            verify_into(8192, &data, &crcs[..2], 0, &mut dst),
            Err(4),
            "a CRC missing"
        );
        assert_eq!(
            verify_into(100, &data, &crcs, 0, &mut dst),
            Err(0),
            "not on the grid"
        );
    }
}
