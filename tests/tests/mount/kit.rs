//! Mounts for the tests: a real `ringfs mount` process on a real cluster.
//!
//! A [`Mount`] never outlives its test: dropping it (also when the test
//! panics) stops the process and detaches the mount, and a watchdog kills
//! the process and detaches the mount when the test runs past its
//! deadline, so a hung file system call fails (ENOTCONN) instead of
//! hanging CI.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ringfs_tests::binary;

/// Longest a mount may live in a test before the watchdog ends it.
const DEADLINE: Duration = Duration::from_secs(300);

/// Whether the mount tests can run here. Without /dev/fuse (or one of
/// `tools`) they pass with a notice on a developer machine, and fail when
/// `RINGFS_REQUIRE_FUSE` is set (CI, where `.ci/run` installs them).
pub fn available(tools: &[&str]) -> bool {
    let mut missing = Vec::new();
    if !Path::new("/dev/fuse").exists() {
        missing.push("/dev/fuse".to_string());
    }
    for t in tools {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            missing.push(t.to_string());
        }
    }
    if missing.is_empty() {
        return true;
    }
    ringfs_tests::skip_unless_required(
        "RINGFS_REQUIRE_FUSE",
        &missing.join(", "),
        "apt-get install fuse3 fio sqlite3",
    );
    false
}

/// A running `ringfs mount`.
pub struct Mount {
    pub path: PathBuf,
    child: Option<Child>,
    log: PathBuf,
    /// Dropping it stops the watchdog.
    watchdog: Option<mpsc::Sender<()>>,
}

impl Mount {
    /// Mounts the cluster at `control` on a new directory with `args`
    /// (flags of `ringfs mount`); returns once the kernel has the mount.
    pub fn start(control: SocketAddr, args: &[&str]) -> Mount {
        Self::start_at(&control.to_string(), args)
    }

    /// Like [`Mount::start`], given `--control addrs` (every control
    /// replica's address, comma-separated).
    pub fn start_at(addrs: &str, args: &[&str]) -> Mount {
        let dir = tempfile::Builder::new()
            .prefix("ringfs-mnt-")
            .tempdir()
            .expect("mount point")
            .keep();
        let path = dir.join("m");
        std::fs::create_dir(&path).unwrap();
        let log = dir.join("mount.log");
        let mut cmd = Command::new(binary("ringfs-client", "ringfs"));
        cmd.arg("--control")
            .arg(addrs)
            .arg("--credential")
            .arg(ringfs_tests::admin_credential(&dir))
            .arg("mount")
            .arg(&path)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap());
        // SAFETY: prctl is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("starting ringfs mount");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let mut m = Mount {
            path,
            child: Some(child),
            log,
            watchdog: None,
        };
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) if line.starts_with("ringfs: mounted") => {}
            other => panic!("ringfs mount did not start ({other:?}): {}", m.log()),
        }
        m.watchdog = Some(watchdog(m.pid(), m.path.clone()));
        m
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// `rel` inside the mount.
    pub fn p(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }

    /// What the mount process wrote on stderr.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops the mount with SIGTERM, as an operator would, and checks it
    /// unmounted and exited cleanly.
    pub fn unmount(mut self) {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let status = wait_for(&mut child, Duration::from_secs(30));
        assert!(
            status.is_some_and(|s| s.success()),
            "ringfs mount exited with {status:?} after SIGTERM: {}",
            self.log()
        );
        assert!(!is_mounted(&self.path), "still mounted after SIGTERM");
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.watchdog.take();
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            if wait_for(&mut child, Duration::from_secs(10)).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if is_mounted(&self.path) {
            detach(&self.path);
        }
        // Only the empty mount point and its log: never a recursive
        // delete of something that may still be a mount.
        let _ = std::fs::remove_dir(&self.path);
        if let Some(dir) = self.path.parent() {
            let _ = std::fs::remove_file(&self.log);
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Kills the mount process and detaches the mount at the deadline unless
/// told to stop first.
fn watchdog(pid: u32, path: PathBuf) -> mpsc::Sender<()> {
    let (tx, rx) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(DEADLINE) {
            eprintln!(
                "mount watchdog: {} ran past {DEADLINE:?}, killing it",
                path.display()
            );
            // SAFETY: kill(2); the pid is our child's, not yet reaped (the
            // guard reaps it only after stopping this thread).
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            detach(&path);
        }
    });
    tx
}

fn wait_for(child: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        if start.elapsed() > within {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn is_mounted(path: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo").is_ok_and(|info| {
        info.lines()
            .any(|l| l.split(' ').nth(4).is_some_and(|m| Path::new(m) == path))
    })
}

/// Lazy unmount: works even when the mount process is gone or hung.
fn detach(path: &Path) {
    let ok = Command::new("fusermount3")
        .args(["-u", "-z"])
        .arg(path)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        let _ = Command::new("umount").arg("-l").arg(path).status();
    }
}

/// Runs `cmd`, killing it after `timeout`; panics with its output unless
/// it succeeds.
pub fn run(cmd: &mut Command, timeout: Duration) -> Output {
    let out = run_any(cmd, timeout);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `cmd`, killing it after `timeout` (then it fails).
pub fn run_any(cmd: &mut Command, timeout: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let o = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = out.read_to_end(&mut b);
        b
    });
    let e = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = err.read_to_end(&mut b);
        b
    });
    let status = match wait_for(&mut child, timeout) {
        Some(s) => s,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {timeout:?}");
        }
    };
    Output {
        status,
        stdout: o.join().unwrap(),
        stderr: e.join().unwrap(),
    }
}

/// The errno of an I/O error, for asserting on it.
pub fn errno(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}
