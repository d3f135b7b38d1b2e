//! The test kit: what every crate's integration tests (`storage-node/tests`,
//! `tests/tests`, `bench/tests`) use to run the real ringfs binaries as
//! child processes on loopback, each cluster in its own temporary
//! directory, and to check data through the client.
//!
//! - [`binary`]: the binaries, built on first use with the cargo that runs
//!   the tests (so `cargo test` alone is enough), the servers with their
//!   `failpoints` feature.
//! - [`ControlProcess`], [`NodeProcess`] ([`NodeOptions`]): one server,
//!   listening on port 0; the kit learns the address from the server's
//!   `listening on` line (never a guessed free port). A test arms failpoints
//!   in one child with `failpoints` (the child's `FAILPOINTS`, e.g.
//!   `"group_commit::before_fdatasync=1*off->return"`); no other child
//!   inherits any.
//! - [`Cluster`]: a control server and nodes, with waits on the cluster map
//!   and on chunk health.
//! - [`ControlGroup`], [`ReplicatedCluster`]: N control replicas (Raft),
//!   alone or with nodes; kill, restart, replace, find the leader.
//! - [`Netns`]: a network namespace to cut a server off (partitions).
//! - [`files`]: test data ([`files::pattern`]) and whole-file helpers over
//!   the client library.
//! - [`scrape`]: a server's monitoring endpoint (`--metrics`).
//! - [`tls`]: a cluster CA and certificates for a TLS test cluster.
//! - [`run_ok`], [`run_failing`], [`run`]: short-lived commands (the CLI,
//!   `--print-config`, scripts) with how they ended checked.
//! - [`Server`]: the launcher underneath (`ringfs_ops::launch`, shared with
//!   the bench), for tests that build a server's command line themselves.
//!
//! Every process is killed when its handle is dropped (and dies with the
//! test process: `PR_SET_PDEATHSIG`); every wait has a deadline.

mod binaries;
mod cluster;
mod commands;
mod control_group;
pub mod files;
mod netns;
pub mod scrape;
mod servers;
pub mod tls;

pub use binaries::binary;
pub use cluster::{Cluster, FAST_REPAIR, QUICK};
pub use commands::{run, run_failing, run_ok, Ran};
pub use control_group::{ControlGroup, ReplicatedCluster, FAST_RAFT};
pub use netns::{ip, Netns};
pub use ringfs_client::local;
pub use ringfs_ops::launch::Server;
pub use servers::{ControlProcess, NodeOptions, NodeProcess};

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The cluster secret every test cluster uses.
pub const SECRET: &str = "ringfs-test-secret-0123456789";

/// How long a server may take to start, or to stop after SIGTERM.
pub const START_WITHIN: Duration = Duration::from_secs(30);

/// Writes the cluster secret into `dir` (owner-only, as the servers
/// demand) and returns the file's path.
pub fn write_secret(dir: &Path) -> PathBuf {
    let p = dir.join("secret");
    write_private(&p, SECRET.as_bytes());
    p
}

/// Writes `bytes` to `path` with mode 0600.
pub fn write_private(path: &Path, bytes: &[u8]) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, bytes).expect("writing a private file");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .expect("making a file private");
}

/// The built-in administrator's credential of every test cluster (derived
/// from [`SECRET`]).
pub fn admin() -> ringfs_client::Credential {
    ringfs_client::Credential::admin(SECRET.as_bytes())
}

/// The credential of storage nodes and control replicas of every test
/// cluster (`@cluster`, derived from [`SECRET`]); an administrator too.
pub fn cluster() -> ringfs_client::Credential {
    ringfs_client::Credential::cluster(SECRET.as_bytes())
}

/// The data-plane keys of every test cluster (derived from [`SECRET`],
/// key id 1: what the control server and the nodes use by default). Tests
/// use them to stand in for a node or the control server, or to forge.
pub fn capability_keys() -> ringfs_ops::capability::CapabilityKeys {
    ringfs_ops::capability::CapabilityKeys::new(SECRET.as_bytes(), 1)
}

/// A read+write capability of `h`'s write lease for chunk `id`: what the
/// node that minted `id` under the lease's reserve capability hands out
/// (for tests that commit records of chunks they did not write).
pub fn lease_capability(
    h: &ringfs_client::control::FileHandle,
    id: u128,
) -> ringfs_client::control::Capability {
    use ringfs_ops::capability::{now_ms, Lease, Rights, LIFETIME_MS};
    let lease = Lease {
        inode: h.attr.inode,
        epoch: h.write_epoch,
    };
    ringfs_client::control::Capability(capability_keys().issue(
        Rights::READ_WRITE,
        id.to_be_bytes(),
        lease,
        now_ms() + LIFETIME_MS,
    ))
}

/// Registers users `alice` and `bob` (as the administrator `admin` is
/// connected) with their home directories `/home/NAME` (mode 0755, their
/// own), and returns their credentials (alice's, bob's).
pub async fn two_users(
    admin: &ringfs_client::ControlClient,
) -> (ringfs_client::Credential, ringfs_client::Credential) {
    admin.mkdir("/home", 0o755).await.unwrap();
    let mut creds = Vec::new();
    for name in ["alice", "bob"] {
        let u = admin.add_user(name, 0, &[], false).await.unwrap();
        let home = format!("/home/{name}");
        admin.mkdir(&home, 0o755).await.unwrap();
        admin
            .chown(&home, Some(u.uid), Some(u.gids[0]))
            .await
            .unwrap();
        creds.push(ringfs_client::Credential::derive(
            SECRET.as_bytes(),
            name,
            &u.salt,
        ));
    }
    let bob = creds.pop().unwrap();
    (creds.pop().unwrap(), bob)
}

/// Writes the administrator's credential into `dir` (unless there) and
/// returns its path, for the `ringfs` CLI (`RINGFS_CREDENTIAL`).
pub fn admin_credential(dir: &Path) -> PathBuf {
    let p = dir.join("admin.credential");
    if !p.exists() {
        admin().save(&p).expect("writing the admin credential");
    }
    p
}

/// For a test that cannot run here because `what` is missing: fails where
/// the environment variable `require` is set (CI, whose `.ci/run` installs
/// what the tests need), and otherwise says it skipped (a developer
/// machine); `install` says how to get `what`. The caller then returns.
pub fn skip_unless_required(require: &str, what: &str, install: &str) {
    assert!(
        std::env::var_os(require).is_none(),
        "{what} is required ({install}), and {require} is set"
    );
    eprintln!("SKIPPED: {what} not found ({install})");
}

/// Polls `cond` every 50 ms until it holds; panics with `msg()` after `limit`.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool, msg: impl Fn() -> String) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "after {limit:?}: {}", msg());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `f` on a fresh glommio executor, as the node's data-plane client
/// (`ringfs_node::peer::Peer`) needs; its I/O memory is small, so many
/// can run side by side under the locked-memory limit.
pub fn on_glommio<F, Fut, T>(f: F) -> T
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T> + 'static,
    T: Send + 'static,
{
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(256 * 1024)
        .spawn(f)
        .expect("starting a glommio executor")
        .join()
        .expect("the glommio executor panicked")
}

/// A raw Cap'n Proto connection to the control server at `addr` (no hello,
/// no authentication): the bootstrap `Control` capability, for tests that
/// play a client written from docs/protocol.md. Call inside a `LocalSet`.
pub async fn raw_control(
    addr: std::net::SocketAddr,
) -> ringfs_schema::control_capnp::control::Client {
    let stream =
        ringfs_ops::transport::connect(&addr.to_string(), std::time::Duration::from_secs(5), None)
            .await
            .expect("connecting to the control server");
    // The connection lives as long as its task: detached, it ends with the
    // runtime or when the server closes it.
    ringfs_ops::transport::rpc_client(stream).0
}

/// Runs `f` with a new client of the cluster whose control server is at
/// `control`, on a fresh current-thread runtime (so `f` may borrow).
pub fn with_client<T>(
    control: std::net::SocketAddr,
    f: impl AsyncFnOnce(&ringfs_client::Client) -> T,
) -> T {
    local(async move {
        let c = ringfs_client::Client::connect(control, &admin())
            .await
            .expect("connecting a client");
        f(&c).await
    })
}
