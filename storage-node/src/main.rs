//! `ringfs-node`: the storage node binary.

fn main() -> std::process::ExitCode {
    ringfs_node::cli::main_with_args(std::env::args_os())
}
