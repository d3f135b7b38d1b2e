//! `ringfs mount` on a real local cluster, used by real programs through a
//! real FUSE mount: cp and cmp, tar and diff, sqlite3, fio with
//! verification, POSIX namespace semantics, close-to-open consistency
//! between two mounts, two mounts writing one file, a storage node killed
//! during a read, and the control leader killed under a mount given every
//! control replica's address.
//!
//! Needs /dev/fuse, fusermount3, fio, sqlite3, tar, diff and cmp. Without
//! them each test passes with a notice, unless `RINGFS_REQUIRE_FUSE=1`
//! (CI), where missing ones fail.

mod consistency;
mod faults;
mod kit;
mod lifecycle;
mod posix;
mod programs;
