//! Starting the ringfs servers as child processes, shared by the bench's
//! local cluster and the test kit (`ringfs-tests`). Each server prints
//! `... listening on <addr>` on stdout once it serves (a storage node one
//! line per shard, `ringfs-node: shard <i> on core <c> listening on <addr>`);
//! the launcher waits for those lines.
//!
//! No stray processes: a [`Server`] is killed when dropped, and every child
//! is started with `PR_SET_PDEATHSIG = SIGKILL`, so it also dies when the
//! launcher itself is killed. Children run in their own process group, so a
//! Ctrl-C on the terminal reaches only the launcher, which then tears the
//! cluster down in order and removes its data.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// What precedes the address in a server's announcement.
const LISTENING: &str = "listening on ";

/// A running server process (killed when dropped).
pub struct Server {
    child: Child,
    /// The address from its "listening on" line.
    pub addr: SocketAddr,
}

impl Server {
    /// Spawns `cmd` (stdout is taken over) and waits up to `timeout` for a
    /// line containing `marker` and ending in `listening on ADDR`.
    pub fn spawn(cmd: Command, marker: &'static str, timeout: Duration) -> std::io::Result<Self> {
        Self::spawn_all(cmd, marker, 1, timeout).map(|(server, _)| server)
    }

    /// Like [`Server::spawn`], but waits for `count` such lines (one per
    /// shard of a storage node) and returns every address, in order.
    pub fn spawn_all(
        mut cmd: Command,
        marker: &'static str,
        count: usize,
        timeout: Duration,
    ) -> std::io::Result<(Self, Vec<SocketAddr>)> {
        cmd.process_group(0);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork
        // and exec here.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.stdout(Stdio::piped()).spawn()?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // Keep draining after the lines so the child never blocks on a
            // full pipe.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if !line.contains(marker) {
                    continue;
                }
                if let Some((_, addr)) = line.rsplit_once(LISTENING) {
                    let _ = tx.send(addr.trim().parse::<SocketAddr>());
                }
            }
        });
        let fail = |child: &mut Child, msg: String| {
            let _ = child.kill();
            let _ = child.wait();
            Err(std::io::Error::other(msg))
        };
        let deadline = std::time::Instant::now() + timeout;
        let mut addrs = Vec::with_capacity(count);
        while addrs.len() < count {
            match rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now())) {
                Ok(Ok(addr)) => addrs.push(addr),
                Ok(Err(e)) => {
                    return fail(&mut child, format!("bad address in a {marker:?} line: {e}"))
                }
                Err(_) => {
                    return match child.try_wait() {
                        Ok(Some(status)) => {
                            fail(&mut child, format!("exited with {status} before serving"))
                        }
                        _ => fail(
                            &mut child,
                            format!("did not print {marker:?} {count} times within {timeout:?}"),
                        ),
                    }
                }
            }
        }
        let server = Server {
            child,
            addr: addrs[0],
        };
        Ok((server, addrs))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.exit_status().is_none()
    }

    /// How the process ended, if it has.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Sends SIGTERM (a graceful stop) and waits up to `within` for the
    /// process to exit; `None` if it still runs then.
    pub fn terminate(&mut self, within: Duration) -> Option<ExitStatus> {
        if let Some(s) = self.exit_status() {
            return Some(s);
        }
        // SAFETY: kill(2) on our own, not yet reaped child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let start = std::time::Instant::now();
        loop {
            if let Some(s) = self.exit_status() {
                return Some(s);
            }
            if start.elapsed() > within {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
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
