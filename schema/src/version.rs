//! Chunk versions: `(epoch, seq)` pairs, ordered lexicographically.
//!
//! The epoch comes from the control server with a write lease (unique to
//! that lease, above every epoch handed out before); the seq is the
//! writer's own counter. So one version is created by exactly one writer,
//! which sends one payload per version: replicas at the same version hold
//! the same bytes (the invariant `docs/architecture.md` argues).

use std::fmt;

/// A chunk version. `Version::NONE` (0, 0) is an empty, reserved chunk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    /// The write lease's epoch (compared first).
    pub epoch: u64,
    /// The writer's sequence number within its epoch.
    pub seq: u64,
}

impl Version {
    /// (0, 0): no write yet.
    pub const NONE: Version = Version { epoch: 0, seq: 0 };
    /// The largest version: a delete fenced with it deletes any replica.
    pub const MAX: Version = Version {
        epoch: u64::MAX,
        seq: u64::MAX,
    };

    /// The version `(epoch, seq)`.
    pub const fn new(epoch: u64, seq: u64) -> Self {
        Self { epoch, seq }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.epoch, self.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_order_by_epoch_then_seq() {
        assert!(Version::new(2, 0) > Version::new(1, u64::MAX));
        assert!(Version::new(1, 2) > Version::new(1, 1));
        assert!(Version::NONE < Version::new(0, 1));
        assert_eq!(Version::new(3, 4).to_string(), "3.4");
    }
}
