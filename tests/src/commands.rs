//! Short-lived commands (the `ringfs` CLI, `--print-config`, scripts): run
//! to their end, with how they ended checked.

use std::process::Command;

/// How a finished command ended and what it printed.
#[derive(Debug)]
pub struct Ran {
    /// Its exit code (`None` if a signal ended it).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cmd` to its end (stdin closed).
pub fn run(cmd: &mut Command) -> Ran {
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    Ran {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `cmd`; panics with its output unless it exited 0; returns its stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let ran = run(cmd);
    assert_eq!(ran.code, Some(0), "{cmd:?} failed: {ran:#?}");
    ran.stdout
}

/// Runs `cmd`; panics with its output unless it exited with `code`;
/// returns its stderr.
pub fn run_failing(cmd: &mut Command, code: i32) -> String {
    let ran = run(cmd);
    assert_eq!(ran.code, Some(code), "{cmd:?}: {ran:#?}");
    ran.stderr
}
