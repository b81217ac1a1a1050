//! Assembles the server from the configuration — database and migrations, the background
//! writer, handlers, bots, the retry record, background upkeep, the HTTP and metrics
//! listeners — and takes it down gracefully: readiness off, listeners stop accepting,
//! requests in flight and the workers' current events finish, everything pending is written.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use actix_web::{App, HttpServer, web};
use anyhow::Context as _;

use crate::clock::{millis, now_ms};
use crate::config::Config;
use crate::db::tables::inbox::InboxStatus;
use crate::db::writer::{Writer, WriterThread};
use crate::db::{Db, retention, tables};
use crate::filters::Filters;
use crate::handlers::Context;
use crate::http::listener::ListenerLimits;
use crate::http::{AppState, ForwarderState, InFlight, metrics_routes, observe, routes};
use crate::listeners::Registry;
use crate::processing::Processor;
use crate::processing::announce::Announcer;
use crate::processing::bots::Bots;
use crate::processing::inbox::{Admission, Inbox, InboxTasks};
use crate::processing::outgoing::OutgoingService;
use crate::processing::tasks::TaskTracker;
use crate::telemetry::metric;
use crate::verification::{SigningKey, signing_keys};
use crate::zulip_api::ZulipClient;

/// How often expired retry records are pruned.
const PRUNE_INTERVAL: Duration = Duration::from_secs(60);
/// How often gauges are refreshed.
const GAUGE_INTERVAL: Duration = Duration::from_secs(10);
/// How often listener states and runtime changes are read back from the database, so that a
/// change made through another server or the CLI applies here within this time.
const LISTENER_SYNC_INTERVAL: Duration = Duration::from_secs(LISTENER_SYNC_SECONDS);
pub const LISTENER_SYNC_SECONDS: u64 = 3;

#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// Handlers run but store nothing and cause no external side effects.
    pub dry_run: bool,
    /// `serve --listeners`: the forwarder listeners this process runs (`None`: all of
    /// them). PostgreSQL only; other processes sharing the database run the rest.
    pub listeners: Option<Vec<String>>,
}

/// A started server.
pub struct RunningServer {
    pub addr: SocketAddr,
    /// The metrics listener's address, when metrics are on.
    pub metrics_addr: Option<SocketAddr>,
    pub db: Db,
    server: actix_web::dev::ServerHandle,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    metrics: Option<(
        actix_web::dev::ServerHandle,
        tokio::task::JoinHandle<std::io::Result<()>>,
    )>,
    ready: Arc<AtomicBool>,
    in_flight: InFlight,
    shutdown_timeout: Duration,
    tasks: TaskTracker,
    writer: Writer,
    writer_thread: WriterThread,
    upkeep: tokio::task::JoinHandle<()>,
    inbox_tasks: InboxTasks,
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

    /// Stops gracefully: readiness turns 503, the listeners stop accepting, requests in
    /// flight and the workers' current events finish, everything pending is written.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.ready.store(false, Ordering::Relaxed);
        metric::ready(false);
        // Stop accepting connections, then let the requests in flight finish.
        self.server.pause().await;
        let deadline = tokio::time::Instant::now() + self.shutdown_timeout;
        while self.in_flight.count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if self.in_flight.count() > 0 {
            tracing::warn!(
                requests = self.in_flight.count(),
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
        // Handler runs that go on after their HTTP answer, late replies and notifications
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

/// The forwarder listeners this process runs (`serve --listeners`), checked: each must be a
/// forwarder listener, and the database PostgreSQL (on SQLite one server owns the database
/// and releases every claim at start-up, so listeners left out would never run).
fn own_listeners(
    config: &Config,
    registry: &Registry,
    backend: crate::db::Backend,
    listeners: Option<&[String]>,
) -> anyhow::Result<Option<Vec<crate::listeners::ListenerId>>> {
    let Some(listeners) = listeners else {
        return Ok(None);
    };
    let forwarder_listeners = config.forwarder.listener_names();
    let forwarder = forwarder_listeners.join(", ");
    if listeners.is_empty() {
        anyhow::bail!("--listeners is empty; name one or more of: {forwarder}");
    }
    let mut ids = Vec::with_capacity(listeners.len());
    for name in listeners {
        let id = registry
            .id(name)
            .filter(|_| forwarder_listeners.contains(name));
        match id {
            Some(id) if !ids.contains(&id) => ids.push(id),
            Some(_) => {}
            None => anyhow::bail!(
                "--listeners: `{name}` is not a forwarder listener (known: {}; [forwarder] listeners: {forwarder})",
                crate::handlers::known().collect::<Vec<_>>().join(", ")
            ),
        }
    }
    if backend == crate::db::Backend::Sqlite {
        anyhow::bail!(
            "--listeners needs PostgreSQL: on SQLite one server owns the database and runs every listener (listeners left out would never run); drop --listeners, or move to PostgreSQL to split listeners across processes"
        );
    }
    // Ids in configuration order, the order listeners run in.
    let mut ordered = registry.ids(&forwarder_listeners);
    ordered.retain(|id| ids.contains(id));
    Ok(Some(ordered))
}

/// Time left until `deadline`.
fn remaining(deadline: tokio::time::Instant) -> Duration {
    deadline.saturating_duration_since(tokio::time::Instant::now())
}

/// Opens the database (running migrations), starts every component and the HTTP listener.
pub async fn start(config: Config, options: ServeOptions) -> anyhow::Result<RunningServer> {
    crate::telemetry::configure_scrubbing(&config.data_protection);
    let keys = signing_keys(&config.forwarder.secrets)?;
    let database = config.database.clone();
    let memory = config.server.memory(config.database.pool_size);
    let (db, applied) = tokio::task::spawn_blocking(move || Db::open(&database, memory))
        .await
        .context("opening the database")??;
    for migration in &applied {
        tracing::info!(migration, "applied migration");
    }
    let target = db.target().clone();
    let batch_size = config.database.write_batch_size.get();
    let synchronous = config.database.sqlite_synchronous();
    let (writer, writer_thread) =
        tokio::task::spawn_blocking(move || Writer::spawn(&target, batch_size, synchronous))
            .await
            .context("starting the database writer")??;

    let registry = Arc::new(Registry::build(&config)?);
    let listener_rows = registry.listener_rows();
    let persisted = db
        .run(move |c| crate::db::tables::listeners::sync(c, &listener_rows))
        .await
        .context("recording the listeners")?;
    apply_persisted_state(&registry, &persisted);

    let cx = Arc::new(Context {
        db: db.clone(),
        dry_run: options.dry_run,
        data_protection: config.data_protection.clone(),
    });
    let zulip = ZulipClient::new().context("building the HTTP client for Zulip's API")?;
    let tasks = TaskTracker::new();
    let announcer = Arc::new(
        Announcer::new(
            &config,
            db.clone(),
            registry.clone(),
            zulip.clone(),
            tasks.clone(),
        )
        .context("building the HTTP client for notifications")?,
    );
    let processor = Processor::new(
        cx,
        registry.clone(),
        writer.clone(),
        announcer,
        tasks.clone(),
    );
    let filters = Arc::new(Filters::new(&config.filters));
    let mine = own_listeners(
        &config,
        &registry,
        db.backend(),
        options.listeners.as_deref(),
    )?;
    let (inbox, inbox_tasks) = Inbox::start(
        processor.clone(),
        db.clone(),
        registry.ids(&config.forwarder.listener_names()),
        mine,
        Admission::new(&config, filters.clone()),
        config.forwarder.clone(),
    )
    .await
    .context("starting the inbox workers")?;
    let forwarder = forwarder_state(&config, keys, inbox.clone());
    if forwarder.is_some() {
        // Counts from start-up, so that a forwarder that never sends is noticed too.
        metric::forwarder_batch_accepted();
    }
    let bots = Bots::build(&config, &registry, &filters);
    if bots.is_empty() {
        tracing::warn!(
            "no bots are configured: outgoing webhooks will be answered 404 (see [bots.<name>] in config/default.toml)"
        );
    }
    let outgoing = Arc::new(OutgoingService::new(
        &config,
        bots,
        processor,
        db.clone(),
        zulip,
        options.dry_run,
    ));
    let loaded = outgoing
        .load_record()
        .await
        .context("loading the retry record")?;
    tracing::info!(loaded, "retry record loaded");
    if options.dry_run {
        tracing::warn!(
            "dry run: handlers run, but nothing is stored except the event log, no reply is posted and no external call is made"
        );
    }

    let ready = Arc::new(AtomicBool::new(false));
    // The recorder first, so that the series registered below are kept (a metric recorded
    // before it is installed goes nowhere).
    if config.metrics.enabled {
        crate::telemetry::prometheus();
    }
    metric::initialise(
        &registry
            .entries()
            .iter()
            .map(|e| e.name())
            .collect::<Vec<_>>(),
    );
    let upkeep = tokio::spawn(upkeep(Upkeep {
        outgoing: outgoing.clone(),
        inbox: inbox.clone(),
        registry: registry.clone(),
        db: db.clone(),
        housekeeping: config.rate_limits.housekeeping_interval,
        retention: config.retention.clone(),
        ready: ready.clone(),
    }));
    let admin_token = (!config.admin.token.is_empty()).then(|| config.admin.token.clone());
    if admin_token.is_none() {
        tracing::info!("no admin token configured: the admin API is off");
    }
    let coverage = inbox.coverage.clone();
    let state = web::Data::new(AppState {
        coverage,
        outgoing,
        max_body_bytes: config.server.max_body_bytes,
        forwarder,
        registry,
        ready: ready.clone(),
        admin_token,
        body: crate::http::BodyRules::new(
            config.server.client_timeout,
            config.server.unverified_body_bytes,
        ),
        readiness: tokio::sync::Mutex::new(None),
        health_facts: tokio::sync::Mutex::new(None),
        dashboard: crate::http::Dashboard::new(config.admin.public_path.clone()),
    });
    let listener = TcpListener::bind(config.server.bind)
        .with_context(|| format!("cannot listen on {} (server.bind)", config.server.bind))?;
    let addr = listener.local_addr()?;
    let shutdown_timeout = config.server.shutdown_timeout.as_secs().max(1);
    let in_flight = InFlight::default();
    let counted = in_flight.clone();
    let workers = match config.server.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    // Every request head must arrive within client_timeout (the first of a connection gets a
    // 408, later ones a closed connection), and a body has its own deadline (`http::body`).
    // Idle keep-alive connections close after 5 s, and a client that does not close after
    // our answer gets 1 s.
    let limits = ListenerLimits {
        workers,
        max_connections_per_worker: per_worker(config.server.max_connections.get(), workers),
        client_timeout: config.server.client_timeout,
        keep_alive: Duration::from_secs(5),
        disconnect_timeout: Duration::from_secs(1),
        shutdown_timeout_secs: shutdown_timeout,
    };
    let server = crate::http::listener::serve(listener, limits, move || {
        let counted = counted.clone();
        App::new()
            .app_data(state.clone())
            .wrap_fn(move |req, service| observe(req, service, &counted))
            .configure(routes)
    })?;
    let handle = server.handle();
    let task = tokio::spawn(server);
    let (metrics, metrics_addr) = if config.metrics.enabled {
        let listener = TcpListener::bind(config.metrics.bind)
            .with_context(|| format!("cannot listen on {} (metrics.bind)", config.metrics.bind))?;
        let metrics_addr = listener.local_addr()?;
        let server = HttpServer::new(|| App::new().configure(metrics_routes))
            .disable_signals()
            .workers(1)
            .client_request_timeout(config.server.client_timeout)
            .keep_alive(Duration::from_secs(5))
            .max_connections(64)
            .shutdown_timeout(shutdown_timeout)
            .listen(listener)?
            .run();
        let metrics_handle = server.handle();
        tracing::info!(addr = %metrics_addr, "metrics listening");
        (
            Some((metrics_handle, tokio::spawn(server))),
            Some(metrics_addr),
        )
    } else {
        (None, None)
    };
    ready.store(true, Ordering::Relaxed);
    metric::ready(true);
    tracing::info!(%addr, backend = db.backend().name(), "listening");
    Ok(RunningServer {
        addr,
        metrics_addr,
        db,
        server: handle,
        task,
        metrics,
        ready,
        in_flight,
        shutdown_timeout: config.server.shutdown_timeout,
        tasks,
        writer,
        writer_thread,
        upkeep,
        inbox_tasks,
    })
}

/// `server.max_connections` is for the whole server; actix counts per worker.
fn per_worker(max_connections: usize, workers: usize) -> usize {
    (max_connections / workers.max(1)).max(1)
}

/// Runtime changes stored in the database win over the file; listeners disabled there (by an
/// operator, or automatically) stay disabled.
fn apply_persisted_state(registry: &Registry, rows: &[crate::db::tables::listeners::ListenerRow]) {
    for entry in registry.entries() {
        let name = entry.name();
        if let Some(row) = rows.iter().find(|r| r.name == name) {
            registry.apply_row(row);
            if row.overrides.is_some() {
                tracing::info!(listener = name, "runtime changes from the database apply");
            }
            if !entry.enabled() {
                tracing::warn!(listener = name, reason = ?row.disabled_reason, "listener is disabled");
            }
        }
        crate::telemetry::metric::handler_enabled(name, entry.enabled());
    }
}

fn forwarder_state(
    config: &Config,
    keys: Vec<SigningKey>,
    inbox: Arc<Inbox>,
) -> Option<ForwarderState> {
    let f = &config.forwarder;
    if keys.is_empty() {
        tracing::info!("no forwarder secret configured: POST /zulip/events is off");
        return None;
    }
    Some(ForwarderState {
        inbox,
        keys,
        tolerance_secs: i64::try_from(f.tolerance.as_secs()).unwrap_or(i64::MAX),
        max_body_bytes: f.max_body_bytes,
        max_batch_events: f.max_batch_events,
    })
}

struct Upkeep {
    outgoing: Arc<OutgoingService>,
    inbox: Arc<Inbox>,
    registry: Arc<Registry>,
    db: Db,
    housekeeping: Duration,
    retention: crate::config::RetentionConfig,
    /// Taking traffic (false before start-up completes and once shutdown begins).
    ready: Arc<AtomicBool>,
}

/// How often the retention pass runs.
const RETENTION_INTERVAL: Duration = Duration::from_secs(24 * 3600);

/// Periodic upkeep: pruning the retry record, forgetting idle rate-limit keys, refreshing
/// gauges, and reading handler states back from the database.
async fn upkeep(u: Upkeep) {
    let mut prune = tokio::time::interval(PRUNE_INTERVAL);
    let mut limits = tokio::time::interval(u.housekeeping);
    let mut gauges = tokio::time::interval(GAUGE_INTERVAL);
    let mut listeners = tokio::time::interval(LISTENER_SYNC_INTERVAL);
    let mut aggregate = tokio::time::interval(u.retention.aggregation_interval);
    let mut retention = tokio::time::interval(RETENTION_INTERVAL);
    prune.tick().await;
    limits.tick().await;
    loop {
        tokio::select! {
            _ = prune.tick() => match u.outgoing.prune_record().await {
                Ok(0) => {}
                Ok(pruned) => tracing::debug!(pruned, "expired retry records removed"),
                Err(error) => tracing::warn!(%error, "pruning the retry record failed"),
            },
            _ = limits.tick() => {
                let outgoing_keys = u.outgoing.bots.limiter_housekeeping();
                let forwarder_keys = u.inbox.limiter_housekeeping();
                let listener_keys = u.registry.limiter_housekeeping();
                metric::rate_limiter_keys("listeners", listener_keys);
                metric::rate_limiter_keys("outgoing", outgoing_keys);
                metric::rate_limiter_keys("forwarder", forwarder_keys);
                tracing::info!(outgoing_keys, forwarder_keys, "rate limiter keys tracked");
            }
            _ = gauges.tick() => refresh(&u).await,
            _ = listeners.tick() => sync_listeners(&u).await,
            _ = aggregate.tick() => {
                let interval = millis(u.retention.aggregation_interval);
                match u.db.run(move |c| tables::listener_stats::aggregate_stats(c, interval, now_ms())).await {
                    Ok(rows) => tracing::debug!(rows, "statistics aggregated"),
                    Err(error) => tracing::warn!(%error, "aggregating statistics failed"),
                }
            }
            _ = retention.tick() => {
                let cutoffs = retention::PersonalCutoffs::from_config(&u.retention, now_ms());
                let batch = u.retention.batch_size;
                match u.db.run(move |c| retention::expire_personal_data(c, &cutoffs, batch, &mut |_, _| {})).await {
                    Ok(report) => tracing::info!(changed = report.total(), ?report, "personal-data retention pass done"),
                    Err(error) => tracing::warn!(%error, "personal-data retention pass failed"),
                }
                if u.retention.retention_days > 0 {
                    let before = now_ms() - i64::from(u.retention.retention_days) * 86_400_000;
                    let batch = u.retention.batch_size;
                    match u.db.run(move |c| retention::cleanup(c, before, batch, &mut |_, _| {})).await {
                        Ok(report) => tracing::info!(deleted = report.total(), ?report, "retention pass done"),
                        Err(error) => tracing::warn!(%error, "retention pass failed"),
                    }
                }
            }
        }
    }
}

/// Reads listener states and runtime changes back from the database (made through another
/// server sharing it, the CLI, or the breaker elsewhere) and applies what changed.
async fn sync_listeners(u: &Upkeep) {
    match u.db.run(crate::db::tables::listeners::rows).await {
        Ok(rows) => {
            for row in &rows {
                if u.registry.apply_row(row) {
                    tracing::info!(
                        listener = row.name,
                        enabled = u.registry.by_name(&row.name).is_some_and(|e| e.enabled()),
                        "listener state read from the database"
                    );
                }
            }
            for entry in u.registry.entries() {
                metric::handler_enabled(entry.name(), entry.enabled());
            }
        }
        Err(error) => tracing::warn!(%error, "reading listener states failed"),
    }
}

async fn refresh(u: &Upkeep) {
    crate::telemetry::process::refresh();
    if let Some(handle) = crate::telemetry::prometheus() {
        handle.run_upkeep();
    }
    u.inbox.refresh_gauges();
    let (in_use, idle) = u.db.pool_state();
    metric::db_pool(in_use, idle);
    metric::memory(u.db.memory(), u.db.backend());
    match u
        .db
        .run(|c| {
            Ok((
                tables::inbox::inbox_counts(c)?,
                tables::inbox::oldest_pending_by_type(c)?,
                tables::inbox_work::parked_by_listener(c)?,
            ))
        })
        .await
    {
        Ok((counts, oldest, parked)) => {
            metric::ready(u.ready.load(Ordering::Relaxed));
            let now = now_ms();
            let age = |at: Option<i64>| at.map_or(0.0, |ms| (now - ms).max(0) as f64 / 1000.0);
            metric::inbox_lag(age(oldest.iter().map(|(_, at)| *at).min()));
            // Per forwarder listener: the oldest pending event of a type it takes.
            for &id in u.inbox.listeners() {
                if let Some(entry) = u.registry.get(id) {
                    let live = entry.live();
                    let at = oldest
                        .iter()
                        .filter(|(t, _)| live.wants_type(t))
                        .map(|(_, at)| *at)
                        .min();
                    metric::listener_lag(entry.name(), age(at));
                }
            }
            for entry in u.registry.entries() {
                let name = entry.name();
                let n = parked
                    .iter()
                    .find(|(h, _)| h == name)
                    .map_or(0, |(_, n)| *n);
                metric::inbox_parked(name, n);
            }
            for &status in InboxStatus::ALL {
                let n = counts
                    .iter()
                    .find(|(s, _)| *s == status)
                    .map_or(0, |(_, n)| *n);
                metric::inbox_events(status.as_str(), n);
            }
        }
        Err(error) => {
            // The database did not answer: /readyz says 503 too.
            metric::ready(false);
            tracing::warn!(%error, "refreshing gauges failed");
        }
    }
}
