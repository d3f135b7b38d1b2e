//! `ringfs mount`: the file system for every program, through FUSE.
//!
//! Threads: fuser reads requests from `/dev/fuse` on `threads` request
//! threads (each with its own cloned descriptor); every request becomes a
//! task on one `LocalSet` thread that owns the [`Client`] (capnp-rpc is
//! single-threaded), see `bridge.rs`. The calling thread waits for the
//! session to end; a signal thread unmounts on SIGTERM, SIGINT or SIGHUP.
//!
//! Modules: `bridge.rs` (fuser's callbacks to tasks), `fs.rs` (state and
//! namespace operations), `files.rs` (open files), `dirs.rs` (listings),
//! `inodes.rs` (inode numbers to paths), `errno.rs`, `cli.rs` (the
//! `ringfs mount` command and `--daemon`).

mod bridge;
pub mod cli;
mod dirs;
mod errno;
mod files;
mod fs;
mod inodes;

use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use fuser::{Config, MountOption, Session, SessionACL, SessionUnmounter};

pub use cli::MountArgs;
pub use fs::Settings;

use crate::client::{Client, ClientOptions};
use crate::error::Error;
use bridge::{Bridge, Job, KernelSettings};
use fs::{log, Fs};

/// Everything a mount needs.
#[derive(Clone, Debug)]
pub struct MountOptions {
    /// Every control address (the single server, or every replica: the
    /// mount talks to the leader and follows it, as the CLI does).
    pub control: Vec<SocketAddr>,
    /// What the mount authenticates with: every access through it runs as
    /// this user.
    pub cred: crate::Credential,
    /// TLS for every connection, if the cluster uses it.
    pub tls: Option<ringfs_ops::tls::Tls>,
    /// The directory to mount on (absolute, without symlinks: as
    /// /proc/self/mountinfo shows it).
    pub mountpoint: PathBuf,
    /// How the file system behaves.
    pub settings: Settings,
    /// Timeouts and caches of the client library underneath.
    pub client: ClientOptions,
    /// Let other users in (`allow_other`).
    pub allow_other: bool,
    /// FUSE writeback cache (see docs/client.md for what it changes).
    pub writeback_cache: bool,
    /// Request threads reading `/dev/fuse`.
    pub threads: usize,
    /// Kernel readahead of the mount, KiB (0: the kernel's default).
    pub readahead_kib: u32,
}

impl MountOptions {
    /// The control addresses, comma-separated.
    pub fn addrs(&self) -> String {
        let addrs: Vec<String> = self.control.iter().map(|a| a.to_string()).collect();
        addrs.join(",")
    }
}

/// Why a mount could not start or ended badly.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// The client could not connect (nothing was mounted).
    #[error("cannot reach the control server at {addrs}")]
    Connect {
        /// The control addresses, comma-separated.
        addrs: String,
        /// Why.
        #[source]
        source: Error,
    },
    /// The kernel (or fusermount3) refused the mount.
    #[error("cannot mount on {}", path.display())]
    Mount {
        /// The mount point.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Starting a thread failed, or the FUSE session ended with an error.
    #[error("{what}")]
    Io {
        /// What failed.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The signals that unmount.
const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

fn stop_signal_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill the set we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in STOP_SIGNALS {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Mounts the cluster at `o.mountpoint` and serves it until it is
/// unmounted (by a stop signal, `fusermount3 -u`, or `umount`). Calls
/// `ready` once the kernel has the mount.
///
/// Call it before starting other threads: it blocks the stop signals in
/// the calling thread (threads inherit that) so that only its own signal
/// thread receives them.
pub fn mount(o: &MountOptions, ready: impl FnOnce()) -> Result<(), MountError> {
    let set = stop_signal_set();
    // SAFETY: changes this thread's signal mask with a valid set.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };

    let (jobs, queue) = tokio::sync::mpsc::unbounded_channel::<Job>();
    let notifier = Arc::new(OnceLock::new());
    let (connected_tx, connected) = std::sync::mpsc::channel();
    let io = {
        let (o, notifier) = (o.clone(), notifier.clone());
        std::thread::Builder::new()
            .name("ringfs-mount-io".into())
            .spawn(move || serve(&o, notifier, queue, connected_tx))
            .map_err(|source| MountError::Io {
                what: "starting the client thread",
                source,
            })?
    };
    let outcome = connected
        .recv()
        .unwrap_or_else(|_| Err(Error::internal("the client thread ended early")));
    if let Err(source) = outcome {
        let _ = io.join();
        return Err(MountError::Connect {
            addrs: o.addrs(),
            source,
        });
    }

    let bridge = Bridge::new(
        jobs,
        KernelSettings {
            writeback_cache: o.writeback_cache,
            attr_ttl: o.settings.attr_ttl,
            entry_ttl: o.settings.entry_ttl,
        },
    );
    let mut session = Session::new(bridge, &o.mountpoint, &fuse_config(o)).map_err(|source| {
        MountError::Mount {
            path: o.mountpoint.clone(),
            source,
        }
    })?;
    let _ = notifier.set(session.notifier());
    if o.readahead_kib > 0 {
        if let Err(e) = set_readahead(&o.mountpoint, o.readahead_kib) {
            log(format_args!(
                "cannot set readahead to {} KiB: {e} (the kernel's default stays)",
                o.readahead_kib
            ));
        }
    }
    ready();

    let ended = Arc::new(AtomicBool::new(false));
    let signals = {
        let (unmounter, path, ended) = (
            session.unmount_callable(),
            o.mountpoint.clone(),
            ended.clone(),
        );
        std::thread::Builder::new()
            .name("ringfs-mount-signals".into())
            .spawn(move || unmount_on_signal(unmounter, &path, &ended))
            .map_err(|source| MountError::Io {
                what: "starting the signal thread",
                source,
            })?
    };
    let result = session.run();
    ended.store(true, Ordering::SeqCst);
    // Wake the signal thread if it still waits (the mount was ended from
    // outside): it sees `ended` and returns.
    // SAFETY: sends a blocked signal to our own process.
    unsafe { libc::kill(libc::getpid(), libc::SIGHUP) };
    let _ = signals.join();
    let _ = io.join();
    result.map_err(|source| MountError::Io {
        what: "the FUSE session failed",
        source,
    })
}

fn fuse_config(o: &MountOptions) -> Config {
    let mut c = Config::default();
    c.mount_options = vec![
        // The first address only: mount options are comma-separated.
        MountOption::FSName(format!("ringfs@{}", o.control[0])),
        MountOption::Subtype("ringfs".into()),
        // The kernel checks the mode bits (the owner is the mount's).
        MountOption::DefaultPermissions,
        // Access times are not stored.
        MountOption::NoAtime,
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::RW,
    ];
    c.acl = if o.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    c.n_threads = Some(o.threads.max(1));
    c.clone_fd = true;
    c
}

/// The client thread: connects, reports whether that worked, then runs
/// every job the request threads send until the session ends.
fn serve(
    o: &MountOptions,
    notifier: Arc<OnceLock<fuser::Notifier>>,
    mut queue: tokio::sync::mpsc::UnboundedReceiver<Job>,
    connected: std::sync::mpsc::Sender<Result<(), Error>>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = connected.send(Err(Error::internal_from("starting a tokio runtime", e)));
            return;
        }
    };
    tokio::task::LocalSet::new().block_on(&rt, async move {
        let client = match Client::connect_tls(&o.control, &o.cred, o.client, o.tls.clone()).await {
            Ok(c) => c,
            Err(e) => {
                let _ = connected.send(Err(e));
                return;
            }
        };
        let _ = connected.send(Ok(()));
        let fs = Rc::new(Fs::new(client, o.settings.clone(), notifier));
        while let Some(job) = queue.recv().await {
            tokio::task::spawn_local(job(fs.clone()));
        }
        // The session ended. Let tasks still running finish for a moment,
        // so descriptors are closed and leases released in order; dropping
        // the client then ends its connection, which releases the rest.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Rc::strong_count(&fs) > 1 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
}

/// Waits for a stop signal and unmounts; returns once `ended` (the session
/// is over).
fn unmount_on_signal(mut unmounter: SessionUnmounter, path: &Path, ended: &AtomicBool) {
    let set = stop_signal_set();
    loop {
        let mut sig = 0;
        // SAFETY: waits on a valid set of signals blocked in every thread.
        if unsafe { libc::sigwait(&set, &mut sig) } != 0 || ended.load(Ordering::SeqCst) {
            return;
        }
        log(format_args!("signal {sig}: unmounting {}", path.display()));
        if let Err(e) = unmounter.unmount() {
            log(format_args!(
                "unmounting {}: {e}; detaching it now (lazy unmount): it goes away when the last program using it lets go",
                path.display()
            ));
            if let Err(e) = lazy_unmount(path) {
                log(format_args!("lazy unmount of {}: {e}", path.display()));
            }
        }
    }
}

/// Detaches the mount now; the kernel ends the session once no program
/// uses it any more.
pub fn lazy_unmount(path: &Path) -> std::io::Result<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("mount point path has a NUL byte"))?;
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
        return Ok(());
    }
    // Not root: through the setuid helper.
    let status = std::process::Command::new("fusermount3")
        .args(["-u", "-z"])
        .arg(path)
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "fusermount3 -u -z: {status}"
        )))
    }
}

/// Sets the kernel readahead of the mount at `path` (its backing device
/// info in sysfs; needs root). The device number comes from
/// /proc/self/mountinfo: a stat of the mount point would be a request to
/// this very mount, which nobody serves yet.
fn set_readahead(path: &Path, kib: u32) -> std::io::Result<()> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    // Fields: id, parent, major:minor, root, mount point, ... The last
    // match is the newest mount there.
    let dev = info
        .lines()
        .rev()
        .find_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.len() > 4 && Path::new(f[4]) == path).then(|| f[2].to_string())
        })
        .ok_or_else(|| std::io::Error::other("the mount is not in /proc/self/mountinfo"))?;
    std::fs::write(
        format!("/sys/class/bdi/{dev}/read_ahead_kb"),
        kib.to_string(),
    )
}
