//! Failover time of a replicated control plane: a client creates files
//! without pause while the leading control replica is killed (kill -9);
//! the time from the kill to the acknowledgement of the first create sent
//! after it is one sample (a create the dying leader answered just before
//! the signal landed does not count). The killed replica is then restarted and caught up before the
//! next kill, so every kill hits a full group.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ringfs_client::{Client, ClientOptions, CreateOptions};

use crate::cluster::LocalCluster;

/// The failover samples of a run.
#[derive(Debug, Clone)]
pub struct Failover {
    /// Kill -> first acknowledged create, per kill.
    pub samples: Vec<Duration>,
}

impl Failover {
    /// The median sample.
    pub fn p50(&self) -> Duration {
        let mut s = self.samples.clone();
        s.sort();
        s[s.len() / 2]
    }

    /// The longest sample.
    pub fn max(&self) -> Duration {
        self.samples.iter().copied().max().unwrap_or_default()
    }
}

/// Kills the leader `kills` times while a client creates files; returns
/// the failover time of each kill.
pub fn run(cluster: &mut LocalCluster, kills: usize) -> anyhow::Result<Failover> {
    let replicas = cluster.control_addrs.len();
    if replicas < 3 {
        bail!("failover needs at least 3 control replicas (--control-replicas 3)");
    }
    let addrs = cluster.control_addrs.clone();
    let cred = cluster.cred.clone();
    // (sent, acknowledged) of every create.
    let acked: Arc<Mutex<Vec<(Instant, Instant)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let failed: Arc<Mutex<Option<String>>> = Arc::default();
    let creator = {
        let (acked, stop, failed) = (acked.clone(), stop.clone(), failed.clone());
        std::thread::spawn(move || {
            crate::local(async move {
                let run = async {
                    let c = Client::connect_tls(
                        &addrs,
                        &cred,
                        ClientOptions::default(),
                        crate::tls::get().cloned(),
                    )
                    .await?;
                    let dir = format!("/bench-failover-{}", std::process::id());
                    c.mkdir(&dir, 0).await?;
                    let options = CreateOptions {
                        exclusive: true,
                        ..Default::default()
                    };
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let sent = Instant::now();
                        let fd = c
                            .open(
                                &format!("{dir}/f{i}"),
                                &ringfs_client::OpenOptions {
                                    exclusive: true,
                                    ..ringfs_client::OpenOptions::create(options)
                                },
                            )
                            .await?;
                        // The open acknowledged the create. Its handle may
                        // belong to a leader killed since: closing it then
                        // fails with that connection, and the lease ended
                        // with the leader anyway.
                        let _ = c.close(fd).await;
                        acked.lock().expect("acks").push((sent, Instant::now()));
                        i += 1;
                    }
                    anyhow::Ok(())
                };
                if let Err(e) = run.await {
                    *failed.lock().expect("failure") = Some(format!("{e:#}"));
                }
            })
        })
    };
    let mut samples = Vec::new();
    let result = (|| {
        for k in 0..kills {
            std::thread::sleep(Duration::from_millis(500));
            if let Some(e) = failed.lock().expect("failure").clone() {
                bail!("the creating client failed: {e}");
            }
            let leader = cluster.leader()?;
            let killed = Instant::now();
            cluster.kill_control(leader);
            let deadline = killed + Duration::from_secs(60);
            let first = loop {
                if let Some((_, t)) = acked
                    .lock()
                    .expect("acks")
                    .iter()
                    .find(|(s, _)| *s > killed)
                {
                    break *t;
                }
                if let Some(e) = failed.lock().expect("failure").clone() {
                    bail!("the creating client failed: {e}");
                }
                if Instant::now() > deadline {
                    bail!("no create acknowledged within 60 s after kill {}", k + 1);
                }
                std::thread::sleep(Duration::from_millis(1));
            };
            let d = first - killed;
            println!(
                "failover {}: replica {leader} killed, next create acknowledged after {d:?}",
                k + 1
            );
            samples.push(d);
            cluster
                .restart_control(leader)
                .with_context(|| format!("restarting control replica {leader}"))?;
            cluster.wait_replicas(replicas)?;
        }
        anyhow::Ok(())
    })();
    stop.store(true, Ordering::Relaxed);
    let _ = creator.join();
    result?;
    Ok(Failover { samples })
}
