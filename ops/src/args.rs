//! Command-line parsing as both servers do it.

use std::process::ExitCode;

/// Parses `args` (program name first). On `Err` clap has already printed
/// help or the version (exit code 0) or a usage error (exit code 2).
pub fn parse<P, I, T>(args: I) -> Result<P, ExitCode>
where
    P: clap::Parser,
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    P::try_parse_from(args).map_err(|e| {
        let _ = e.print();
        if e.use_stderr() {
            ExitCode::from(2)
        } else {
            ExitCode::SUCCESS
        }
    })
}
