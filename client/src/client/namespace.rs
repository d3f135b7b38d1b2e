//! The namespace calls of [`Client`]: paths, not descriptors (stat,
//! attributes, directories, unlink, rename, list), each sent again on a new
//! connection as its doc says.

use super::*;

impl Client {
    /// Attributes of the file or directory at `path` (an absolute path).
    /// Fails with [`Error::NotFound`] or [`Error::NotDirectory`] (a
    /// component is a file). Run again on a new connection if the control
    /// server went away or stopped leading.
    pub async fn stat(&self, path: &str) -> Result<Attr> {
        let stale = self.options.stale_reads;
        self.cluster
            .retry(|c| async move { c.stat_with(path, stale).await })
            .await
    }

    /// Sets the permission bits (`mode`, at most 0o7777) and/or the
    /// modification time (nanoseconds since the epoch) of the file or
    /// directory at `path` (`None`: unchanged) and returns its attributes.
    /// Sent again after a reconnect under the same request id, like
    /// [`Client::mkdir`] (applied at most once: the version moves by one).
    pub async fn set_attr(
        &self,
        path: &str,
        mode: Option<u32>,
        mtime_ns: Option<i64>,
    ) -> Result<Attr> {
        self.cluster
            .mutate(
                || format!("set attributes of {path}"),
                |c, id| async move { c.set_attr_as(Some(id), path, mode, mtime_ns).await },
            )
            .await
    }

    /// Changes the owner (`uid`: the administrator only) and/or the group
    /// (`gid`: the owner, to one of its groups, or the administrator) of
    /// the file or directory at `path` (`None`: unchanged); fails with
    /// [`Error::PermissionDenied`] otherwise. Sent again after a reconnect
    /// under the same request id, like [`Client::set_attr`].
    pub async fn chown(&self, path: &str, uid: Option<u32>, gid: Option<u32>) -> Result<Attr> {
        self.cluster
            .mutate(
                || format!("change the owner of {path}"),
                |c, id| async move { c.chown_as(Some(id), path, uid, gid).await },
            )
            .await
    }

    /// Creates the directory `path` with permission bits `mode` (0: 0o755)
    /// and returns its attributes. Its parent must exist:
    /// [`Error::NotFound`] otherwise, [`Error::Exists`] if `path` exists.
    /// Sent again after a reconnect under the same request id (applied at
    /// most once); [`Error::OutcomeUnknown`] if no control server answers
    /// again in time.
    pub async fn mkdir(&self, path: &str, mode: u32) -> Result<Attr> {
        self.cluster
            .mutate(
                || format!("mkdir {path}"),
                |c, id| async move { c.mkdir_as(Some(id), path, mode).await },
            )
            .await
    }

    /// Removes the empty directory `path`: [`Error::NotEmpty`] if it has
    /// entries, [`Error::NotDirectory`] if it is a file. Sent again after a
    /// reconnect like [`Client::mkdir`].
    pub async fn rmdir(&self, path: &str) -> Result<()> {
        self.cluster
            .mutate(
                || format!("rmdir {path}"),
                |c, id| async move { c.rmdir_as(Some(id), path).await },
            )
            .await
    }

    /// Removes the file `path`; the control server collects its chunks.
    /// Descriptors open on it fail from their next control call on
    /// ([`Error::StaleHandle`]). [`Error::IsDirectory`] for a directory.
    /// Sent again after a reconnect like [`Client::mkdir`].
    pub async fn unlink(&self, path: &str) -> Result<()> {
        self.cluster
            .mutate(
                || format!("unlink {path}"),
                |c, id| async move { c.unlink_as(Some(id), path).await },
            )
            .await
    }

    /// Moves `from` to `to` atomically, replacing a file or an empty
    /// directory at `to` (a file only by a file, a directory only by a
    /// directory). A directory cannot move inside itself
    /// ([`Error::InvalidArgument`]). Sent again after a reconnect like
    /// [`Client::mkdir`].
    pub async fn rename(&self, from: &str, to: &str) -> Result<()> {
        self.cluster
            .mutate(
                || format!("rename {from} to {to}"),
                |c, id| async move { c.rename_as(Some(id), from, to).await },
            )
            .await
    }

    /// Every entry of the directory `path`, in byte order of the names,
    /// with its attributes (fetched page by page: not one snapshot when the
    /// directory changes meanwhile). Run again like [`Client::stat`].
    pub async fn list(&self, path: &str) -> Result<Vec<(String, Attr)>> {
        let stale = self.options.stale_reads;
        self.cluster
            .retry(|c| async move { c.list_with(path, stale).await })
            .await
    }
}
