//! Assembles the server from the configuration: database and migrations, the background
//! writer, listeners and their stored state, bots, the inbox workers, the retry record,
//! background upkeep ([`upkeep`]), the HTTP server on its socket ([`socket`]: bound, or passed
//! by systemd) and the metrics server. The [`RunningServer`] it
//! returns takes it down gracefully.

mod running;
mod socket;
mod upkeep;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use actix_web::{App, HttpServer, web};
use anyhow::Context as _;

use crate::config::Config;
use crate::db::Db;
use crate::db::storage::{Storage, StorageLimits};
use crate::db::writer::Writer;
use crate::guards::filters::Filters;
use crate::handlers::Context;
use crate::http::connections::{BusyConnections, ConnectionLimits};
use crate::http::{AppState, ForwarderState, InFlight, metrics_routes, observe, routes};
use crate::listeners::Registry;
use crate::processing::Processor;
use crate::processing::announce::Announcer;
use crate::processing::bots::Bots;
use crate::processing::inbox::{Admission, Inbox};
use crate::processing::outgoing::OutgoingService;
use crate::processing::tasks::TaskTracker;
use crate::telemetry::metric;
use crate::verification::{SigningKey, signing_keys};
use crate::zulip_api::ZulipClient;

pub use running::RunningServer;

/// Seconds within which a change to a listener made elsewhere (another server sharing the
/// database, the CLI) applies here: how often states are read back from the database.
pub const LISTENER_SYNC_SECONDS: u64 = 3;

#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// Listeners run but store nothing and cause no external side effects.
    pub dry_run: bool,
    /// `serve --listeners`: the forwarder listeners this process runs (`None`: all of
    /// them). PostgreSQL only; other processes sharing the database run the rest.
    pub listeners: Option<Vec<String>>,
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

/// Opens the database (running migrations), starts every component and the HTTP server.
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
    let connector = db.connector().clone();
    let batch_size = config.database.write_batch_size.get();
    let synchronous = config.database.sqlite_synchronous();
    let writers = config.database.writers();
    let storage = Arc::new(Storage::new(
        &config.database.url,
        StorageLimits::from_config(&config.database),
    ));
    let room = storage.clone();
    let (writer, writer_thread) = tokio::task::spawn_blocking(move || {
        Writer::spawn(&connector, batch_size, synchronous, writers, room)
    })
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
    for entry in registry.entries() {
        metric::listener_enabled(entry.name(), entry.enabled());
        metric::listener_enabled_in_file(entry.name(), entry.file_definition().enabled);
        metric::listener_circuit_open(entry.name(), false);
    }
    if forwarder.is_some() {
        // Counts from start-up, so that a forwarder silent since the start is noticed too
        // (set after the recorder is installed: before, the value would go nowhere).
        metric::forwarder_batch_accepted();
    }
    let upkeep = tokio::spawn(upkeep::upkeep(upkeep::Upkeep {
        outgoing: outgoing.clone(),
        inbox: inbox.clone(),
        registry: registry.clone(),
        db: db.clone(),
        storage: storage.clone(),
        housekeeping: config.rate_limits.housekeeping_interval,
        retention: config.retention.clone(),
        ready: ready.clone(),
    }));
    let admin = crate::http::AdminTokens::new(config.admin.named_tokens());
    if admin.is_off() {
        tracing::info!("no admin token configured: the admin API is off");
    }
    let coverage = inbox.coverage.clone();
    let state = web::Data::new(AppState {
        db: db.clone(),
        storage,
        coverage,
        outgoing,
        max_body_bytes: config.server.max_body_bytes,
        forwarder,
        registry,
        ready: ready.clone(),
        admin,
        body: crate::http::BodyRules::new(
            config.server.client_timeout,
            config.server.unverified_body_bytes,
            config.server.body_share(
                config
                    .server
                    .max_body_bytes
                    .max(config.forwarder.max_body_bytes),
            ),
        ),
        readiness: tokio::sync::Mutex::new(None),
        health_facts: tokio::sync::Mutex::new(None),
        dashboard: crate::http::Dashboard::new(
            config.admin.public_path.clone(),
            config.admin.trusted_proxies.clone(),
        ),
    });
    let (socket, origin) = socket::listener(config.server.bind)?;
    let addr = socket.local_addr()?;
    if origin == socket::Origin::Systemd {
        tracing::info!(%addr, "using the listening socket systemd passed (server.bind is not used)");
    }
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
    let limits = ConnectionLimits {
        workers,
        max_connections_per_worker: per_worker(config.server.max_connections.get(), workers),
        client_timeout: config.server.client_timeout,
        keep_alive: Duration::from_secs(5),
        disconnect_timeout: Duration::from_secs(1),
        shutdown_timeout_secs: shutdown_timeout,
    };
    let busy = BusyConnections::default();
    let server = crate::http::connections::serve(socket, limits, busy.clone(), move || {
        let counted = counted.clone();
        App::new()
            .app_data(state.clone())
            .wrap_fn(move |req, service| observe(req, service, &counted))
            .configure(routes)
    })?;
    let handle = server.handle();
    let task = tokio::spawn(server);
    let (metrics, metrics_addr) = if config.metrics.enabled {
        let socket = socket::bind_to(
            config.metrics.bind,
            "metrics.bind",
            "ZULIP_LISTENERS_METRICS__BIND",
        )?;
        let metrics_addr = socket.local_addr()?;
        let server = HttpServer::new(|| App::new().configure(metrics_routes))
            .disable_signals()
            .workers(1)
            .client_request_timeout(config.server.client_timeout)
            .keep_alive(Duration::from_secs(5))
            .max_connections(64)
            .shutdown_timeout(shutdown_timeout)
            .listen(socket)?
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
        busy,
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
            // Off in the configuration file is a choice (welcome_bot by default): not a warning.
            // Disabled through the database (an operator, or automatically) is worth one.
            let off_in_file = !entry.file_definition().enabled
                && row.overrides.is_none()
                && !entry.auto_disabled();
            if !entry.enabled() && !off_in_file {
                tracing::warn!(
                    listener = name,
                    reason = row.disabled_reason.as_deref().unwrap_or("none given"),
                    "listener is disabled (in the database; `zulip-listeners listeners enable {name}` turns it on)"
                );
            } else if !entry.enabled() {
                tracing::debug!(listener = name, "listener is off in the configuration");
            }
        }
        crate::telemetry::metric::listener_enabled(name, entry.enabled());
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
