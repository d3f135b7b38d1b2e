//! The records the metadata store keeps, and their byte encodings in redb.
//!
//! Encodings are little-endian, start with a format byte, and are decoded
//! with bounds checks: a damaged record is a [`Malformed`] error (which the
//! store reports as a [`crate::ControlError::Corrupt`] naming the record),
//! never a panic. Records of an older format are refused the same way, with
//! a message that says so: there is no migration.

use ringfs_schema::Version;

/// Inode number of the root directory.
pub const ROOT_INODE: u64 = 1;

/// Kind of an inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Kind {
    /// A regular file: chunks and a size.
    File,
    /// A directory: entries.
    Directory,
}

/// Why a stored record does not decode.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {problem}")]
pub struct Malformed {
    /// The kind of record: `inode`, `chunk` or `node`.
    pub what: &'static str,
    /// What is wrong with its bytes.
    pub problem: String,
}

type Result<T> = std::result::Result<T, Malformed>;

/// An inode. Files and directories have exactly one parent (no hard links),
/// which makes "is this directory inside that one" a walk up the parents.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Inode {
    /// File or directory.
    pub kind: Kind,
    /// Parent directory's inode; the root is its own parent.
    pub parent: u64,
    /// Committed size in bytes.
    pub size: u64,
    /// Permission bits (lower 12 bits).
    pub mode: u32,
    /// Last modification, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// Bytes per chunk (files); 0 for directories.
    pub chunk_size: u32,
    /// Replicas per chunk (files); 0 for directories.
    pub replication: u8,
    /// Durable replicas a write needs, 1..=replication (files); 0 for directories.
    pub write_quorum: u8,
    /// Bumped on every change of the inode.
    pub version: u64,
    /// Owner's user id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// Where one chunk of a file lives.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Chunk {
    /// The chunk id the storage nodes know it by.
    pub id: u128,
    /// Node ids, primary first; distinct.
    pub replicas: Vec<u64>,
    /// Valid bytes; bytes past it read as zeros.
    pub length: u32,
    /// The version of the chunk's last committed write: every listed
    /// replica held it at the commit (and those replicas are identical). A
    /// replica below it missed a write.
    pub version: Version,
}

/// A user registered by the administrator (the built-in ones are not
/// stored). Its key is never stored: it derives from the cluster secret and
/// `salt` (`ringfs_ops::auth`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct User {
    /// Its user id (owner of what it creates).
    pub uid: u32,
    /// Its groups, the primary one (group of what it creates) first.
    pub gids: Vec<u32>,
    /// May do everything, as the built-in administrator.
    pub admin: bool,
    /// Input of its key derivation, drawn when it was added.
    pub salt: [u8; 16],
}

/// A registered storage node, as persisted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// Secret the node presents to rejoin and heartbeat under its id.
    pub key: [u8; 16],
    /// Data-plane endpoints, one per shard, "ip:port", index = shard.
    pub shards: Vec<String>,
}

/// 2: owner and group (uid, gid) after the version. Format 1 is refused.
const INODE_FORMAT: u8 = 2;
const USER_FORMAT: u8 = 1;
/// Most groups a user has.
pub const MAX_GROUPS: usize = 32;
/// 2: the version is an (epoch, seq) pair. Format 1 (a single u64) is
/// refused.
const CHUNK_FORMAT: u8 = 2;
const NODE_FORMAT: u8 = 1;

/// Bounds-checked little-endian reader over a record.
struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], what: &'static str, format: u8) -> Result<Self> {
        let mut r = Reader { buf, what };
        let f = r.u8()?;
        if f < format {
            return Err(r.malformed(format!(
                "format {f}, written by an older ringfs (this one reads format {format}; \
                 there is no migration)"
            )));
        }
        if f != format {
            return Err(r.malformed(format!("unknown format {f}")));
        }
        Ok(r)
    }
    fn malformed(&self, problem: impl Into<String>) -> Malformed {
        Malformed {
            what: self.what,
            problem: problem.into(),
        }
    }
    fn take<const N: usize>(&mut self) -> Result<[u8; N]> {
        if self.buf.len() < N {
            return Err(self.malformed("truncated"));
        }
        let (head, tail) = self.buf.split_at(N);
        self.buf = tail;
        Ok(head.try_into().expect("split_at gives N bytes"))
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take()?))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take()?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take()?))
    }
    fn u128(&mut self) -> Result<u128> {
        Ok(u128::from_le_bytes(self.take()?))
    }
    fn bytes(&mut self, len: usize) -> Result<&'a [u8]> {
        if self.buf.len() < len {
            return Err(self.malformed("truncated"));
        }
        let (head, tail) = self.buf.split_at(len);
        self.buf = tail;
        Ok(head)
    }
    fn end(self) -> Result<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(self.malformed("trailing bytes"))
        }
    }
}

impl Inode {
    /// Records a change at `now_ns` (nanoseconds since the Unix epoch):
    /// sets the mtime and bumps the version.
    pub fn touch(&mut self, now_ns: i64) {
        self.mtime_ns = now_ns;
        self.version += 1;
    }

    /// The stored form.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(48);
        b.push(INODE_FORMAT);
        b.push(match self.kind {
            Kind::File => 0,
            Kind::Directory => 1,
        });
        b.extend_from_slice(&self.parent.to_le_bytes());
        b.extend_from_slice(&self.size.to_le_bytes());
        b.extend_from_slice(&self.mode.to_le_bytes());
        b.extend_from_slice(&self.mtime_ns.to_le_bytes());
        b.extend_from_slice(&self.chunk_size.to_le_bytes());
        b.push(self.replication);
        b.push(self.write_quorum);
        b.extend_from_slice(&self.version.to_le_bytes());
        b.extend_from_slice(&self.uid.to_le_bytes());
        b.extend_from_slice(&self.gid.to_le_bytes());
        b
    }

    /// Decodes the stored form.
    pub fn decode(buf: &[u8]) -> Result<Self> {
        let mut r = Reader::new(buf, "inode", INODE_FORMAT)?;
        let kind = match r.u8()? {
            0 => Kind::File,
            1 => Kind::Directory,
            k => return Err(r.malformed(format!("unknown kind {k}"))),
        };
        let inode = Inode {
            kind,
            parent: r.u64()?,
            size: r.u64()?,
            mode: r.u32()?,
            mtime_ns: r.u64()? as i64,
            chunk_size: r.u32()?,
            replication: r.u8()?,
            write_quorum: r.u8()?,
            version: r.u64()?,
            uid: r.u32()?,
            gid: r.u32()?,
        };
        r.end()?;
        Ok(inode)
    }
}

impl User {
    /// The stored form.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![USER_FORMAT];
        b.extend_from_slice(&self.uid.to_le_bytes());
        b.push(self.admin as u8);
        b.extend_from_slice(&self.salt);
        b.push(self.gids.len() as u8);
        for g in &self.gids {
            b.extend_from_slice(&g.to_le_bytes());
        }
        b
    }

    /// Decodes the stored form.
    pub fn decode(buf: &[u8]) -> Result<Self> {
        let mut r = Reader::new(buf, "user", USER_FORMAT)?;
        let uid = r.u32()?;
        let admin = match r.u8()? {
            0 => false,
            1 => true,
            b => return Err(r.malformed(format!("admin flag {b}"))),
        };
        let salt = r.take::<16>()?;
        let n = r.u8()? as usize;
        if n > MAX_GROUPS {
            return Err(r.malformed(format!("{n} groups")));
        }
        let gids = (0..n).map(|_| r.u32()).collect::<Result<_>>()?;
        r.end()?;
        Ok(User {
            uid,
            gids,
            admin,
            salt,
        })
    }
}

impl Chunk {
    /// The stored form.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(32 + 8 * self.replicas.len());
        b.push(CHUNK_FORMAT);
        b.extend_from_slice(&self.id.to_le_bytes());
        b.extend_from_slice(&self.length.to_le_bytes());
        b.extend_from_slice(&self.version.epoch.to_le_bytes());
        b.extend_from_slice(&self.version.seq.to_le_bytes());
        b.push(self.replicas.len() as u8);
        for r in &self.replicas {
            b.extend_from_slice(&r.to_le_bytes());
        }
        b
    }

    /// Decodes the stored form.
    pub fn decode(buf: &[u8]) -> Result<Self> {
        let mut r = Reader::new(buf, "chunk", CHUNK_FORMAT)?;
        let id = r.u128()?;
        let length = r.u32()?;
        let version = Version::new(r.u64()?, r.u64()?);
        let n = r.u8()?;
        let replicas = (0..n).map(|_| r.u64()).collect::<Result<_>>()?;
        r.end()?;
        Ok(Chunk {
            id,
            replicas,
            length,
            version,
        })
    }
}

impl Node {
    /// The stored form.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![NODE_FORMAT];
        b.extend_from_slice(&self.key);
        b.extend_from_slice(&(self.shards.len() as u16).to_le_bytes());
        for s in &self.shards {
            b.extend_from_slice(&(s.len() as u16).to_le_bytes());
            b.extend_from_slice(s.as_bytes());
        }
        b
    }

    /// Decodes the stored form.
    pub fn decode(buf: &[u8]) -> Result<Self> {
        let mut r = Reader::new(buf, "node", NODE_FORMAT)?;
        let key = r.take::<16>()?;
        let n = r.u16()?;
        let mut shards = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let len = r.u16()? as usize;
            let s = std::str::from_utf8(r.bytes(len)?)
                .map_err(|_| r.malformed("endpoint is not UTF-8"))?;
            shards.push(s.to_string());
        }
        r.end()?;
        Ok(Node { key, shards })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn inode_round_trips(dir: bool, parent: u64, size: u64, mode: u32, mtime_ns: i64,
                             chunk_size: u32, replication: u8, write_quorum: u8, version: u64,
                             uid: u32, gid: u32) {
            let i = Inode { kind: if dir { Kind::Directory } else { Kind::File }, parent, size,
                            mode, mtime_ns, chunk_size, replication, write_quorum, version,
                            uid, gid };
            prop_assert_eq!(Inode::decode(&i.encode()).unwrap(), i);
        }

        #[test]
        fn chunk_round_trips(id: u128, replicas in proptest::collection::vec(any::<u64>(), 0..8),
                             length: u32, epoch: u64, seq: u64) {
            let c = Chunk { id, replicas, length, version: Version::new(epoch, seq) };
            prop_assert_eq!(Chunk::decode(&c.encode()).unwrap(), c);
        }

        #[test]
        fn node_round_trips(key: [u8; 16], shards in proptest::collection::vec(".{0,30}", 0..4)) {
            let n = Node { key, shards };
            prop_assert_eq!(Node::decode(&n.encode()).unwrap(), n);
        }

        #[test]
        fn user_round_trips(uid: u32, gids in proptest::collection::vec(any::<u32>(), 0..32),
                            admin: bool, salt: [u8; 16]) {
            let u = User { uid, gids, admin, salt };
            prop_assert_eq!(User::decode(&u.encode()).unwrap(), u);
        }

        #[test]
        fn garbage_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Inode::decode(&buf);
            let _ = Chunk::decode(&buf);
            let _ = Node::decode(&buf);
            let _ = User::decode(&buf);
        }
    }

    #[test]
    fn truncated_record_is_malformed() {
        let c = Chunk {
            id: 7,
            replicas: vec![1, 2],
            length: 10,
            version: Version::new(1, 3),
        }
        .encode();
        assert_eq!(
            Chunk::decode(&c[..c.len() - 1]),
            Err(Malformed {
                what: "chunk",
                problem: "truncated".into()
            })
        );
        let mut old = c.clone();
        old[0] = 1;
        let e = Chunk::decode(&old).unwrap_err();
        assert!(e.problem.contains("older ringfs"), "{e}");
    }
}
