//! Background tasks whose results must be written before the server stops: listener runs of
//! the outgoing path that go on after the HTTP answer, late replies, and notifications about
//! listener health. Shutdown waits for them (within `server.shutdown_timeout`) before the
//! database writer stops.
//!
//! The tasks run on the runtime the tracker was made on (the main one), not on the HTTP
//! worker that answered: actix stops its workers, and drops every task spawned on them, as
//! soon as the listener stops. [`TaskTracker::run_or_spawn`] first polls a task on the
//! calling thread, in the main runtime's context, and spawns it only if it has to wait.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::FutureExt;
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

    /// Runs `task` on the calling thread until it first has to wait, inside the tracker's
    /// runtime (so that whatever it spawns, times or connects belongs to that runtime), and
    /// returns its output if it finished. If it did not, the rest of it, and then `then` with
    /// its output, run as a task counted like [`TaskTracker::spawn`]. A task that finishes at
    /// once (a listener whose handler only computes its reply) costs no hand-over between threads.
    pub fn run_or_spawn<F, C, G>(&self, task: F, then: C) -> Option<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
        C: FnOnce(F::Output) -> G + Send + 'static,
        G: Future<Output = ()> + Send + 'static,
    {
        let mut task = Box::pin(task);
        let output = {
            let _context = self.runtime.as_ref().map(|runtime| runtime.enter());
            (&mut task).now_or_never()
        };
        if output.is_none() {
            self.spawn(async move { then(task.await).await });
        }
        output
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

    #[tokio::test]
    async fn a_task_that_finishes_at_once_is_not_spawned() {
        let tracker = TaskTracker::new();
        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        let output = tracker.run_or_spawn(async { 7 }, move |n| async move {
            let _ = tx.send(n);
        });
        assert_eq!(output, Some(7), "finished on this thread");
        assert_eq!(tracker.running(), 0);
        drop(rx); // `then` is for a task that had to wait

        let (go, wait) = tokio::sync::oneshot::channel::<()>();
        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        let task = async move {
            let _ = wait.await;
            8
        };
        let output = tracker.run_or_spawn(task, move |n| async move {
            let _ = tx.send(n);
        });
        assert_eq!(output, None);
        assert_eq!(
            tracker.running(),
            1,
            "the waiting rest runs as a counted task"
        );
        let _ = go.send(());
        assert_eq!(rx.await, Ok(8), "and hands its output to `then`");
        assert_eq!(tracker.wait(Duration::from_secs(5)).await, 0);
    }
}
