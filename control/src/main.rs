fn main() -> std::process::ExitCode {
    // Failpoints from $FAILPOINTS (`name=action;...`), so that a test can
    // configure a child process; kept set up until the process ends.
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    ringfs_control::cli::main_with_args(std::env::args_os())
}
