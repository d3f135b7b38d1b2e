//! The ringfs binaries, built on first use.
//!
//! The servers are built with their `failpoints` feature so that a test can
//! arm failpoints in a child (release builds, the bench, never have them).
//! One `cargo build` per test process builds every binary the kit knows, so
//! the feature set is the same in every test binary's call and cargo's
//! fingerprints stay valid between them: nothing is rebuilt back and forth.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// (package, binary) of everything the kit builds.
const BINARIES: &[(&str, &str)] = &[
    ("ringfs-control", "ringfs-control"),
    ("ringfs-node", "ringfs-node"),
    ("ringfs-client", "ringfs"),
    ("ringfs-bench", "ringfs-bench"),
];

/// The path of binary `bin` of `package`, built (once per test process,
/// with every other binary of the kit) in the profile the tests run in.
pub fn binary(package: &str, bin: &str) -> PathBuf {
    assert!(
        BINARIES.contains(&(package, bin)),
        "the test kit does not build {package}/{bin}: add it to BINARIES"
    );
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(build_all).join(bin)
}

/// Builds every binary of [`BINARIES`]; returns the directory holding them.
fn build_all() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>
    let profile_dir = exe.parent().and_then(Path::parent).expect("target dir");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--quiet"]);
    for (package, bin) in BINARIES {
        cmd.args(["-p", package, "--bin", bin]);
    }
    cmd.args([
        "--features",
        "ringfs-control/failpoints,ringfs-node/failpoints",
    ]);
    if !cfg!(debug_assertions) {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("running cargo build");
    assert!(status.success(), "building the ringfs binaries failed");
    profile_dir.to_path_buf()
}
