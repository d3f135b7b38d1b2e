//! The checkpoint gate: every write holds it shared from its journal
//! append to its in-place apply, and a checkpoint holds it exclusively
//! (`journaled.rs`), so that a checkpoint never writes a header while a
//! write's blocks are between its record and the chunk file.
//!
//! Guarantee: a checkpoint waiting for the gate holds back every write that
//! asks for it later, so the checkpoint runs as soon as the writes already
//! inside have applied. glommio's `RwLock` alone lets a reader in ahead of
//! a waiting writer: under a steady stream of writes a checkpoint waited
//! until the stream paused (0.25-1 s on `ringfs-bench local --workload
//! rand-write-4k`, one write answered that late per checkpoint), and the
//! journal grew past its bound meanwhile. A turnstile in front of the lock
//! (strict FIFO, [`Fifo`]) orders the asks.

use crate::fifo::Fifo;
use glommio::sync::{LockResult, RwLock, RwLockReadGuard, RwLockWriteGuard};

pub(crate) struct Gate {
    turnstile: Fifo,
    lock: RwLock<()>,
}

impl Gate {
    pub(crate) fn new() -> Self {
        Self {
            turnstile: Fifo::default(),
            lock: RwLock::new(()),
        }
    }

    /// Holds the gate shared (a write), after every checkpoint that asked
    /// before.
    pub(crate) async fn enter(&self) -> LockResult<RwLockReadGuard<'_, ()>> {
        let _turn = self.turnstile.lock().await;
        self.lock.read().await
    }

    /// Holds the gate exclusively (a checkpoint), once the writes inside
    /// have left; writes asking meanwhile wait behind it.
    pub(crate) async fn exclusive(&self) -> LockResult<RwLockWriteGuard<'_, ()>> {
        let _turn = self.turnstile.lock().await;
        self.lock.write().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringfs_tests::on_glommio;
    use std::cell::RefCell;
    use std::rc::Rc;

    #[test]
    fn a_waiting_checkpoint_holds_back_writes_that_ask_after_it() {
        on_glommio(|| async {
            let gate = Rc::new(Gate::new());
            let order = Rc::new(RefCell::new(Vec::new()));
            let inside = gate.enter().await.unwrap();
            let spawn = |what: &'static str| {
                let (gate, order) = (gate.clone(), order.clone());
                glommio::spawn_local(async move {
                    let _held = if what == "checkpoint" {
                        (None, Some(gate.exclusive().await.unwrap()))
                    } else {
                        (Some(gate.enter().await.unwrap()), None)
                    };
                    order.borrow_mut().push(what);
                })
            };
            let settle = || async {
                for _ in 0..20 {
                    glommio::executor().yield_now().await;
                }
            };
            let checkpoint = spawn("checkpoint");
            settle().await;
            let write = spawn("write");
            settle().await;
            assert!(
                order.borrow().is_empty(),
                "{:?} went in while a write was inside",
                order.borrow()
            );
            drop(inside);
            checkpoint.await;
            write.await;
            assert_eq!(*order.borrow(), ["checkpoint", "write"]);
        });
    }
}
