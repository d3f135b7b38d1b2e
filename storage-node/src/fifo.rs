//! A strictly first-come, first-served async mutex whose place in line is
//! taken when it is asked for, not when the asking future is first polled.
//!
//! Used where arrival order is the order of a chunk's writes: a chunk's
//! admission (`chunk_store/pipeline.rs`) and a connection's writes to one
//! chunk (`write_order.rs`). glommio's `RwLock` queues waiters in order, but
//! a caller arriving while the lock is free takes it ahead of a waiter that
//! was woken and has not run yet; writes would then be admitted out of
//! their arrival order and refused as stale.
//!
//! Guarantees: holders follow each other in the order [`Fifo::place`] was
//! called; a released `Fifo` is handed to the first waiter still waiting
//! (one that went away is skipped), so nobody arriving later gets in
//! between. A place given up (dropped) before or after its turn came
//! hands the turn on.

use futures::channel::oneshot;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::ops::Deref;

/// The mutex. Holds nothing: it orders its holders.
#[derive(Default)]
pub(crate) struct Fifo {
    state: RefCell<FifoState>,
}

#[derive(Default)]
struct FifoState {
    held: bool,
    /// One per place in line, in order; a sender whose receiver dropped is
    /// a place given up.
    waiters: VecDeque<oneshot::Sender<()>>,
}

/// A place in a [`Fifo`]'s line, taken by [`Fifo::place`]; `D` is how the
/// place refers to its `Fifo` (a borrow, or an `Rc` to outlive the caller).
pub(crate) struct Place<D: Deref<Target = Fifo>> {
    fifo: Option<D>,
    /// `None`: the `Fifo` was free and is held by this place already.
    rx: Option<oneshot::Receiver<()>>,
}

/// Holds a [`Fifo`]; dropping it hands it on.
pub(crate) struct FifoGuard<D: Deref<Target = Fifo>>(D);

impl Fifo {
    /// Takes a place in line now.
    pub(crate) fn place<D: Deref<Target = Fifo>>(fifo: D) -> Place<D> {
        let rx = {
            let mut s = fifo.state.borrow_mut();
            if !s.held && s.waiters.is_empty() {
                s.held = true;
                None
            } else {
                let (tx, rx) = oneshot::channel();
                s.waiters.push_back(tx);
                Some(rx)
            }
        };
        Place {
            fifo: Some(fifo),
            rx,
        }
    }

    /// Takes a place in line and waits for its turn.
    pub(crate) async fn lock(&self) -> FifoGuard<&Fifo> {
        Fifo::place(self).turn().await
    }

    /// Nobody holds it or waits for it.
    pub(crate) fn is_idle(&self) -> bool {
        let s = self.state.borrow();
        !s.held && s.waiters.is_empty()
    }

    fn release(&self) {
        let mut s = self.state.borrow_mut();
        while let Some(tx) = s.waiters.pop_front() {
            if tx.send(()).is_ok() {
                return;
            }
        }
        s.held = false;
    }
}

impl<D: Deref<Target = Fifo>> Place<D> {
    /// Waits until every earlier place has had its turn.
    pub(crate) async fn turn(mut self) -> FifoGuard<D> {
        if let Some(rx) = self.rx.as_mut() {
            // Handed over: a sender is never dropped unsent while its
            // receiver lives (see `release`).
            let _ = rx.await;
        }
        self.rx = None;
        FifoGuard(self.fifo.take().expect("a place turns once"))
    }
}

impl<D: Deref<Target = Fifo>> Drop for Place<D> {
    fn drop(&mut self) {
        let Some(fifo) = self.fifo.take() else {
            return; // turned into a guard
        };
        match self.rx.take() {
            // Held from the start, never used.
            None => fifo.release(),
            // Handed over before it was given up: hand it on.
            Some(mut rx) => {
                if let Ok(Some(())) = rx.try_recv() {
                    fifo.release();
                }
                // Otherwise its sender, still queued, is skipped.
            }
        }
    }
}

impl<D: Deref<Target = Fifo>> Drop for FifoGuard<D> {
    fn drop(&mut self) {
        self.0.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use std::rc::Rc;

    /// Turns come in the order places were taken, whatever order the
    /// futures first run in; a place given up, waiting or handed over,
    /// passes its turn on.
    #[test]
    fn turns_follow_the_order_places_were_taken() {
        let f = Rc::new(Fifo::default());
        let a = Fifo::place(f.clone());
        let b = Fifo::place(f.clone());
        let c = Fifo::place(f.clone());
        let d = Fifo::place(f.clone());
        // `d` polled first: not its turn.
        let mut d = Box::pin(d.turn());
        assert!((&mut d).now_or_never().is_none());
        let ga = a.turn().now_or_never().expect("first in line");
        drop(b); // gives up while waiting
        drop(ga);
        // `c` was handed the turn; given up unpolled, it passes it on.
        drop(c);
        let gd = d.now_or_never().expect("every earlier place is gone");
        assert!(!f.is_idle());
        let e = Fifo::place(f.clone());
        drop(gd);
        drop(e);
        assert!(f.is_idle());
    }
}
