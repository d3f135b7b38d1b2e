//! The control RPC under fuzzing: inputs go to a real control server (the
//! `ringfs-control` library's server, started once per process on a
//! loopback port in a thread of its own) over real TCP connections, before
//! and after authentication. Properties checked:
//! - the server never panics (a panic on its thread fails the input, also
//!   where tokio would catch it in a connection's task);
//! - it keeps serving a well-behaved client: every [`CHECK_EVERY`] inputs
//!   a client connects, authenticates as the administrator and does a
//!   namespace round trip (mkdir, stat, rmdir) within [`LIVENESS_WITHIN`];
//! - it releases what a connection held once the connection is gone: the
//!   process's open descriptors stay under [`MAX_OPEN_FDS`] (libFuzzer's
//!   `-rss_limit_mb` bounds its memory).
//!
//! An input is a flags byte, then either raw bytes or a list of calls:
//! - flags bit 1 set (raw): the rest is written as is to a fresh
//!   connection (Cap'n Proto stream framing and RPC messages, or anything
//!   else), the write side is closed and the answer read until the server
//!   closes (or [`ANSWER_WITHIN`]).
//! - else (calls): with flags bit 0 the connection first says hello and
//!   authenticates as an ordinary user who owns [`FUZZ_DIR`]; then every
//!   call is `target, interface, method, n, n words of parameters`:
//!   `target` 0 is the bootstrap capability, `k > 0` the capability at
//!   pointer field `k - 1` of the result of the previous call (pipelined,
//!   so also before it returns: open's file handle, subscribe's
//!   subscription); `interface` indexes [`INTERFACES`] or, past its end, is
//!   followed by a random 64-bit interface id; the parameter words are a
//!   Cap'n Proto segment whose root is the parameter struct (copied
//!   through capnp's checked reader; an invalid one is sent as null).
//!   Calls go out pipelined through capnp-rpc's own client, so the server
//!   sees well-formed RPC messages with arbitrary ids and contents.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use capnp::capability::{Client, Request};
use capnp::message::{ReaderOptions, SegmentArray};
use capnp::traits::HasTypeId;
use capnp::Word;
use ringfs_ops::auth::Credential;
use ringfs_ops::transport;
use ringfs_schema::control_capnp::{
    control, file_handle, map_watcher, node_commands, raft_peer, subscription,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Inputs between two liveness checks.
pub const CHECK_EVERY: u64 = 32;
/// How long the well-behaved client's round trip may take.
pub const LIVENESS_WITHIN: Duration = Duration::from_secs(10);
/// How long one input's calls or raw bytes are given to be answered
/// (a write open may wait for a lease far longer; the connection is then
/// closed under it, which is also what a vanished client does).
pub const ANSWER_WITHIN: Duration = Duration::from_millis(250);
/// Open descriptors allowed in the whole process (server and client):
/// a connection the server never releases adds one per input.
pub const MAX_OPEN_FDS: usize = 512;
/// Calls one input makes at most.
const MAX_CALLS: usize = 64;
/// The directory the fuzz user owns (its calls are not all refused).
pub const FUZZ_DIR: &str = "/fuzz";
const FUZZ_USER: &str = "fuzzer";
const FUZZ_UID: u32 = 4242;

/// The interfaces of the control RPC, by index (input byte `interface`).
pub const INTERFACES: [u64; 6] = [
    control::Client::TYPE_ID,
    file_handle::Client::TYPE_ID,
    subscription::Client::TYPE_ID,
    map_watcher::Client::TYPE_ID,
    raft_peer::Client::TYPE_ID,
    node_commands::Client::TYPE_ID,
];

const FLAG_AUTHENTICATE: u8 = 1;
const FLAG_RAW: u8 = 2;

/// The server all inputs of this process go to.
struct Server {
    addr: SocketAddr,
    admin: Credential,
    user: Credential,
}

static SERVER: OnceLock<Server> = OnceLock::new();
/// Set by the panic hook when the server's thread panics.
static SERVER_PANICKED: AtomicBool = AtomicBool::new(false);
static INPUTS: AtomicU64 = AtomicU64::new(0);
const SERVER_THREAD: &str = "ringfs-control-fuzz";

thread_local! {
    /// The client side's runtime (capnp-rpc clients are `!Send`: a local set).
    static CLIENT: RefCell<Option<(tokio::runtime::Runtime, tokio::task::LocalSet)>> =
        const { RefCell::new(None) };
}

/// The fuzz target: one input against the server (see the module doc).
pub fn control_rpc(data: &[u8]) {
    let server = SERVER.get_or_init(start_server);
    let n = INPUTS.fetch_add(1, Ordering::Relaxed);
    block_on(async {
        let Some((&flags, rest)) = data.split_first() else {
            return;
        };
        if flags & FLAG_RAW != 0 {
            raw(server.addr, rest).await;
        } else {
            let user = (flags & FLAG_AUTHENTICATE != 0).then_some(&server.user);
            calls(server.addr, user, rest).await;
        }
    });
    assert!(
        !SERVER_PANICKED.load(Ordering::Relaxed),
        "the control server panicked on this input"
    );
    if n % CHECK_EVERY == CHECK_EVERY - 1 {
        check_serving(server);
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    CLIENT.with(|c| {
        let mut c = c.borrow_mut();
        let (rt, local) = c.get_or_insert_with(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime");
            (rt, tokio::task::LocalSet::new())
        });
        local.block_on(rt, f)
    })
}

/// Asserts that a well-behaved client is served, and that connections
/// were released.
fn check_serving(server: &Server) {
    let round_trip = async {
        let (control, task) = connect(server.addr).await.expect("connect");
        authenticate(&control, &server.admin)
            .await
            .expect("the administrator authenticates");
        let path = format!("/live-{}", INPUTS.load(Ordering::Relaxed));
        let mut req = control.mkdir_request();
        req.get().set_path(path.as_str());
        req.get().set_mode(0o755);
        req.send().promise.await.expect("mkdir");
        let mut req = control.stat_request();
        req.get().set_path(path.as_str());
        let reply = req.send().promise.await.expect("stat");
        let attr = reply.get().unwrap().get_attr().unwrap();
        assert_eq!(attr.get_mode() & 0o7777, 0o755, "stat of {path}");
        let mut req = control.rmdir_request();
        req.get().set_path(path.as_str());
        req.send().promise.await.expect("rmdir");
        drop(control);
        task.abort();
        let _ = task.await;
    };
    block_on(async {
        tokio::time::timeout(LIVENESS_WITHIN, round_trip)
            .await
            .expect("the control server stopped serving a well-behaved client")
    });
    let open = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count());
    assert!(
        open < MAX_OPEN_FDS,
        "{open} descriptors open: the server keeps connections that ended"
    );
}

/// Writes `bytes` to a fresh connection, closes the write side and reads
/// the answer until the server closes it or [`ANSWER_WITHIN`].
async fn raw(addr: SocketAddr, bytes: &[u8]) {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connecting to the control server");
    let exchange = async {
        // The server may close first (it refuses a bad message at once).
        let _ = s.write_all(bytes).await;
        let _ = s.shutdown().await;
        let mut sink = [0u8; 4096];
        while let Ok(n) = s.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(ANSWER_WITHIN, exchange).await;
}

/// Sends the calls `input` encodes on a fresh connection (authenticated
/// as `user` first if given) and waits for their answers.
async fn calls(addr: SocketAddr, user: Option<&Credential>, input: &[u8]) {
    let (control, task) = connect(addr).await.expect("connecting");
    if let Some(user) = user {
        // Bounded: a server that stopped answering fails here too.
        tokio::time::timeout(LIVENESS_WITHIN, authenticate(&control, user))
            .await
            .expect("the control server stopped answering authentication")
            .expect("the fuzz user authenticates");
    }
    let bootstrap = control.client;
    let mut input = Input(input);
    let mut answers = Vec::new();
    let mut last: Option<capnp::any_pointer::Pipeline> = None;
    while answers.len() < MAX_CALLS {
        let (Some(target), Some(interface), Some(method), Some(n)) =
            (input.byte(), input.byte(), input.byte(), input.byte())
        else {
            break;
        };
        let interface = match INTERFACES.get(usize::from(interface)) {
            Some(id) => *id,
            None => input.u64(),
        };
        let params = input.words(usize::from(n));
        let cap = match (target, &last) {
            (1.., Some(p)) => Client::new(p.get_pointer_field(u16::from(target - 1)).as_cap()),
            _ => Client::new(bootstrap.hook.add_ref()),
        };
        let mut req: Request<capnp::any_pointer::Owned, capnp::any_pointer::Owned> =
            cap.new_call(interface, u16::from(method), None);
        set_params(req.get(), &params);
        let sent = req.send();
        last = Some(sent.pipeline);
        answers.push(sent.promise);
    }
    let _ = tokio::time::timeout(ANSWER_WITHIN, futures::future::join_all(answers)).await;
    drop((last, bootstrap));
    task.abort();
    let _ = task.await;
}

/// Sets the call's parameters to the struct rooted in `words` (a Cap'n
/// Proto segment), or leaves them null if it does not read as one.
fn set_params(mut params: capnp::any_pointer::Builder<'_>, words: &[Word]) {
    let segments = [Word::words_to_bytes(words)];
    let message = capnp::message::Reader::new(SegmentArray::new(&segments), ReaderOptions::new());
    let copied = message
        .get_root::<capnp::any_pointer::Reader<'_>>()
        .and_then(|root| params.set_as(root));
    if copied.is_err() {
        params.clear();
    }
}

/// Connects and returns the bootstrap capability and the connection's task.
async fn connect(
    addr: SocketAddr,
) -> Result<(control::Client, tokio::task::JoinHandle<()>), transport::ConnectError> {
    let stream = transport::connect(&addr.to_string(), Duration::from_secs(5), None).await?;
    Ok(transport::rpc_client::<control::Client>(stream))
}

/// hello, then authenticate as `cred` (docs/protocol.md).
async fn authenticate(control: &control::Client, cred: &Credential) -> capnp::Result<()> {
    let mut req = control.hello_request();
    req.get()
        .set_protocol_version(ringfs_schema::PROTOCOL_VERSION);
    let reply = req.send().promise.await?;
    let challenge = reply.get()?.get_challenge()?.to_vec();
    let mut req = control.authenticate_request();
    req.get().set_user(cred.user.as_str());
    req.get().set_proof(&cred.proof(&challenge));
    req.send().promise.await?;
    Ok(())
}

/// Reads an input front to back; past its end every read is zero.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        let n = self.0.len().min(8);
        b[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        u64::from_le_bytes(b)
    }

    /// Up to `n` words (fewer at the input's end; a partial word is
    /// zero-padded).
    fn words(&mut self, n: usize) -> Vec<Word> {
        let take = self.0.len().min(n * 8);
        let mut words = vec![capnp::word(0, 0, 0, 0, 0, 0, 0, 0); take.div_ceil(8)];
        Word::words_to_bytes_mut(&mut words)[..take].copy_from_slice(&self.0[..take]);
        self.0 = &self.0[take..];
        words
    }
}

/// Starts the control server on a thread of its own, with a fresh data
/// directory, an ordinary user `fuzzer` who owns [`FUZZ_DIR`]; panics if
/// it cannot.
fn start_server() -> Server {
    install_panic_hook();
    let dir = std::env::temp_dir().join(format!(
        "ringfs-fuzz-control-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).expect("creating the server's data directory");
    let secret_file = dir.join("secret");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&secret_file)
            .expect("writing the cluster secret");
        f.write_all(b"fuzzing-cluster-secret-0123456789")
            .expect("writing the cluster secret");
    }
    let args = ringfs_ops::args::parse::<ringfs_control::config::Args, _, _>([
        "ringfs-control".as_ref(),
        "--listen".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--data".as_ref(),
        dir.join("data").as_os_str(),
        "--secret-file".as_ref(),
        secret_file.as_os_str(),
    ]
        as [&std::ffi::OsStr; 7])
    .expect("control server flags");
    let config = ringfs_control::config::Config::from_args(args).expect("control server config");
    let secret = config.secret.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name(SERVER_THREAD.into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("the server's runtime");
            let local = tokio::task::LocalSet::new();
            let served = local.block_on(
                &rt,
                ringfs_control::server::run_reporting(
                    config,
                    |addr| {
                        let _ = tx.send(addr);
                    },
                    std::future::pending(),
                ),
            );
            panic!("the control server stopped: {served:?}");
        })
        .expect("starting the server's thread");
    let addr = rx.recv().expect("the control server did not start");
    // The server holds its store open: the directory's names are no
    // longer needed, and a fuzzing process is never stopped cleanly.
    let _ = std::fs::remove_dir_all(&dir);
    let admin = Credential::admin(&secret);
    let user = block_on(setup(addr, &admin, &secret));
    Server { addr, admin, user }
}

/// Adds the fuzz user and gives it [`FUZZ_DIR`]; returns its credential.
async fn setup(addr: SocketAddr, admin: &Credential, secret: &[u8]) -> Credential {
    let (control, task) = connect(addr).await.expect("connecting");
    authenticate(&control, admin).await.expect("admin hello");
    let mut req = control.add_user_request();
    req.get().set_name(FUZZ_USER);
    req.get().set_uid(FUZZ_UID);
    let reply = req.send().promise.await.expect("addUser");
    let salt = reply.get().unwrap().get_user().unwrap().get_salt().unwrap();
    let user = Credential::derive(secret, FUZZ_USER, salt);
    let mut req = control.mkdir_request();
    req.get().set_path(FUZZ_DIR);
    req.get().set_mode(0o755);
    req.send().promise.await.expect("mkdir");
    let mut req = control.set_attr_request();
    req.get().set_path(FUZZ_DIR);
    req.get().set_set_uid(true);
    req.get().set_uid(FUZZ_UID);
    req.send().promise.await.expect("chown");
    drop(control);
    task.abort();
    let _ = task.await;
    user
}

/// Records a panic on the server's thread (tokio catches those of
/// connection tasks, which the process would otherwise survive).
fn install_panic_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().name() == Some(SERVER_THREAD) {
            SERVER_PANICKED.store(true, Ordering::Relaxed);
        }
        previous(info);
    }));
}

/// Seeds: calls a client makes, before and after authentication, and the
/// raw bytes of a connection's first messages.
pub fn seeds() -> Vec<Vec<u8>> {
    let mut seeds = Vec::new();
    // Unauthenticated: hello, then a namespace call (refused).
    let mut s = vec![0];
    call(&mut s, 0, 0, 0, |p| {
        p.init_as::<control::hello_params::Builder>()
            .set_protocol_version(ringfs_schema::PROTOCOL_VERSION)
    });
    call(&mut s, 0, 0, 6, |p| {
        p.init_as::<control::stat_params::Builder>().set_path("/")
    });
    seeds.push(s);
    // Authenticated: a file's life under FUZZ_DIR, with its handle.
    let mut s = vec![FLAG_AUTHENTICATE];
    call(&mut s, 0, 0, 2, |p| {
        let mut m = p.init_as::<control::mkdir_params::Builder>();
        m.set_path("/fuzz/d");
        m.set_mode(0o755);
    });
    call(&mut s, 0, 0, 1, |p| {
        p.init_as::<control::create_params::Builder>()
            .set_path("/fuzz/d/f")
    });
    call(&mut s, 0, 0, 8, |p| {
        let mut o = p.init_as::<control::open_params::Builder>();
        o.set_path("/fuzz/d/f");
        o.set_mode(ringfs_schema::control_capnp::OpenMode::Write);
        o.set_wait_ms(100);
    });
    call(&mut s, 1, 1, 5, |_| {});
    call(&mut s, 0, 0, 8, |p| {
        let mut o = p.init_as::<control::open_params::Builder>();
        o.set_path("/fuzz/d/f");
        o.set_wait_ms(100);
    });
    call(&mut s, 1, 1, 2, |p| {
        let mut c = p.init_as::<file_handle::commit_chunks_params::Builder>();
        c.set_file_size(4096);
        let mut r = c.init_chunks(1).get(0);
        r.set_length(4096);
        r.set_version_seq(1);
        r.init_replicas(1).set(0, 1);
    });
    seeds.push(s);
    let mut s = vec![FLAG_AUTHENTICATE];
    call(&mut s, 0, 0, 8, |p| {
        p.init_as::<control::open_params::Builder>()
            .set_path("/fuzz/d/f")
    });
    call(&mut s, 1, 1, 1, |p| {
        p.init_as::<file_handle::get_chunks_params::Builder>()
            .set_count(100)
    });
    call(&mut s, 0, 0, 7, |p| {
        p.init_as::<control::list_params::Builder>()
            .set_path("/fuzz")
    });
    call(&mut s, 0, 0, 5, |p| {
        let mut r = p.init_as::<control::rename_params::Builder>();
        r.set_from("/fuzz/d/f");
        r.set_to("/fuzz/g");
    });
    call(&mut s, 0, 0, 17, |p| {
        let mut a = p.init_as::<control::set_attr_params::Builder>();
        a.set_path("/fuzz/g");
        a.set_set_mode(true);
        a.set_mode(0o600);
    });
    call(&mut s, 0, 0, 3, |p| {
        p.init_as::<control::unlink_params::Builder>()
            .set_path("/fuzz/g")
    });
    call(&mut s, 0, 0, 13, |_| {});
    call(&mut s, 0, 0, 15, |_| {});
    call(&mut s, 0, 0, 26, |_| {});
    call(&mut s, 0, 0, 24, |p| {
        p.init_as::<control::add_user_params::Builder>()
            .set_name("mallory")
    });
    seeds.push(s);
    seeds.push(raw_seed());
    seeds
}

/// Appends one call to a calls input: on `target`, interface
/// `INTERFACES[interface]`, `method`, with the parameters `fill` builds.
fn call(
    input: &mut Vec<u8>,
    target: u8,
    interface: u8,
    method: u8,
    fill: impl FnOnce(capnp::any_pointer::Builder<'_>),
) {
    let mut m = capnp::message::Builder::new_default();
    fill(m.init_root());
    let segments = m.get_segments_for_output();
    assert_eq!(segments.len(), 1, "a seed's parameters fit one segment");
    let words = segments[0].len() / 8;
    input.extend([target, interface, method, words as u8]);
    input.extend_from_slice(segments[0]);
}

/// A raw connection: bootstrap, hello on it (pipelined), then a stat
/// before authentication, as a capnp-rpc client frames them.
fn raw_seed() -> Vec<u8> {
    use ringfs_schema::raw_rpc;
    let mut out = vec![FLAG_RAW];
    out.extend(raw_rpc::bootstrap(0));
    out.extend(raw_rpc::hello_on_bootstrap(0, 1));
    out.extend(raw_rpc::call_on_bootstrap(0, 2, 6, |p| {
        p.init_as::<control::stat_params::Builder>().set_path("/");
    }));
    out
}
