//! Authentication and authorization of the control plane, played against
//! the real binaries on loopback: an attacker with no credentials, wrong
//! ones or a replayed proof (a raw Cap'n Proto client written from
//! docs/protocol.md), a node of another cluster, and two users who must
//! not read or change each other's private files.

use std::time::Duration;

use ringfs_client::{ControlClient, CreateOptions, Credential, Error};
use ringfs_schema::control_capnp::control;
use ringfs_tests::{local, wait_until, Cluster, ControlProcess, NodeOptions, NodeProcess, SECRET};

const NO_WAIT: Duration = Duration::ZERO;

/// A raw connection to the control server: the bootstrap capability, and
/// the challenge of a successful hello.
async fn raw(addr: std::net::SocketAddr) -> (control::Client, Vec<u8>) {
    let control = ringfs_tests::raw_control(addr).await;
    let mut hello = control.hello_request();
    hello
        .get()
        .set_protocol_version(ringfs_schema::PROTOCOL_VERSION);
    let reply = hello.send().promise.await.expect("hello");
    let challenge = reply.get().unwrap().get_challenge().unwrap().to_vec();
    assert_eq!(challenge.len(), 32, "a 32-byte challenge");
    (control, challenge)
}

/// `authenticate(user, proof)` on a raw connection: the error text if
/// refused.
async fn authenticate(control: &control::Client, user: &str, proof: &[u8]) -> Result<(), String> {
    let mut req = control.authenticate_request();
    req.get().set_user(user);
    req.get().set_proof(proof);
    req.send()
        .promise
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

/// Every call of `Control` but hello and authenticate, with empty
/// parameters, and how each ended (the error text, or "served").
async fn every_call(c: &control::Client) -> Vec<(&'static str, String)> {
    macro_rules! calls {
        ($($m:ident),* $(,)?) => {{
            let mut out = Vec::new();
            $(
                let r = c.$m().send().promise.await;
                out.push((stringify!($m), match r {
                    Ok(_) => "served".to_string(),
                    Err(e) => e.to_string(),
                }));
            )*
            out
        }};
    }
    calls!(
        create_request,
        mkdir_request,
        unlink_request,
        rmdir_request,
        rename_request,
        stat_request,
        list_request,
        open_request,
        set_attr_request,
        join_request,
        heartbeat_request,
        report_chunks_request,
        cluster_map_request,
        subscribe_request,
        report_bad_replica_request,
        chunk_health_request,
        leave_request,
        raft_request,
        replication_request,
        add_replica_request,
        remove_replica_request,
        take_snapshot_request,
        add_user_request,
        remove_user_request,
        list_users_request,
    )
}

fn assert_all_unauthenticated(results: &[(&str, String)]) {
    assert_eq!(results.len(), 25, "every method but hello and authenticate");
    for (call, outcome) in results {
        assert!(
            outcome.contains("[unauthenticated]"),
            "{call} without a principal: {outcome}"
        );
    }
}

#[test]
fn without_valid_credentials_every_call_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = ControlProcess::start(dir.path(), "127.0.0.1:0", &[]);
    local(async {
        // A file of a legitimate user, which the attacker goes after.
        let admin = ControlClient::connect(server.addr, &ringfs_tests::admin())
            .await
            .unwrap();
        admin
            .create("/victim", CreateOptions::default())
            .await
            .unwrap();

        // No credentials at all.
        let (c, _) = raw(server.addr).await;
        assert_all_unauthenticated(&every_call(&c).await);

        // The admin's name with a wrong key; an unknown user; a proof of
        // the right key over another challenge (replayed from another
        // connection): all refused alike, saying no more than that.
        let wrong = Credential::derive(b"not this cluster's secret", "admin", &[]);
        let (c, challenge) = raw(server.addr).await;
        let e = authenticate(&c, "admin", &wrong.proof(&challenge))
            .await
            .unwrap_err();
        assert!(
            e.contains("[unauthenticated]") && e.contains("unknown user or wrong key"),
            "{e}"
        );
        assert_all_unauthenticated(&every_call(&c).await);

        let (c, challenge) = raw(server.addr).await;
        let nobody = Credential::derive(SECRET.as_bytes(), "nobody", &[0; 16]);
        let e2 = authenticate(&c, "nobody", &nobody.proof(&challenge))
            .await
            .unwrap_err();
        assert_eq!(
            e2.replace("\"nobody\"", "\"admin\""),
            e,
            "an unknown user looks like a wrong key"
        );
        assert_all_unauthenticated(&every_call(&c).await);

        let (seen, seen_challenge) = raw(server.addr).await;
        let proof = ringfs_tests::admin().proof(&seen_challenge);
        let (c, _) = raw(server.addr).await;
        assert!(authenticate(&c, "admin", &proof).await.is_err(), "replayed");
        assert_all_unauthenticated(&every_call(&c).await);
        // Each challenge answers one attempt: even the right proof is
        // refused once an attempt used it up.
        let (c, challenge) = raw(server.addr).await;
        let _ = authenticate(&c, "admin", &[0; 32]).await;
        let right = ringfs_tests::admin().proof(&challenge);
        assert!(authenticate(&c, "admin", &right).await.is_err());
        assert!(authenticate(&seen, "admin", &proof).await.is_ok());

        // The secret parameters of old are refused, not checked.
        let mut req = seen.take_snapshot_request();
        req.get().set_secret(SECRET.as_bytes());
        let e = req.send().promise.await.err().expect("a secret parameter");
        assert!(e.to_string().contains("[invalid_argument]"), "{e}");

        // The file is untouched.
        assert_eq!(admin.stat("/victim").await.unwrap().size, 0);
    });
}

#[test]
fn a_node_with_another_clusters_secret_cannot_join() {
    let dir = tempfile::tempdir().unwrap();
    let server = ControlProcess::start(dir.path(), "127.0.0.1:0", &["--heartbeat-ms", "100"]);
    let good = NodeProcess::start(dir.path(), "good", server.addr, &[]);
    let opts = NodeOptions {
        secret: "another-cluster-secret-0123456789",
        ..NodeOptions::default()
    };
    let _bad = NodeProcess::start_with(dir.path(), "bad", server.addr, &opts);
    let map = || {
        local(async {
            let c = ControlClient::connect(server.addr, &ringfs_tests::admin())
                .await
                .unwrap();
            c.cluster_map().await.unwrap()
        })
    };
    wait_until(
        Duration::from_secs(20),
        || map().nodes.iter().any(|n| n.up),
        || "the good node did not join".into(),
    );
    // Many heartbeats later, still only the good node.
    std::thread::sleep(Duration::from_secs(2));
    let nodes = map().nodes;
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    assert_eq!(nodes[0].shards, vec![good.addr.to_string()]);
    local(async {
        // Users may not act as nodes or replicas either.
        let c = ControlClient::connect(server.addr, &ringfs_tests::admin())
            .await
            .unwrap();
        let e = c
            .join(0, &[0; 16], &["127.0.0.1:1".into()], Default::default())
            .await
            .unwrap_err();
        assert!(matches!(e, Error::PermissionDenied(_)), "{e}");
    });
}

fn denied<T: std::fmt::Debug>(r: Result<T, Error>, what: &str) {
    assert!(
        matches!(r, Err(Error::PermissionDenied(_))),
        "{what}: {r:?}"
    );
}

#[test]
fn mode_bits_keep_two_users_apart_and_the_admin_may_do_everything() {
    let dir = tempfile::tempdir().unwrap();
    let server = ControlProcess::start(dir.path(), "127.0.0.1:0", &[]);
    local(async {
        let admin = ControlClient::connect(server.addr, &ringfs_tests::admin())
            .await
            .unwrap();
        let (alice_cred, bob_cred) = ringfs_tests::two_users(&admin).await;
        let alice = ControlClient::connect(server.addr, &alice_cred)
            .await
            .unwrap();
        let bob = ControlClient::connect(server.addr, &bob_cred)
            .await
            .unwrap();
        let mode = |mode| CreateOptions {
            mode,
            ..Default::default()
        };
        // Each user's files, created as that user.
        for (c, name) in [(&alice, "alice"), (&bob, "bob")] {
            let private = c
                .create(&format!("/home/{name}/private"), mode(0o600))
                .await
                .unwrap();
            let shared = c
                .create(&format!("/home/{name}/shared"), mode(0o644))
                .await
                .unwrap();
            assert_eq!(private.uid, shared.uid);
            c.mkdir(&format!("/home/{name}/closed"), 0o700)
                .await
                .unwrap();
            c.create(&format!("/home/{name}/closed/f"), mode(0o644))
                .await
                .unwrap();
        }
        // Both ways: neither reads, writes, searches, creates in, removes
        // from, renames out of, chmods or chowns the other's.
        for (me, other, other_cred) in [(&alice, "bob", &bob_cred), (&bob, "alice", &alice_cred)] {
            let h = format!("/home/{other}");
            denied(
                me.open(&format!("{h}/private"), false, NO_WAIT).await,
                "read",
            );
            me.open(&format!("{h}/shared"), false, NO_WAIT)
                .await
                .expect("a world-readable file is readable");
            denied(
                me.open(&format!("{h}/shared"), true, NO_WAIT).await,
                "write",
            );
            denied(me.stat(&format!("{h}/closed/f")).await, "search");
            denied(me.list(&format!("{h}/closed")).await, "list");
            denied(
                me.create(&format!("{h}/new"), CreateOptions::default())
                    .await,
                "create",
            );
            denied(me.mkdir(&format!("{h}/newdir"), 0).await, "mkdir");
            denied(me.unlink(&format!("{h}/shared")).await, "unlink");
            denied(me.rmdir(&format!("{h}/closed")).await, "rmdir");
            let mine = if other == "bob" { "alice" } else { "bob" };
            denied(
                me.rename(&format!("{h}/shared"), &format!("/home/{mine}/stolen"))
                    .await,
                "rename",
            );
            denied(
                me.set_attr(&format!("{h}/private"), Some(0o666), None)
                    .await,
                "chmod",
            );
            denied(
                me.chown(&format!("{h}/private"), Some(0), None).await,
                "chown",
            );
            denied(
                me.chown(&format!("{h}/private"), None, Some(0)).await,
                "chgrp",
            );
            // The owner still may.
            let owner = ControlClient::connect(server.addr, other_cred)
                .await
                .unwrap();
            owner
                .open(&format!("{h}/private"), true, NO_WAIT)
                .await
                .unwrap();
            owner.list(&format!("{h}/closed")).await.unwrap();
        }
        // An owner may chmod but not give a file away, nor pick a group it
        // is not in; it may pick one it is in.
        let a = alice
            .set_attr("/home/alice/private", Some(0o604), None)
            .await
            .unwrap();
        assert_eq!(a.mode, 0o604);
        bob.open("/home/alice/private", false, NO_WAIT)
            .await
            .expect("readable by others after chmod");
        denied(
            alice.chown("/home/alice/private", Some(1001), None).await,
            "give away",
        );
        denied(
            alice.chown("/home/alice/private", None, Some(1001)).await,
            "foreign group",
        );
        alice
            .chown("/home/alice/private", None, Some(a.gid))
            .await
            .expect("its own group");
        // Non-owners of the root may not create there.
        denied(bob.mkdir("/bobs", 0).await, "mkdir in /");
        // The administrator may do everything.
        admin
            .open("/home/bob/private", true, NO_WAIT)
            .await
            .unwrap();
        admin.list("/home/bob/closed").await.unwrap();
        let given = admin
            .chown("/home/bob/private", Some(1000), None)
            .await
            .unwrap();
        assert_eq!(given.uid, 1000);
        alice
            .open("/home/bob/private", true, NO_WAIT)
            .await
            .expect("the new owner may write");
        admin.unlink("/home/alice/shared").await.unwrap();
        // Users' calls of the administrator's are refused.
        denied(alice.add_user("mallory", 0, &[], true).await, "addUser");
        denied(alice.list_users().await, "listUsers");
        denied(alice.chunk_health(10).await, "chunkHealth with paths");
        alice
            .chunk_health(0)
            .await
            .expect("health counts are anyone's");
        denied(alice.take_snapshot().await, "takeSnapshot");

        // Revoking Bob refuses his open connection's next call, and new ones;
        // the file he holds open for writing gives him nothing more (no
        // records, so no fresh capabilities) and its lease is released.
        bob.create("/home/bob/notes", CreateOptions::default())
            .await
            .unwrap();
        let held = bob.open("/home/bob/notes", true, NO_WAIT).await.unwrap();
        held.get_chunks(0, 1)
            .await
            .expect("the owner's handle works");
        admin.remove_user("bob").await.unwrap();
        let e = held.get_chunks(0, 1).await.unwrap_err();
        assert!(matches!(e, Error::Unauthenticated(_)), "{e}");
        admin
            .open("/home/bob/notes", true, NO_WAIT)
            .await
            .expect("the removed user's write lease was released");
        let e = bob.stat("/home").await.unwrap_err();
        assert!(matches!(e, Error::Unauthenticated(_)), "{e}");
        let e = ControlClient::connect(server.addr, &bob_cred)
            .await
            .err()
            .expect("a removed user cannot connect");
        assert!(matches!(e, Error::Unauthenticated(_)), "{e}");
        alice.stat("/home").await.expect("others keep working");
    });
}

#[test]
fn the_cli_issues_credentials_that_work() {
    let cl = Cluster::start(1);
    let dir = tempfile::tempdir().unwrap();
    let secret = ringfs_tests::write_secret(dir.path());
    let cred = dir.path().join("carol.credential");
    let out = cl.ringfs(&[
        "admin",
        "--secret-file",
        secret.to_str().unwrap(),
        "user",
        "add",
        "carol",
        "--uid",
        "2000",
        "--groups",
        "2000,50",
        "-o",
        cred.to_str().unwrap(),
    ]);
    assert_eq!(out.code, Some(0), "{out:?}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&cred).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "a credential file is the owner's only");
    let listed = cl.ringfs(&["admin", "user", "list"]);
    assert!(
        listed.stdout.contains("carol uid=2000 groups=2000,50"),
        "{listed:?}"
    );
    // Carol's credential works; what she makes is hers.
    for args in [&["mkdir", "/c"][..], &["chown", "carol:50", "/c"]] {
        let r = cl.ringfs(args);
        assert_eq!(r.code, Some(0), "{args:?}: {r:?}");
    }
    let mut carol = std::process::Command::new(ringfs_tests::binary("ringfs-client", "ringfs"));
    carol
        .args(["--control", &cl.control.addr.to_string(), "mkdir", "/c/d"])
        .env("RINGFS_CREDENTIAL", &cred);
    ringfs_tests::run_ok(&mut carol);
    let stat = cl.ringfs(&["--json", "stat", "/c/d"]);
    assert!(
        stat.stdout.contains("\"uid\":2000") && stat.stdout.contains("\"gid\":2000"),
        "{stat:?}"
    );
    // A credential others may read is refused before anything is sent.
    std::fs::set_permissions(&cred, std::fs::Permissions::from_mode(0o644)).unwrap();
    let refused = ringfs_tests::run_failing(&mut carol, 1);
    assert!(refused.contains("chmod 600"), "{refused}");
}

#[test]
fn users_and_owners_survive_a_leader_change() {
    let mut group = ringfs_tests::ControlGroup::start(3, &[]);
    // Added on the leader: a mutation of the replicated log like any other.
    let (uid, salt) = group.with_client(async |c| {
        let u = c.control().add_user("erin", 0, &[], false).await.unwrap();
        c.mkdir("/erin", 0o700).await.unwrap();
        c.chown("/erin", Some(u.uid), Some(u.gids[0]))
            .await
            .unwrap();
        (u.uid, u.salt)
    });
    let old = group.leader();
    group.kill9(old);
    let erin = Credential::derive(SECRET.as_bytes(), "erin", &salt);
    let addrs: Vec<std::net::SocketAddr> = group
        .addrs
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != old)
        .map(|(_, a)| *a)
        .collect();
    local(async move {
        // The new leader knows erin, her key and what she owns.
        let c = ringfs_client::Client::connect_replicas(&addrs, &erin, Default::default())
            .await
            .expect("erin authenticates with the new leader");
        c.mkdir("/erin/d", 0o700).await.unwrap();
        assert_eq!(c.stat("/erin/d").await.unwrap().uid, uid);
        let e = c.mkdir("/not-erins", 0).await.unwrap_err();
        assert!(matches!(e, Error::PermissionDenied(_)), "{e}");
    });
}
