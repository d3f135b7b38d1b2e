//! Data-plane framing: `u32` little-endian header length, a Cap'n Proto
//! `FrameHeader` (standard serialization), then `payload_length` raw bytes.
//!
//! [`Header`] is the decoded, owned form of a `FrameHeader`; [`decode_header`]
//! validates everything a peer could get wrong without panicking (it is the
//! target of the fuzzer under `storage-node/fuzz`).
//!
//! Runtime-independent: shared by the storage node (glommio) and the client
//! library (tokio).

use crate::data_capnp::{frame_header, lock_token};
pub use crate::data_capnp::{LockMode, Op, Status};
use crate::ids::ChunkId;
use crate::version::Version;

/// Largest accepted header, in bytes: room for the CRC list of a whole
/// chunk (64 KiB), a full chain and a message.
pub const MAX_HEADER_LEN: usize = 96 * 1024;
/// Largest accepted payload, in bytes: one whole chunk.
pub const MAX_PAYLOAD_LEN: usize = crate::MAX_CHUNK_SIZE as usize;
/// Most hops a chain may list.
pub const MAX_CHAIN: usize = 15;
/// Longest MAC accepted in a token, in bytes.
pub const MAX_MAC_LEN: usize = 64;
/// Bytes of a data-plane capability (`ringfs_ops::capability`).
pub const CAPABILITY_LEN: usize = 80;

/// Why a frame could not be decoded. All of them lose the framing, so the
/// connection is closed after a `malformed` error frame.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// The length prefix is out of range or not a multiple of 8.
    #[error("header length {0} outside 8..={MAX_HEADER_LEN} or not a multiple of 8")]
    HeaderLength(usize),
    /// The header bytes are not a Cap'n Proto `FrameHeader`.
    #[error("header is not a valid Cap'n Proto FrameHeader: {0}")]
    Capnp(String),
    /// Bytes follow the message inside the header length.
    #[error("header has {0} trailing bytes after the message")]
    Trailing(usize),
    /// The announced payload is larger than [`MAX_PAYLOAD_LEN`].
    #[error("payload length {0} exceeds the limit {MAX_PAYLOAD_LEN}")]
    PayloadTooLong(u64),
    /// The chain lists more than [`MAX_CHAIN`] hops.
    #[error("chain of {0} hops exceeds the limit {MAX_CHAIN}")]
    ChainTooLong(usize),
    /// A token's MAC is longer than [`MAX_MAC_LEN`].
    #[error("token MAC of {0} bytes exceeds the limit {MAX_MAC_LEN}")]
    MacTooLong(usize),
    /// The CRC list is longer than one per block of the largest chunk.
    #[error("{0} CRCs exceed the limit {max}", max = crate::crc::MAX_CRCS)]
    TooManyCrcs(usize),
    /// A digest is longer than 32 bytes.
    #[error("digest of {0} bytes exceeds 32")]
    DigestTooLong(usize),
    /// A capability is neither empty nor [`CAPABILITY_LEN`] bytes.
    #[error("capability of {0} bytes (a capability is {CAPABILITY_LEN} bytes)")]
    CapabilityLength(usize),
    /// An enum field holds a value this build does not know.
    #[error("unknown {field} value {value}")]
    UnknownEnum {
        /// The header field.
        field: &'static str,
        /// Its raw value.
        value: u16,
    },
}

/// A lock token as carried on the wire.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Token {
    /// The client the lock was granted to.
    pub client_id: u64,
    /// The node's grant counter for this chunk: a token of an earlier grant
    /// is stale.
    pub generation: u64,
    /// The node's keyed hash over chunk id, client id and generation;
    /// opaque to clients. Empty: no token.
    pub mac: Vec<u8>,
}

impl Token {
    /// A token with an empty MAC means "no token".
    pub fn is_present(&self) -> bool {
        !self.mac.is_empty()
    }
}

/// One further replica of a chain write.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hop {
    /// The replica's node id.
    pub node_id: u64,
    /// Its shard endpoint, `ip:port`.
    pub address: String,
    /// The write lock (or reservation) held on that replica.
    pub token: Token,
}

/// The owned form of a `FrameHeader`; field meanings and units are documented
/// in `schema/data.capnp`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Chosen by the client, echoed by the node: matches responses to requests.
    pub request_id: u64,
    /// The operation.
    pub op: Op,
    /// Requests: `ok`. Responses: the outcome.
    pub status: Status,
    /// Responses: human-readable error detail (empty on success).
    pub message: String,
    /// The chunk the operation is about.
    pub chunk_id: ChunkId,
    /// Byte offset in the chunk (read, write).
    pub offset: u64,
    /// Bytes to read (read requests).
    pub length: u32,
    /// Bytes of raw payload following the header.
    pub payload_length: u32,
    /// Write requests: the version the write creates. copyTo: the version
    /// the source must hold. delete: the newest version the replica may
    /// hold to be deleted. Responses: the chunk's version.
    pub version: Version,
    /// Write and copyTo requests: the version the (target) replica must
    /// hold for the request to apply (compare-and-set).
    pub expected: Version,
    /// Write requests: CRC32C of each piece of the payload on the chunk's
    /// 4 KiB block grid ([`crate::crc`]). Read responses: the stored CRC of
    /// each block of the payload.
    pub crcs: Vec<u32>,
    /// Write requests: the chunk becomes exactly the payload (offset 0),
    /// written aside and swapped in.
    pub replace: bool,
    /// Lock, reserve and implicit-lock requests: who the lock is for.
    pub client_id: u64,
    /// Requests: the caller's lock token. Lock/reserve responses: the new token.
    pub token: Token,
    /// Lock requests: the mode wanted. Grants: the mode granted.
    pub lock_mode: LockMode,
    /// Requests without a token: take this lock for `client_id` around the
    /// single operation.
    pub implicit_lock: LockMode,
    /// Lease of a lock or reservation in milliseconds (0 = the node's
    /// default). Grants: the lease granted.
    pub lease_ms: u32,
    /// How long a lock (or implicit lock) may wait, in milliseconds; 0 = do
    /// not wait (`busy`).
    pub timeout_ms: u32,
    /// Write requests: the remaining replicas, next hop first.
    pub chain: Vec<Hop>,
    /// Write requests: durable replicas needed for `ok` (0 = all of the chain).
    pub write_quorum: u8,
    /// Write responses: replicas (this node and downstream) holding the write
    /// durably: the number of bits in `durable_mask`.
    pub durable_replicas: u8,
    /// Write responses: bit i set = chain position i (0 = the answering
    /// node, 1 = `chain[0]`, ...) holds the write durably.
    pub durable_mask: u16,
    /// Digest responses: BLAKE3 of the chunk's length and CRC table.
    pub digest: Vec<u8>,
    /// Reserve requests: bytes to reserve.
    pub reserve_bytes: u64,
    /// Responses: the chunk's length in bytes.
    pub chunk_length: u64,
    /// Requests: the caller's data-plane capability for `chunk_id`.
    /// Reserve responses that minted an id: a capability for the new chunk.
    pub capability: Option<[u8; CAPABILITY_LEN]>,
}

impl Header {
    /// A request header for `op` with everything else zero/empty.
    pub fn request(request_id: u64, op: Op) -> Self {
        Self {
            request_id,
            op,
            status: Status::Ok,
            message: String::new(),
            chunk_id: ChunkId::default(),
            offset: 0,
            length: 0,
            payload_length: 0,
            version: Version::NONE,
            expected: Version::NONE,
            crcs: Vec::new(),
            replace: false,
            client_id: 0,
            token: Token::default(),
            lock_mode: LockMode::None,
            implicit_lock: LockMode::None,
            lease_ms: 0,
            timeout_ms: 0,
            chain: Vec::new(),
            write_quorum: 0,
            durable_replicas: 0,
            durable_mask: 0,
            digest: Vec::new(),
            reserve_bytes: 0,
            chunk_length: 0,
            capability: None,
        }
    }

    /// A response to `req`: same request id, op and chunk id.
    pub fn response_to(req: &Header, status: Status) -> Self {
        let mut h = Self::request(req.request_id, req.op);
        h.status = status;
        h.chunk_id = req.chunk_id;
        h
    }

    /// An error response to `req` with `message`.
    pub fn error_to(req: &Header, status: Status, message: impl Into<String>) -> Self {
        let mut h = Self::response_to(req, status);
        h.message = message.into();
        h
    }
}

fn read_token(r: lock_token::Reader<'_>) -> Result<Token, FrameError> {
    let mac = r.get_mac().map_err(capnp_err)?;
    if mac.len() > MAX_MAC_LEN {
        return Err(FrameError::MacTooLong(mac.len()));
    }
    Ok(Token {
        client_id: r.get_client_id(),
        generation: r.get_generation(),
        mac: mac.to_vec(),
    })
}

fn write_token(mut b: lock_token::Builder<'_>, t: &Token) {
    b.set_client_id(t.client_id);
    b.set_generation(t.generation);
    b.set_mac(&t.mac);
}

fn capnp_err(e: capnp::Error) -> FrameError {
    FrameError::Capnp(e.to_string())
}

fn enum_err(field: &'static str) -> impl Fn(capnp::NotInSchema) -> FrameError {
    move |e| FrameError::UnknownEnum { field, value: e.0 }
}

/// Checks a header length prefix before reading the header itself.
pub fn check_header_len(len: usize) -> Result<(), FrameError> {
    if !(8..=MAX_HEADER_LEN).contains(&len) || !len.is_multiple_of(8) {
        return Err(FrameError::HeaderLength(len));
    }
    Ok(())
}

/// Decodes the `H` header bytes of a frame (without the length prefix).
pub fn decode_header(bytes: &[u8]) -> Result<Header, FrameError> {
    check_header_len(bytes.len())?;
    let mut opts = capnp::message::ReaderOptions::new();
    // A header is small: bound the work a hostile one can cause.
    opts.traversal_limit_in_words(Some(MAX_HEADER_LEN / 8 * 2));
    opts.nesting_limit(8);
    // Cap'n Proto reads words in place: copy the (small) header into an
    // 8-byte aligned buffer whatever the alignment of the caller's bytes.
    let mut words = capnp::Word::allocate_zeroed_vec(bytes.len() / 8);
    capnp::Word::words_to_bytes_mut(&mut words).copy_from_slice(bytes);
    let mut slice = capnp::Word::words_to_bytes(&words);
    let msg =
        capnp::serialize::read_message_from_flat_slice(&mut slice, opts).map_err(capnp_err)?;
    if !slice.is_empty() {
        return Err(FrameError::Trailing(slice.len()));
    }
    let r: frame_header::Reader<'_> = msg.get_root().map_err(capnp_err)?;
    let payload_length = r.get_payload_length();
    if payload_length as u64 > MAX_PAYLOAD_LEN as u64 {
        return Err(FrameError::PayloadTooLong(payload_length as u64));
    }
    let chunk_id = if r.has_chunk_id() {
        let c = r.get_chunk_id().map_err(capnp_err)?;
        ChunkId::new(c.get_hi(), c.get_lo())
    } else {
        ChunkId::default()
    };
    let token = if r.has_token() {
        read_token(r.get_token().map_err(capnp_err)?)?
    } else {
        Token::default()
    };
    let mut chain = Vec::new();
    if r.has_chain() {
        let list = r.get_chain().map_err(capnp_err)?;
        if list.len() as usize > MAX_CHAIN {
            return Err(FrameError::ChainTooLong(list.len() as usize));
        }
        for hop in list.iter() {
            let token = if hop.has_token() {
                read_token(hop.get_token().map_err(capnp_err)?)?
            } else {
                Token::default()
            };
            let address = hop
                .get_address()
                .map_err(capnp_err)?
                .to_string()
                .map_err(|e| FrameError::Capnp(e.to_string()))?;
            chain.push(Hop {
                node_id: hop.get_node_id(),
                address,
                token,
            });
        }
    }
    let crcs = if r.has_crcs() {
        let list = r.get_crcs().map_err(capnp_err)?;
        if list.len() as usize > crate::crc::MAX_CRCS {
            return Err(FrameError::TooManyCrcs(list.len() as usize));
        }
        list.iter().collect()
    } else {
        Vec::new()
    };
    let digest = if r.has_digest() {
        let d = r.get_digest().map_err(capnp_err)?;
        if d.len() > 32 {
            return Err(FrameError::DigestTooLong(d.len()));
        }
        d.to_vec()
    } else {
        Vec::new()
    };
    let capability = if r.has_capability() {
        let c = r.get_capability().map_err(capnp_err)?;
        if c.is_empty() {
            None
        } else {
            Some(
                c.try_into()
                    .map_err(|_| FrameError::CapabilityLength(c.len()))?,
            )
        }
    } else {
        None
    };
    let message = if r.has_message() {
        r.get_message()
            .map_err(capnp_err)?
            .to_string()
            .map_err(|e| FrameError::Capnp(e.to_string()))?
    } else {
        String::new()
    };
    Ok(Header {
        request_id: r.get_request_id(),
        op: r.get_op().map_err(enum_err("op"))?,
        status: r.get_status().map_err(enum_err("status"))?,
        message,
        chunk_id,
        offset: r.get_offset(),
        length: r.get_length(),
        payload_length,
        version: Version::new(r.get_version_epoch(), r.get_version_seq()),
        expected: Version::new(r.get_expected_epoch(), r.get_expected_seq()),
        crcs,
        replace: r.get_replace(),
        client_id: r.get_client_id(),
        token,
        lock_mode: r.get_lock_mode().map_err(enum_err("lockMode"))?,
        implicit_lock: r.get_implicit_lock().map_err(enum_err("implicitLock"))?,
        lease_ms: r.get_lease_ms(),
        timeout_ms: r.get_timeout_ms(),
        chain,
        write_quorum: r.get_write_quorum(),
        durable_replicas: r.get_durable_replicas(),
        durable_mask: r.get_durable_mask(),
        digest,
        reserve_bytes: r.get_reserve_bytes(),
        chunk_length: r.get_chunk_length(),
        capability,
    })
}

/// Encodes `h` as a complete frame prefix: the `u32` length and the header
/// bytes. The payload (if any) is sent right after by the caller.
pub fn encode_header(h: &Header) -> Vec<u8> {
    let mut msg = capnp::message::Builder::new_default();
    {
        let mut b: frame_header::Builder<'_> = msg.init_root();
        b.set_request_id(h.request_id);
        b.set_op(h.op);
        b.set_status(h.status);
        if !h.message.is_empty() {
            b.set_message(h.message.as_str());
        }
        {
            let mut c = b.reborrow().init_chunk_id();
            c.set_hi(h.chunk_id.hi);
            c.set_lo(h.chunk_id.lo);
        }
        b.set_offset(h.offset);
        b.set_length(h.length);
        b.set_payload_length(h.payload_length);
        b.set_version_epoch(h.version.epoch);
        b.set_version_seq(h.version.seq);
        b.set_expected_epoch(h.expected.epoch);
        b.set_expected_seq(h.expected.seq);
        if !h.crcs.is_empty() {
            let mut list = b.reborrow().init_crcs(h.crcs.len() as u32);
            for (i, c) in h.crcs.iter().enumerate() {
                list.set(i as u32, *c);
            }
        }
        b.set_replace(h.replace);
        b.set_client_id(h.client_id);
        if h.token.is_present() || h.token.client_id != 0 || h.token.generation != 0 {
            write_token(b.reborrow().init_token(), &h.token);
        }
        b.set_lock_mode(h.lock_mode);
        b.set_implicit_lock(h.implicit_lock);
        b.set_lease_ms(h.lease_ms);
        b.set_timeout_ms(h.timeout_ms);
        if !h.chain.is_empty() {
            let mut list = b.reborrow().init_chain(h.chain.len() as u32);
            for (i, hop) in h.chain.iter().enumerate() {
                let mut hb = list.reborrow().get(i as u32);
                hb.set_node_id(hop.node_id);
                hb.set_address(hop.address.as_str());
                write_token(hb.init_token(), &hop.token);
            }
        }
        b.set_write_quorum(h.write_quorum);
        b.set_durable_replicas(h.durable_replicas);
        b.set_durable_mask(h.durable_mask);
        if !h.digest.is_empty() {
            b.set_digest(&h.digest);
        }
        b.set_reserve_bytes(h.reserve_bytes);
        b.set_chunk_length(h.chunk_length);
        if let Some(c) = &h.capability {
            b.set_capability(c);
        }
    }
    let words = capnp::serialize::compute_serialized_size_in_words(&msg);
    let mut out = Vec::with_capacity(4 + words * 8);
    out.extend_from_slice(&((words * 8) as u32).to_le_bytes());
    capnp::serialize::write_message(&mut out, &msg).expect("writing to a Vec cannot fail");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Header {
        let mut h = Header::request(42, Op::Write);
        h.chunk_id = ChunkId::new(3, 9);
        h.offset = 4096;
        h.payload_length = 100;
        h.message = "hi".into();
        h.token = Token {
            client_id: 5,
            generation: 6,
            mac: vec![1; 32],
        };
        h.chain = vec![Hop {
            node_id: 2,
            address: "127.0.0.1:9".into(),
            token: Token {
                client_id: 5,
                generation: 1,
                mac: vec![2; 32],
            },
        }];
        h.write_quorum = 2;
        h.version = Version::new(7, 3);
        h.expected = Version::new(7, 2);
        h.crcs = vec![1, 2, 0xffff_ffff];
        h.replace = true;
        h.durable_mask = 0b101;
        h.digest = vec![9; 32];
        h.capability = Some([3; CAPABILITY_LEN]);
        h
    }

    #[test]
    fn round_trip() {
        let h = sample();
        let bytes = encode_header(&h);
        let len = u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize;
        assert_eq!(len, bytes.len() - 4);
        assert_eq!(decode_header(&bytes[4..]).unwrap(), h);
    }

    #[test]
    fn rejects_garbage_and_truncation() {
        let bytes = encode_header(&sample());
        assert!(decode_header(&bytes[4..bytes.len() - 8]).is_err());
        assert!(decode_header(&[0xff; 64]).is_err());
        assert_eq!(decode_header(&[0; 3]), Err(FrameError::HeaderLength(3)));
        let mut big = Header::request(1, Op::Write);
        big.payload_length = u32::MAX;
        let bytes = encode_header(&big);
        assert!(matches!(
            decode_header(&bytes[4..]),
            Err(FrameError::PayloadTooLong(_))
        ));
    }

    #[test]
    fn every_truncation_and_bit_flip_is_handled() {
        let bytes = encode_header(&sample());
        let body = &bytes[4..];
        for cut in 0..body.len() {
            let _ = decode_header(&body[..cut]);
        }
        for i in 0..body.len() {
            for bit in 0..8 {
                let mut b = body.to_vec();
                b[i] ^= 1 << bit;
                let _ = decode_header(&b);
            }
        }
    }
}
