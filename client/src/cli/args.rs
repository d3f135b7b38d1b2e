//! The command line: `ringfs`'s flags and subcommands (clap).

use anyhow::Result;
use clap::{Parser, Subcommand};
use ringfs_client::human;
use ringfs_client::mount::MountArgs;

#[derive(Parser)]
#[command(name = "ringfs", version, about = "ringfs command-line client")]
pub(crate) struct Cli {
    /// TOML file whose keys are the long flags [default:
    /// ~/.config/ringfs/client.toml if it exists].
    #[arg(long, global = true, value_name = "PATH", env = "RINGFS_CONFIG")]
    pub(crate) config: Option<std::path::PathBuf>,
    /// Print the effective settings of this command as a config file and exit.
    #[arg(long, global = true)]
    pub(crate) print_config: bool,
    /// Control server address (host:port), or every control replica's,
    /// comma-separated: the client finds the leader.
    #[arg(long, env = "RINGFS_CONTROL", global = true)]
    pub(crate) control: Option<String>,
    /// Credential file (user and key, mode 0600) to authenticate with
    /// [default: ~/.config/ringfs/credential]. The administrator issues
    /// them (`ringfs admin user add`); the control server writes the
    /// administrator's into its data directory (admin.credential).
    #[arg(long, env = "RINGFS_CREDENTIAL", global = true, value_name = "PATH")]
    pub(crate) credential: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub(crate) tls: ringfs_ops::tls::TlsFlags,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    #[command(subcommand)]
    pub(crate) cmd: Cmd,
}

#[derive(Subcommand)]
pub(crate) enum Cmd {
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
pub(crate) enum AdminCmd {
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
pub(crate) enum CertCmd {
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
pub(crate) enum UserCmd {
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
