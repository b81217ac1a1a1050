//! A started server and its graceful shutdown: serving until SIGTERM or SIGINT (SIGHUP
//! reopens the log file), then readiness off, sockets closed, requests in flight and
//! background listener runs finished, the inbox workers stopped and everything pending written.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;

use crate::db::Db;
use crate::db::writer::{Writer, WriterThread};
use crate::http::InFlight;
use crate::http::connections::BusyConnections;
use crate::processing::inbox::InboxTasks;
use crate::processing::tasks::TaskTracker;
use crate::telemetry::metric;

/// How long a stopping server waits, at least, for connections accepted just before it stopped
/// accepting to reach a worker (and be counted as busy).
const ACCEPTED_GRACE: Duration = Duration::from_millis(50);

/// A started server.
pub struct RunningServer {
    pub addr: SocketAddr,
    /// The metrics server's address, when metrics are on.
    pub metrics_addr: Option<SocketAddr>,
    pub db: Db,
    pub(super) server: actix_web::dev::ServerHandle,
    pub(super) task: tokio::task::JoinHandle<std::io::Result<()>>,
    pub(super) metrics: Option<(
        actix_web::dev::ServerHandle,
        tokio::task::JoinHandle<std::io::Result<()>>,
    )>,
    pub(super) ready: Arc<AtomicBool>,
    pub(super) in_flight: InFlight,
    /// Connections accepted and not answered yet, or mid-request.
    pub(super) busy: BusyConnections,
    pub(super) shutdown_timeout: Duration,
    pub(super) tasks: TaskTracker,
    pub(super) writer: Writer,
    pub(super) writer_thread: WriterThread,
    pub(super) upkeep: tokio::task::JoinHandle<()>,
    pub(super) inbox_tasks: InboxTasks,
}

impl RunningServer {
    /// Serves until SIGTERM or SIGINT, then shuts down gracefully. SIGHUP reopens the log
    /// file (`telemetry.file`).
    pub async fn run_until_signalled(
        self,
        log_file: Option<Arc<crate::telemetry::LogFile>>,
    ) -> anyhow::Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
        let mut hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
        loop {
            tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
                _ = int.recv() => { tracing::info!("SIGINT: shutting down"); break; }
                _ = hup.recv() => match &log_file {
                    Some(file) => match file.reopen() {
                        Ok(()) => tracing::info!("SIGHUP: log file reopened"),
                        Err(error) => eprintln!("SIGHUP: cannot reopen the log file: {error}"),
                    },
                    None => tracing::info!("SIGHUP: no log file to reopen"),
                },
            }
        }
        self.stop().await
    }

    /// Stops gracefully: readiness turns 503, the sockets stop accepting, requests in
    /// flight and the workers' current events finish, everything pending is written.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.ready.store(false, Ordering::Relaxed);
        metric::ready(false);
        // Stop accepting connections (with a socket from systemd, new ones wait in its accept
        // queue for the next process), then let the requests in flight finish, and those of
        // connections accepted but not answered yet (a fresh connection's request is on its way).
        self.server.pause().await;
        let paused = tokio::time::Instant::now();
        let deadline = paused + self.shutdown_timeout;
        while (self.in_flight.count() > 0
            || self.busy.count() > 0
            || paused.elapsed() < ACCEPTED_GRACE)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if self.in_flight.count() > 0 || self.busy.count() > 0 {
            tracing::warn!(
                requests = self.in_flight.count(),
                connections = self.busy.count(),
                "shutdown timeout: dropping requests still in flight"
            );
        }
        // Nothing is in flight any more: close idle keep-alive connections at once instead
        // of waiting for clients to hang up.
        self.server.stop(false).await;
        let served = self.task.await.context("the HTTP server task failed")?;
        if let Some((handle, task)) = self.metrics {
            handle.stop(false).await;
            let _ = task.await;
        }
        self.upkeep.abort();
        // Listener runs that go on after their HTTP answer, late replies and notifications
        // write their results through the writer: let them finish first.
        let left = self
            .tasks
            .wait(remaining(deadline).max(Duration::from_secs(1)))
            .await;
        if left > 0 {
            tracing::warn!(
                tasks = left,
                "shutdown timeout: background handler runs did not finish; their results are not written"
            );
        }
        self.inbox_tasks.stop().await;
        self.writer.stop().await;
        let thread = self.writer_thread;
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .context("joining the database writer")?;
        served.context("the HTTP server failed")?;
        tracing::info!("stopped; everything pending was written");
        Ok(())
    }

    /// Waits until everything queued for the database so far is written.
    pub async fn flush(&self) {
        self.writer.flush().await;
    }
}

/// Time left until `deadline`.
fn remaining(deadline: tokio::time::Instant) -> Duration {
    deadline.saturating_duration_since(tokio::time::Instant::now())
}
