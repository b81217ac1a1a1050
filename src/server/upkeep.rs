//! The server's periodic background work while it runs: pruning the retry record, forgetting
//! idle rate-limit keys, refreshing gauges, reading listener states back from the database,
//! aggregating statistics, and the daily retention passes (with the expiry of dead letters).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::LISTENER_SYNC_SECONDS;
use crate::clock::{millis, now_ms};
use crate::db::tables::inbox::InboxStatus;
use crate::db::{Db, retention, tables};
use crate::listeners::Registry;
use crate::processing::dead_letters;
use crate::processing::inbox::Inbox;
use crate::processing::outgoing::OutgoingService;
use crate::telemetry::metric;

/// How often expired retry records are pruned.
const PRUNE_INTERVAL: Duration = Duration::from_secs(60);
/// How often gauges are refreshed.
const GAUGE_INTERVAL: Duration = Duration::from_secs(10);
/// How often the storage gauges (free space, the log, refusing) are set from the last
/// measurement (no I/O: the writer and the checkpointer measure).
const STORAGE_GAUGE_INTERVAL: Duration = Duration::from_secs(1);
/// How often listener states and runtime changes are read back from the database, so that a
/// change made through another server or the CLI applies here within this time.
const LISTENER_SYNC_INTERVAL: Duration = Duration::from_secs(LISTENER_SYNC_SECONDS);
/// How often the retention pass runs.
const RETENTION_INTERVAL: Duration = Duration::from_secs(24 * 3600);

pub(super) struct Upkeep {
    pub(super) outgoing: Arc<OutgoingService>,
    pub(super) inbox: Arc<Inbox>,
    pub(super) registry: Arc<Registry>,
    pub(super) db: Db,
    pub(super) storage: Arc<crate::db::storage::Storage>,
    pub(super) housekeeping: Duration,
    pub(super) retention: crate::config::RetentionConfig,
    /// Taking traffic (false before start-up completes and once shutdown begins).
    pub(super) ready: Arc<AtomicBool>,
}

/// Periodic upkeep: pruning the retry record, forgetting idle rate-limit keys, refreshing
/// gauges, and reading listener states back from the database.
pub(super) async fn upkeep(u: Upkeep) {
    let mut prune = tokio::time::interval(PRUNE_INTERVAL);
    let mut limits = tokio::time::interval(u.housekeeping);
    let mut gauges = tokio::time::interval(GAUGE_INTERVAL);
    let mut storage = tokio::time::interval(STORAGE_GAUGE_INTERVAL);
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
                tracing::debug!(outgoing_keys, forwarder_keys, "rate limiter keys tracked");
            }
            _ = gauges.tick() => refresh(&u).await,
            _ = storage.tick() => metric::storage(&u.storage.report()),
            _ = listeners.tick() => sync_listeners(&u).await,
            _ = aggregate.tick() => {
                let interval = millis(u.retention.aggregation_interval);
                match u.db.run(move |c| tables::listener_stats::aggregate_stats(c, interval, now_ms())).await {
                    Ok(rows) => tracing::debug!(rows, "statistics aggregated"),
                    Err(error) => tracing::warn!(%error, "aggregating statistics failed"),
                }
            }
            _ = retention.tick() => {
                let (days, batch) = (u.retention.dead_letter_days, u.retention.batch_size);
                if days > 0 {
                    let expired = u.db.run(move |c| Ok(dead_letters::expire(c, days, now_ms(), batch))).await;
                    match expired.map_err(dead_letters::DeadLetterError::from).and_then(|r| r) {
                        Ok(0) => {}
                        Ok(discarded) => tracing::info!(discarded, days, "expired dead letters discarded"),
                        Err(error) => tracing::warn!(%error, "discarding expired dead letters failed"),
                    }
                }
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
/// server sharing it, the CLI, or the breaker elsewhere) and applies what changed, on a
/// blocking thread (a changed listener's handler is built there).
async fn sync_listeners(u: &Upkeep) {
    let rows = match u.db.run(crate::db::tables::listeners::rows).await {
        Ok(rows) => rows,
        Err(error) => {
            tracing::warn!(%error, "reading listener states failed");
            return;
        }
    };
    let registry = u.registry.clone();
    let applied = tokio::task::spawn_blocking(move || {
        for row in &rows {
            if registry.apply_row(row) {
                tracing::info!(
                    listener = row.name,
                    enabled = registry.by_name(&row.name).is_some_and(|e| e.enabled()),
                    "listener state read from the database"
                );
            }
        }
    })
    .await;
    if let Err(error) = applied {
        tracing::warn!(%error, "applying listener states failed");
    }
    for entry in u.registry.entries() {
        metric::listener_enabled(entry.name(), entry.enabled());
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
    for entry in u.registry.entries() {
        metric::listener_circuit_open(entry.name(), entry.health.tripped());
    }
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
