//! The scrubber: a background task per shard that re-reads every chunk,
//! verifying each 4 KiB block's CRC32C, at a bounded rate, so that silent
//! corruption is found before a client needs the data. A chunk that fails is
//! added to the shard's bad set, which the control link reports with every
//! heartbeat; the control server then re-replicates it from a good replica
//! and has the bad copy deleted.
//!
//! Rate: at most `scrub_bytes_per_sec` bytes read per second and shard
//! (reads are 1 MiB pieces, each followed by the sleep that keeps the
//! average at the rate). A full pass over the shard is followed by a pause
//! of at least one second. Reads go through the chunk's I/O lock like client
//! reads, so a scrub never sees a half-applied write.

use crate::chunk_store::StoreError;
use crate::shard::Shard;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Bytes read per scrub step.
const PIECE: u64 = 1 << 20;
/// Least pause between two passes.
const PASS_PAUSE: Duration = Duration::from_secs(1);

/// Scrubs `shard` forever.
pub async fn run(shard: Rc<Shard>) {
    let rate = shard.cfg.scrub_bytes_per_sec.max(1);
    loop {
        let pass = Instant::now();
        let mut bytes = 0u64;
        let mut failed = 0usize;
        let chunks = shard.store.inventory();
        for (id, _, length) in chunks {
            if shard.bad.borrow().contains(&id) {
                continue;
            }
            let mut offset = 0;
            while offset < length {
                let n = PIECE.min(length - offset);
                let started = Instant::now();
                match shard
                    .store
                    .read(id, offset, n, &crate::chunk_store::no_fence)
                    .await
                {
                    Ok(_) => {}
                    Err(StoreError::Checksum(_, block)) => {
                        tracing::error!(
                            shard = shard.cfg.index,
                            "scrubber: chunk {id} fails its checksum in block {block}"
                        );
                        shard.bad.borrow_mut().insert(id);
                        failed += 1;
                        break;
                    }
                    // Deleted or rewritten meanwhile: nothing to verify.
                    Err(_) => break,
                }
                offset += n;
                bytes += n;
                let budget = Duration::from_secs_f64(n as f64 / rate as f64);
                if let Some(rest) = budget.checked_sub(started.elapsed()) {
                    glommio::timer::sleep(rest).await;
                }
            }
        }
        tracing::debug!(
            shard = shard.cfg.index,
            bytes,
            failed,
            secs = pass.elapsed().as_secs_f64(),
            "scrub pass done"
        );
        glommio::timer::sleep(PASS_PAUSE).await;
    }
}
