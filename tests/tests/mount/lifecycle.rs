//! Starting and stopping mounts: `--daemon`, and SIGTERM on a busy mount.

use std::fs::{self, File};
use std::io::Read;
use std::process::Command;
use std::time::Duration;

use ringfs_tests::{binary, wait_until, Cluster};

use crate::kit::{self, is_mounted, run, Mount};

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        let state = s.rsplit(')').next().unwrap_or("").trim_start();
        !state.starts_with('Z') && !state.starts_with('X')
    })
}

/// `--daemon` returns once mounted (and lets go of the caller's output),
/// with the mount served by a background process that logs to
/// `--log-file` and stops on SIGTERM.
#[test]
fn a_daemon_mount_serves_and_stops_on_sigterm() {
    if !kit::available(&["fusermount3"]) {
        return;
    }
    let cl = Cluster::start(1);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m");
    let log = dir.path().join("mount.log");
    fs::create_dir(&path).unwrap();
    let out = run(
        Command::new(binary("ringfs-client", "ringfs"))
            .arg("--control")
            .arg(cl.control.addr.to_string())
            .arg("--credential")
            .arg(cl.admin_credential())
            .args(["mount", "--daemon", "--replication", "1", "--log-file"])
            .arg(&log)
            .arg(&path),
        Duration::from_secs(30),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let pid: u32 = text
        .lines()
        .find_map(|l| l.strip_prefix("pid "))
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no pid in {text:?}"));
    // Whatever happens below, do not leave it mounted.
    struct Detach<'a>(&'a std::path::Path, u32);
    impl Drop for Detach<'_> {
        fn drop(&mut self) {
            // Only while that pid is still our daemon (not our child, so
            // its pid may be reused once it exits).
            let ours = std::fs::read(format!("/proc/{}/cmdline", self.1))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&*self.0.to_string_lossy()));
            if ours {
                // SAFETY: kill(2) of the daemon this test started.
                unsafe { libc::kill(self.1 as libc::pid_t, libc::SIGKILL) };
            }
            if is_mounted(self.0) {
                let _ = Command::new("fusermount3")
                    .args(["-u", "-z"])
                    .arg(self.0)
                    .status();
            }
        }
    }
    let _guard = Detach(&path, pid);
    assert!(is_mounted(&path));
    fs::write(path.join("f"), b"daemon").unwrap();
    assert_eq!(fs::read(path.join("f")).unwrap(), b"daemon");
    // SAFETY: kill(2) of the daemon this test started.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    wait_until(
        Duration::from_secs(20),
        || !alive(pid),
        || "the daemon exits".into(),
    );
    assert!(!is_mounted(&path));
    let logged = fs::read_to_string(&log).unwrap();
    assert!(logged.contains("signal 15: unmounting"), "{logged:?}");
}

/// SIGTERM while a program has a file open: the mount is detached at once
/// (new lookups no longer reach it), the open file keeps working, and the
/// process exits when the file is closed.
#[test]
fn sigterm_detaches_a_busy_mount() {
    if !kit::available(&["fusermount3"]) {
        return;
    }
    let cl = Cluster::start(1);
    let m = Mount::start(cl.control.addr, &["--replication", "1"]);
    fs::write(m.p("f"), b"still here").unwrap();
    let mut open = File::open(m.p("f")).unwrap();
    let pid = m.pid();
    // SAFETY: kill(2) of the mount process this test started.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    wait_until(
        Duration::from_secs(20),
        || !is_mounted(&m.path),
        || "the mount is detached".into(),
    );
    let mut s = String::new();
    open.read_to_string(&mut s).unwrap();
    assert_eq!(s, "still here");
    assert!(alive(pid), "the mount process still serves the open file");
    drop(open);
    wait_until(
        Duration::from_secs(20),
        || !alive(pid),
        || "the mount process exits".into(),
    );
    let log = m.log();
    assert!(log.contains("lazy unmount"), "{log}");
}
