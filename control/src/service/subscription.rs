//! A cluster-map subscription: while it lives, the watcher the client
//! passed gets every new map.

use crate::cluster_state::State;
use ringfs_schema::control_capnp::subscription;

/// A subscription; dropping it (or the connection) ends it.
pub(super) struct SubscriptionImpl {
    pub(super) state: std::rc::Weak<State>,
    pub(super) id: u64,
}

impl subscription::Server for SubscriptionImpl {}

impl Drop for SubscriptionImpl {
    fn drop(&mut self) {
        if let Some(state) = self.state.upgrade() {
            state.watchers.borrow_mut().retain(|(w, _)| *w != self.id);
        }
    }
}
