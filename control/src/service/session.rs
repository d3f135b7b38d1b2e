//! One connection's protocol state: whether `hello` agreed on a protocol,
//! the challenge it handed out, and the principal `authenticate` proved
//! (docs/protocol.md, "Authentication").
//!
//! Every call but `hello` and `authenticate` runs as the connection's
//! principal; a connection without one gets `unauthenticated`. A failed
//! proof never says whether the user or the key was wrong, and each
//! challenge answers one attempt. A registered user's principal is looked
//! up again whenever the store's users changed, so removing a user refuses
//! its connections from their next call.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use ringfs_ops::auth::{self, CHALLENGE_LEN, SALT_LEN};
use ringfs_schema::PROTOCOL_VERSION;

use crate::cluster_state::State;
use crate::error::{ControlError, Result};
use crate::store::Caller;

/// Who a connection's calls run as.
#[derive(Debug)]
pub(crate) struct Principal {
    /// The user name it authenticated as.
    pub(crate) name: String,
    /// Its uid, groups and administrator flag, as mutations carry them.
    pub(crate) caller: Caller,
    /// The built-in principal of nodes and control replicas.
    pub(crate) cluster: bool,
    /// The store's users version when the user was last looked up (not
    /// used for the built-in users, which cannot be removed).
    users_version: u64,
}

impl Principal {
    /// `permission_denied` unless an administrator.
    pub(crate) fn require_admin(&self, what: &str) -> Result<()> {
        if self.caller.admin {
            return Ok(());
        }
        Err(ControlError::PermissionDenied(format!(
            "{what} is the administrator's; {} is not one",
            self.name
        )))
    }

    /// `permission_denied` unless the nodes' and replicas' principal.
    pub(crate) fn require_cluster(&self, what: &str) -> Result<()> {
        if self.cluster {
            return Ok(());
        }
        Err(ControlError::PermissionDenied(format!(
            "{what} is for storage nodes and control replicas (user {}), not {}",
            auth::CLUSTER,
            self.name
        )))
    }
}

/// The protocol state of one connection.
#[derive(Default)]
pub(crate) struct Session {
    greeted: Cell<bool>,
    /// The challenge of the last hello, until an authenticate uses it.
    challenge: Cell<Option<[u8; CHALLENGE_LEN]>>,
    principal: RefCell<Option<Rc<Principal>>>,
}

impl Session {
    /// A successful hello: a fresh challenge (which replaces any earlier
    /// one; the principal, if any, stays).
    pub(crate) fn hello(&self) -> [u8; CHALLENGE_LEN] {
        let c: [u8; CHALLENGE_LEN] = rand::random();
        self.greeted.set(true);
        self.challenge.set(Some(c));
        c
    }

    /// `version_mismatch` until a hello succeeded.
    pub(crate) fn greeted(&self) -> Result<()> {
        if self.greeted.get() {
            return Ok(());
        }
        Err(ControlError::VersionMismatch(format!(
            "call hello({PROTOCOL_VERSION}) first: no protocol version is agreed on this connection"
        )))
    }

    /// Checks `proof` of `user` against the last challenge (used up either
    /// way) and makes `user` the connection's principal.
    pub(crate) fn authenticate(
        &self,
        state: &State,
        user: &str,
        proof: &[u8],
    ) -> Result<Rc<Principal>> {
        self.greeted()?;
        let challenge = self.challenge.take().ok_or_else(|| {
            ControlError::Unauthenticated(
                "no challenge to answer: call hello again, then authenticate".into(),
            )
        })?;
        let found = lookup(state, user)?;
        // An unknown user is checked against a key nobody has, so that
        // the answer and its timing are those of a wrong key.
        let (key, principal) = match found {
            Some((key, p)) => (key, Some(p)),
            None => (
                auth::derive_key(&rand::random::<[u8; 32]>(), user, &[]),
                None,
            ),
        };
        match principal {
            Some(p) if auth::verify(&key, &challenge, user, proof) => {
                let p = Rc::new(p);
                *self.principal.borrow_mut() = Some(p.clone());
                Ok(p)
            }
            _ => {
                tracing::warn!(user, "authentication failed");
                *self.principal.borrow_mut() = None;
                Err(ControlError::Unauthenticated(format!(
                    "authentication as {user:?} failed: unknown user or wrong key"
                )))
            }
        }
    }

    /// The connection's principal: `version_mismatch` before hello,
    /// `unauthenticated` without one or once its user was removed.
    pub(crate) fn principal(&self, state: &State) -> Result<Rc<Principal>> {
        self.greeted()?;
        let current = self.principal.borrow().clone();
        let p = current.ok_or_else(|| {
            ControlError::Unauthenticated(
                "this connection has not authenticated: answer hello's challenge with \
                 authenticate first"
                    .into(),
            )
        })?;
        if p.name == auth::ADMIN
            || p.name == auth::CLUSTER
            || p.users_version == state.store.users_version()
        {
            return Ok(p);
        }
        // Users changed since: look ours up again (the key cannot have
        // changed without a removal, which a new salt follows).
        match lookup(state, &p.name)? {
            Some((_, fresh)) => {
                let fresh = Rc::new(fresh);
                *self.principal.borrow_mut() = Some(fresh.clone());
                Ok(fresh)
            }
            None => {
                *self.principal.borrow_mut() = None;
                Err(ControlError::Unauthenticated(format!(
                    "user {} was removed",
                    p.name
                )))
            }
        }
    }
}

/// The key and principal of `user`, if it exists.
fn lookup(state: &State, user: &str) -> Result<Option<([u8; auth::KEY_LEN], Principal)>> {
    let principal = |caller, cluster, users_version| Principal {
        name: user.to_string(),
        caller,
        cluster,
        users_version,
    };
    let version = state.store.users_version();
    Ok(match user {
        auth::ADMIN | auth::CLUSTER => Some((
            auth::derive_key(&state.secret, user, &[]),
            principal(Caller::admin(), user == auth::CLUSTER, version),
        )),
        _ => state.store.user(user)?.map(|u| {
            let caller = Caller {
                uid: u.uid,
                gids: u.gids,
                admin: u.admin,
            };
            (
                auth::derive_key(&state.secret, user, &u.salt[..SALT_LEN]),
                principal(caller, false, version),
            )
        }),
    })
}
