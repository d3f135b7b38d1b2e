//! `ringfs-bench run --path`: the workloads through file calls on a local
//! directory, compared with the raw disk, verified, in JSON.

use std::process::Command;

use ringfs_tests::run_ok;

#[test]
fn run_path_runs_every_workload_on_a_directory() {
    let target = tempfile::tempdir().unwrap();
    let raw = tempfile::tempdir().unwrap();
    let json = raw.path().join("out.json");
    run_ok(
        Command::new(env!("CARGO_BIN_EXE_ringfs-bench"))
            .args(["run", "--path"])
            .arg(target.path())
            .arg("--dir")
            .arg(raw.path())
            .args([
                "--size",
                "8MiB",
                "--block-size",
                "1MiB",
                "--duration",
                "300ms",
                "--metadata-files",
                "50",
                "--json",
            ])
            .arg(&json),
    );
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let reports = v.as_array().expect("one report per workload");
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
            "mixed",
            "metadata"
        ]
    );
    for r in reports {
        assert!(r["ops"].as_u64().unwrap() > 0, "{r}");
        assert!(r["baseline"]["ops_per_s"].as_f64().unwrap() > 0.0, "{r}");
        let reads = matches!(
            r["workload"].as_str(),
            Some("seq-read" | "rand-read-4k" | "mixed")
        );
        assert_eq!(r["verified_bytes"].as_u64().unwrap() > 0, reads, "{r}");
    }
    // The dataset is gone again; the target directory is left as it was.
    assert_eq!(std::fs::read_dir(target.path()).unwrap().count(), 0);
}
