//! `ringfs-bench fio --path`: the fio jobs in a directory and on the raw
//! disk, one report per job with its ratio to raw. (Through a mount of a
//! local cluster it is the same code; the mount itself is tested in
//! tests/tests/mount.) Needs fio; without it the test passes with a notice
//! unless `RINGFS_REQUIRE_FUSE` is set (CI installs fio for the mount
//! tests).

use std::process::Command;

use ringfs_tests::run_ok;

#[test]
fn fio_mode_compares_every_job_with_the_raw_disk() {
    if Command::new("fio").arg("--version").output().is_err() {
        assert!(
            std::env::var_os("RINGFS_REQUIRE_FUSE").is_none(),
            "fio is required (apt-get install fio)"
        );
        eprintln!("SKIPPED: fio not found (apt-get install fio)");
        return;
    }
    let target = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let json = work.path().join("out.json");
    run_ok(
        Command::new(env!("CARGO_BIN_EXE_ringfs-bench"))
            .args(["fio", "--path"])
            .arg(target.path())
            .arg("--dir")
            .arg(work.path())
            .args([
                "--size",
                "4MiB",
                "--runtime",
                "1s",
                "--files",
                "50",
                "--json",
            ])
            .arg(&json),
    );
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let reports = v.as_array().unwrap();
    let names: Vec<&str> = reports
        .iter()
        .map(|r| r["workload"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "seq-write",
            "seq-read",
            "rand-read-4k",
            "rand-write-4k",
            "metadata"
        ]
    );
    for r in reports {
        assert!(r["ops"].as_u64().unwrap() > 0, "{r}");
        assert!(r["ratio"].as_f64().unwrap() > 0.0, "{r}");
    }
    let phases: Vec<&str> = reports[4]["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["phase"].as_str().unwrap())
        .collect();
    assert_eq!(phases, ["create", "stat", "unlink"]);
    assert_eq!(reports[4]["ops"].as_u64(), Some(150));
    // What the jobs wrote is gone again.
    assert_eq!(std::fs::read_dir(target.path()).unwrap().count(), 0);
}
