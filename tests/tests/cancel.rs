//! Client sends cut mid-frame: the client's failpoint `node_conn::stall_send`
//! (armed in this test process, the only test of this binary) writes the
//! first N bytes of a write's frame, N random in its header or its payload,
//! and then stalls as a send to a node that stopped reading does; the
//! write's request timeout cuts it. The node never applies any part of it,
//! and the same client's next requests to that node go through whole: a
//! connection on which a frame was not sent completely is never used again.

use std::time::Duration;

use rand::{Rng, SeedableRng};
use ringfs_client::{Client, ClientOptions, Error};
use ringfs_tests::files::{get, layout, pattern, put, read_write};
use ringfs_tests::{local, Cluster};

const CHUNK: usize = 256 * 1024;

#[test]
fn writes_cut_mid_frame_are_never_applied_and_the_connection_is_not_reused() {
    let scenario = fail::FailScenario::setup();
    let cl = Cluster::start(1);
    let addr = cl.control.addr;
    let seed: u64 = rand::random();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    const LEN: usize = 100_000;
    // A frame: 4-byte length, a header of some hundred bytes (CRCs
    // included), the payload. One cut in the header, the rest in the
    // payload.
    let offsets: Vec<u64> = (0..5)
        .map(|i| {
            if i == 0 {
                rng.random_range(1..100)
            } else {
                rng.random_range(600..LEN as u64)
            }
        })
        .collect();
    eprintln!("seed {seed}: sends cut at frame offsets {offsets:?}");
    local(async {
        let options = ClientOptions {
            request_timeout: Duration::from_millis(500),
            // An overwrite takes an implicit lock on its node, and its
            // deadline adds the lock wait: keep both short, so each cut
            // ends in a second.
            lock_wait: Duration::from_millis(500),
            ..ClientOptions::default()
        };
        let c = Client::connect_with(addr, &ringfs_tests::admin(), options)
            .await
            .unwrap();
        let mut model = pattern(CHUNK, 1);
        put(&c, "/cut", &model, layout(CHUNK, 1, 1)).await.unwrap();
        let fd = c.open("/cut", &read_write()).await.unwrap();
        for (i, at) in offsets.iter().enumerate() {
            let cut = pattern(LEN, 10 + i as u64);
            fail::cfg("node_conn::stall_send", &format!("1*return({at})->off")).unwrap();
            let r = c.pwrite(fd, 0, &cut).await;
            fail::cfg("node_conn::stall_send", "off").unwrap();
            assert!(matches!(r, Err(Error::Timeout(_))), "cut at {at}: {r:?}");
            // Nothing of it was applied...
            assert!(
                get(&c, "/cut").await.unwrap() == model,
                "cut at {at}: the node applied part of a frame"
            );
            // ...and the next write goes through whole.
            let whole = pattern(50_000, 100 + i as u64);
            c.pwrite(fd, 20_000, &whole).await.unwrap();
            model[20_000..70_000].copy_from_slice(&whole);
            assert!(
                get(&c, "/cut").await.unwrap() == model,
                "after the cut at {at}"
            );
        }
        c.close(fd).await.unwrap();
    });
    scenario.teardown();
}
