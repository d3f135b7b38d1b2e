//! Copying bytes in and out: `put`, `get`, `cat`, and the progress bar.

use std::io::{Read, Write};

use anyhow::{Context, Result};
use ringfs_client::{Client, CreateOptions, Kind, OpenOptions};
use serde_json::json;

use crate::namespace::join;

/// `put`: copies `local` (or stdin) to `remote`; a file it created is
/// removed again if the copy fails.
pub(crate) async fn cmd_put(
    c: &Client,
    json: bool,
    layout: CreateOptions,
    local: &str,
    remote: &str,
) -> Result<()> {
    let remote = put_target(c, local, remote).await?;
    let existed = c.stat(&remote).await.is_ok();
    let bytes = match put(c, local, &remote, layout, !json).await {
        Ok(n) => n,
        Err(e) => {
            // Leave no empty or partial file behind that we created.
            if !existed {
                let _ = c.unlink(&remote).await;
            }
            return Err(e);
        }
    };
    if json {
        outln!("{}", json!({"path": remote, "bytes": bytes}));
    }
    Ok(())
}

/// `get`: copies `remote` to `local` (a directory keeps the name; `-` is
/// stdout), synced to disk.
pub(crate) async fn cmd_get(
    c: &Client,
    json: bool,
    remote: &str,
    local: String,
    opts: &OpenOptions,
) -> Result<()> {
    let bytes = if local == "-" {
        copy_out(c, remote, opts, &mut std::io::stdout().lock(), !json).await?
    } else {
        let local = if std::path::Path::new(&local).is_dir() {
            let name = remote.rsplit('/').next().unwrap_or_default();
            format!("{}/{name}", local.trim_end_matches('/'))
        } else {
            local
        };
        let mut f = std::fs::File::create(&local).with_context(|| format!("creating {local}"))?;
        let n = copy_out(c, remote, opts, &mut f, !json).await?;
        f.sync_all().with_context(|| format!("syncing {local}"))?;
        n
    };
    if json {
        outln!("{}", json!({"path": remote, "bytes": bytes}));
    }
    Ok(())
}

/// `cat`: the files to stdout, one after the other.
pub(crate) async fn cmd_cat(c: &Client, paths: &[String]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    for p in paths {
        copy_out(c, p, &OpenOptions::read(), &mut out, false).await?;
    }
    Ok(())
}

/// A progress bar on stderr for transfers that last more than a moment: it
/// appears after 500 ms, only on a terminal (indicatif hides it otherwise)
/// and never with `--json`.
struct Progress {
    total: Option<u64>,
    done: u64,
    start: std::time::Instant,
    enabled: bool,
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    fn new(total: Option<u64>, enabled: bool) -> Self {
        Self {
            total,
            done: 0,
            start: std::time::Instant::now(),
            enabled,
            bar: None,
        }
    }

    fn advance(&mut self, n: u64) {
        self.done += n;
        if let Some(bar) = &self.bar {
            bar.set_position(self.done);
            return;
        }
        if !self.enabled || self.start.elapsed() < std::time::Duration::from_millis(500) {
            return;
        }
        let bar = indicatif::ProgressBar::with_draw_target(
            self.total,
            indicatif::ProgressDrawTarget::stderr(),
        );
        let template = if self.total.is_some() {
            "{binary_bytes}/{binary_total_bytes} [{bar:30}] {binary_bytes_per_sec}, ETA {eta}"
        } else {
            "{binary_bytes} {binary_bytes_per_sec}"
        };
        if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_position(self.done);
        self.bar = Some(bar);
    }

    fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

/// `put x /dir` and `put x /dir/` store `/dir/x`, as cp does.
pub(crate) async fn put_target(c: &Client, local: &str, remote: &str) -> Result<String> {
    let name = std::path::Path::new(local)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("stdin");
    if remote.ends_with('/') && remote != "/" {
        return Ok(join(remote, name));
    }
    match c.stat(remote).await {
        Ok(a) if a.kind == Kind::Directory => Ok(join(remote, name)),
        _ => Ok(remote.to_string()),
    }
}

/// `local` opened for reading (`-`: stdin), with its length when known.
pub(crate) fn open_input(local: &str) -> Result<(Box<dyn Read>, Option<u64>)> {
    if local == "-" {
        return Ok((Box::new(std::io::stdin().lock()), None));
    }
    let f = std::fs::File::open(local).with_context(|| format!("opening {local}"))?;
    let len = f.metadata().ok().map(|m| m.len());
    Ok((Box::new(f), len))
}

/// Reads from `input` until `buf` is full or the input ends (pipes return
/// little at a time): the bytes read, 0 at the end.
pub(crate) fn fill(input: &mut dyn Read, buf: &mut [u8], local: &str) -> Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let k = input
            .read(&mut buf[n..])
            .with_context(|| format!("reading {local}"))?;
        if k == 0 {
            break;
        }
        n += k;
    }
    Ok(n)
}

/// Bytes per write call: several chunks, so the client pipelines them.
fn transfer_block(chunk_size: u32) -> usize {
    (chunk_size as usize * 4).clamp(1 << 20, 256 << 20)
}

async fn put(
    c: &Client,
    local: &str,
    remote: &str,
    layout: CreateOptions,
    show_progress: bool,
) -> Result<u64> {
    let (mut input, len) = open_input(local)?;
    let mut progress = Progress::new(len, show_progress);
    let fd = c
        .create(remote, layout)
        .await
        .with_context(|| format!("creating {remote}"))?;
    let attr = c.fstat(fd).await?;
    let mut buf = vec![0u8; transfer_block(attr.chunk_size)];
    let mut total = 0u64;
    loop {
        let n = fill(&mut input, &mut buf, local)?;
        if n == 0 {
            break;
        }
        c.write(fd, &buf[..n])
            .await
            .with_context(|| format!("writing {remote}"))?;
        total += n as u64;
        progress.advance(n as u64);
        if n < buf.len() {
            break;
        }
    }
    progress.finish();
    c.close(fd).await?;
    Ok(total)
}

async fn copy_out(
    c: &Client,
    remote: &str,
    opts: &OpenOptions,
    out: &mut dyn Write,
    show_progress: bool,
) -> Result<u64> {
    let fd = c
        .open(remote, opts)
        .await
        .with_context(|| format!("opening {remote}"))?;
    let attr = c.fstat(fd).await?;
    let mut buf = vec![0u8; transfer_block(attr.chunk_size)];
    let mut total = 0u64;
    let mut progress = Progress::new(Some(attr.size), show_progress);
    loop {
        let n = c
            .read(fd, &mut buf)
            .await
            .with_context(|| format!("reading {remote}"))?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n])?;
        total += n as u64;
        progress.advance(n as u64);
    }
    progress.finish();
    out.flush()?;
    c.close(fd).await?;
    Ok(total)
}
