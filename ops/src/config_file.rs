//! Pieces of config handling both servers share: reading a TOML config file
//! with a one-line error, and proving the data directory usable at start.

use std::path::Path;

/// A config file that did not parse: toml's message folded onto one line,
/// with the line of the problem when toml knows it.
#[derive(Debug)]
pub struct TomlError {
    /// 1-based line of the problem.
    pub line: Option<usize>,
    pub message: String,
}

impl std::fmt::Display for TomlError {
    /// `line N: message`, or the message alone when the line is unknown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(l) => write!(f, "line {l}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl TomlError {
    /// `<file> line N: message`, or `<file>: message` when the line is
    /// unknown.
    pub fn in_file(&self, file: &str) -> String {
        match self.line {
            Some(l) => format!("{file} line {l}: {}", self.message),
            None => format!("{file}: {}", self.message),
        }
    }
}

/// Parses a config file's `text` (toml's own message spans several lines).
pub fn parse_toml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, TomlError> {
    toml::from_str(text).map_err(|e: toml::de::Error| TomlError {
        line: e
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1),
        message: e.message().trim().replace('\n', " "),
    })
}

/// Creates the data directory if needed and proves it writable by creating
/// and removing a probe file, so a bad `data` fails at start with its path.
/// The error reads `<path>: cannot <what>: <why>`.
pub fn check_data_dir(data: &Path) -> Result<(), String> {
    let fail = |what: &str, e: std::io::Error| format!("{}: cannot {what}: {e}", data.display());
    std::fs::create_dir_all(data).map_err(|e| fail("create it", e))?;
    let probe = data.join(".ringfs-write-probe");
    std::fs::write(&probe, b"probe").map_err(|e| fail("write to it", e))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Checks that `s` is "host:port" (an IP address or a DNS name, and a
/// port in 1..=65535); names are resolved only when connecting. The error
/// says what is wrong with it.
pub fn check_host_port(s: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("{s:?}: {why}"));
    if let Ok(a) = s.parse::<std::net::SocketAddr>() {
        return match a.port() {
            0 => bad("the port must be a number in 1..=65535"),
            _ => Ok(()),
        };
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return bad("expected host:port, e.g. 10.0.0.1:7700");
    };
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => return bad("the port must be a number in 1..=65535"),
    }
    let name_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if !name_ok {
        return bad("the host must be a name or an IP address");
    }
    Ok(())
}
