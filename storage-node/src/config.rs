//! Node configuration: command-line flags (clap) over a TOML file with the
//! same keys (flags win), e.g.
//!
//! ```toml
//! control = "10.0.0.1:7000"
//! data = "/var/lib/ringfs"
//! listen = "10.0.0.5"
//! secret-file = "/etc/ringfs/secret"
//! cores = [0, 1]         # or a count: cores = 2, or a string "0,1"
//! base-port = 7100       # shard i listens on base-port + i; 0 = ephemeral
//! capacity-bytes = 0     # 0 = the filesystem's size
//! io-memory = 4194304    # glommio registered I/O memory per shard, bytes
//! lease-ms = 30000       # default lock/reservation lease
//! forward-timeout-ms = 30000  # a chain hop must answer a forwarded write within it
//! scrub-bytes-per-sec = 8388608  # background re-read rate per shard; 0 = off
//!
//! [tls]                  # optional: TLS on every connection (docs/operations.md)
//! ca = "/etc/ringfs/ca.pem"
//! cert = "/etc/ringfs/node1.pem"
//! key = "/etc/ringfs/node1.key"
//! ```
//!
//! Keys are kebab-case, equal to the long flags. Validation happens here,
//! before any shard starts: unknown keys, a `control` that is not
//! `host:port`, cores the machine does not have, and a data directory that
//! cannot be created or written are refused with a one-line message.

use clap::Parser;
use ringfs_ops::logging::LogFormat;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::path::PathBuf;

/// A configuration the node refuses to start with (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read or parsed: (path, why).
    #[error("config file {0}: {1}")]
    File(String, String),
    /// A required setting is absent: (key, flag).
    #[error("missing required setting `{0}` (flag --{1} or key `{0}` in --config)")]
    Missing(&'static str, &'static str),
    /// A setting has a bad value: (key, why).
    #[error("invalid {0}: {1}")]
    Invalid(&'static str, String),
}

#[derive(Parser, Debug, Default)]
#[command(name = "ringfs-node", about = "ringfs storage node", version)]
pub struct Cli {
    /// Control server address (host:port).
    #[arg(long)]
    pub control: Option<String>,
    /// Data directory (chunk files, node identity).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// IP address the shards listen on (and publish).
    #[arg(long)]
    pub listen: Option<IpAddr>,
    /// File holding the cluster secret.
    #[arg(long)]
    pub secret_file: Option<PathBuf>,
    /// Cores to run shards on: a list "0,1,3" or a count "2" (cores 0..n).
    #[arg(long)]
    pub cores: Option<String>,
    /// TOML config file with the same keys as the long flags.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Print the effective configuration (file and flags merged) as TOML
    /// and exit.
    #[arg(long)]
    pub print_config: bool,
    /// First data-plane port (shard i uses base_port + i); 0 = ephemeral.
    #[arg(long)]
    pub base_port: Option<u16>,
    /// Capacity to offer in bytes (0 = the filesystem's size).
    #[arg(long)]
    pub capacity_bytes: Option<u64>,
    /// glommio registered I/O memory per shard, bytes.
    #[arg(long)]
    pub io_memory: Option<usize>,
    /// Default lease of locks and reservations, milliseconds.
    #[arg(long)]
    pub lease_ms: Option<u64>,
    /// How long a chain hop may take to answer a forwarded write (and a
    /// copy target a copy), milliseconds [default: 30000].
    #[arg(long)]
    pub forward_timeout_ms: Option<u64>,
    /// Bytes per second and shard the scrubber re-reads to find corrupt
    /// chunks (0 = no scrubbing) [default: 8388608].
    #[arg(long)]
    pub scrub_bytes_per_sec: Option<u64>,
    /// Log filter (EnvFilter syntax, e.g. "info" or "warn,ringfs_node=debug");
    /// RUST_LOG wins when set [default: info].
    #[arg(long)]
    pub log_level: Option<String>,
    /// Log line format [default: text].
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Address to serve /metrics, /healthz and /readyz on (HTTP); off when unset.
    #[arg(long)]
    pub metrics: Option<std::net::SocketAddr>,
    #[command(flatten)]
    pub tls: ringfs_ops::tls::TlsFlags,
    /// Key id of the data-plane capability key: capabilities under this id
    /// and the one before are accepted (docs/operations.md, rotating the
    /// capability key) [default: 1].
    #[arg(long)]
    pub capability_key_id: Option<u32>,
}

/// The TOML file. `--print-config` prints it filled with the effective
/// values, so its output is a valid config file.
#[derive(Deserialize, Serialize, Debug, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileConfig {
    control: Option<String>,
    data: Option<PathBuf>,
    listen: Option<IpAddr>,
    secret_file: Option<PathBuf>,
    cores: Option<toml::Value>,
    base_port: Option<u16>,
    capacity_bytes: Option<u64>,
    io_memory: Option<usize>,
    lease_ms: Option<u64>,
    forward_timeout_ms: Option<u64>,
    scrub_bytes_per_sec: Option<u64>,
    log_level: Option<String>,
    log_format: Option<LogFormat>,
    metrics: Option<std::net::SocketAddr>,
    tls: Option<ringfs_ops::tls::TlsFiles>,
    capability_key_id: Option<u32>,
}

/// The resolved configuration.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub control: String,
    pub data: PathBuf,
    pub listen: IpAddr,
    pub secret_file: PathBuf,
    /// CPU ids, one shard each.
    pub cores: Vec<usize>,
    pub base_port: u16,
    pub capacity_bytes: u64,
    pub io_memory: usize,
    pub lease_ms: u64,
    pub forward_timeout_ms: u64,
    pub scrub_bytes_per_sec: u64,
    /// The `log-level` setting (RUST_LOG overrides it at start).
    pub log_level: String,
    pub log_format: LogFormat,
    /// Monitoring endpoint, if any.
    pub metrics: Option<std::net::SocketAddr>,
    /// The TLS files (`[tls]`, `--tls-*`), when TLS is on.
    pub tls_files: Option<ringfs_ops::tls::TlsFiles>,
    /// TLS loaded from them (key permissions checked): the data plane and
    /// the connections to the control server speak it, and nothing else.
    pub tls: Option<ringfs_ops::tls::Tls>,
    /// The current data-plane key id (this one and the one before are
    /// accepted).
    pub capability_key_id: u32,
}

/// Parses `--cores`: "0,1,3" (a list, each core once) or "2" (a count:
/// cores 0 and 1). The node runs one shard per listed core.
pub fn parse_cores(s: &str) -> Result<Vec<usize>, ConfigError> {
    let bad = || {
        ConfigError::Invalid(
            "cores",
            format!("{s:?}: expected a count like 2 or a list like 0,1"),
        )
    };
    let s = s.trim();
    if s.contains(',') {
        let v: Result<Vec<usize>, _> = s
            .split(',')
            .filter(|p| !p.trim().is_empty())
            .map(|p| p.trim().parse())
            .collect();
        let v = v.map_err(|_| bad())?;
        if v.is_empty() {
            return Err(bad());
        }
        let mut dedup = v.clone();
        dedup.sort();
        dedup.dedup();
        if dedup.len() != v.len() {
            return Err(ConfigError::Invalid(
                "cores",
                format!("{s:?} lists a core twice"),
            ));
        }
        Ok(v)
    } else {
        let n: usize = s.parse().map_err(|_| bad())?;
        if n == 0 || n > 1024 {
            return Err(bad());
        }
        Ok((0..n).collect())
    }
}

impl NodeConfig {
    pub fn resolve(cli: Cli) -> Result<Self, ConfigError> {
        let file = match &cli.config {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| ConfigError::File(p.display().to_string(), e.to_string()))?;
                parse_toml(p, &text)?
            }
            None => FileConfig::default(),
        };
        let cores = match (cli.cores, file.cores) {
            (Some(s), _) => parse_cores(&s)?,
            (None, Some(toml::Value::Integer(n))) => parse_cores(&n.to_string())?,
            (None, Some(toml::Value::String(s))) => parse_cores(&s)?,
            (None, Some(toml::Value::Array(a))) => {
                let list: Vec<String> = a.iter().map(|v| v.to_string()).collect();
                parse_cores(&format!("{},", list.join(",")))?
            }
            (None, Some(v)) => return Err(ConfigError::Invalid("cores", v.to_string())),
            (None, None) => (0..std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1))
                .collect(),
        };
        check_cores(&cores, online_cores())?;
        let control = cli
            .control
            .or(file.control)
            .ok_or(ConfigError::Missing("control", "control"))?;
        for addr in control.split(',') {
            check_host_port(addr.trim())?;
        }
        let data = cli
            .data
            .or(file.data)
            .ok_or(ConfigError::Missing("data", "data"))?;
        check_data_dir(&data)?;
        let log_level = cli
            .log_level
            .or(file.log_level)
            .unwrap_or_else(|| ringfs_ops::logging::DEFAULT_LEVEL.into());
        ringfs_ops::logging::check_level(&log_level)
            .map_err(|e| ConfigError::Invalid("log-level", e))?;
        let tls_files = cli
            .tls
            .resolve(file.tls)
            .map_err(|e| ConfigError::Invalid("tls", e))?;
        Ok(Self {
            control,
            data,
            listen: cli
                .listen
                .or(file.listen)
                .ok_or(ConfigError::Missing("listen", "listen"))?,
            secret_file: cli
                .secret_file
                .or(file.secret_file)
                .ok_or(ConfigError::Missing("secret-file", "secret-file"))?,
            cores,
            base_port: cli.base_port.or(file.base_port).unwrap_or(0),
            capacity_bytes: cli.capacity_bytes.or(file.capacity_bytes).unwrap_or(0),
            io_memory: cli.io_memory.or(file.io_memory).unwrap_or(4 << 20),
            lease_ms: cli.lease_ms.or(file.lease_ms).unwrap_or(30_000),
            forward_timeout_ms: cli
                .forward_timeout_ms
                .or(file.forward_timeout_ms)
                .unwrap_or(30_000)
                .max(1),
            scrub_bytes_per_sec: cli
                .scrub_bytes_per_sec
                .or(file.scrub_bytes_per_sec)
                .unwrap_or(8 << 20),
            log_level,
            log_format: cli.log_format.or(file.log_format).unwrap_or_default(),
            metrics: cli.metrics.or(file.metrics),
            tls: ringfs_ops::tls::Tls::load_optional(tls_files.as_ref())
                .map_err(|e| ConfigError::Invalid("tls", e.to_string()))?,
            tls_files,
            capability_key_id: cli
                .capability_key_id
                .or(file.capability_key_id)
                .unwrap_or(1),
        })
    }
}

impl NodeConfig {
    /// The effective configuration as a TOML config file.
    pub fn to_toml(&self) -> String {
        let file = FileConfig {
            control: Some(self.control.clone()),
            data: Some(self.data.clone()),
            listen: Some(self.listen),
            secret_file: Some(self.secret_file.clone()),
            cores: Some(toml::Value::Array(
                self.cores
                    .iter()
                    .map(|&c| toml::Value::Integer(c as i64))
                    .collect(),
            )),
            base_port: Some(self.base_port),
            capacity_bytes: Some(self.capacity_bytes),
            io_memory: Some(self.io_memory),
            lease_ms: Some(self.lease_ms),
            forward_timeout_ms: Some(self.forward_timeout_ms),
            scrub_bytes_per_sec: Some(self.scrub_bytes_per_sec),
            log_level: Some(self.log_level.clone()),
            log_format: Some(self.log_format),
            metrics: self.metrics,
            tls: self.tls_files.clone(),
            capability_key_id: Some(self.capability_key_id),
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
        .map_err(|e| ConfigError::File(path.display().to_string(), e.to_string()))
}

/// CPUs online on this machine (the cores a shard can be pinned to are
/// 0..this).
pub fn online_cores() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if n > 0 {
        n as usize
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

/// Refuses cores the machine does not have (`online` CPUs: ids 0..online).
pub fn check_cores(cores: &[usize], online: usize) -> Result<(), ConfigError> {
    if let Some(&bad) = cores.iter().find(|&&c| c >= online) {
        return Err(ConfigError::Invalid(
            "cores",
            format!("core {bad} does not exist: this machine has cores 0..{online}"),
        ));
    }
    Ok(())
}

/// Checks that `s` is `host:port` (a name or IPv4, or `[IPv6]`, and a
/// non-zero port). Names are resolved later, when connecting.
pub fn check_host_port(s: &str) -> Result<(), ConfigError> {
    ringfs_ops::config_file::check_host_port(s).map_err(|e| ConfigError::Invalid("control", e))
}

/// Creates the data directory if needed and proves it writable.
pub fn check_data_dir(data: &std::path::Path) -> Result<(), ConfigError> {
    ringfs_ops::config_file::check_data_dir(data).map_err(|e| ConfigError::Invalid("data", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cores_lists_and_counts() {
        assert_eq!(parse_cores("2").unwrap(), vec![0, 1]);
        assert_eq!(parse_cores("0,1").unwrap(), vec![0, 1]);
        assert_eq!(parse_cores("3,").unwrap(), vec![3]);
        assert!(parse_cores("0,0").is_err());
        assert!(parse_cores("x").is_err());
        assert!(parse_cores("0").is_err());
    }

    #[test]
    fn file_and_flags_merge() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("node.toml");
        std::fs::write(
            &f,
            format!(
                "control = \"127.0.0.1:1\"\ndata = {:?}\nlisten = \"127.0.0.1\"\nsecret-file = \"/s\"\ncores = 1\n",
                dir.path().join("d")
            ),
        )
        .unwrap();
        let cli = Cli {
            config: Some(f),
            control: Some("127.0.0.1:2".into()),
            ..Default::default()
        };
        let c = NodeConfig::resolve(cli).unwrap();
        assert_eq!(c.control, "127.0.0.1:2");
        assert_eq!(c.cores, vec![0]);
        assert_eq!(c.data, dir.path().join("d"));
        assert!(NodeConfig::resolve(Cli::default()).is_err());

        // The printed config reads back as the same config.
        let text = c.to_toml();
        assert!(text.contains("secret-file = \"/s\""), "{text}");
        let again = dir.path().join("again.toml");
        std::fs::write(&again, &text).unwrap();
        let c2 = NodeConfig::resolve(Cli {
            config: Some(again),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c2.to_toml(), text);
    }

    fn base(dir: &tempfile::TempDir) -> Cli {
        Cli {
            control: Some("ctl.example:7700".into()),
            data: Some(dir.path().join("d")),
            listen: Some("127.0.0.1".parse().unwrap()),
            secret_file: Some("/s".into()),
            cores: Some("1".into()),
            ..Default::default()
        }
    }

    #[test]
    fn validation_errors_are_one_line() {
        let dir = tempfile::tempdir().unwrap();
        assert!(NodeConfig::resolve(base(&dir)).is_ok());
        let err = |cli: Cli| NodeConfig::resolve(cli).unwrap_err().to_string();
        let one_line = |e: String| {
            assert!(!e.contains('\n'), "one line: {e:?}");
            e
        };
        // Unknown (e.g. old snake_case) keys, with their line.
        let f = dir.path().join("n.toml");
        std::fs::write(&f, "cores = 1\nsecret_file = \"/s\"\n").unwrap();
        let e = one_line(err(Cli {
            config: Some(f.clone()),
            ..base(&dir)
        }));
        assert!(
            e.contains("line 2") && e.contains("unknown field `secret_file`"),
            "{e}"
        );
        // A bad listen address in the file.
        std::fs::write(&f, "listen = \"10.0.0.300\"\n").unwrap();
        let e = one_line(err(Cli {
            config: Some(f),
            listen: None,
            ..base(&dir)
        }));
        assert!(e.contains("line 1"), "{e}");
        for control in ["10.0.0.1", "10.0.0.1:0", "a b:7700", ":7700", "h:port"] {
            let e = one_line(err(Cli {
                control: Some(control.into()),
                ..base(&dir)
            }));
            assert!(e.starts_with("invalid control"), "{control}: {e}");
        }
        assert!(check_host_port("[::1]:7700").is_ok());
        assert!(check_host_port("ctl-1.example.org:7700").is_ok());
        // Cores beyond the machine.
        let e = one_line(err(Cli {
            cores: Some(format!("{},", online_cores())),
            ..base(&dir)
        }));
        assert!(e.contains("does not exist"), "{e}");
        assert!(check_cores(&[0, 3], 4).is_ok());
        assert!(check_cores(&[0, 4], 4).is_err());
        // A data dir below a regular file cannot be created (even by root).
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let e = one_line(err(Cli {
            data: Some(file.join("d")),
            ..base(&dir)
        }));
        assert!(
            e.starts_with("invalid data") && e.contains("cannot create"),
            "{e}"
        );
    }
}
