//! The `ringfs-control` command, as a library function so that launchers
//! (the bench, the test harness) can run it as a child process of their own
//! binary.

use std::process::ExitCode;

use crate::config::{Args, Config};

/// Runs the control server with command-line `args` (program name first)
/// until SIGINT or SIGTERM.
pub fn main_with_args<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let args: Args = match ringfs_ops::args::parse(args) {
        Ok(a) => a,
        Err(code) => return code,
    };
    if let Some(from) = &args.restore {
        return restore(from, &args);
    }
    let print_config = args.print_config;
    let config = match Config::from_args(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ringfs-control: {e}");
            return ExitCode::from(2);
        }
    };
    if print_config {
        print!("{}", config.to_toml());
        return ExitCode::SUCCESS;
    }
    // openraft reports every election and membership step at info; its
    // warnings are what an operator needs unless the filter asks for more.
    let level = if config.log_level.contains("openraft") {
        config.log_level.clone()
    } else {
        format!("{},openraft=warn", config.log_level)
    };
    ringfs_ops::logging::init(&level, config.log_format);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ringfs-control: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let local = tokio::task::LocalSet::new();
    // Registered before serving: a SIGTERM right after the "listening" line
    // must stop the server in order, not kill it with the default action.
    let shutdown = {
        let _guard = runtime.enter();
        shutdown_signal()
    };
    let result = local.block_on(&runtime, crate::server::run(config, shutdown));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "ringfs-control: {}",
                ringfs_schema::wire_error::describe(&e)
            );
            ExitCode::FAILURE
        }
    }
}

/// Installs the SIGTERM and SIGINT handlers now (inside a runtime) and
/// returns a future that resolves on the first of them.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let handlers = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        match handlers {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => std::future::pending().await,
        }
    }
}

/// `--restore FROM`: writes the snapshot `from` into the (empty) data
/// directory of `args` and exits.
fn restore(from: &std::path::Path, args: &Args) -> ExitCode {
    let data = match crate::config::data_dir(args) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("ringfs-control: {e}");
            return ExitCode::from(2);
        }
    };
    match crate::backup::restore(from, &data) {
        Ok(bytes) => {
            println!(
                "restored {bytes} bytes of metadata from {} into {}",
                from.display(),
                data.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "ringfs-control: restore: {}",
                ringfs_schema::wire_error::describe(&e)
            );
            ExitCode::FAILURE
        }
    }
}
