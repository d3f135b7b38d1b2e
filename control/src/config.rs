//! Configuration of `ringfs-control`: command-line flags and an optional
//! TOML file whose keys equal the long flags. Flags win over the file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use serde::{Deserialize, Serialize};

use crate::store::FileDefaults;
use ringfs_ops::logging::LogFormat;

/// Command-line flags of `ringfs-control`.
#[derive(Parser, Debug, Default)]
#[command(
    name = "ringfs-control",
    version,
    about = "ringfs control server: namespace, chunk map and membership"
)]
pub struct Args {
    /// TOML file with the same keys as the long flags.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Print the effective configuration (file and flags merged) as TOML
    /// and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Restore the metadata snapshot FILE (from `ringfs admin snapshot`)
    /// into the empty data directory, then exit. Start the server there
    /// afterwards (alone, or with --bootstrap as the first replica).
    #[arg(long, value_name = "FILE")]
    pub restore: Option<PathBuf>,
    /// Address to serve Cap'n Proto RPC on (port 0 picks a free port).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Directory of the metadata database.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// File holding the cluster secret, from which the keys of nodes,
    /// replicas, the administrator and every user derive.
    #[arg(long)]
    pub secret_file: Option<PathBuf>,
    /// How often nodes heartbeat, in milliseconds [default: 1000].
    #[arg(long)]
    pub heartbeat_ms: Option<u64>,
    /// Silence after which a node is marked down, in milliseconds [default: 5000].
    #[arg(long)]
    pub node_ttl_ms: Option<u64>,
    /// Chunk size of new files unless they ask otherwise, in bytes [default: 67108864].
    #[arg(long)]
    pub default_chunk_size: Option<u32>,
    /// Replication of new files unless they ask otherwise [default: 3].
    #[arg(long)]
    pub default_replication: Option<u8>,
    /// How long a down node's replicas wait before they are re-replicated,
    /// in milliseconds (counted after the TTL) [default: 60000].
    #[arg(long)]
    pub repair_grace_ms: Option<u64>,
    /// Chunk copies in flight at once in the cluster (repair throttle) [default: 4].
    #[arg(long)]
    pub repair_copies: Option<usize>,
    /// How long an unreferenced chunk on a node must stay so before it is
    /// deleted, in milliseconds [default: 600000].
    #[arg(long)]
    pub orphan_grace_ms: Option<u64>,
    /// How often nodes send a full chunk report, in milliseconds [default: 60000].
    #[arg(long)]
    pub report_interval_ms: Option<u64>,
    /// Log filter (EnvFilter syntax, e.g. "info" or "warn,ringfs_control=debug");
    /// RUST_LOG wins when set [default: info].
    #[arg(long)]
    pub log_level: Option<String>,
    /// Log line format [default: text].
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Address to serve /metrics, /healthz and /readyz on (HTTP); off when unset.
    #[arg(long)]
    pub metrics: Option<SocketAddr>,
    /// Key id the data-plane capabilities are issued with (the nodes
    /// accept it and the one before; docs/operations.md) [default: 1].
    #[arg(long)]
    pub capability_key_id: Option<u32>,
    /// Replicated control plane: RPC addresses ("host:port") of the other
    /// control replicas, comma-separated. A replica with no Raft state asks
    /// them to add it to their group. Unset (and no --bootstrap): a single
    /// control server.
    #[arg(long, value_delimiter = ',')]
    pub peers: Option<Vec<String>>,
    /// Start a new replicated group with this replica as its only voter,
    /// if this replica has no Raft state yet (ignored once it has).
    #[arg(long)]
    pub bootstrap: bool,
    /// The RPC address other replicas and clients reach this one at
    /// [default: the listening address].
    #[arg(long)]
    pub advertise: Option<String>,
    /// Raft heartbeat interval in milliseconds [default: 100].
    #[arg(long)]
    pub raft_heartbeat_ms: Option<u64>,
    /// Raft election timeout in milliseconds (lower bound; the upper is twice it) [default: 500].
    #[arg(long)]
    pub raft_election_ms: Option<u64>,
    /// Log entries between two snapshots of the metadata [default: 20000].
    #[arg(long)]
    pub raft_snapshot_every: Option<u64>,
    /// Log entries kept behind a snapshot, for followers a little behind [default: 1000].
    #[arg(long)]
    pub raft_logs_kept: Option<u64>,
    #[command(flatten)]
    pub tls: ringfs_ops::tls::TlsFlags,
}

/// The TOML file: the same keys as the long flags. `--print-config`
/// prints this struct filled with the effective values, so its output is a
/// valid config file.
#[derive(Deserialize, Serialize, Debug, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileConfig {
    listen: Option<SocketAddr>,
    data: Option<PathBuf>,
    secret_file: Option<PathBuf>,
    heartbeat_ms: Option<u64>,
    node_ttl_ms: Option<u64>,
    default_chunk_size: Option<u32>,
    default_replication: Option<u8>,
    repair_grace_ms: Option<u64>,
    repair_copies: Option<usize>,
    orphan_grace_ms: Option<u64>,
    report_interval_ms: Option<u64>,
    log_level: Option<String>,
    log_format: Option<LogFormat>,
    metrics: Option<SocketAddr>,
    capability_key_id: Option<u32>,
    peers: Option<Vec<String>>,
    bootstrap: Option<bool>,
    advertise: Option<String>,
    raft_heartbeat_ms: Option<u64>,
    raft_election_ms: Option<u64>,
    raft_snapshot_every: Option<u64>,
    raft_logs_kept: Option<u64>,
    /// `[tls]`: ca, cert and key files.
    tls: Option<ringfs_ops::tls::TlsFiles>,
}

/// Validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub data: PathBuf,
    /// Where the secret was read from (printed instead of the secret).
    pub secret_file: PathBuf,
    pub secret: Vec<u8>,
    pub heartbeat: Duration,
    pub node_ttl: Duration,
    pub defaults: FileDefaults,
    pub repair_grace: Duration,
    pub repair_copies: usize,
    pub orphan_grace: Duration,
    pub report_interval: Duration,
    /// The `log-level` setting (RUST_LOG overrides it at start).
    pub log_level: String,
    pub log_format: LogFormat,
    /// Monitoring endpoint, if any.
    pub metrics: Option<SocketAddr>,
    /// Key id of the data-plane capabilities this server issues.
    pub capability_key_id: u32,
    /// Replication, when the control plane is replicated.
    pub replication: Option<Replication>,
    /// The TLS files (`[tls]`, `--tls-*`), when TLS is on.
    pub tls_files: Option<ringfs_ops::tls::TlsFiles>,
    /// TLS loaded from them: every connection accepted or made (to other
    /// replicas) speaks it, and nothing else.
    pub tls: Option<ringfs_ops::tls::Tls>,
    /// The Raft settings given (also without peers or bootstrap: a replica
    /// restarted with neither uses them).
    tuning: Replication,
}

impl Config {
    /// The Raft settings given, for a replica restarted without peers or
    /// bootstrap.
    pub fn replication_defaults(&self) -> Replication {
        self.tuning.clone()
    }
}

impl Replication {
    /// `settings` for a replica that has Raft state already: nothing to
    /// bootstrap, nobody to ask.
    pub fn restart_only(settings: Replication) -> Self {
        Replication {
            peers: Vec::new(),
            bootstrap: false,
            ..settings
        }
    }
}

/// Settings of a replicated control plane (Raft).
#[derive(Clone, Debug)]
pub struct Replication {
    /// Other replicas' RPC addresses.
    pub peers: Vec<String>,
    /// Start a new group if this replica has no Raft state.
    pub bootstrap: bool,
    /// The address others reach this replica at (`None`: the bound one).
    pub advertise: Option<String>,
    pub heartbeat: Duration,
    pub election: Duration,
    pub snapshot_every: u64,
    pub logs_kept: u64,
}

/// A configuration problem, stated for the operator.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

/// The config file `args` names (empty without one).
fn file_config(args: &Args) -> Result<FileConfig, ConfigError> {
    let Some(path) = &args.config else {
        return Ok(FileConfig::default());
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("cannot read config file {}: {e}", path.display())))?;
    parse_toml(path, &text)
}

/// The data directory flags or config file name: all `--restore` needs
/// (it writes the metadata there and exits, so it asks for no address and
/// no secret).
pub fn data_dir(args: &Args) -> Result<PathBuf, ConfigError> {
    args.data
        .clone()
        .or(file_config(args)?.data)
        .ok_or_else(|| ConfigError("--data is required".into()))
}

/// Shortest cluster secret accepted, in bytes.
pub const MIN_SECRET_BYTES: usize = 16;

impl Config {
    /// Merges flags over the config file and validates the result.
    pub fn from_args(args: Args) -> Result<Config, ConfigError> {
        let file = file_config(&args)?;
        let listen = args.listen.or(file.listen).ok_or_else(|| {
            ConfigError("--listen is required (e.g. --listen 127.0.0.1:7700)".into())
        })?;
        let data = args
            .data
            .or(file.data)
            .ok_or_else(|| ConfigError("--data is required".into()))?;
        let secret_file = args
            .secret_file
            .or(file.secret_file)
            .ok_or_else(|| ConfigError("--secret-file is required".into()))?;
        let secret = read_secret(&secret_file)?;
        let tls_files = args.tls.resolve(file.tls).map_err(ConfigError)?;
        let tls = ringfs_ops::tls::Tls::load_optional(tls_files.as_ref())
            .map_err(|e| ConfigError(e.to_string()))?;
        check_data_dir(&data)?;
        let heartbeat =
            Duration::from_millis(args.heartbeat_ms.or(file.heartbeat_ms).unwrap_or(1000));
        let node_ttl = Duration::from_millis(args.node_ttl_ms.or(file.node_ttl_ms).unwrap_or(5000));
        if heartbeat.is_zero() || node_ttl <= heartbeat {
            return Err(ConfigError(format!(
                "node-ttl-ms ({}) must be greater than heartbeat-ms ({}), which must be above 0",
                node_ttl.as_millis(),
                heartbeat.as_millis()
            )));
        }
        let mut defaults = FileDefaults::default();
        if let Some(cs) = args.default_chunk_size.or(file.default_chunk_size) {
            defaults.chunk_size = cs;
        }
        if let Some(r) = args.default_replication.or(file.default_replication) {
            defaults.replication = r;
        }
        let probe = crate::store::CreateOptions::default();
        crate::store::validate_layout(&defaults, &probe)
            .map_err(|e| ConfigError(format!("default file layout: {e}")))?;
        if defaults.replication == 0 {
            return Err(ConfigError("default-replication must be at least 1".into()));
        }
        let ms = |flag: Option<u64>, file: Option<u64>, default: u64| {
            Duration::from_millis(flag.or(file).unwrap_or(default))
        };
        let repair_grace = ms(args.repair_grace_ms, file.repair_grace_ms, 60_000);
        let orphan_grace = ms(args.orphan_grace_ms, file.orphan_grace_ms, 600_000);
        let report_interval = ms(args.report_interval_ms, file.report_interval_ms, 60_000);
        let repair_copies = args.repair_copies.or(file.repair_copies).unwrap_or(4);
        if repair_copies == 0 {
            return Err(ConfigError("repair-copies must be at least 1".into()));
        }
        if report_interval < heartbeat {
            return Err(ConfigError(
                "report-interval-ms must be at least heartbeat-ms".into(),
            ));
        }
        let log_level = args
            .log_level
            .or(file.log_level)
            .unwrap_or_else(|| ringfs_ops::logging::DEFAULT_LEVEL.into());
        ringfs_ops::logging::check_level(&log_level).map_err(ConfigError)?;
        let peers = args.peers.or(file.peers).unwrap_or_default();
        let bootstrap = args.bootstrap || file.bootstrap.unwrap_or(false);
        for p in &peers {
            ringfs_ops::config_file::check_host_port(p)
                .map_err(|e| ConfigError(format!("peers: {e}")))?;
        }
        let advertise = args.advertise.or(file.advertise);
        if let Some(a) = &advertise {
            ringfs_ops::config_file::check_host_port(a)
                .map_err(|e| ConfigError(format!("advertise: {e}")))?;
        }
        let raft_heartbeat = ms(args.raft_heartbeat_ms, file.raft_heartbeat_ms, 100);
        let raft_election = ms(args.raft_election_ms, file.raft_election_ms, 500);
        if raft_heartbeat.is_zero() || raft_election <= raft_heartbeat * 2 {
            return Err(ConfigError(format!(
                "raft-election-ms ({}) must be more than twice raft-heartbeat-ms ({}), which must be above 0",
                raft_election.as_millis(),
                raft_heartbeat.as_millis()
            )));
        }
        let snapshot_every = args
            .raft_snapshot_every
            .or(file.raft_snapshot_every)
            .unwrap_or(20_000)
            .max(1);
        let logs_kept = args.raft_logs_kept.or(file.raft_logs_kept).unwrap_or(1000);
        let tuning = Replication {
            peers,
            bootstrap,
            advertise,
            heartbeat: raft_heartbeat,
            election: raft_election,
            snapshot_every,
            logs_kept,
        };
        let replication = (bootstrap || !tuning.peers.is_empty()).then(|| tuning.clone());
        if replication.is_some() && tuning.advertise.is_none() && listen.ip().is_unspecified() {
            return Err(ConfigError(format!(
                "listen {listen} is not an address other replicas can reach: set advertise \
                 (the address of this replica, e.g. 10.0.0.11:{})",
                listen.port()
            )));
        }
        Ok(Config {
            listen,
            data,
            secret_file,
            secret,
            heartbeat,
            node_ttl,
            defaults,
            repair_grace,
            repair_copies,
            orphan_grace,
            report_interval,
            log_level,
            log_format: args.log_format.or(file.log_format).unwrap_or_default(),
            metrics: args.metrics.or(file.metrics),
            capability_key_id: args
                .capability_key_id
                .or(file.capability_key_id)
                .unwrap_or(1),
            replication,
            tuning,
            tls_files,
            tls,
        })
    }
}

impl Config {
    /// The effective configuration as a TOML config file (the secret file's
    /// path, never the secret).
    pub fn to_toml(&self) -> String {
        let file = FileConfig {
            listen: Some(self.listen),
            data: Some(self.data.clone()),
            secret_file: Some(self.secret_file.clone()),
            heartbeat_ms: Some(self.heartbeat.as_millis() as u64),
            node_ttl_ms: Some(self.node_ttl.as_millis() as u64),
            default_chunk_size: Some(self.defaults.chunk_size),
            default_replication: Some(self.defaults.replication),
            repair_grace_ms: Some(self.repair_grace.as_millis() as u64),
            repair_copies: Some(self.repair_copies),
            orphan_grace_ms: Some(self.orphan_grace.as_millis() as u64),
            report_interval_ms: Some(self.report_interval.as_millis() as u64),
            log_level: Some(self.log_level.clone()),
            log_format: Some(self.log_format),
            metrics: self.metrics,
            tls: self.tls_files.clone(),
            capability_key_id: Some(self.capability_key_id),
            peers: self.replication.as_ref().map(|r| r.peers.clone()),
            bootstrap: self.replication.as_ref().map(|r| r.bootstrap),
            advertise: self.replication.as_ref().and_then(|r| r.advertise.clone()),
            raft_heartbeat_ms: self
                .replication
                .as_ref()
                .map(|r| r.heartbeat.as_millis() as u64),
            raft_election_ms: self
                .replication
                .as_ref()
                .map(|r| r.election.as_millis() as u64),
            raft_snapshot_every: self.replication.as_ref().map(|r| r.snapshot_every),
            raft_logs_kept: self.replication.as_ref().map(|r| r.logs_kept),
        };
        toml::to_string(&file).unwrap_or_else(|e| format!("# cannot print the config: {e}\n"))
    }
}

/// Parses a config file; the error names the file and the line.
fn parse_toml<T: serde::de::DeserializeOwned>(
    path: &std::path::Path,
    text: &str,
) -> Result<T, ConfigError> {
    ringfs_ops::config_file::parse_toml(text)
        .map_err(|e| ConfigError(e.in_file(&format!("config file {}", path.display()))))
}

fn check_data_dir(data: &std::path::Path) -> Result<(), ConfigError> {
    ringfs_ops::config_file::check_data_dir(data).map_err(|e| ConfigError(format!("data dir {e}")))
}

/// Reads a secret file: its contents with surrounding whitespace trimmed.
/// A file that group or others may access is refused.
pub fn read_secret(path: &std::path::Path) -> Result<Vec<u8>, ConfigError> {
    ringfs_ops::auth::check_private(path).map_err(|e| ConfigError(e.to_string()))?;
    let raw = std::fs::read(path)
        .map_err(|e| ConfigError(format!("cannot read secret file {}: {e}", path.display())))?;
    let secret = raw.trim_ascii().to_vec();
    if secret.len() < MIN_SECRET_BYTES {
        return Err(ConfigError(format!(
            "secret file {} holds {} bytes; a cluster secret needs at least {MIN_SECRET_BYTES}",
            path.display(),
            secret.len()
        )));
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn private(p: &std::path::Path, text: &str) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(p, text).unwrap();
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    fn secret(dir: &tempfile::TempDir) -> PathBuf {
        let p = dir.path().join("secret");
        private(&p, "0123456789abcdef0123\n");
        p
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let s = secret(&dir);
        let cfg = dir.path().join("c.toml");
        std::fs::write(
            &cfg,
            format!(
                "listen = \"127.0.0.1:1\"\ndata = {:?}\nsecret-file = {:?}\nnode-ttl-ms = 9000\n",
                dir.path().join("d"),
                s
            ),
        )
        .unwrap();
        let args = Args {
            config: Some(cfg),
            listen: Some("127.0.0.1:2".parse().unwrap()),
            ..Default::default()
        };
        let c = Config::from_args(args).unwrap();
        assert_eq!(c.listen.port(), 2);
        assert_eq!(c.node_ttl, Duration::from_secs(9));
        assert_eq!(c.secret, b"0123456789abcdef0123");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("c.toml");
        std::fs::write(&cfg, "listne = \"127.0.0.1:1\"\n").unwrap();
        let e = Config::from_args(Args {
            config: Some(cfg.clone()),
            ..Default::default()
        });
        assert!(e.unwrap_err().to_string().contains("unknown field"));

        let s = secret(&dir);
        let base = || Args {
            listen: Some("127.0.0.1:0".parse().unwrap()),
            data: Some(dir.path().into()),
            secret_file: Some(s.clone()),
            ..Default::default()
        };
        assert!(Config::from_args(Args {
            node_ttl_ms: Some(500),
            ..base()
        })
        .is_err());
        assert!(Config::from_args(Args {
            default_chunk_size: Some(1000),
            ..base()
        })
        .is_err());
        assert!(Config::from_args(Args {
            default_replication: Some(0),
            ..base()
        })
        .is_err());
        assert!(Config::from_args(base()).is_ok());
    }

    #[test]
    fn short_secret_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        private(&p, "short");
        assert!(read_secret(&p)
            .unwrap_err()
            .to_string()
            .contains("at least 16"));
    }

    #[test]
    fn a_secret_others_may_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = secret(&dir);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_secret(&p).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        assert!(!e.contains("0123456789abcdef"), "{e}");
    }

    #[test]
    fn bad_address_is_one_line_with_its_line_number() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("c.toml");
        std::fs::write(&cfg, "# ringfs\nlisten = \"nowhere\"\n").unwrap();
        let e = Config::from_args(Args {
            config: Some(cfg),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(!e.contains('\n'), "one line: {e:?}");
        assert!(e.contains("line 2") && e.contains("address"), "{e}");
    }

    #[test]
    fn data_dir_that_cannot_be_created_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = secret(&dir);
        // A path below a regular file cannot be a directory, even for root.
        let e = Config::from_args(Args {
            listen: Some("127.0.0.1:0".parse().unwrap()),
            data: Some(s.join("meta")),
            secret_file: Some(s.clone()),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("data dir ") && e.contains("cannot create"),
            "{e}"
        );
    }

    #[test]
    fn printed_config_reads_back_as_the_same_config() {
        let dir = tempfile::tempdir().unwrap();
        let s = secret(&dir);
        let c = Config::from_args(Args {
            listen: Some("127.0.0.1:7700".parse().unwrap()),
            data: Some(dir.path().join("d")),
            secret_file: Some(s),
            heartbeat_ms: Some(250),
            default_replication: Some(2),
            ..Default::default()
        })
        .unwrap();
        let text = c.to_toml();
        assert!(text.contains("heartbeat-ms = 250"), "{text}");
        assert!(!text.contains("0123456789abcdef"), "no secret: {text}");
        let cfg = dir.path().join("printed.toml");
        std::fs::write(&cfg, &text).unwrap();
        let again = Config::from_args(Args {
            config: Some(cfg),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(again.to_toml(), text);
        assert_eq!(again.defaults.replication, 2);
    }
}
