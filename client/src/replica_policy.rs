//! The client's replica policy, as pure functions: which replica a read
//! tries first, what a chain write's answer means, when a write has its
//! quorum, which failures move on to another replica or placement and
//! which end the call, and what a read that found no good replica reports.
//! [`crate::chunk_io`] does the I/O around these decisions; they are
//! tested here without processes.

use crate::error::Error;
use ringfs_schema::Version;

/// The order in which a read tries the replicas of chunk `index`: replicas
/// the map calls up first, then the least loaded (fewest of this client's
/// requests in flight), ties broken by a rotation that depends on the
/// chunk, so that reads of a file spread over its replicas; replicas the
/// map calls down (or does not know) come last, as a last resort.
pub(crate) fn read_order(
    replicas: &[u64],
    index: u64,
    up: impl Fn(u64) -> bool,
    load: impl Fn(u64) -> usize,
) -> Vec<u64> {
    let mut order: Vec<(bool, usize, usize, u64)> = replicas
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let rotation = (i + index as usize) % replicas.len().max(1);
            (!up(n), load(n), rotation, n)
        })
        .collect();
    order.sort_unstable();
    order.into_iter().map(|(.., n)| n).collect()
}

/// Whether `replicas` durable (or reserved, or locked) replicas are enough
/// for a file whose write quorum is `write_quorum` (0 counts as 1).
pub(crate) fn has_quorum(replicas: usize, write_quorum: u8) -> bool {
    replicas >= write_quorum.max(1) as usize
}

/// The replicas of `chain` (primary first) that hold a write the primary
/// answered with `durable_mask` (bit i: chain position i), in chain order;
/// bits past the chain are ignored (a node cannot claim more).
pub(crate) fn durable_nodes<T>(
    chain: &[T],
    durable_mask: u16,
    node: impl Fn(&T) -> u64,
) -> Vec<u64> {
    chain
        .iter()
        .enumerate()
        .filter(|(i, _)| *i < 16 && durable_mask & (1 << i) != 0)
        .map(|(_, t)| node(t))
        .collect()
}

/// How many of a record's `replicas` must tell their version before a
/// writer may take the highest as its base: `n - W + 1`, so that the
/// answers meet every set of W replicas an acknowledged write may be on
/// (at least 1).
pub(crate) fn answers_needed(replicas: usize, write_quorum: u8) -> usize {
    replicas.saturating_sub(write_quorum.max(1) as usize) + 1
}

/// The failure of a placement that reserved `reserved` replicas, fewer than
/// the quorum: `no space` if a node refused for lack of it (adding nodes
/// will not help, freeing space will), else `unavailable`.
pub(crate) fn placement_failure(no_space: bool, message: String) -> Error {
    if no_space {
        Error::NoSpace(message)
    } else {
        Error::unavailable(message)
    }
}

/// Whether a failed write of a new chunk is worth one more placement: the
/// chain lost a node, timed out or fell short of the quorum, which another
/// set of nodes may not. Refusals of the request itself are final.
pub(crate) fn retry_new_chunk(e: &Error) -> bool {
    matches!(
        e,
        Error::Unavailable { .. } | Error::Quorum(_) | Error::Timeout(_)
    )
}

/// Whether a storage node may serve a read of a chunk recorded at
/// `committed` version: a replica that answered an older version missed a
/// write, and one that returned fewer bytes than asked lost some (both
/// move on to the next replica).
pub(crate) fn replica_is_current(
    answered_version: Version,
    committed: Version,
    got: usize,
    wanted: usize,
) -> bool {
    answered_version >= committed && got >= wanted
}

/// The failure of a read that no replica could serve: `corrupt` when every
/// replica tried failed its checksum (the data is damaged everywhere we
/// looked), else `unavailable` (another replica may come back).
pub(crate) fn read_failure(errors: &[Error], message: String) -> Error {
    if !errors.is_empty() && errors.iter().all(|e| matches!(e, Error::Corrupt(_))) {
        Error::Corrupt(message)
    } else {
        Error::unavailable(message)
    }
}

/// Where an overwrite of `len` bytes at `offset` of a chunk with `valid`
/// recorded bytes writes: from `offset`, or from `valid` with the gap
/// between them filled with zeros (bytes a truncate left on the nodes
/// there must not reappear). Returns (write offset, zero bytes first).
pub(crate) fn overwrite_span(valid: u32, offset: u64) -> (u64, usize) {
    let gap = offset.saturating_sub(valid as u64);
    (offset - gap, gap as usize)
}

/// The valid length of a chunk with `valid` recorded bytes after `len`
/// bytes were written at `offset`.
pub(crate) fn length_after_write(valid: u32, offset: u64, len: usize) -> u32 {
    (valid as u64).max(offset + len as u64) as u32
}

/// What a verified read learns from the digests (version, length, digest
/// of stored CRCs) of every replica of a chunk committed at `committed`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Vote {
    /// A strict majority of the record's replicas hold one content at
    /// `version` (at least the committed one): serve it from `agree`.
    /// `odd` are the replicas that are wrong beyond doubt: a different
    /// content at that same version (two contents for one version break
    /// invariant I1: one of them was damaged behind the node's checksums),
    /// or a version behind the committed one (they missed a write).
    /// Replicas at other versions are neither: a write may be reaching
    /// them right now.
    Majority {
        version: Version,
        agree: Vec<u64>,
        odd: Vec<u64>,
    },
    /// No majority, but the replicas that answered are at different
    /// versions past the committed one: a write is likely in flight; ask
    /// again.
    Unsettled,
    /// No majority, and no write explains it: the read must fail.
    NoMajority,
}

/// The majority rule of a verified read: `answers` has one entry per
/// replica of the record (a replica that could not be asked counts
/// against every content). A majority needs more than half of them, so
/// with two replicas that disagree the read fails instead of guessing.
pub(crate) fn vote(
    committed: Version,
    answers: &[(u64, Option<&crate::chunk_io::ReplicaDigest>)],
) -> Vote {
    let held: Vec<(u64, &crate::chunk_io::ReplicaDigest)> =
        answers.iter().filter_map(|&(n, d)| Some((n, d?))).collect();
    let best = held
        .iter()
        .filter(|(_, d)| d.version >= committed)
        .max_by_key(|(_, d)| held.iter().filter(|(_, o)| o == d).count());
    if let Some(&(_, winner)) = best {
        let agree: Vec<u64> = held
            .iter()
            .filter(|(_, d)| *d == winner)
            .map(|&(n, _)| n)
            .collect();
        if agree.len() * 2 > answers.len() {
            let odd = held
                .iter()
                .filter(|(_, d)| {
                    (d.version == winner.version && *d != winner) || d.version < committed
                })
                .map(|&(n, _)| n)
                .collect();
            return Vote::Majority {
                version: winner.version,
                agree,
                odd,
            };
        }
    }
    let moving = held
        .iter()
        .any(|(_, a)| a.version > committed && held.iter().any(|(_, b)| b.version != a.version));
    if moving {
        Vote::Unsettled
    } else {
        Vote::NoMajority
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_prefer_up_then_idle_replicas_and_spread_over_equals() {
        let all_up = |_| true;
        let idle = |_| 0;
        // Equal replicas: the rotation gives chunks different first choices.
        let firsts: Vec<u64> = (0..3)
            .map(|index| read_order(&[7, 8, 9], index, all_up, idle)[0])
            .collect();
        assert_eq!(firsts, vec![7, 9, 8]);
        // A down replica is tried last, whatever its load.
        assert_eq!(
            read_order(&[7, 8, 9], 0, |n| n != 7, |n| if n == 7 { 0 } else { 5 }),
            vec![8, 9, 7]
        );
        // Among up replicas, the least loaded first.
        assert_eq!(
            read_order(&[7, 8, 9], 0, all_up, |n| (10 - n) as usize),
            vec![9, 8, 7]
        );
        assert!(read_order(&[], 3, all_up, idle).is_empty());
    }

    #[test]
    fn quorum_durable_replicas_and_answers_needed() {
        assert!(has_quorum(1, 0), "a quorum of 0 means 1");
        assert!(!has_quorum(0, 0));
        assert!(has_quorum(2, 2));
        assert!(!has_quorum(1, 2));
        let chain = [7u64, 8, 9];
        assert_eq!(durable_nodes(&chain, 0b101, |n| *n), vec![7, 9]);
        assert_eq!(
            durable_nodes(&chain, 0xffff, |n| *n),
            vec![7, 8, 9],
            "a node cannot claim more than the chain"
        );
        assert!(durable_nodes(&chain, 0, |n| *n).is_empty());
        // R=3: W=2 needs 2 answers, W=1 all 3, W=3 one.
        assert_eq!(answers_needed(3, 2), 2);
        assert_eq!(answers_needed(3, 1), 3);
        assert_eq!(answers_needed(3, 3), 1);
        assert_eq!(answers_needed(2, 0), 2, "a quorum of 0 means 1");
        assert_eq!(answers_needed(1, 3), 1);
    }

    #[test]
    fn failures_are_classified_for_retry_and_failover() {
        let unavailable = Error::unavailable("node gone");
        for e in [
            unavailable.clone(),
            Error::Quorum("1 of 2".into()),
            Error::Timeout("slow".into()),
        ] {
            assert!(retry_new_chunk(&e), "{e}");
        }
        for e in [
            Error::NoSpace("full".into()),
            Error::InvalidArgument("bad".into()),
            Error::Corrupt("crc".into()),
            Error::Busy("locked".into()),
        ] {
            assert!(!retry_new_chunk(&e), "{e}");
        }
        assert_eq!(
            placement_failure(true, "m".into()),
            Error::NoSpace("m".into())
        );
        assert_eq!(
            placement_failure(false, "m".into()),
            Error::unavailable("m")
        );
    }

    #[test]
    fn corrupt_only_when_every_replica_tried_was_corrupt() {
        let corrupt = Error::Corrupt("crc".into());
        let gone = Error::unavailable("gone");
        assert_eq!(
            read_failure(&[corrupt.clone(), corrupt.clone()], "m".into()),
            Error::Corrupt("m".into())
        );
        assert_eq!(
            read_failure(&[corrupt, gone], "m".into()),
            Error::unavailable("m")
        );
        assert_eq!(read_failure(&[], "m".into()), Error::unavailable("m"));
    }

    #[test]
    fn stale_or_short_replicas_are_not_served() {
        let v = |e, s| Version::new(e, s);
        assert!(replica_is_current(v(1, 5), v(1, 5), 10, 10));
        assert!(replica_is_current(v(1, 6), v(1, 5), 12, 10));
        assert!(
            replica_is_current(v(2, 1), v(1, 5), 10, 10),
            "a newer epoch"
        );
        assert!(
            !replica_is_current(v(1, 4), v(1, 5), 10, 10),
            "missed a write"
        );
        assert!(!replica_is_current(v(1, 5), v(1, 5), 9, 10), "lost bytes");
    }

    #[test]
    fn an_overwrite_past_the_valid_bytes_zero_fills_the_gap() {
        assert_eq!(overwrite_span(100, 50), (50, 0));
        assert_eq!(overwrite_span(100, 100), (100, 0));
        assert_eq!(overwrite_span(100, 150), (100, 50));
        assert_eq!(length_after_write(100, 50, 10), 100);
        assert_eq!(length_after_write(100, 150, 10), 160);
    }

    fn digest(version: u64, content: u8) -> crate::chunk_io::ReplicaDigest {
        crate::chunk_io::ReplicaDigest {
            version: Version::new(1, version),
            length: 4096,
            digest: vec![content; 32],
        }
    }

    #[test]
    fn a_verified_read_serves_the_majority_and_names_the_odd_replicas() {
        let (a, b, damaged) = (digest(5, 1), digest(5, 1), digest(5, 9));
        let committed = Version::new(1, 5);
        assert_eq!(
            vote(
                committed,
                &[(1, Some(&a)), (2, Some(&damaged)), (3, Some(&b))]
            ),
            Vote::Majority {
                version: committed,
                agree: vec![1, 3],
                odd: vec![2]
            }
        );
        // A replica behind the record is odd; one past the majority (a
        // write reaching it) is not.
        let (behind, ahead) = (digest(4, 1), digest(6, 3));
        assert_eq!(
            vote(
                committed,
                &[(1, Some(&a)), (2, Some(&behind)), (3, Some(&b))]
            ),
            Vote::Majority {
                version: committed,
                agree: vec![1, 3],
                odd: vec![2]
            }
        );
        assert_eq!(
            vote(
                committed,
                &[(1, Some(&a)), (2, Some(&ahead)), (3, Some(&b))]
            ),
            Vote::Majority {
                version: committed,
                agree: vec![1, 3],
                odd: vec![]
            }
        );
        // An unreachable replica counts against: two of three still win.
        assert!(matches!(
            vote(committed, &[(1, Some(&a)), (2, None), (3, Some(&b))]),
            Vote::Majority { .. }
        ));
    }

    #[test]
    fn a_verified_read_without_a_strict_majority_never_guesses() {
        let committed = Version::new(1, 5);
        let (a, damaged) = (digest(5, 1), digest(5, 9));
        // Two replicas that disagree at one version: no majority.
        assert_eq!(
            vote(committed, &[(1, Some(&a)), (2, Some(&damaged))]),
            Vote::NoMajority
        );
        // One of three answered: not a majority of the record.
        assert_eq!(
            vote(committed, &[(1, Some(&a)), (2, None), (3, None)]),
            Vote::NoMajority
        );
        // A majority behind the record is no majority to serve.
        let (old, old2) = (digest(4, 1), digest(4, 1));
        assert_eq!(
            vote(
                committed,
                &[(1, Some(&old)), (2, Some(&old2)), (3, Some(&a))]
            ),
            Vote::NoMajority
        );
        // Versions that differ past the record: a write in flight.
        let (six, seven) = (digest(6, 2), digest(7, 3));
        assert_eq!(
            vote(
                committed,
                &[(1, Some(&a)), (2, Some(&six)), (3, Some(&seven))]
            ),
            Vote::Unsettled
        );
    }
}
