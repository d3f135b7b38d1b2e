//! The users the administrator registered (`users` table). The built-in
//! `admin` and `@cluster` are not stored: their keys derive from the
//! cluster secret alone.

use redb::{ReadTransaction, ReadableTable, WriteTransaction};

use super::tables::USERS;
use super::Outcome;
use crate::error::{ControlError, Result};
use crate::records::{User, MAX_GROUPS};

/// Longest user name, in bytes.
pub const MAX_NAME: usize = 64;
/// The first uid handed out when none is asked for.
pub const FIRST_UID: u32 = 1000;

/// Refuses a name that is not 1 to 64 of `[a-z0-9_.-]` starting with a
/// letter or `_`, or that names a built-in user.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b))
        && (name.as_bytes()[0].is_ascii_lowercase() || name.as_bytes()[0] == b'_');
    if !ok {
        return Err(ControlError::InvalidArgument(format!(
            "user name {name:?}: 1 to {MAX_NAME} of a-z 0-9 _ . -, starting with a letter or _"
        )));
    }
    if name == ringfs_ops::auth::ADMIN {
        return Err(ControlError::InvalidArgument(format!(
            "{name} is a built-in user"
        )));
    }
    Ok(())
}

fn decode(name: &str, bytes: &[u8]) -> Result<User> {
    User::decode(bytes).map_err(|e| ControlError::corrupt(format!("user {name}"), e.problem))
}

/// The user named `name`, if registered.
pub(super) fn get(txn: &ReadTransaction, name: &str) -> Result<Option<User>> {
    let table = txn.open_table(USERS)?;
    table
        .get(name)?
        .map(|v| decode(name, v.value()))
        .transpose()
}

/// Every registered user, by name.
pub(super) fn list(txn: &ReadTransaction) -> Result<Vec<(String, User)>> {
    let table = txn.open_table(USERS)?;
    let mut out = Vec::new();
    for item in table.iter()? {
        let (k, v) = item?;
        out.push((k.value().to_string(), decode(k.value(), v.value())?));
    }
    Ok(out)
}

pub(super) fn add(
    txn: &WriteTransaction,
    name: &str,
    uid: u32,
    gids: &[u32],
    admin: bool,
    salt: [u8; 16],
) -> Result<Outcome> {
    check_name(name)?;
    if gids.len() > MAX_GROUPS {
        return Err(ControlError::InvalidArgument(format!(
            "{} groups: at most {MAX_GROUPS}",
            gids.len()
        )));
    }
    let mut table = txn.open_table(USERS)?;
    if table.get(name)?.is_some() {
        return Err(ControlError::Exists(format!("user {name}")));
    }
    let mut used = std::collections::HashSet::new();
    for item in table.iter()? {
        let (k, v) = item?;
        used.insert(decode(k.value(), v.value())?.uid);
    }
    let uid = match uid {
        0 => (FIRST_UID..u32::MAX)
            .find(|u| !used.contains(u))
            .ok_or_else(|| ControlError::InvalidArgument("no free uid".into()))?,
        u if used.contains(&u) => {
            return Err(ControlError::Exists(format!("a user with uid {u}")));
        }
        u => u,
    };
    let user = User {
        uid,
        gids: if gids.is_empty() {
            vec![uid]
        } else {
            gids.to_vec()
        },
        admin,
        salt,
    };
    table.insert(name, user.encode().as_slice())?;
    Ok(Outcome::User(name.to_string(), user))
}

pub(super) fn remove(txn: &WriteTransaction, name: &str) -> Result<Outcome> {
    let mut table = txn.open_table(USERS)?;
    if table.remove(name)?.is_none() {
        return Err(ControlError::NotFound(format!("user {name}")));
    }
    Ok(Outcome::Done)
}
