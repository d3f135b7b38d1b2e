//! Namespace commands: `ls`, `stat`, `mkdir`, `mv`, `rm`, and `chown`'s owner parsing.

use std::io::Write;

use anyhow::{anyhow, bail, Context, Result};
use ringfs_client::{human, Attr, Client, Error, Kind};
use serde_json::json;

/// `chown`'s OWNER: UID, UID:GID or :GID, numbers or user names.
pub(crate) async fn parse_owner(c: &Client, s: &str) -> Result<(Option<u32>, Option<u32>)> {
    let (user, group) = match s.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (s, None),
    };
    let mut users = None;
    let mut id = async |name: &str, of_user: bool| -> Result<u32> {
        if let Ok(n) = name.parse() {
            return Ok(n);
        }
        if users.is_none() {
            users = Some(c.control().list_users().await.with_context(|| {
                format!("looking up {name:?} (only an administrator may; use a number)")
            })?);
        }
        let u = users
            .as_ref()
            .and_then(|l| l.iter().find(|u| u.name == name))
            .ok_or_else(|| anyhow!("no user {name:?}"))?;
        // A user's name as a group: its primary group.
        Ok(if of_user {
            u.uid
        } else {
            u.gids.first().copied().unwrap_or(u.uid)
        })
    };
    let uid = match user {
        "" => None,
        u => Some(id(u, true).await?),
    };
    let gid = match group {
        None | Some("") => None,
        Some(g) => Some(id(g, false).await?),
    };
    if uid.is_none() && gid.is_none() {
        bail!("chown {s:?}: give an owner, a group, or both (UID, UID:GID, :GID)");
    }
    Ok((uid, gid))
}

/// `ls`: a directory's entries, or a file's own line.
pub(crate) async fn cmd_ls(c: &Client, json: bool, long: bool, path: &str) -> Result<()> {
    let attr = c.stat(path).await?;
    let entries = if attr.kind == Kind::Directory {
        c.list(path).await?
    } else {
        vec![(path.rsplit('/').next().unwrap_or(path).to_string(), attr)]
    };
    if json {
        let v: Vec<_> = entries.iter().map(|(n, a)| attr_json(Some(n), a)).collect();
        outln!("{}", serde_json::Value::Array(v));
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    for (name, a) in &entries {
        let slash = if a.kind == Kind::Directory { "/" } else { "" };
        if long {
            writeln!(
                out,
                "{}{} {:>5} {:>5} {:>9} {:>2} {}  {}{}",
                if a.kind == Kind::Directory { 'd' } else { '-' },
                rwx(a.mode),
                a.uid,
                a.gid,
                human::size(a.size),
                if a.kind == Kind::File {
                    a.replication.to_string()
                } else {
                    "-".into()
                },
                human::time(a.mtime_ns),
                name,
                slash
            )?;
        } else {
            writeln!(out, "{name}{slash}")?;
        }
    }
    Ok(())
}

/// `stat`: one file's or directory's attributes.
pub(crate) async fn cmd_stat(c: &Client, json: bool, path: &str) -> Result<()> {
    let a = c.stat(path).await?;
    if json {
        outln!("{}", attr_json(Some(path), &a));
        return Ok(());
    }
    outln!("  path: {path}");
    outln!(
        "  kind: {}",
        if a.kind == Kind::File {
            "file"
        } else {
            "directory"
        }
    );
    outln!("  size: {} ({} bytes)", human::size(a.size), a.size);
    outln!("  mode: {:o}", a.mode);
    outln!(" owner: uid {} gid {}", a.uid, a.gid);
    outln!(" mtime: {} UTC", human::time(a.mtime_ns));
    outln!(" inode: {}", a.inode);
    if a.kind == Kind::File {
        outln!(" chunk: {}", human::size(a.chunk_size as u64));
        outln!(
            "copies: {} (write quorum {})",
            a.replication,
            a.write_quorum
        );
    }
    Ok(())
}

/// `mkdir`: each directory (with `-p`, its parents too, and no error if it
/// exists).
pub(crate) async fn cmd_mkdir(c: &Client, parents: bool, paths: &[String]) -> Result<()> {
    for p in paths {
        if parents {
            mkdir_p(c, p).await?;
        } else {
            c.mkdir(p, 0).await?;
        }
    }
    Ok(())
}

/// `mv`: renames; moving into an existing directory keeps the name, as mv
/// does.
pub(crate) async fn cmd_mv(c: &Client, from: &str, to: &str) -> Result<()> {
    let to = match c.stat(to).await {
        Ok(a) if a.kind == Kind::Directory => {
            let name = from.trim_end_matches('/').rsplit('/').next().unwrap_or("");
            join(to, name)
        }
        _ => to.to_string(),
    };
    c.rename(from, &to).await?;
    Ok(())
}

/// Permission bits as `rwxr-xr-x`.
fn rwx(mode: u32) -> String {
    (0..9)
        .map(|i| {
            if mode & (0o400 >> i) != 0 {
                ['r', 'w', 'x'][i % 3]
            } else {
                '-'
            }
        })
        .collect()
}

pub(crate) fn join(dir: &str, name: &str) -> String {
    format!("{}/{name}", dir.trim_end_matches('/'))
}

fn attr_json(path: Option<&str>, a: &Attr) -> serde_json::Value {
    json!({
        "name": path,
        "kind": if a.kind == Kind::File { "file" } else { "directory" },
        "size": a.size,
        "mode": a.mode,
        "uid": a.uid,
        "gid": a.gid,
        "mtime_ns": a.mtime_ns,
        "inode": a.inode,
        "chunk_size": a.chunk_size,
        "replication": a.replication,
        "write_quorum": a.write_quorum,
        "version": a.version,
    })
}

async fn mkdir_p(c: &Client, path: &str) -> Result<()> {
    let mut at = String::new();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        at.push('/');
        at.push_str(part);
        match c.mkdir(&at, 0).await {
            Ok(_) => {}
            Err(Error::Exists(_)) => {
                if c.stat(&at).await?.kind != Kind::Directory {
                    bail!("{at}: exists and is not a directory");
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

pub(crate) async fn rm(c: &Client, path: &str, recursive: bool) -> Result<()> {
    let a = c.stat(path).await?;
    if a.kind == Kind::File {
        c.unlink(path).await?;
        return Ok(());
    }
    if !recursive {
        bail!("{path}: is a directory (use rm -r)");
    }
    // Depth first, iteratively: the namespace may be deep.
    let mut stack = vec![(path.to_string(), false)];
    while let Some((dir, listed)) = stack.pop() {
        if listed {
            c.rmdir(&dir).await?;
            continue;
        }
        stack.push((dir.clone(), true));
        for (name, a) in c.list(&dir).await? {
            let p = join(&dir, &name);
            if a.kind == Kind::Directory {
                stack.push((p, false));
            } else {
                c.unlink(&p).await?;
            }
        }
    }
    Ok(())
}
