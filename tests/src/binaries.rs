//! The ringfs binaries, built on first use.
//!
//! The servers are built with their `failpoints` feature so that a test can
//! arm failpoints in a child (release builds and the bench never have
//! them). One `cargo build` per test process builds the servers and the
//! CLI together, so every test binary asks for the same feature set and
//! cargo's fingerprints stay valid between them: nothing is rebuilt back
//! and forth. The bench is built on its own, without failpoints: its own
//! tests run the copy cargo built for them, which a build here must not
//! replace while they run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// (package, binary) of the servers and the CLI, built together.
const SERVERS_AND_CLI: &[(&str, &str)] = &[
    ("ringfs-control", "ringfs-control"),
    ("ringfs-node", "ringfs-node"),
    ("ringfs-client", "ringfs"),
];
const BENCH: (&str, &str) = ("ringfs-bench", "ringfs-bench");
const FAILPOINTS: &str =
    "ringfs-control/failpoints,ringfs-node/failpoints,ringfs-client/failpoints";

/// The path of binary `bin` of `package`, built (once per test process) in
/// the profile the tests run in.
pub fn binary(package: &str, bin: &str) -> PathBuf {
    static SERVERS: OnceLock<PathBuf> = OnceLock::new();
    static BENCH_BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = if (package, bin) == BENCH {
        BENCH_BUILT.get_or_init(|| build(&[BENCH], None))
    } else {
        assert!(
            SERVERS_AND_CLI.contains(&(package, bin)),
            "the test kit does not build {package}/{bin}: add it to SERVERS_AND_CLI"
        );
        SERVERS.get_or_init(|| build(SERVERS_AND_CLI, Some(FAILPOINTS)))
    };
    dir.join(bin)
}

/// Builds `binaries` with `features`; returns the directory holding them.
fn build(binaries: &[(&str, &str)], features: Option<&str>) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>
    let profile_dir = exe.parent().and_then(Path::parent).expect("target dir");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--quiet"]);
    // Cargo runs a test with the variables it sets for the crate under test
    // (CARGO_MANIFEST_DIR and the like). Left in place, build scripts that
    // watch them (ring's watches CARGO_MANIFEST_DIR) see a change from the
    // `cargo test` that built this test, and rustls and every workspace
    // crate above it are rebuilt here and again by the next `cargo test`:
    // about a minute per test binary.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if is_set_by_cargo_for_the_crate(&name) {
            cmd.env_remove(&*name);
        }
    }
    for (package, bin) in binaries {
        cmd.args(["-p", package, "--bin", bin]);
    }
    if let Some(f) = features {
        cmd.args(["--features", f]);
    }
    if !cfg!(debug_assertions) {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("running cargo build");
    assert!(status.success(), "building {binaries:?} failed");
    profile_dir.to_path_buf()
}

/// The variables cargo sets when it runs a crate's tests or binaries
/// (not the ones that configure cargo itself, such as CARGO_HOME or
/// CARGO_TARGET_DIR, which the build must keep).
fn is_set_by_cargo_for_the_crate(name: &str) -> bool {
    name == "OUT_DIR"
        || name.starts_with("CARGO_PKG_")
        || name.starts_with("CARGO_BIN_EXE_")
        || matches!(
            name,
            "CARGO_MANIFEST_DIR"
                | "CARGO_MANIFEST_PATH"
                | "CARGO_CRATE_NAME"
                | "CARGO_BIN_NAME"
                | "CARGO_PRIMARY_PACKAGE"
                | "CARGO_TARGET_TMPDIR"
                | "CARGO_RUSTC_CURRENT_DIR"
        )
}
