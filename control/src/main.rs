fn main() -> std::process::ExitCode {
    ringfs_control::cli::main_with_args(std::env::args_os())
}
