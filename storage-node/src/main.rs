//! `ringfs-node`: the storage node binary.

fn main() -> std::process::ExitCode {
    // Failpoints from $FAILPOINTS (see src/failpoint.rs), for as long as the
    // process runs; only in builds with the `failpoints` feature (tests).
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    ringfs_node::cli::main_with_args(std::env::args_os())
}
