//! libFuzzer entry point: runs the target named by `RINGFS_FUZZ_TARGET`
//! (see `ringfs_fuzz::TARGETS`); with `RINGFS_FUZZ_SEEDS=<dir>` it first
//! writes the target's seed inputs into that corpus directory; with
//! `RINGFS_FUZZ_LIST=1` it prints the targets' names and exits. Built and
//! run by `scripts/fuzz`.
#![no_main]

use std::sync::OnceLock;

static TARGET: OnceLock<&'static ringfs_fuzz::Target> = OnceLock::new();

fn init() {
    if std::env::var_os("RINGFS_FUZZ_LIST").is_some() {
        for t in ringfs_fuzz::TARGETS {
            println!("{}", t.name);
        }
        std::process::exit(0);
    }
    let name = std::env::var("RINGFS_FUZZ_TARGET").expect("RINGFS_FUZZ_TARGET names the target");
    let target = ringfs_fuzz::target(&name)
        .unwrap_or_else(|| panic!("no fuzz target {name:?}: see ringfs_fuzz::TARGETS"));
    if let Ok(dir) = std::env::var("RINGFS_FUZZ_SEEDS") {
        for (i, seed) in (target.seeds)().iter().enumerate() {
            let path = std::path::Path::new(&dir).join(format!("seed-{i}"));
            std::fs::write(&path, seed).expect("writing a seed input");
        }
    }
    let _ = TARGET.set(target);
}

libfuzzer_sys::fuzz_target!(init: init(), |data: &[u8]| {
    (TARGET.get().expect("initialized").run)(data)
});
