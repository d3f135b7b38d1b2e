//! `ringfs-node`: the storage node binary.

use clap::Parser;
use ringfs_node::config::{Cli, NodeConfig};

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cfg = NodeConfig::resolve(Cli::parse())?;
    ringfs_node::node::run(cfg)
}
