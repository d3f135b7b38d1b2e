//! Child processes of a local cluster. Each server prints
//! `<name> listening on <addr>` on stdout once it serves; the launcher waits
//! for that line. A [`Server`] is killed when dropped, so a failing run
//! leaves no stray processes.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A running server process.
pub struct Server {
    child: Child,
    /// The address from its "listening on" line.
    pub addr: SocketAddr,
}

impl Server {
    /// Spawns `cmd` (stdout is taken over) and waits up to `timeout` for a
    /// line `prefix ADDR`.
    pub fn spawn(
        mut cmd: Command,
        prefix: &'static str,
        timeout: Duration,
    ) -> std::io::Result<Self> {
        let mut child = cmd.stdout(Stdio::piped()).spawn()?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // Keep draining after the line so the child never blocks on a full pipe.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix(prefix) {
                    let _ = tx.send(addr.trim().parse::<SocketAddr>());
                }
            }
        });
        let fail = |child: &mut Child, msg: String| {
            let _ = child.kill();
            let _ = child.wait();
            Err(std::io::Error::other(msg))
        };
        match rx.recv_timeout(timeout) {
            Ok(Ok(addr)) => Ok(Server { child, addr }),
            Ok(Err(e)) => fail(&mut child, format!("bad address after {prefix:?}: {e}")),
            Err(_) => match child.try_wait() {
                Ok(Some(status)) => {
                    fail(&mut child, format!("exited with {status} before serving"))
                }
                _ => fail(
                    &mut child,
                    format!("did not print {prefix:?} within {timeout:?}"),
                ),
            },
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// kill -9 and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}
