//! Conversions between the Cap'n Proto messages of `control.capnp` and the
//! server's own types, and the wrapper that turns a [`ControlError`] into a
//! typed wire error.

use std::time::{SystemTime, UNIX_EPOCH};

use ringfs_schema::common_capnp::capacity;
use ringfs_schema::control_capnp::{
    attr, chunk_health, chunk_record, command_result, node_command, CommandKind, FileKind,
};
use ringfs_schema::{read_chunk_id, write_chunk_id, Version};

use crate::commands::Work;
use crate::error::{ControlError, Result};
use crate::membership::Capacity;
use crate::records::{Chunk, Inode, Kind};
use crate::repair::ProblemKind;

/// Now, in nanoseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

pub(super) fn text(r: capnp::Result<capnp::text::Reader<'_>>) -> Result<String> {
    r?.to_string()
        .map_err(|_| ControlError::InvalidArgument("text is not valid UTF-8".into()))
}

/// The options of a create, as the wire carries them.
pub(super) fn read_create_options(
    o: ringfs_schema::control_capnp::create_options::Reader,
) -> crate::store::CreateOptions {
    crate::store::CreateOptions {
        mode: o.get_mode(),
        chunk_size: o.get_chunk_size(),
        replication: o.get_replication(),
        write_quorum: o.get_write_quorum(),
        exclusive: o.get_exclusive(),
    }
}

pub(super) fn fill_attr(mut b: attr::Builder, ino: u64, a: &Inode) {
    b.set_inode(ino);
    b.set_kind(match a.kind {
        Kind::File => FileKind::File,
        Kind::Directory => FileKind::Directory,
    });
    b.set_size(a.size);
    b.set_mode(a.mode);
    b.set_mtime_ns(a.mtime_ns);
    b.set_chunk_size(a.chunk_size);
    b.set_replication(a.replication);
    b.set_write_quorum(a.write_quorum);
    b.set_version(a.version);
    b.set_uid(a.uid);
    b.set_gid(a.gid);
}

pub(super) fn read_capacity(c: capacity::Reader) -> Capacity {
    Capacity {
        total: c.get_total_bytes(),
        used: c.get_used_bytes(),
        reserved: c.get_reserved_bytes(),
        chunks: c.get_chunk_count(),
    }
}

pub(super) fn read_chunk_record(r: chunk_record::Reader) -> Result<(u64, Chunk)> {
    let id = read_chunk_id(r.get_chunk_id()?);
    let replicas = r.get_replicas()?;
    if replicas.len() > u8::MAX as u32 {
        return Err(ControlError::InvalidArgument("too many replicas".into()));
    }
    Ok((
        r.get_index(),
        Chunk {
            id,
            replicas: replicas.iter().collect(),
            length: r.get_length(),
            version: Version::new(r.get_version_epoch(), r.get_version_seq()),
        },
    ))
}

pub(super) fn fill_chunk_record(mut b: chunk_record::Builder, index: u64, c: &Chunk) {
    b.set_index(index);
    write_chunk_id(b.reborrow().init_chunk_id(), c.id);
    b.set_length(c.length);
    b.set_version_epoch(c.version.epoch);
    b.set_version_seq(c.version.seq);
    let mut reps = b.init_replicas(c.replicas.len() as u32);
    for (i, r) in c.replicas.iter().enumerate() {
        reps.set(i as u32, *r);
    }
}

pub(super) fn node_key(r: capnp::Result<capnp::data::Reader<'_>>) -> Result<[u8; 16]> {
    let k = r?;
    if k.is_empty() {
        return Ok([0; 16]);
    }
    k.try_into()
        .map_err(|_| ControlError::InvalidArgument("a node key is 16 bytes".into()))
}

/// Runs `f` and turns a [`ControlError`] into a typed wire error.
pub(super) async fn wire<F: std::future::Future<Output = Result<()>>>(
    f: F,
) -> Result<(), capnp::Error> {
    f.await.map_err(capnp::Error::from)
}

pub(crate) fn fill_command(mut b: node_command::Builder, c: &crate::commands::Command) {
    b.set_id(c.id);
    match &c.work {
        Work::Delete { chunk, newest, .. } => {
            b.set_kind(CommandKind::Delete);
            b.set_version_epoch(newest.epoch);
            b.set_version_seq(newest.seq);
            write_chunk_id(b.init_chunk_id(), *chunk);
        }
        Work::Copy {
            chunk,
            version,
            target,
            target_addr,
            target_version,
            ..
        } => {
            b.set_kind(CommandKind::Copy);
            b.set_version_epoch(version.epoch);
            b.set_version_seq(version.seq);
            b.set_target_node_id(*target);
            b.set_target_address(target_addr.as_str());
            b.set_replace(*target_version != Version::NONE);
            b.set_target_epoch(target_version.epoch);
            b.set_target_seq(target_version.seq);
            write_chunk_id(b.init_chunk_id(), *chunk);
        }
    }
}

/// A command's outcome as a node reports it: (id, ok, message, version,
/// length).
pub(crate) fn read_command_result(
    d: command_result::Reader,
) -> Result<(u64, bool, String, Version, u64)> {
    Ok((
        d.get_id(),
        d.get_ok(),
        text(d.get_message())?,
        Version::new(d.get_version_epoch(), d.get_version_seq()),
        d.get_length(),
    ))
}

pub(super) fn fill_health(mut b: chunk_health::Builder, h: &crate::repair::Health) {
    b.set_chunks(h.chunks);
    b.set_healthy(h.healthy);
    b.set_under_replicated(h.under_replicated);
    b.set_being_repaired(h.being_repaired);
    b.set_lost(h.lost);
    b.set_unverified(h.unverified);
    b.set_namespace_errors(h.namespace_errors);
    b.set_copies_in_flight(h.copies_in_flight as u32);
    b.set_deletes_pending(h.deletes_pending);
    let mut list = b.init_problems(h.problems.len() as u32);
    for (i, p) in h.problems.iter().enumerate() {
        let mut e = list.reborrow().get(i as u32);
        e.set_path(p.path.as_str());
        e.set_index(p.index);
        e.set_kind(match p.kind {
            ProblemKind::UnderReplicated => {
                ringfs_schema::control_capnp::ProblemKind::UnderReplicated
            }
            ProblemKind::Lost => ringfs_schema::control_capnp::ProblemKind::Lost,
            ProblemKind::BeingRepaired => ringfs_schema::control_capnp::ProblemKind::BeingRepaired,
            ProblemKind::Unverified => ringfs_schema::control_capnp::ProblemKind::Unverified,
            ProblemKind::Namespace => ringfs_schema::control_capnp::ProblemKind::Namespace,
        });
        e.set_good_replicas(p.good.min(255) as u8);
        e.set_wanted(p.wanted.min(255) as u8);
        e.set_detail(p.detail.as_str());
        write_chunk_id(e.init_chunk_id(), p.chunk);
    }
}
