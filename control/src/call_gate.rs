//! The gate every RPC of the control server passes (through the metered
//! dispatch wrapper): it counts the calls in flight and, once the server is
//! stopping, refuses new ones with `unavailable`, so that a graceful stop
//! can answer every call it accepted and then close.
//!
//! It also knows whether this server may serve calls that need the Raft
//! leader: a single control server always may; a replica only while it is
//! the leader and has applied everything its predecessors committed
//! ([`CallGate::check_leader`], what storage nodes' calls need), and client
//! calls only once it rebuilt the leader's state
//! ([`CallGate::check_serving`]).
//!
//! Invariant: after [`CallGate::stop`], `in_flight` only falls, and
//! [`CallGate::idle`] resolves once it is zero.
//!
//! Single-threaded: it lives on the RPC thread.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use tokio::sync::Notify;

use crate::error::ControlError;

/// Calls in flight, whether the server is stopping, and whether it leads.
pub struct CallGate {
    in_flight: Cell<u64>,
    stopping: Cell<bool>,
    /// Serves calls that need the leader.
    leader: Cell<bool>,
    /// Serves clients' calls (implies `leader`).
    serving: Cell<bool>,
    /// Who the leader is, for the `not_leader` message.
    leader_hint: RefCell<String>,
    /// Woken on `stop` and whenever the last call in flight ends.
    changed: Notify,
}

impl Default for CallGate {
    /// A gate of a server that leads (a single control server).
    fn default() -> Self {
        CallGate {
            in_flight: Cell::new(0),
            stopping: Cell::new(false),
            leader: Cell::new(true),
            serving: Cell::new(true),
            leader_hint: RefCell::default(),
            changed: Notify::new(),
        }
    }
}

/// One admitted call; dropping it (answered or cancelled) ends it.
pub struct Admitted(Rc<CallGate>);

impl Drop for Admitted {
    fn drop(&mut self) {
        let n = self.0.in_flight.get() - 1;
        self.0.in_flight.set(n);
        if n == 0 {
            self.0.changed.notify_waiters();
        }
    }
}

impl CallGate {
    /// Admits a call, unless the server is stopping.
    pub fn enter(self: &Rc<Self>) -> Result<Admitted, ControlError> {
        if self.stopping.get() {
            return Err(Self::stopping_error());
        }
        self.in_flight.set(self.in_flight.get() + 1);
        Ok(Admitted(self.clone()))
    }

    /// What a call refused or cut short by a stop is answered.
    pub fn stopping_error() -> ControlError {
        ControlError::Unavailable("the control server is stopping; retry when it is back".into())
    }

    /// Whether [`CallGate::stop`] was called.
    pub fn is_stopping(&self) -> bool {
        self.stopping.get()
    }

    /// Sets whether this server serves calls that need the leader, and
    /// what a refused call is told about the leader.
    pub fn set_leader(&self, leader: bool, hint: String) {
        self.leader.set(leader);
        if !leader {
            self.serving.set(false);
        }
        *self.leader_hint.borrow_mut() = hint;
    }

    /// Sets whether this server, which leads, serves clients' calls too.
    pub fn set_serving(&self, serving: bool) {
        self.serving.set(serving && self.leader.get());
    }

    /// Whether this server serves calls that need the leader.
    pub fn is_leader(&self) -> bool {
        self.leader.get()
    }

    /// Whether this server serves clients' calls.
    pub fn is_serving(&self) -> bool {
        self.serving.get()
    }

    /// `Ok` if this server serves clients' calls; otherwise `not_leader`
    /// (a leader still taking over says so).
    pub fn check_serving(&self) -> Result<(), ControlError> {
        if self.serving.get() {
            return Ok(());
        }
        if self.leader.get() {
            return Err(ControlError::NotLeader(
                "this replica is taking over as the leader; ask again shortly".into(),
            ));
        }
        self.check_leader()
    }

    /// `Ok` if this server serves calls that need the leader, otherwise the
    /// `not_leader` error naming the leader as known.
    pub fn check_leader(&self) -> Result<(), ControlError> {
        if self.leader.get() {
            return Ok(());
        }
        let hint = self.leader_hint.borrow();
        Err(ControlError::NotLeader(if hint.is_empty() {
            "no leader is known yet (an election is under way)".into()
        } else {
            hint.clone()
        }))
    }

    /// Calls admitted and not yet answered.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.get()
    }

    /// From now on, new calls are refused and [`CallGate::stopped`] resolves.
    pub fn stop(&self) {
        self.stopping.set(true);
        self.changed.notify_waiters();
    }

    /// Resolves once the server is stopping: calls that wait for something
    /// open-ended (a write lease) give up then, so that a stop is prompt.
    pub async fn stopped(&self) {
        loop {
            let changed = self.changed.notified();
            if self.stopping.get() {
                return;
            }
            changed.await;
        }
    }

    /// Resolves once no call is in flight.
    pub async fn idle(&self) {
        loop {
            let changed = self.changed.notified();
            if self.in_flight.get() == 0 {
                return;
            }
            changed.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    #[test]
    fn stop_refuses_new_calls_and_idle_waits_for_admitted_ones() {
        let gate = Rc::new(CallGate::default());
        let a = gate.enter().unwrap();
        let b = gate.enter().unwrap();
        assert_eq!(gate.in_flight(), 2);
        assert!(gate.stopped().now_or_never().is_none());
        gate.stop();
        assert!(gate.stopped().now_or_never().is_some());
        assert!(matches!(gate.enter(), Err(ControlError::Unavailable(_))));
        assert_eq!(gate.in_flight(), 2, "a refused call is not counted");
        let mut idle = Box::pin(gate.idle());
        assert!((&mut idle).now_or_never().is_none());
        drop(a);
        assert!((&mut idle).now_or_never().is_none());
        drop(b);
        assert!(idle.now_or_never().is_some());
        assert_eq!(gate.in_flight(), 0);
    }
}
