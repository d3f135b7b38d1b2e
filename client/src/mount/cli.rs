//! The `ringfs mount` command: its flags, foreground and `--daemon`.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};

use super::{mount, MountOptions, Settings};
use crate::client::ClientOptions;
use crate::control::CreateOptions;

/// Set in the environment of the background process `--daemon` starts.
const DAEMON_CHILD: &str = "RINGFS_MOUNT_DAEMON_CHILD";
/// What a mount prints on stdout once the kernel has it.
pub const READY: &str = "ringfs: mounted";

/// Mount ringfs on a directory (FUSE). Runs in the foreground until
/// unmounted: SIGTERM, SIGINT (Ctrl-C), SIGHUP, `fusermount3 -u DIR` or
/// `umount DIR`.
#[derive(clap::Args, Clone, Debug)]
pub struct MountArgs {
    /// The directory to mount on.
    pub mountpoint: PathBuf,
    /// Go to the background once mounted.
    #[arg(long)]
    pub daemon: bool,
    /// Replicas per chunk of files created through the mount (default: the
    /// server's).
    #[arg(long, short = 'r')]
    pub replication: Option<u8>,
    /// Bytes per chunk of created files, e.g. 64MiB (default: the server's).
    #[arg(long, value_parser = crate::human::parse_size)]
    pub chunk_size: Option<u64>,
    /// Durable replicas a write needs (default: all).
    #[arg(long, short = 'w')]
    pub write_quorum: Option<u8>,
    /// How long the kernel trusts file attributes (size, times, mode)
    /// before asking again; 0 asks every time.
    #[arg(long, default_value_t = 1000)]
    pub attr_timeout_ms: u64,
    /// How long the kernel trusts a name it looked up.
    #[arg(long, default_value_t = 1000)]
    pub entry_timeout_ms: u64,
    /// How long an open for writing waits while another client (another
    /// mount) has the file open for writing, before failing with EBUSY.
    #[arg(long, default_value_t = 10_000)]
    pub lease_wait_ms: u64,
    /// Let other users use the mount (non-root mounts need
    /// `user_allow_other` in /etc/fuse.conf).
    #[arg(long)]
    pub allow_other: bool,
    /// Buffer writes in the kernel's page cache and send them in large
    /// batches (FUSE writeback cache). Faster small writes, but a write
    /// returns before it reaches the cluster, and another mount may see a
    /// stale size of a file this mount has cached: see docs/client.md.
    #[arg(long)]
    pub writeback_cache: bool,
    /// Threads reading requests from the kernel.
    #[arg(long, default_value_t = 4)]
    pub threads: usize,
    /// Kernel readahead, KiB (0 keeps the kernel's default; needs root).
    #[arg(long, default_value_t = 4096)]
    pub readahead_kib: u32,
    /// With --daemon: append the mount's messages to this file once it
    /// runs in the background [default: they are dropped].
    #[arg(long, requires = "daemon")]
    pub log_file: Option<PathBuf>,
}

impl MountArgs {
    fn options(
        &self,
        control: &[SocketAddr],
        cred: &crate::Credential,
        tls: Option<ringfs_ops::tls::Tls>,
    ) -> anyhow::Result<MountOptions> {
        let chunk_size = match self.chunk_size {
            Some(n) => u32::try_from(n).context("--chunk-size is too large")?,
            None => 0,
        };
        // Absolute and free of symlinks: how /proc/self/mountinfo shows it.
        let mountpoint = std::fs::canonicalize(&self.mountpoint)
            .with_context(|| format!("mount point {}", self.mountpoint.display()))?;
        Ok(MountOptions {
            control: control.to_vec(),
            cred: cred.clone(),
            tls,
            mountpoint,
            settings: Settings {
                attr_ttl: Duration::from_millis(self.attr_timeout_ms),
                entry_ttl: Duration::from_millis(self.entry_timeout_ms),
                layout: CreateOptions {
                    chunk_size,
                    replication: self.replication.unwrap_or(0),
                    write_quorum: self.write_quorum.unwrap_or(0),
                    ..CreateOptions::default()
                },
                lease_wait: Duration::from_millis(self.lease_wait_ms),
                // SAFETY: getuid/getgid cannot fail.
                uid: unsafe { libc::getuid() },
                gid: unsafe { libc::getgid() },
            },
            client: ClientOptions::default(),
            allow_other: self.allow_other,
            writeback_cache: self.writeback_cache,
            threads: self.threads,
            readahead_kib: self.readahead_kib,
        })
    }
}

/// Runs `ringfs mount`. Call it before starting any thread (see
/// [`mount`]).
/// `control`: every control address (see [`MountOptions::control`]).
pub fn run(
    control: &[SocketAddr],
    cred: &crate::Credential,
    tls: Option<ringfs_ops::tls::Tls>,
    args: &MountArgs,
) -> anyhow::Result<()> {
    let child = std::env::var_os(DAEMON_CHILD).is_some();
    if args.daemon && !child {
        return daemonize();
    }
    let opts = args.options(control, cred, tls)?;
    mount(&opts, || {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "{READY} {} on {}",
            opts.addrs(),
            opts.mountpoint.display()
        );
        let _ = out.flush();
        if child {
            // Let go of the starter's output: it has read the line and is
            // gone, and whoever ran it waits for its pipes to close.
            detach_stdio(args.log_file.as_deref());
        }
    })?;
    Ok(())
}

/// Starts this same command in the background (its own session, no
/// terminal), waits until it says it mounted, and returns.
fn daemonize() -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("locating this program")?;
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .env(DAEMON_CHILD, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    // SAFETY: setsid is async-signal-safe, as pre_exec requires.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("starting the background mount")?;
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        BufReader::new(out).read_line(&mut line)?;
    }
    if line.starts_with(READY) {
        print!("{line}");
        println!("pid {}", child.id());
        return Ok(());
    }
    let status = child.wait()?;
    bail!("the background mount did not start ({status})")
}

/// Points stdout at /dev/null and stderr at `log` (appended) or
/// /dev/null.
fn detach_stdio(log: Option<&std::path::Path>) {
    use std::os::fd::AsRawFd;
    let open = |p: &std::path::Path, append| {
        std::fs::OpenOptions::new()
            .create(append)
            .append(append)
            .write(true)
            .open(p)
    };
    let null = Path::new("/dev/null");
    let err = log.map_or_else(|| open(null, false), |p| open(p, true));
    for (file, fd) in [
        (open(null, false), libc::STDOUT_FILENO),
        (err, libc::STDERR_FILENO),
    ] {
        if let Ok(f) = file {
            // SAFETY: both descriptors are open; dup2 replaces `fd`.
            unsafe { libc::dup2(f.as_raw_fd(), fd) };
        }
    }
}
