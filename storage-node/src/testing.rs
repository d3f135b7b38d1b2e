//! Helpers of this crate's unit tests.

/// Runs `f` on a fresh glommio executor (I/O memory kept small: tests run
/// many executors side by side under the locked-memory limit).
pub(crate) fn on_glommio<F, Fut, T>(f: F) -> T
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T> + 'static,
    T: Send + 'static,
{
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(256 * 1024)
        .spawn(f)
        .expect("starting a glommio executor")
        .join()
        .expect("the test's executor panicked")
}
