//! The Python control client (client/python, pycapnp) against the real
//! control server: the schema is usable from another language.
//!
//! Needs `python3` with pycapnp 2.x. Without it the test says so and passes,
//! unless `RINGFS_REQUIRE_PYTHON=1` (then it fails).

use std::path::Path;
use std::process::Command;

use ringfs_tests::ControlProcess;

fn pycapnp_available() -> bool {
    Command::new("python3")
        .args(["-c", "import capnp"])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn python_client_creates_lists_and_stats() {
    if !pycapnp_available() {
        assert!(
            std::env::var_os("RINGFS_REQUIRE_PYTHON").is_none(),
            "python3 with pycapnp is required (pip install pycapnp)"
        );
        eprintln!("SKIPPED: python3 with pycapnp not found (pip install pycapnp)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = ControlProcess::start(dir.path(), "127.0.0.1:0", &[]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../client/python/ringfs_control.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(server.addr.to_string())
        .output()
        .expect("running python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python client failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("list /py-demo: [('hello.txt', 'file')]"),
        "{stdout}"
    );
}
