//! Background tasks whose results must be written before the server stops: handler runs of
//! the outgoing path that go on after the HTTP answer, late replies, and notifications about
//! handler health. Shutdown waits for them (within `server.shutdown_timeout`) before the
//! database writer stops.
//!
//! The tasks run on the runtime the tracker was made on (the main one), not on the HTTP
//! worker that answered: actix stops its workers, and drops every task spawned on them, as
//! soon as the listener stops.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

/// Counts running tasks; cheap to clone.
#[derive(Clone, Default)]
pub struct TaskTracker {
    inner: Arc<Inner>,
    runtime: Option<tokio::runtime::Handle>,
}

#[derive(Default)]
struct Inner {
    running: AtomicUsize,
    idle: Notify,
}

/// Counts a task until dropped (when it ends, panics or is cancelled).
struct Running(Arc<Inner>);

impl Drop for Running {
    fn drop(&mut self) {
        if self.0.running.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl TaskTracker {
    /// A tracker whose tasks run on the current runtime (the calling thread's).
    pub fn new() -> Self {
        TaskTracker {
            inner: Arc::default(),
            runtime: tokio::runtime::Handle::try_current().ok(),
        }
    }

    /// Spawns `task` on the tracker's runtime, counted until it ends.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.inner.running.fetch_add(1, Ordering::AcqRel);
        let guard = Running(self.inner.clone());
        let task = async move {
            task.await;
            drop(guard);
        };
        match &self.runtime {
            Some(runtime) => drop(runtime.spawn(task)),
            None => drop(tokio::spawn(task)),
        }
    }

    /// Tasks still running.
    pub fn running(&self) -> usize {
        self.inner.running.load(Ordering::Acquire)
    }

    /// Waits until no task runs or `limit` has passed; returns the tasks still running.
    pub async fn wait(&self, limit: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let idle = self.inner.idle.notified();
            let running = self.running();
            if running == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return self.running();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_for_tasks_and_gives_up_at_the_limit() {
        let tracker = TaskTracker::new();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tracker.spawn(async move {
            let _ = rx.await;
        });
        tracker.spawn(async {
            tokio::time::sleep(Duration::from_millis(10)).await;
        });
        assert_eq!(tracker.wait(Duration::from_millis(100)).await, 1);
        let _ = tx.send(());
        assert_eq!(tracker.wait(Duration::from_secs(5)).await, 0);
    }
}
