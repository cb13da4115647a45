//! Tasks tied to the value that owns them.

use tokio::task::{AbortHandle, JoinHandle};

/// Aborts its task when dropped: a task that serves one stream or one
/// connection ends with it instead of running on unseen.
#[derive(Debug)]
pub struct AbortOnDrop(AbortHandle);

impl AbortOnDrop {
    /// Spawns `task` on the current runtime, to live as long as the guard.
    pub fn spawn<F>(task: F) -> AbortOnDrop
    where
        F: Future<Output = ()> + Send + 'static,
    {
        AbortOnDrop::from(tokio::spawn(task))
    }
}

impl<T> From<JoinHandle<T>> for AbortOnDrop {
    fn from(handle: JoinHandle<T>) -> Self {
        AbortOnDrop(handle.abort_handle())
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dropping_the_guard_ends_the_task() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            // Holds tx until aborted.
            let _tx = tx;
            std::future::pending::<()>().await;
        });
        let guard = AbortOnDrop::from(handle);
        drop(guard);
        // The sender is dropped only when the task is gone.
        assert!(rx.await.is_err());
    }
}
