//! A named thread running one future on a current-thread tokio runtime
//! with a `LocalSet`: the node's tokio parts (the control link, whose
//! capnp-rpc is single-threaded, and the monitoring endpoint) each live on
//! one, away from the shards' glommio executors.

use std::future::Future;

/// Starts thread `name` running the future `make` returns. `what` names
/// the part in the log line if its runtime cannot start.
pub fn spawn<F, Fut>(name: &str, what: &'static str, make: F) -> std::io::Result<()>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!("{what}: cannot start its runtime: {e}");
                    return;
                }
            };
            tokio::task::LocalSet::new().block_on(&rt, make());
        })
        .map(|_| ())
}
