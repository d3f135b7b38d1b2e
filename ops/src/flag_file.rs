//! A TOML config file for a command-line tool whose keys are its long
//! flags (the `ringfs` CLI and `ringfs-bench`): the file's settings become
//! flags placed before the real ones, so clap parses and validates them
//! exactly like flags, and a flag given on the command line wins. That last
//! part needs the command built with `args_override_self(true)` (clap then
//! keeps the last value of a repeated option): parse with [`matches`].
//!
//! Rules: a key must be a long flag of the tool, of its global flags or of
//! any subcommand; it applies where that flag exists and is skipped
//! elsewhere (a `replication` default for `ringfs put` does not break
//! `ringfs ls`). A flag that clap reads from an environment variable that is
//! set is skipped too, so the order is flag, environment, file, default.
//! Values: strings and numbers as the flag's value, `true` as a bare switch
//! (`false` leaves it off), arrays as the flag repeated.

use std::ffi::{OsStr, OsString};
use std::path::Path;

/// The flags of `cmd` that name the file and ask for the effective config.
pub const CONFIG_FLAG: &str = "config";
pub const PRINT_FLAG: &str = "print-config";

/// Returns `argv` with the settings of the config file inserted as flags:
/// the file named by `--config PATH` (or `--config=PATH`), else by the
/// environment variable of `cmd`'s `--config` flag, else `default` if that
/// file exists. Errors name the file and the key.
pub fn expand(
    cmd: &clap::Command,
    argv: Vec<OsString>,
    default: Option<&Path>,
) -> Result<Vec<OsString>, String> {
    // Where the subcommand's own flags may start: after its name.
    let sub = argv.iter().enumerate().skip(1).find_map(|(i, a)| {
        let name = a.to_str()?;
        cmd.find_subcommand(name).map(|s| (i, s))
    });
    if sub.is_some_and(|(_, s)| s.is_hide_set()) {
        // Internal subcommands pass their arguments through untouched.
        return Ok(argv);
    }
    let from_env = long_arg(cmd, CONFIG_FLAG)
        .and_then(|a| a.get_env())
        .and_then(std::env::var_os);
    let path = match named_file(&argv).map(OsString::from).or(from_env) {
        Some(p) => p,
        None => match default {
            Some(d) if d.exists() => d.as_os_str().to_owned(),
            _ => return Ok(argv),
        },
    };
    let shown = Path::new(&path).display().to_string();
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{shown}: {e}"))?;
    let table: toml::Table =
        crate::config_file::parse_toml(&text).map_err(|e| e.in_file(&shown))?;
    let mut flags = Vec::new();
    for (key, value) in &table {
        if key == CONFIG_FLAG || key == PRINT_FLAG {
            return Err(format!("{shown}: `{key}` cannot be set in a config file"));
        }
        let here = sub.map_or(cmd, |(_, s)| s);
        let arg = long_arg(here, key).or_else(|| long_arg(cmd, key).filter(|a| a.is_global_set()));
        let Some(arg) = arg else {
            if cmd.get_subcommands().any(|s| long_arg(s, key).is_some()) {
                continue;
            }
            return Err(format!(
                "{shown}: unknown key `{key}` (keys are the long flags: {})",
                known_keys(cmd).join(", ")
            ));
        };
        // The command line and the environment win. (A repeated flag that
        // appends, like a list, would otherwise merge with the file's.)
        let given = |a: &OsString| {
            a.to_str().is_some_and(|a| {
                a.strip_prefix("--")
                    .and_then(|a| a.strip_prefix(key.as_str()))
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('='))
            })
        };
        if argv.iter().skip(1).any(given)
            || arg
                .get_env()
                .is_some_and(|var| std::env::var_os(var).is_some())
        {
            continue;
        }
        let values = match value {
            toml::Value::Array(items) => items.iter().collect(),
            v => vec![v],
        };
        for v in values {
            let text = match v {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(n) => n.to_string(),
                toml::Value::Float(x) => x.to_string(),
                toml::Value::Boolean(true) if takes_no_value(arg) => {
                    flags.push(OsString::from(format!("--{key}")));
                    continue;
                }
                toml::Value::Boolean(false) if takes_no_value(arg) => continue,
                toml::Value::Boolean(b) => b.to_string(),
                _ => {
                    return Err(format!(
                        "{shown}: `{key}` must be a string, a number, a boolean or a list of those"
                    ))
                }
            };
            flags.push(OsString::from(format!("--{key}={text}")));
        }
    }
    let at = sub.map_or(1, |(i, _)| i + 1).min(argv.len());
    let mut out = argv;
    out.splice(at..at, flags);
    Ok(out)
}

/// Expands `argv` with the config file (see [`expand`]) and parses it with
/// `cmd`, later flags overriding earlier ones. `Err` is the message to
/// print and the exit code: 2 for a bad file or bad flags, 0 for help and
/// version.
pub fn matches(
    cmd: clap::Command,
    argv: Vec<OsString>,
    default: Option<&Path>,
) -> Result<clap::ArgMatches, (String, i32)> {
    let name = cmd.get_name().to_string();
    let argv = expand(&cmd, argv, default).map_err(|e| (format!("{name}: {e}\n"), 2))?;
    cmd.args_override_self(true)
        .try_get_matches_from(argv)
        .map_err(|e| (e.render().to_string(), e.exit_code()))
}

/// [`matches`] on the process's arguments, then into `P`. On `Err` the
/// message has been printed (help and version to stdout, problems to
/// stderr) and the exit code is returned.
pub fn parse<P: clap::Parser>(
    default: Option<&Path>,
) -> Result<(P, clap::ArgMatches), std::process::ExitCode> {
    let parsed = matches(P::command(), std::env::args_os().collect(), default).and_then(|m| {
        let p = P::from_arg_matches(&m).map_err(|e| (e.render().to_string(), 2))?;
        Ok((p, m))
    });
    parsed.map_err(|(msg, code)| {
        if code == 0 {
            print!("{msg}");
        } else {
            eprint!("{msg}");
        }
        std::process::ExitCode::from(code.clamp(0, 255) as u8)
    })
}

/// The effective settings of a parse as a config file: every long flag of
/// the invoked subcommand (and the global ones) that has a value, from the
/// command line, the environment, the file or its default.
pub fn print(cmd: &clap::Command, matches: &clap::ArgMatches) -> String {
    let (args, matches): (Vec<&clap::Arg>, _) = match matches
        .subcommand()
        .and_then(|(name, m)| Some((cmd.find_subcommand(name)?, m)))
    {
        // Global flags are in the subcommand's matches too.
        Some((sub, m)) => (
            sub.get_arguments()
                .chain(cmd.get_arguments().filter(|a| a.is_global_set()))
                .collect(),
            m,
        ),
        None => (cmd.get_arguments().collect(), matches),
    };
    let mut out = String::new();
    for arg in args {
        let Some(long) = arg.get_long() else { continue };
        if long == CONFIG_FLAG || long == PRINT_FLAG || long == "help" || long == "version" {
            continue;
        }
        let Ok(Some(raw)) = matches.try_get_raw(arg.get_id().as_str()) else {
            continue;
        };
        let values: Vec<toml::Value> = raw.map(|v: &OsStr| toml_value(arg, v)).collect();
        let value = match <[toml::Value; 1]>::try_from(values) {
            Ok([one]) => one,
            Err(many) => toml::Value::Array(many),
        };
        let mut line = toml::Table::new();
        line.insert(long.to_string(), value);
        out.push_str(&line.to_string());
    }
    out
}

fn toml_value(arg: &clap::Arg, v: &OsStr) -> toml::Value {
    let s = v.to_string_lossy();
    if takes_no_value(arg) {
        if let Ok(b) = s.parse() {
            return toml::Value::Boolean(b);
        }
    }
    match s.parse() {
        Ok(n) => toml::Value::Integer(n),
        Err(_) => toml::Value::String(s.into_owned()),
    }
}

/// The PATH of `--config PATH` or `--config=PATH`, if given.
fn named_file(argv: &[OsString]) -> Option<&OsStr> {
    let flag = format!("--{CONFIG_FLAG}");
    let mut it = argv.iter().skip(1);
    while let Some(a) = it.next() {
        if a == flag.as_str() {
            return it.next().map(|p| p.as_os_str());
        }
        if let Some(p) = a.to_str().and_then(|s| s.strip_prefix(&format!("{flag}="))) {
            return Some(OsStr::new(p));
        }
    }
    None
}

fn long_arg<'a>(cmd: &'a clap::Command, key: &str) -> Option<&'a clap::Arg> {
    cmd.get_arguments().find(|a| a.get_long() == Some(key))
}

fn takes_no_value(arg: &clap::Arg) -> bool {
    matches!(
        arg.get_action(),
        clap::ArgAction::SetTrue | clap::ArgAction::SetFalse
    )
}

/// Every long flag a file may set, sorted.
fn known_keys(cmd: &clap::Command) -> Vec<String> {
    let mut keys: Vec<String> = std::iter::once(cmd)
        .chain(cmd.get_subcommands().filter(|s| !s.is_hide_set()))
        .flat_map(|c| c.get_arguments().filter_map(|a| a.get_long()))
        .filter(|k| ![CONFIG_FLAG, PRINT_FLAG, "help", "version"].contains(k))
        .map(String::from)
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, ArgAction, Command};

    fn cmd() -> Command {
        Command::new("tool")
            .arg(Arg::new("config").long("config").global(true))
            .arg(
                Arg::new("print-config")
                    .long("print-config")
                    .global(true)
                    .action(ArgAction::SetTrue),
            )
            .arg(
                Arg::new("control")
                    .long("control")
                    .global(true)
                    .env("FLAG_FILE_TEST_CONTROL"),
            )
            .subcommand(
                Command::new("put")
                    .arg(Arg::new("replication").long("replication"))
                    .arg(Arg::new("keep").long("keep").action(ArgAction::SetTrue))
                    .arg(
                        Arg::new("workload")
                            .long("workload")
                            .action(ArgAction::Append),
                    ),
            )
            .subcommand(Command::new("ls").arg(Arg::new("path")))
    }

    fn file(text: &str) -> tempfile_path::TempPath {
        tempfile_path::write(text)
    }

    /// A file under the system temp dir, removed on drop (no tempfile crate
    /// for a unit test).
    mod tempfile_path {
        pub struct TempPath(pub std::path::PathBuf);
        impl Drop for TempPath {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
        pub fn write(text: &str) -> TempPath {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let p = std::env::temp_dir().join(format!(
                "ringfs-flag-file-{}-{}.toml",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::write(&p, text).unwrap();
            TempPath(p)
        }
    }

    fn args(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    fn parse(v: &[&str], text: &str) -> Result<clap::ArgMatches, String> {
        let f = file(text);
        let mut argv = args(v);
        argv.extend([OsString::from("--config"), f.0.clone().into()]);
        matches(cmd(), argv, None).map_err(|(e, _)| e)
    }

    #[test]
    fn file_settings_apply_and_flags_win() {
        let text = "control = \"10.0.0.1:7000\"\nreplication = 2\nkeep = true\nworkload = [\"a\", \"b\"]\n";
        let m = parse(&["tool", "put"], text).unwrap();
        assert_eq!(m.get_one::<String>("control").unwrap(), "10.0.0.1:7000");
        let (_, put) = m.subcommand().unwrap();
        assert_eq!(put.get_one::<String>("replication").unwrap(), "2");
        assert!(put.get_flag("keep"));
        let w: Vec<&String> = put.get_many("workload").unwrap().collect();
        assert_eq!(w, ["a", "b"]);

        let m = parse(
            &[
                "tool",
                "put",
                "--replication",
                "3",
                "--control",
                "h:1",
                "--workload=c",
            ],
            text,
        )
        .unwrap();
        let (_, put) = m.subcommand().unwrap();
        assert_eq!(put.get_one::<String>("replication").unwrap(), "3");
        assert_eq!(m.get_one::<String>("control").unwrap(), "h:1");
        let w: Vec<&String> = put.get_many("workload").unwrap().collect();
        assert_eq!(w, ["c"], "a list flag replaces the file's list");
    }

    #[test]
    fn a_key_of_another_subcommand_is_skipped_and_an_unknown_key_is_an_error() {
        let m = parse(&["tool", "ls"], "replication = 2\n").unwrap();
        assert_eq!(m.subcommand_name(), Some("ls"));
        let e = parse(&["tool", "ls"], "replicaton = 2\n").unwrap_err();
        assert!(e.contains("unknown key `replicaton`"), "{e}");
        assert!(e.contains("control, keep, replication, workload"), "{e}");
        let e = parse(&["tool", "put"], "replication = { a = 1 }\n").unwrap_err();
        assert!(e.contains("`replication` must be"), "{e}");
        let e = parse(&["tool", "put"], "config = \"x\"\n").unwrap_err();
        assert!(e.contains("cannot be set"), "{e}");
        let e = parse(&["tool", "put"], "control = \n").unwrap_err();
        assert!(
            e.starts_with("tool: /") && e.contains(".toml line 1: "),
            "{e}"
        );
    }

    #[test]
    fn a_bad_value_fails_like_the_flag_would() {
        let strict = || {
            Command::new("tool")
                .arg(Arg::new("config").long("config"))
                .arg(
                    Arg::new("n")
                        .long("n")
                        .value_parser(clap::value_parser!(u8)),
                )
        };
        let f = file("n = 300\n");
        let argv = args(&["tool", "--config", f.0.to_str().unwrap()]);
        let (e, code) = matches(strict(), argv, None).unwrap_err();
        assert_eq!(code, 2);
        assert!(e.contains("300"), "{e}");
    }

    #[test]
    fn print_is_a_config_file_that_reads_back_the_same() {
        let m = parse(
            &["tool", "put", "--replication", "3"],
            "keep = true\nworkload = [\"a\", \"b\"]\n",
        )
        .unwrap();
        let text = print(&cmd(), &m);
        assert!(text.contains("replication = 3\n"), "{text}");
        assert!(text.contains("keep = true\n"), "{text}");
        assert!(text.contains("workload = [\"a\", \"b\"]\n"), "{text}");
        let again = parse(&["tool", "put"], &text).unwrap();
        assert_eq!(print(&cmd(), &again), text);
    }

    #[test]
    fn no_file_leaves_the_arguments_alone() {
        let argv = args(&["tool", "ls", "/x"]);
        assert_eq!(expand(&cmd(), argv.clone(), None).unwrap(), argv);
        let missing = std::path::Path::new("/nonexistent/ringfs.toml");
        assert_eq!(expand(&cmd(), argv.clone(), Some(missing)).unwrap(), argv);
    }
}
