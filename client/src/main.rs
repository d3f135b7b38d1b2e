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

use std::io::{Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};
use ringfs_client::human;
use ringfs_client::mount::MountArgs;
use ringfs_client::{
    Attr, Client, ControlClient, CreateOptions, Credential, Error, Kind, OpenOptions,
    ReplicationStatus,
};
use serde_json::json;

#[path = "cli/put_atomic.rs"]
mod put_atomic;

#[derive(Parser)]
#[command(name = "ringfs", version, about = "ringfs command-line client")]
struct Cli {
    /// TOML file whose keys are the long flags [default:
    /// ~/.config/ringfs/client.toml if it exists].
    #[arg(long, global = true, value_name = "PATH", env = "RINGFS_CONFIG")]
    config: Option<std::path::PathBuf>,
    /// Print the effective settings of this command as a config file and exit.
    #[arg(long, global = true)]
    print_config: bool,
    /// Control server address (host:port), or every control replica's,
    /// comma-separated: the client finds the leader.
    #[arg(long, env = "RINGFS_CONTROL", global = true)]
    control: Option<String>,
    /// Credential file (user and key, mode 0600) to authenticate with
    /// [default: ~/.config/ringfs/credential]. The administrator issues
    /// them (`ringfs admin user add`); the control server writes the
    /// administrator's into its data directory (admin.credential).
    #[arg(long, env = "RINGFS_CREDENTIAL", global = true, value_name = "PATH")]
    credential: Option<std::path::PathBuf>,
    #[command(flatten)]
    tls: ringfs_ops::tls::TlsFlags,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Copy a local file (or - for stdin) into ringfs.
    Put {
        /// Replicas per chunk (default: the server's).
        #[arg(long, short = 'r')]
        replication: Option<u8>,
        /// Bytes per chunk, e.g. 1M, 64MiB (default: the server's).
        #[arg(long, value_parser = parse_size_u32)]
        chunk_size: Option<u32>,
        /// Durable replicas a write needs (default: all).
        #[arg(long, short = 'w')]
        write_quorum: Option<u8>,
        /// All or none: `put --atomic LOCAL1 REMOTE1 LOCAL2 REMOTE2 ...`
        /// replaces every REMOTE in one transaction (readers see all of
        /// them old or all new); on failure nothing changed (exit 1), or,
        /// exit 3, the outcome is unknown (look before trying again).
        #[arg(long)]
        atomic: bool,
        /// put --atomic: how long to wait for the files' write leases in
        /// all, in seconds, before giving up with nothing changed.
        #[arg(long, default_value_t = 30.0, value_name = "SECONDS")]
        lease_wait: f64,
        local: String,
        remote: String,
        /// put --atomic: further LOCAL REMOTE pairs.
        #[arg(value_name = "LOCAL REMOTE")]
        more: Vec<String>,
    },
    /// Copy a ringfs file to a local file (or - for stdout).
    Get {
        /// Compare the digests of every replica of each chunk before using
        /// it and serve only what a majority holds, repairing the others;
        /// fail naming the chunk when no majority exists.
        #[arg(long)]
        verify_replicas: bool,
        remote: String,
        local: String,
    },
    /// Print files to stdout.
    Cat {
        #[arg(required = true)]
        paths: Vec<String>,
    },
    /// List a directory.
    Ls {
        /// Long format: kind, mode, size, replication, time.
        #[arg(short = 'l')]
        long: bool,
        #[arg(default_value = "/")]
        path: String,
    },
    /// Show a file's or directory's attributes.
    Stat { path: String },
    /// Create directories.
    Mkdir {
        /// Create parents as needed; no error if it exists.
        #[arg(short = 'p')]
        parents: bool,
        #[arg(required = true)]
        paths: Vec<String>,
    },
    /// Remove files (and with -r, directories and their contents).
    Rm {
        #[arg(short = 'r')]
        recursive: bool,
        #[arg(required = true)]
        paths: Vec<String>,
    },
    /// Rename or move.
    Mv { from: String, to: String },
    /// Change permission bits (octal, e.g. 750).
    Chmod {
        #[arg(value_parser = parse_mode)]
        mode: u32,
        #[arg(required = true)]
        paths: Vec<String>,
    },
    /// Change owner and/or group: UID, UID:GID or :GID (numeric ids, or
    /// user names, which only an administrator may look up). The owner is
    /// the administrator's to change; the group the owner's, to one of its
    /// groups.
    Chown {
        owner: String,
        #[arg(required = true)]
        paths: Vec<String>,
    },
    /// Cluster status: nodes, up/down, capacity, chunk health.
    Status,
    /// Check every chunk against the namespace and the replica reports;
    /// exits 0 only if every chunk has R live, current, verified replicas.
    Fsck {
        /// Also compare every replica of every chunk by content: each node
        /// digests its stored CRCs (no data crosses the network); replicas
        /// that differ are listed with their paths, and any difference
        /// fails the check.
        #[arg(long)]
        verify: bool,
    },
    /// Mount ringfs on a directory (FUSE) until unmounted (SIGTERM, Ctrl-C,
    /// `fusermount3 -u DIR`); see docs/client.md.
    Mount(MountArgs),
    /// Administration: as the administrator (with --secret-file, as the
    /// built-in `admin`; otherwise the credential must be an
    /// administrator's).
    Admin {
        /// File holding the cluster secret (mode 0600). Needed by `user
        /// add`, which derives the new user's key from it.
        #[arg(long)]
        secret_file: Option<std::path::PathBuf>,
        #[command(subcommand)]
        cmd: AdminCmd,
    },
}

#[derive(Subcommand)]
enum AdminCmd {
    /// Write a consistent snapshot of the metadata into the serving control
    /// server's data directory (a backup; restore with
    /// `ringfs-control --restore FILE`).
    Snapshot,
    /// Add a control replica (an empty one started with --peers asks for
    /// this by itself).
    AddReplica { replica_id: u64, address: String },
    /// Remove a control replica from the group (e.g. a dead one before it
    /// is replaced).
    RemoveReplica { replica_id: u64 },
    /// Users: add (writes the user's credential file), list, remove.
    #[command(subcommand)]
    User(UserCmd),
    /// TLS certificates: create the cluster CA, issue node and client
    /// certificates (offline: no server is contacted).
    #[command(subcommand)]
    Cert(CertCmd),
}

#[derive(Subcommand)]
enum CertCmd {
    /// Create a cluster CA in DIR: ca.pem (give it to every server and
    /// client) and ca.key (mode 0600; keep it off the cluster).
    Ca { dir: std::path::PathBuf },
    /// Issue a certificate NAME signed by the CA in --ca-dir: writes
    /// NAME.pem and NAME.key (mode 0600) into --out.
    Issue {
        name: String,
        /// The CA directory (`ringfs admin cert ca`).
        #[arg(long)]
        ca_dir: std::path::PathBuf,
        /// A server certificate (control replica or storage node) for
        /// these hosts (IP addresses or DNS names it is dialled by),
        /// comma-separated. Without it, a client certificate.
        #[arg(long, value_delimiter = ',')]
        host: Vec<String>,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Where to write it [default: the current directory].
        #[arg(long, short = 'o', default_value = ".")]
        out: std::path::PathBuf,
    },
}

#[derive(Subcommand)]
enum UserCmd {
    /// Register a user and write its credential file (mode 0600; hand it
    /// to the user, who keeps it at ~/.config/ringfs/credential or points
    /// --credential at it). Needs --secret-file.
    Add {
        name: String,
        /// Its uid [default: the next free one from 1000].
        #[arg(long)]
        uid: Option<u32>,
        /// Its groups, comma-separated, the primary one first [default: a
        /// group with its uid's number].
        #[arg(long, value_delimiter = ',')]
        groups: Vec<u32>,
        /// Make it an administrator (may do everything).
        #[arg(long)]
        admin: bool,
        /// Where to write the credential [default: ./NAME.credential].
        #[arg(long, short = 'o')]
        out: Option<std::path::PathBuf>,
    },
    /// List the registered users.
    List,
    /// Revoke a user: its connections are refused from their next call.
    Remove { name: String },
}

/// `println!` that returns an error (a closed pipe, `ringfs status | head`)
/// instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => {
        writeln!(std::io::stdout().lock(), $($arg)*)?
    };
}

/// Runs `ringfs admin cert` (offline).
fn cert_cmd(cmd: &CertCmd, json: bool) -> Result<()> {
    use ringfs_ops::tls::certs;
    match cmd {
        CertCmd::Ca { dir } => {
            let ca = certs::create_ca(dir)?;
            if json {
                outln!("{}", json!({"ca": ca, "key": dir.join(certs::CA_KEY)}));
            } else {
                outln!(
                    "cluster CA created: {} (trust it everywhere), {} (mode 0600: keep it safe)",
                    ca.display(),
                    dir.join(certs::CA_KEY).display()
                );
            }
        }
        CertCmd::Issue {
            name,
            ca_dir,
            host,
            days,
            out,
        } => {
            let role = if host.is_empty() {
                certs::Role::Client
            } else {
                certs::Role::Server
            };
            let f = certs::issue(ca_dir, name, role, host, *days, out)?;
            if json {
                outln!("{}", json!({"ca": f.ca, "cert": f.cert, "key": f.key}));
            } else {
                outln!(
                    "{} certificate {name} issued: --tls-ca {} --tls-cert {} --tls-key {}",
                    if role == certs::Role::Server {
                        "server"
                    } else {
                        "client"
                    },
                    f.ca.display(),
                    f.cert.display(),
                    f.key.display()
                );
            }
        }
    }
    Ok(())
}

/// The TLS the flags (or `[tls]`-less config keys, which are the flags)
/// ask for; `None` is plaintext.
fn tls(cli: &Cli) -> Result<Option<ringfs_ops::tls::Tls>> {
    let files = cli.tls.clone().resolve(None).map_err(|e| anyhow!(e))?;
    Ok(ringfs_ops::tls::Tls::load_optional(files.as_ref())?)
}

fn parse_size_u32(s: &str) -> Result<u32, String> {
    let n = human::parse_size(s)?;
    u32::try_from(n).map_err(|_| format!("{s:?} is too large for a chunk size"))
}

fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s, 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| format!("{s:?} is not an octal mode up to 7777"))
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

/// `chown`'s OWNER: UID, UID:GID or :GID, numbers or user names.
async fn parse_owner(c: &Client, s: &str) -> Result<(Option<u32>, Option<u32>)> {
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

/// `admin user ...`.
async fn cmd_user(
    ctl: &ControlClient,
    json: bool,
    secret_file: Option<&std::path::Path>,
    cmd: UserCmd,
) -> Result<()> {
    match cmd {
        UserCmd::Add {
            name,
            uid,
            groups,
            admin,
            out,
        } => {
            let secret_file = secret_file.ok_or_else(|| {
                anyhow!(
                    "user add derives the user's key from the cluster secret: pass --secret-file"
                )
            })?;
            let secret = read_secret(secret_file)?;
            let out = out.unwrap_or_else(|| format!("{name}.credential").into());
            if out.exists() {
                bail!("{} exists: not overwriting a credential", out.display());
            }
            let u = ctl
                .add_user(&name, uid.unwrap_or(0), &groups, admin)
                .await?;
            let cred = Credential::derive(&secret, &u.name, &u.salt);
            if let Err(e) = cred.save(&out) {
                // No credential file: undo, so that the name can be added again.
                let _ = ctl.remove_user(&u.name).await;
                return Err(e.into());
            }
            if json {
                outln!(
                    "{}",
                    json!({"name": u.name, "uid": u.uid, "gids": u.gids, "admin": u.admin,
                           "credential": out})
                );
            } else {
                outln!(
                    "user {} (uid {}, groups {:?}) added; credential in {} (mode 0600)",
                    u.name,
                    u.uid,
                    u.gids,
                    out.display()
                );
            }
        }
        UserCmd::List => {
            let users = ctl.list_users().await?;
            if json {
                let v: Vec<_> = users
                    .iter()
                    .map(
                        |u| json!({"name": u.name, "uid": u.uid, "gids": u.gids, "admin": u.admin}),
                    )
                    .collect();
                outln!("{}", serde_json::Value::Array(v));
            } else {
                for u in users {
                    let groups: Vec<String> = u.gids.iter().map(u32::to_string).collect();
                    outln!(
                        "{} uid={} groups={}{}",
                        u.name,
                        u.uid,
                        groups.join(","),
                        if u.admin { " admin" } else { "" }
                    );
                }
            }
        }
        UserCmd::Remove { name } => ctl.remove_user(&name).await?,
    }
    Ok(())
}

/// `put`: copies `local` (or stdin) to `remote`; a file it created is
/// removed again if the copy fails.
async fn cmd_put(
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
async fn cmd_get(
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
async fn cmd_cat(c: &Client, paths: &[String]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    for p in paths {
        copy_out(c, p, &OpenOptions::read(), &mut out, false).await?;
    }
    Ok(())
}

/// `ls`: a directory's entries, or a file's own line.
async fn cmd_ls(c: &Client, json: bool, long: bool, path: &str) -> Result<()> {
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
async fn cmd_stat(c: &Client, json: bool, path: &str) -> Result<()> {
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
async fn cmd_mkdir(c: &Client, parents: bool, paths: &[String]) -> Result<()> {
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
async fn cmd_mv(c: &Client, from: &str, to: &str) -> Result<()> {
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

/// `fsck`: every chunk problem with its path; fails unless every chunk has
/// R live, current, verified replicas and the namespace is consistent.
/// With `verify`, also every replica whose content differs from the
/// others' (see [`verify_replicas`]).
async fn cmd_fsck(c: &Client, json: bool, verify: bool) -> Result<()> {
    let h = c.control().chunk_health(u32::MAX).await?;
    let differing = if verify {
        verify_replicas(c).await?
    } else {
        Vec::new()
    };
    if json {
        let problems: Vec<_> = h.problems.iter().map(problem_json).collect();
        let differing: Vec<_> = differing
            .iter()
            .map(|(path, index, chunk, detail)| {
                json!({"path": path, "index": index, "chunk_id": format!("{chunk:032x}"), "detail": detail})
            })
            .collect();
        outln!(
            "{}",
            json!({
                "clean": h.is_clean() && differing.is_empty(),
                "health": health_json(&h),
                "problems": problems,
                "differing_replicas": differing,
            })
        );
    } else {
        for (path, index, chunk, detail) in &differing {
            outln!("{path}: chunk {index} ({chunk:032x}): replicas differ: {detail}");
        }
        for p in &h.problems {
            outln!(
                "{}: chunk {} ({:032x}): {} ({} of {} good replicas) {}",
                p.path,
                p.index,
                p.chunk_id,
                problem_name(p.kind),
                p.good_replicas,
                p.wanted,
                p.detail
            );
        }
        outln!("{}", health_line(&h));
    }
    if !differing.is_empty() {
        bail!(
            "{} chunks have replicas that differ{}",
            differing.len(),
            if h.is_clean() {
                String::new()
            } else {
                format!(
                    "; {} of {} chunks lack R live, current, verified replicas",
                    h.chunks - h.healthy,
                    h.chunks
                )
            }
        );
    }
    if !h.is_clean() {
        bail!(
            "{} of {} chunks lack R live, current, verified replicas{}",
            h.chunks - h.healthy,
            h.chunks,
            if h.namespace_errors > 0 {
                format!(", {} namespace errors", h.namespace_errors)
            } else {
                String::new()
            }
        );
    }
    Ok(())
}

/// The control replicas as the leader sees them, with each reachable
/// replica's own view (term, log positions); `None` for a single server.
async fn control_status(
    c: &Client,
    (cred, tls): (&Credential, Option<&ringfs_ops::tls::Tls>),
    addrs: &[SocketAddr],
) -> Result<Option<(ReplicationStatus, Vec<ReplicationStatus>)>> {
    let leader = c.control().replication().await?;
    if !leader.replicated {
        return Ok(None);
    }
    let mut each = Vec::new();
    let mut asked: Vec<String> = leader.replicas.iter().map(|r| r.address.clone()).collect();
    asked.extend(addrs.iter().map(|a| a.to_string()));
    asked.sort();
    asked.dedup();
    for a in asked {
        let Ok(addr) = a.parse::<SocketAddr>() else {
            continue;
        };
        let probe = tokio::time::timeout(std::time::Duration::from_secs(2), async {
            ControlClient::connect_tls(addr, cred, tls)
                .await?
                .replication()
                .await
        });
        if let Ok(Ok(s)) = probe.await {
            each.push(s);
        }
    }
    Ok(Some((leader, each)))
}

/// `status`: control replicas, nodes, up/down, capacity and chunk health.
async fn cmd_status(
    c: &Client,
    cred: (&Credential, Option<&ringfs_ops::tls::Tls>),
    addrs: &[SocketAddr],
    json: bool,
) -> Result<()> {
    let control = control_status(c, cred, addrs).await?;
    let health = c.control().chunk_health(0).await?;
    let map = c.cluster_map().await?;
    let total: u64 = map.nodes.iter().map(|n| n.capacity.total).sum();
    let used: u64 = map.nodes.iter().map(|n| n.capacity.used).sum();
    let up = map.nodes.iter().filter(|n| n.up).count();
    if json {
        let nodes: Vec<_> = map
            .nodes
            .iter()
            .map(|n| {
                json!({
                    "node_id": n.node_id,
                    "up": n.up,
                    "shards": n.shards,
                    "total_bytes": n.capacity.total,
                    "used_bytes": n.capacity.used,
                    "reserved_bytes": n.capacity.reserved,
                    "free_bytes": ringfs_client::placement::free_bytes(n),
                    "chunks": n.capacity.chunks,
                    "last_heartbeat_ago_ms": n.last_heartbeat_ago_ms,
                })
            })
            .collect();
        outln!(
            "{}",
            json!({
                "epoch": map.epoch,
                "nodes_up": up,
                "nodes": nodes,
                "total_bytes": total,
                "used_bytes": used,
                "chunks": health_json(&health),
                "control": control.as_ref().map(|(leader, each)| control_json(leader, each)),
            })
        );
        return Ok(());
    }
    if let Some((leader, each)) = &control {
        print_control(leader, each)?;
    }
    outln!(
        "{} of {} nodes up, {} used of {} (map epoch {})",
        up,
        map.nodes.len(),
        human::size(used),
        human::size(total),
        map.epoch
    );
    outln!("{}", health_line(&health));
    outln!(
        "{:>6}  {:<4}  {:>10}  {:>10}  {:>10}  {:>8}  {:>10}  shards",
        "node",
        "up",
        "total",
        "used",
        "free",
        "chunks",
        "heartbeat"
    );
    for n in &map.nodes {
        let hb = if n.last_heartbeat_ago_ms == u64::MAX {
            "never".to_string()
        } else {
            format!("{:.1}s ago", n.last_heartbeat_ago_ms as f64 / 1000.0)
        };
        outln!(
            "{:>6}  {:<4}  {:>10}  {:>10}  {:>10}  {:>8}  {:>10}  {}",
            n.node_id,
            if n.up { "up" } else { "DOWN" },
            human::size(n.capacity.total),
            human::size(n.capacity.used),
            human::size(ringfs_client::placement::free_bytes(n)),
            n.capacity.chunks,
            hb,
            n.shards.join(",")
        );
    }
    Ok(())
}

fn problem_name(k: ringfs_client::ProblemKind) -> &'static str {
    use ringfs_client::ProblemKind as K;
    match k {
        K::UnderReplicated => "under-replicated",
        K::Lost => "LOST",
        K::BeingRepaired => "being repaired",
        K::Unverified => "unverified",
        K::Namespace => "namespace error",
    }
}

fn health_line(h: &ringfs_client::ChunkHealth) -> String {
    format!(
        "chunks: {} total, {} healthy, {} under-replicated, {} being repaired ({} copies in flight), \
         {} lost, {} unverified, {} namespace errors; {} garbage copies to delete",
        h.chunks,
        h.healthy,
        h.under_replicated,
        h.being_repaired,
        h.copies_in_flight,
        h.lost,
        h.unverified,
        h.namespace_errors,
        h.deletes_pending
    )
}

fn health_json(h: &ringfs_client::ChunkHealth) -> serde_json::Value {
    json!({
        "total": h.chunks,
        "healthy": h.healthy,
        "under_replicated": h.under_replicated,
        "being_repaired": h.being_repaired,
        "copies_in_flight": h.copies_in_flight,
        "lost": h.lost,
        "unverified": h.unverified,
        "namespace_errors": h.namespace_errors,
        "deletes_pending": h.deletes_pending,
    })
}

fn problem_json(p: &ringfs_client::ChunkProblem) -> serde_json::Value {
    json!({
        "path": p.path,
        "index": p.index,
        "chunk_id": format!("{:032x}", p.chunk_id),
        "kind": problem_name(p.kind),
        "good_replicas": p.good_replicas,
        "wanted": p.wanted,
        "detail": p.detail,
    })
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

fn join(dir: &str, name: &str) -> String {
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

/// `put x /dir` and `put x /dir/` store `/dir/x`, as cp does.
async fn put_target(c: &Client, local: &str, remote: &str) -> Result<String> {
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
    let (mut input, len): (Box<dyn Read>, Option<u64>) = if local == "-" {
        (Box::new(std::io::stdin().lock()), None)
    } else {
        let f = std::fs::File::open(local).with_context(|| format!("opening {local}"))?;
        let len = f.metadata().ok().map(|m| m.len());
        (Box::new(f), len)
    };
    let mut progress = Progress::new(len, show_progress);
    let fd = c
        .create(remote, layout)
        .await
        .with_context(|| format!("creating {remote}"))?;
    let attr = c.fstat(fd).await?;
    let mut buf = vec![0u8; transfer_block(attr.chunk_size)];
    let mut total = 0u64;
    loop {
        // Fill the whole block (pipes return little at a time).
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

async fn rm(c: &Client, path: &str, recursive: bool) -> Result<()> {
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

fn control_json(leader: &ReplicationStatus, each: &[ReplicationStatus]) -> serde_json::Value {
    let replicas: Vec<_> = leader
        .replicas
        .iter()
        .map(|r| {
            let own = each.iter().find(|s| s.replica_id == r.replica_id);
            json!({
                "replica_id": r.replica_id,
                "address": r.address,
                "voter": r.voter,
                "leader": r.replica_id == leader.leader_id,
                "matched_index": r.matched_index,
                "reachable": own.is_some(),
                "state": own.map(|s| s.state.clone()),
                "term": own.map(|s| s.term),
                "last_log_index": own.map(|s| s.last_log_index),
                "applied_index": own.map(|s| s.applied_index),
                "snapshot_index": own.map(|s| s.snapshot_index),
            })
        })
        .collect();
    json!({
        "leader_id": leader.leader_id,
        "leader_address": leader.leader_address,
        "term": leader.term,
        "replicas": replicas,
    })
}

fn print_control(leader: &ReplicationStatus, each: &[ReplicationStatus]) -> Result<()> {
    outln!(
        "control: {} replicas, leader {} at {} (term {})",
        leader.replicas.len(),
        leader.leader_id,
        leader.leader_address,
        leader.term
    );
    outln!(
        "{:>20}  {:<21}  {:<9}  {:>5}  {:>9}  {:>9}  {:>9}  {:>9}",
        "replica",
        "address",
        "state",
        "term",
        "last log",
        "applied",
        "snapshot",
        "matched"
    );
    for r in &leader.replicas {
        let own = each.iter().find(|s| s.replica_id == r.replica_id);
        let state = match own {
            Some(s) if r.voter => s.state.clone(),
            Some(_) => "learner".into(),
            None => "UNREACHABLE".into(),
        };
        let n =
            |f: fn(&ReplicationStatus) -> u64| own.map(|s| f(s).to_string()).unwrap_or("-".into());
        outln!(
            "{:>20}  {:<21}  {:<9}  {:>5}  {:>9}  {:>9}  {:>9}  {:>9}",
            r.replica_id,
            r.address,
            state,
            n(|s| s.term),
            n(|s| s.last_log_index),
            n(|s| s.applied_index),
            n(|s| s.snapshot_index),
            r.matched_index
        );
    }
    Ok(())
}

/// One chunk whose replicas differ: (path, chunk index, chunk id, what).
type Differing = (String, u64, u128, String);

/// Asks every replica of every chunk of every file for its version, length
/// and digest of stored CRCs, and lists the chunks whose replicas do not
/// all agree, or could not all be asked.
async fn verify_replicas(c: &Client) -> Result<Vec<Differing>> {
    let mut out = Vec::new();
    let mut dirs = vec!["/".to_string()];
    while let Some(dir) = dirs.pop() {
        for (name, a) in c.list(&dir).await? {
            let path = join(&dir, &name);
            if a.kind == Kind::Directory {
                dirs.push(path);
                continue;
            }
            let chunks = match c.replica_digests(&path).await {
                Ok(chunks) => chunks,
                // Removed since it was listed.
                Err(Error::NotFound(_)) => continue,
                Err(e) => return Err(e.into()),
            };
            for (rec, replicas) in chunks {
                if let Some(detail) = replica_verdict(rec.version, &replicas) {
                    out.push((path.clone(), rec.index, rec.chunk_id, detail));
                }
            }
        }
    }
    Ok(out)
}

/// What is wrong with the replicas of a chunk committed at `committed`
/// (each replica's node and digest, or why it could not be asked), if
/// anything: replicas must all be reachable, at one version, at least the
/// committed one, with one length and digest.
fn replica_verdict(
    committed: ringfs_client::Version,
    replicas: &[(u64, ringfs_client::Result<ringfs_client::ReplicaDigest>)],
) -> Option<String> {
    let describe = |(n, r): &(u64, ringfs_client::Result<ringfs_client::ReplicaDigest>)| match r {
        Ok(d) => format!("node {n}: {d}"),
        Err(e) => format!("node {n}: not verified: {}", e.describe()),
    };
    let answers: Vec<_> = replicas
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok())
        .collect();
    let same_version_differs = answers.iter().any(|a| {
        answers
            .iter()
            .any(|b| a.version == b.version && (a.length != b.length || a.digest != b.digest))
    });
    let all_agree = answers.len() == replicas.len()
        && answers.windows(2).all(|w| w[0] == w[1])
        && answers.first().is_none_or(|a| a.version >= committed);
    if all_agree {
        return None;
    }
    let what = if same_version_differs {
        "DIFFERENT CONTENT AT THE SAME VERSION"
    } else {
        "not identical"
    };
    Some(format!(
        "{what} (committed version {committed}): {}",
        replicas.iter().map(describe).collect::<Vec<_>>().join("; ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringfs_client::{ReplicaDigest, Version};

    fn at(v: u64, digest: u8) -> ringfs_client::Result<ReplicaDigest> {
        Ok(ReplicaDigest {
            version: Version::new(1, v),
            length: 10,
            digest: vec![digest; 32],
        })
    }

    #[test]
    fn replicas_must_agree_on_version_and_content() {
        let v2 = Version::new(1, 2);
        assert_eq!(replica_verdict(v2, &[(1, at(2, 7)), (2, at(2, 7))]), None);
        let same = replica_verdict(v2, &[(1, at(2, 7)), (2, at(2, 8))]).unwrap();
        assert!(
            same.contains("SAME VERSION") && same.contains("node 2"),
            "{same}"
        );
        let behind = replica_verdict(v2, &[(1, at(3, 7)), (2, at(2, 7))]).unwrap();
        assert!(behind.starts_with("not identical"), "{behind}");
        assert!(
            replica_verdict(v2, &[(1, at(1, 7)), (2, at(1, 7))]).is_some(),
            "below the record"
        );
        let gone = Err(ringfs_client::Error::unavailable("down"));
        assert!(replica_verdict(v2, &[(1, at(2, 7)), (2, gone)])
            .unwrap()
            .contains("not verified"));
    }
}
