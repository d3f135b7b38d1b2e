//! Logging: `tracing` events to stderr as text or JSON lines. The level
//! filter is `RUST_LOG` when set (it wins), else the `log-level` setting
//! (default `info`); both use `EnvFilter` syntax, e.g. `info,ringfs_control=debug`.

use serde::{Deserialize, Serialize};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `target`, `fields`).
    Json,
}

/// The default `log-level`.
pub const DEFAULT_LEVEL: &str = "info";

/// Checks a `log-level` value; the error is one line. A bare word must be
/// a level (EnvFilter would take "loud" as a target name and log nothing).
pub fn check_level(level: &str) -> Result<(), String> {
    for directive in level.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        if !directive.contains(['=', '[']) && directive.parse::<LevelFilter>().is_err() {
            return Err(format!(
                "log-level {level:?}: {directive:?} is not a level \
                 (trace, debug, info, warn, error, off) nor target=level"
            ));
        }
    }
    EnvFilter::try_new(level)
        .map(|_| ())
        .map_err(|e| format!("log-level {level:?}: {e}"))
}

/// Installs the global subscriber (once; later calls do nothing).
pub fn init(level: &str, format: LogFormat) {
    let from_env = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .and_then(|v| EnvFilter::try_new(v).ok());
    let filter = from_env.unwrap_or_else(|| {
        EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new(DEFAULT_LEVEL))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_checked() {
        for ok in ["info", "WARN", "warn,ringfs=debug", "off", "h2=trace"] {
            assert!(check_level(ok).is_ok(), "{ok}");
        }
        for bad in ["loud", "info,verbose", "x=nope"] {
            let e = check_level(bad).unwrap_err();
            assert!(e.starts_with("log-level ") && !e.contains('\n'), "{e}");
        }
    }
}
