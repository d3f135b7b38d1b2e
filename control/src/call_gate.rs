//! The gate every RPC of the control server passes (through the metered
//! dispatch wrapper): it counts the calls in flight and, once the server is
//! stopping, refuses new ones with `unavailable`, so that a graceful stop
//! can answer every call it accepted and then close.
//!
//! Invariant: after [`CallGate::stop`], `in_flight` only falls, and
//! [`CallGate::idle`] resolves once it is zero.
//!
//! Single-threaded: it lives on the RPC thread.

use std::cell::Cell;
use std::rc::Rc;

use tokio::sync::Notify;

use crate::error::ControlError;

/// Calls in flight and whether the server is stopping.
#[derive(Default)]
pub struct CallGate {
    in_flight: Cell<u64>,
    stopping: Cell<bool>,
    /// Woken on `stop` and whenever the last call in flight ends.
    changed: Notify,
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
