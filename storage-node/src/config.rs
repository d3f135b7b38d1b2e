//! Node configuration: command-line flags (clap) over a TOML file with the
//! same keys (flags win), e.g.
//!
//! ```toml
//! control = "10.0.0.1:7000"
//! data = "/var/lib/ringfs"
//! listen = "10.0.0.5"
//! secret_file = "/etc/ringfs/secret"
//! cores = "0,1"          # or a count: cores = 2
//! base_port = 7100       # shard i listens on base_port + i; 0 = ephemeral
//! capacity_bytes = 0     # 0 = the filesystem's size
//! io_memory = 4194304    # glommio registered I/O memory per shard, bytes
//! lease_ms = 30000       # default lock/reservation lease
//! scrub_bytes_per_sec = 8388608  # background re-read rate per shard; 0 = off
//! ```

use clap::Parser;
use serde::Deserialize;
use std::net::IpAddr;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0}: {1}")]
    File(String, String),
    #[error("missing required setting `{0}` (flag --{1} or key `{0}` in --config)")]
    Missing(&'static str, &'static str),
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
    /// TOML config file with the same keys (snake_case).
    #[arg(long)]
    pub config: Option<PathBuf>,
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
    /// Bytes per second and shard the scrubber re-reads to find corrupt
    /// chunks (0 = no scrubbing) [default: 8388608].
    #[arg(long)]
    pub scrub_bytes_per_sec: Option<u64>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
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
    scrub_bytes_per_sec: Option<u64>,
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
    pub scrub_bytes_per_sec: u64,
}

/// Parses "0,1,3" (a list) or "2" (a count: cores 0..2).
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
                toml::from_str::<FileConfig>(&text)
                    .map_err(|e| ConfigError::File(p.display().to_string(), e.to_string()))?
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
        Ok(Self {
            control: cli
                .control
                .or(file.control)
                .ok_or(ConfigError::Missing("control", "control"))?,
            data: cli
                .data
                .or(file.data)
                .ok_or(ConfigError::Missing("data", "data"))?,
            listen: cli
                .listen
                .or(file.listen)
                .ok_or(ConfigError::Missing("listen", "listen"))?,
            secret_file: cli
                .secret_file
                .or(file.secret_file)
                .ok_or(ConfigError::Missing("secret_file", "secret-file"))?,
            cores,
            base_port: cli.base_port.or(file.base_port).unwrap_or(0),
            capacity_bytes: cli.capacity_bytes.or(file.capacity_bytes).unwrap_or(0),
            io_memory: cli.io_memory.or(file.io_memory).unwrap_or(4 << 20),
            lease_ms: cli.lease_ms.or(file.lease_ms).unwrap_or(30_000),
            scrub_bytes_per_sec: cli
                .scrub_bytes_per_sec
                .or(file.scrub_bytes_per_sec)
                .unwrap_or(8 << 20),
        })
    }
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
            "control = \"127.0.0.1:1\"\ndata = \"/d\"\nlisten = \"127.0.0.1\"\nsecret_file = \"/s\"\ncores = 1\n",
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
        assert_eq!(c.data, PathBuf::from("/d"));
        assert!(NodeConfig::resolve(Cli::default()).is_err());
    }
}
