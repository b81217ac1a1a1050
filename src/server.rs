//! Assembles the server from the configuration: database and migrations, the background
//! writer, handlers, bots, the retry record, background upkeep, and the HTTP listener.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use actix_web::{App, HttpServer, web};
use anyhow::Context as _;

use crate::config::Config;
use crate::db::writer::{Writer, WriterThread};
use crate::db::{Db, store};
use crate::filters::Filters;
use crate::handlers::{Context, Registry};
use crate::http::{AppState, ForwarderState, routes};
use crate::processing::Processor;
use crate::processing::inbox::{Admission, Inbox, InboxTasks};
use crate::processing::outgoing::{Bots, OutgoingService};
use crate::verification::SigningKey;
use crate::zulip_api::ZulipClient;

/// How often expired retry records are pruned.
const PRUNE_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, Default)]
pub struct ServeOptions {
    /// Handlers run but store nothing and cause no external side effects.
    pub dry_run: bool,
}

/// A started server.
pub struct RunningServer {
    pub addr: SocketAddr,
    pub db: Db,
    server: actix_web::dev::ServerHandle,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    writer: Writer,
    writer_thread: WriterThread,
    upkeep: tokio::task::JoinHandle<()>,
    inbox_tasks: InboxTasks,
}

impl RunningServer {
    /// Waits until the server stops (SIGTERM / SIGINT), then writes out everything pending.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.finish_after(None).await
    }

    /// Stops the server gracefully and writes out everything pending.
    pub async fn stop(self) -> anyhow::Result<()> {
        let handle = self.server.clone();
        self.finish_after(Some(handle)).await
    }

    async fn finish_after(self, stop: Option<actix_web::dev::ServerHandle>) -> anyhow::Result<()> {
        if let Some(handle) = stop {
            handle.stop(true).await;
        }
        let served = self.task.await.context("the HTTP server task failed")?;
        self.upkeep.abort();
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

/// Opens the database (running migrations), starts every component and the HTTP listener.
pub async fn start(config: Config, options: ServeOptions) -> anyhow::Result<RunningServer> {
    crate::telemetry::configure_scrubbing(&config.data_protection);
    let database = config.database.clone();
    let (db, applied) = tokio::task::spawn_blocking(move || Db::open(&database))
        .await
        .context("opening the database")??;
    for migration in &applied {
        tracing::info!(migration, "applied migration");
    }
    let target = db.target().clone();
    let batch_size = config.database.write_batch_size;
    let (writer, writer_thread) =
        tokio::task::spawn_blocking(move || Writer::spawn(&target, batch_size))
            .await
            .context("starting the database writer")??;

    let registry = Arc::new(Registry::build(&config)?);
    let listener_rows: Vec<(&'static str, String)> = registry
        .entries()
        .iter()
        .map(|e| {
            let settings = serde_json::Value::Object(e.settings.settings.clone()).to_string();
            (e.handler.name(), settings)
        })
        .collect();
    db.run(move |c| store::sync_listeners(c, &listener_rows))
        .await
        .context("recording the handlers")?;

    let cx = Arc::new(Context {
        db: db.clone(),
        dry_run: options.dry_run,
        data_protection: config.data_protection.clone(),
        registry: registry.clone(),
    });
    let processor = Processor::new(cx, writer.clone());
    let filters = Arc::new(Filters::new(&config.filters));
    let (inbox, inbox_tasks) = Inbox::start(
        processor.clone(),
        db.clone(),
        registry.ids(&config.forwarder.handlers),
        Admission::new(&config, filters.clone()),
        config.forwarder.clone(),
    )
    .await
    .context("starting the inbox workers")?;
    let forwarder = forwarder_state(&config, inbox.clone())?;
    let bots = Bots::build(&config, &registry);
    if bots.is_empty() {
        tracing::warn!(
            "no bots are configured: outgoing webhooks will be answered 404 (see [bots.<name>] in config/default.toml)"
        );
    }
    let zulip = ZulipClient::new().context("building the HTTP client for Zulip's API")?;
    let outgoing = Arc::new(OutgoingService::new(
        &config,
        bots,
        processor,
        db.clone(),
        zulip,
        filters,
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

    let upkeep = tokio::spawn(upkeep(
        outgoing.clone(),
        inbox.clone(),
        config.rate_limits.housekeeping_interval,
    ));
    let state = web::Data::new(AppState {
        outgoing,
        max_body_bytes: config.server.max_body_bytes,
        forwarder,
    });
    let listener = TcpListener::bind(&config.server.bind)
        .with_context(|| format!("cannot listen on {} (server.bind)", config.server.bind))?;
    let addr = listener.local_addr()?;
    let mut http = HttpServer::new(move || App::new().app_data(state.clone()).configure(routes))
        .shutdown_timeout(config.server.shutdown_timeout.as_secs().max(1))
        .listen(listener)?;
    if config.server.workers > 0 {
        http = http.workers(config.server.workers);
    }
    let server = http.run();
    let handle = server.handle();
    let task = tokio::spawn(server);
    tracing::info!(%addr, backend = db.backend().name(), "listening");
    Ok(RunningServer {
        addr,
        db,
        server: handle,
        task,
        writer,
        writer_thread,
        upkeep,
        inbox_tasks,
    })
}

fn forwarder_state(config: &Config, inbox: Arc<Inbox>) -> anyhow::Result<Option<ForwarderState>> {
    let f = &config.forwarder;
    if f.secrets.is_empty() {
        tracing::info!("no forwarder secret configured: POST /zulip/events is off");
        return Ok(None);
    }
    let keys = f
        .secrets
        .iter()
        .map(|s| SigningKey::parse(s.expose()))
        .collect::<Result<Vec<_>, _>>()
        .context("forwarder.secrets")?;
    Ok(Some(ForwarderState {
        inbox,
        keys,
        tolerance_secs: i64::try_from(f.tolerance.as_secs()).unwrap_or(i64::MAX),
        max_body_bytes: f.max_body_bytes,
        max_batch_events: f.max_batch_events,
    }))
}

/// Periodic upkeep: pruning the retry record, and forgetting idle rate-limit keys.
async fn upkeep(outgoing: Arc<OutgoingService>, inbox: Arc<Inbox>, housekeeping: Duration) {
    let mut prune = tokio::time::interval(PRUNE_INTERVAL);
    let mut limits = tokio::time::interval(housekeeping);
    prune.tick().await;
    limits.tick().await;
    loop {
        tokio::select! {
            _ = prune.tick() => match outgoing.prune_record().await {
                Ok(0) => {}
                Ok(pruned) => tracing::debug!(pruned, "expired retry records removed"),
                Err(error) => tracing::warn!(%error, "pruning the retry record failed"),
            },
            _ = limits.tick() => {
                let outgoing_keys = outgoing.bots.limiter_housekeeping();
                let forwarder_keys = inbox.limiter_housekeeping();
                tracing::info!(outgoing_keys, forwarder_keys, "rate limiter keys tracked");
            }
        }
    }
}
