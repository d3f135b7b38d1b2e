//! The `ringfs-node` command line, callable from other binaries (the bench
//! launcher runs the node as a hidden subcommand of itself).

use crate::config::{Cli, NodeConfig};
use std::process::ExitCode;

/// Parses `args` (program name first) and runs the node until it fails.
pub fn main_with_args<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli: Cli = match ringfs_ops::args::parse(args) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let print_config = cli.print_config;
    let cfg = match NodeConfig::resolve(cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ringfs-node: {e}");
            return ExitCode::from(2);
        }
    };
    if print_config {
        print!("{}", cfg.to_toml());
        return ExitCode::SUCCESS;
    }
    ringfs_ops::logging::init(&cfg.log_level, cfg.log_format);
    match crate::node::run(cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringfs-node: {e:#}");
            ExitCode::FAILURE
        }
    }
}
