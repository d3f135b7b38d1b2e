//! Backup and restore of the metadata: a snapshot file written by a running
//! server (`Control.takeSnapshot`, `ringfs admin snapshot`), and restoring
//! one into an empty data directory before a server starts there
//! (`ringfs-control --restore FILE`).
//!
//! A single server writes `DIR/metadata-snapshot` (the store's export); a
//! replica builds a Raft snapshot (`DIR/raft-snapshot`: a header with the
//! Raft meta, then the same export). Restore takes either.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{ControlError, Result};
use crate::store::{FileDefaults, MetaStore};

/// Name of a single server's snapshot in its data directory.
pub const SNAPSHOT_FILE: &str = "metadata-snapshot";

fn io(context: String) -> impl FnOnce(std::io::Error) -> ControlError {
    move |e| ControlError::io(context, e)
}

fn snapshot_error(e: crate::store::SnapshotError) -> ControlError {
    match e {
        crate::store::SnapshotError::Store(e) => e,
        other => ControlError::InvalidArgument(ringfs_schema::wire_error::describe(&other)),
    }
}

/// Writes a snapshot of `store` to `dir/metadata-snapshot` (atomically);
/// returns its path, 0 (no log index) and its size.
pub fn write(store: &MetaStore, dir: &Path) -> Result<(PathBuf, u64, u64)> {
    let path = dir.join(SNAPSHOT_FILE);
    let tmp = dir.join(format!("{SNAPSHOT_FILE}.tmp"));
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(&tmp).map_err(io(format!("creating {}", tmp.display())))?,
    );
    let bytes = store.export(&mut f).map_err(snapshot_error)?;
    let f = f
        .into_inner()
        .map_err(|e| ControlError::io(format!("writing {}", tmp.display()), e.into_error()))?;
    f.sync_all()
        .map_err(io(format!("syncing {}", tmp.display())))?;
    std::fs::rename(&tmp, &path).map_err(io(format!("renaming {}", tmp.display())))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(format!("syncing {}", dir.display())))?;
    Ok((path, 0, bytes))
}

/// Restores the snapshot file at `from` (either kind) into the data
/// directory `dir`, which must hold no metadata and no Raft state yet.
/// The restored server starts as a single server, or with `--bootstrap` as
/// the first replica of a new group (whose first snapshot then carries the
/// restored metadata to the others).
pub fn restore(from: &Path, dir: &Path) -> Result<u64> {
    for existing in ["meta.redb", "raft-log.redb"] {
        if dir.join(existing).exists() {
            return Err(ControlError::InvalidArgument(format!(
                "{} already holds {existing}: restore into an empty data directory",
                dir.display()
            )));
        }
    }
    let bytes = std::fs::read(from).map_err(io(format!("reading {}", from.display())))?;
    let data: &[u8] = if bytes.starts_with(b"RINGFSM1") {
        &bytes
    } else {
        crate::raft::state_machine::split_header(&bytes)
            .map_err(ControlError::InvalidArgument)?
            .1
    };
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    let store = MetaStore::open(&dir.join("meta.redb"), FileDefaults::default())?;
    if let Err(e) = store.import(data, &[]) {
        drop(store);
        let _ = std::fs::remove_file(dir.join("meta.redb"));
        return Err(snapshot_error(e));
    }
    let problems = store.consistency_problems()?;
    if !problems.is_empty() {
        return Err(ControlError::InvalidArgument(format!(
            "the restored metadata is inconsistent: {}",
            problems.join("; ")
        )));
    }
    std::io::stdout().flush().ok();
    Ok(data.len() as u64)
}
