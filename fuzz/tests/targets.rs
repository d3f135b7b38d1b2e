//! Every fuzz target in `cargo test`, without libFuzzer: its checked-in
//! corpus (`corpus/<target>/`: crashes found are kept there), its seeds,
//! the seeds mutated, and seeded random inputs. Bounded: a few seconds
//! per target (`Target::test_inputs`).

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use ringfs_fuzz::TARGETS;
use std::path::Path;

#[test]
fn every_target_survives_its_corpus_and_random_inputs() {
    let mut rng = StdRng::seed_from_u64(0x5eed);
    for t in TARGETS {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("corpus")
            .join(t.name);
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries {
                let path = e.unwrap().path();
                (t.run)(&std::fs::read(&path).unwrap());
            }
        }
        for seed in (t.seeds)() {
            (t.run)(&seed);
            for _ in 0..t.test_inputs / 15 {
                let mut m = seed.clone();
                for _ in 0..rng.random_range(1..4) {
                    match rng.random_range(0..3) {
                        0 if !m.is_empty() => {
                            let i = rng.random_range(0..m.len());
                            m[i] ^= 1 << rng.random_range(0..8);
                        }
                        1 => m.truncate(rng.random_range(0..=m.len())),
                        _ => m.push(rng.random()),
                    }
                }
                (t.run)(&m);
            }
        }
        for _ in 0..t.test_inputs {
            let mut input = vec![0u8; rng.random_range(0..512)];
            rng.fill_bytes(&mut input);
            (t.run)(&input);
        }
    }
}
