//! `ringfs put --atomic LOCAL1 REMOTE1 LOCAL2 REMOTE2 ...`: replaces every
//! REMOTE with its LOCAL in one transaction (docs/client.md,
//! "Transactions"): readers see every file old or every file new. A
//! REMOTE that does not exist is created by the same commit (no reader
//! sees it before; nothing is left if the commit does not happen).

use std::io::Write;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ringfs_client::{Client, CreateOptions, Error, Transaction, TransactionOptions};
use serde_json::json;

use crate::transfer::{fill, open_input};

/// Bytes read from a local file per transaction write.
const BLOCK: usize = 4 << 20;

pub(crate) async fn run(
    c: &Client,
    json: bool,
    layout: CreateOptions,
    lease_wait: Duration,
    pairs: Vec<(String, String)>,
) -> Result<()> {
    let mut targets = Vec::with_capacity(pairs.len());
    for (local, remote) in &pairs {
        targets.push((
            local.as_str(),
            crate::transfer::put_target(c, local, remote).await?,
        ));
    }
    if targets.iter().filter(|(l, _)| *l == "-").count() > 1 {
        bail!("put --atomic: stdin (-) can be read once only");
    }
    let paths: Vec<&str> = targets.iter().map(|(_, r)| r.as_str()).collect();
    let options = TransactionOptions {
        lease_wait,
        create: Some(layout),
    };
    let mut tx = c
        .transaction(&paths, options)
        .await
        .context("put --atomic: nothing was changed")?;
    let mut sizes = Vec::with_capacity(targets.len());
    for (local, remote) in &targets {
        match copy_in(&mut tx, local, remote).await {
            Ok(n) => sizes.push(n),
            Err(e) => {
                // Best effort: the leases end with the process anyway.
                let _ = tx.abort().await;
                return Err(e.context("put --atomic: nothing was changed"));
            }
        }
    }
    match tx.commit().await {
        Ok(_) => {}
        Err(e @ Error::OutcomeUnknown { .. }) => {
            return Err(anyhow::Error::new(e).context(
                "put --atomic: the outcome is unknown (all files were replaced or none): \
                 look before trying again",
            ))
        }
        Err(e) => return Err(anyhow::Error::new(e).context("put --atomic: nothing was changed")),
    }
    if json {
        let files: Vec<_> = targets
            .iter()
            .zip(&sizes)
            .map(|((_, r), n)| json!({"path": r, "bytes": n}))
            .collect();
        outln!("{}", json!({ "files": files }));
    }
    Ok(())
}

/// Stages `local`'s content (`-`: stdin) as the new content of `remote`.
async fn copy_in(tx: &mut Transaction<'_>, local: &str, remote: &str) -> Result<u64> {
    let (mut input, _) = open_input(local)?;
    tx.set_len(remote, 0).await?;
    let mut buf = vec![0u8; BLOCK];
    let mut total = 0u64;
    loop {
        let n = fill(&mut input, &mut buf, local)?;
        if n == 0 {
            break;
        }
        tx.write(remote, total, &buf[..n])
            .await
            .with_context(|| format!("writing {remote}"))?;
        total += n as u64;
        if n < buf.len() {
            break;
        }
    }
    Ok(total)
}
