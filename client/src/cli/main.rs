//! `ringfs`: the command-line client.
//!
//! Settings come from flags, then environment variables, then a TOML file
//! whose keys are the long flags (`--config`, else `$RINGFS_CONFIG`, else
//! `~/.config/ringfs/client.toml` if it exists), e.g. `control = "h:7000"`
//! or a default `replication` for `put`.
//!
//! Exit codes: 0 success, 1 an operation failed (one line on stderr),
//! 2 bad usage or a bad config file, 3 the outcome of a change is unknown
//! (the control connection dropped during it and no server answered
//! again: look before trying again).

use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use ringfs_client::{human, Client, CreateOptions, Credential, Error, OpenOptions};
use serde_json::json;

use crate::admin::{cert_cmd, cmd_user};
use crate::args::{AdminCmd, Cli, Cmd};
use crate::health::{cmd_fsck, cmd_status};
use crate::namespace::{cmd_ls, cmd_mkdir, cmd_mv, cmd_stat, parse_owner, rm};
use crate::transfer::{cmd_cat, cmd_get, cmd_put};

/// `println!` that returns an error (a closed pipe, `ringfs status | head`)
/// instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => {
        writeln!(std::io::stdout().lock(), $($arg)*)?
    };
}

mod admin;
mod args;
mod health;
mod namespace;
mod put_atomic;
mod transfer;

/// The TLS the flags (or `[tls]`-less config keys, which are the flags)
/// ask for; `None` is plaintext.
fn tls(cli: &Cli) -> Result<Option<ringfs_ops::tls::Tls>> {
    let files = cli.tls.clone().resolve(None).map_err(|e| anyhow!(e))?;
    Ok(ringfs_ops::tls::Tls::load_optional(files.as_ref())?)
}

/// The credential to authenticate with: `ringfs admin --secret-file`'s
/// administrator, else `--credential` / `$RINGFS_CREDENTIAL`, else
/// ~/.config/ringfs/credential.
fn credential(cli: &Cli) -> Result<Credential> {
    if let Cmd::Admin {
        secret_file: Some(f),
        ..
    } = &cli.cmd
    {
        return Ok(Credential::admin(&read_secret(f)?));
    }
    let path = cli
        .credential
        .clone()
        .or_else(|| {
            let p =
                std::path::Path::new(&std::env::var_os("HOME")?).join(".config/ringfs/credential");
            p.exists().then_some(p)
        })
        .ok_or_else(|| {
            anyhow!(
                "no credential: pass --credential FILE, set RINGFS_CREDENTIAL, or keep one at \
                 ~/.config/ringfs/credential (the administrator issues them with `ringfs admin \
                 user add`; the control server's data directory holds admin.credential)"
            )
        })?;
    Ok(Credential::load(&path)?)
}

/// The cluster secret in `path` (refused if group or others may read it).
fn read_secret(path: &std::path::Path) -> Result<Vec<u8>> {
    ringfs_ops::auth::check_private(path)?;
    let secret = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(secret.trim_ascii().to_vec())
}

fn main() -> ExitCode {
    use clap::CommandFactory;
    // Tests arm failpoints (`client::tx_before_commit`) through the
    // FAILPOINTS environment variable; builds without the feature have none.
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    let (cli, matches) = match ringfs_ops::flag_file::parse::<Cli>(config_path().as_deref()) {
        Ok(parsed) => parsed,
        Err(code) => return code,
    };
    if cli.print_config {
        print!(
            "{}",
            ringfs_ops::flag_file::print(&Cli::command(), &matches)
        );
        return ExitCode::SUCCESS;
    }
    if let Cmd::Admin {
        cmd: AdminCmd::Cert(cmd),
        ..
    } = &cli.cmd
    {
        return match cert_cmd(cmd, cli.json) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ringfs: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    if let Cmd::Mount(args) = &cli.cmd {
        // Not on a LocalSet: the mount runs its own threads.
        // Every control address: the mount follows the leader among them.
        let mounted = control_addrs(cli.control.as_deref()).and_then(|addrs| {
            ringfs_client::mount::cli::run(&addrs, &credential(&cli)?, tls(&cli)?, args)
        });
        return match mounted {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ringfs: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    match ringfs_client::local(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // A closed stdout (`ringfs cat f | head`) is not an error.
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            {
                return ExitCode::SUCCESS;
            }
            eprintln!("ringfs: {e:#}");
            let unknown = e.chain().any(|c| {
                matches!(
                    c.downcast_ref::<Error>(),
                    Some(Error::OutcomeUnknown { .. })
                )
            });
            if unknown {
                ExitCode::from(3)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// The config file used when neither `--config` nor `$RINGFS_CONFIG`
/// names one (and only if it exists).
fn config_path() -> Option<std::path::PathBuf> {
    Some(std::path::Path::new(&std::env::var_os("HOME")?).join(".config/ringfs/client.toml"))
}

/// The control addresses: `--control`, else `RINGFS_CONTROL`, else the
/// config file (all through clap); one, or every replica's, comma-separated.
fn control_addrs(flag: Option<&str>) -> Result<Vec<SocketAddr>> {
    let s = flag.ok_or_else(|| {
        anyhow!(
            "no control server: pass --control HOST:PORT, set RINGFS_CONTROL, \
             or put control = \"HOST:PORT\" in ~/.config/ringfs/client.toml"
        )
    })?;
    s.split(',')
        .map(|a| {
            let a = a.trim();
            a.to_socket_addrs()
                .with_context(|| format!("control address {a:?}"))?
                .next()
                .ok_or_else(|| anyhow!("control address {a:?} resolves to nothing"))
        })
        .collect()
}

async fn run(cli: Cli) -> Result<()> {
    let addrs = control_addrs(cli.control.as_deref())?;
    let cred = credential(&cli)?;
    let tls = tls(&cli)?;
    let c = Client::connect_tls(&addrs, &cred, Default::default(), tls.clone()).await?;
    let json = cli.json;
    match cli.cmd {
        Cmd::Put {
            replication,
            chunk_size,
            write_quorum,
            atomic,
            lease_wait,
            local,
            remote,
            more,
        } => {
            let layout = CreateOptions {
                chunk_size: chunk_size.unwrap_or(0),
                replication: replication.unwrap_or(0),
                write_quorum: write_quorum.unwrap_or(0),
                ..Default::default()
            };
            if !atomic {
                if !more.is_empty() {
                    bail!("put takes one LOCAL and one REMOTE (several pairs need --atomic)");
                }
                return cmd_put(&c, json, layout, &local, &remote).await;
            }
            if more.len() % 2 != 0 {
                bail!("put --atomic takes LOCAL REMOTE pairs");
            }
            let lease_wait = std::time::Duration::try_from_secs_f64(lease_wait)
                .map_err(|e| anyhow!("--lease-wait {lease_wait}: {e}"))?;
            let mut pairs = vec![(local, remote)];
            pairs.extend(more.chunks(2).map(|p| (p[0].clone(), p[1].clone())));
            put_atomic::run(&c, json, layout, lease_wait, pairs).await
        }
        Cmd::Get {
            verify_replicas,
            remote,
            local,
        } => {
            let opts = OpenOptions {
                verify_replicas,
                ..OpenOptions::read()
            };
            cmd_get(&c, json, &remote, local, &opts).await
        }
        Cmd::Cat { paths } => cmd_cat(&c, &paths).await,
        Cmd::Ls { long, path } => cmd_ls(&c, json, long, &path).await,
        Cmd::Stat { path } => cmd_stat(&c, json, &path).await,
        Cmd::Mkdir { parents, paths } => cmd_mkdir(&c, parents, &paths).await,
        Cmd::Rm { recursive, paths } => {
            for p in paths {
                rm(&c, &p, recursive).await?;
            }
            Ok(())
        }
        Cmd::Mv { from, to } => cmd_mv(&c, &from, &to).await,
        Cmd::Fsck { verify } => cmd_fsck(&c, json, verify).await,
        Cmd::Status => cmd_status(&c, (&cred, tls.as_ref()), &addrs, json).await,
        Cmd::Chmod { mode, paths } => {
            for p in paths {
                c.set_attr(&p, Some(mode), None).await?;
            }
            Ok(())
        }
        Cmd::Chown { owner, paths } => {
            let (uid, gid) = parse_owner(&c, &owner).await?;
            for p in paths {
                c.chown(&p, uid, gid).await?;
            }
            Ok(())
        }
        Cmd::Admin { secret_file, cmd } => {
            match cmd {
                // Handled in main, before connecting.
                AdminCmd::Cert(cmd) => cert_cmd(&cmd, json)?,
                AdminCmd::Snapshot => {
                    let (path, index, bytes) = c
                        .with_control(|ctl| async move { ctl.take_snapshot().await })
                        .await?;
                    if json {
                        outln!(
                            "{}",
                            json!({"path": path, "last_index": index, "bytes": bytes})
                        );
                    } else {
                        outln!(
                            "snapshot of {} written to {path} (up to log index {index})",
                            human::size(bytes)
                        );
                    }
                }
                AdminCmd::AddReplica {
                    replica_id,
                    address,
                } => {
                    let address = address.as_str();
                    c.with_control(|ctl| async move { ctl.add_replica(replica_id, address).await })
                        .await?
                }
                AdminCmd::RemoveReplica { replica_id } => {
                    c.with_control(|ctl| async move { ctl.remove_replica(replica_id).await })
                        .await?
                }
                AdminCmd::User(cmd) => {
                    cmd_user(&c.control(), json, secret_file.as_deref(), cmd).await?
                }
            }
            Ok(())
        }
        // Served by `main` before any connection exists.
        Cmd::Mount(_) => bail!("mount runs outside the async client"),
    }
}
