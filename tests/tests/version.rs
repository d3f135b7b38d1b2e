//! Versions: `--version` on every binary, and the protocol version every
//! control connection starts with (`hello`).

use std::process::Command;

use ringfs_tests::binary;

#[test]
fn every_binary_reports_its_version() {
    let version = env!("CARGO_PKG_VERSION");
    for (package, bin) in [
        ("ringfs-control", "ringfs-control"),
        ("ringfs-node", "ringfs-node"),
        ("ringfs-client", "ringfs"),
        ("ringfs-bench", "ringfs-bench"),
    ] {
        let out = Command::new(binary(package, bin))
            .arg("--version")
            .output()
            .unwrap();
        assert!(out.status.success(), "{bin} --version failed");
        let out = String::from_utf8(out.stdout).unwrap();
        assert_eq!(out.trim(), format!("{bin} {version}"), "{bin} --version");
    }
}

#[test]
fn protocol_version_is_checked_at_connect() {
    let dir = tempfile::tempdir().unwrap();
    let server = ringfs_tests::ControlProcess::start(dir.path(), "127.0.0.1:0", &[]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let control = ringfs_tests::raw_control(server.addr).await;
        let hello = |version: u32| {
            let mut req = control.hello_request();
            req.get().set_protocol_version(version);
            req.send().promise
        };
        let stat = || {
            let mut req = control.stat_request();
            req.get().set_path("/");
            req.send().promise
        };
        // Nothing is served before a hello succeeded.
        let err = match stat().await {
            Ok(_) => panic!("stat before hello was served"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains("[version_mismatch]")
                && err.contains(&format!(
                    "call hello({}) first",
                    ringfs_schema::PROTOCOL_VERSION
                )),
            "{err}"
        );
        let wrong = ringfs_schema::PROTOCOL_VERSION + 1;
        let err = match hello(wrong).await {
            Ok(_) => panic!("protocol {wrong} was accepted"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("[version_mismatch]"), "{err}");
        assert!(
            err.contains(&format!(
                "client speaks protocol {wrong}, this server speaks {}",
                ringfs_schema::PROTOCOL_VERSION
            )),
            "{err}"
        );
        assert!(stat().await.is_err(), "a failed hello agrees on nothing");
        let reply = hello(ringfs_schema::PROTOCOL_VERSION).await.unwrap();
        let version = reply.get().unwrap().get_server_version().unwrap();
        assert_eq!(
            version.to_str().unwrap(),
            concat!("ringfs-control ", env!("CARGO_PKG_VERSION"))
        );
        // Then nothing is served before an authenticate succeeded.
        let err = match stat().await {
            Ok(_) => panic!("stat before authenticate was served"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("[unauthenticated]"), "{err}");
        let admin = ringfs_tests::admin();
        let mut auth = control.authenticate_request();
        auth.get().set_user(admin.user.as_str());
        let challenge = reply.get().unwrap().get_challenge().unwrap();
        auth.get().set_proof(&admin.proof(challenge));
        auth.send().promise.await.expect("authenticate");
        stat().await.expect("stat after hello and authenticate");
    });
}
