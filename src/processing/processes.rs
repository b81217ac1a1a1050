//! Serving processes and the listeners each runs (`serve --listeners`). On PostgreSQL every
//! serving process records itself in `listener_processes` with its listener set and refreshes
//! a heartbeat every [`HEARTBEAT_INTERVAL`]; a process silent for [`STALE_AFTER`] counts as
//! gone. An enabled forwarder listener that no live process runs is logged at WARN, exported
//! as `zulip_listeners_listener_live_processes{listener} 0` and reported by `GET /health`:
//! its work waits in the inbox until a process that runs it starts.
//!
//! On SQLite there is one server per database and it runs every listener, so nothing is
//! recorded.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::Processor;
use crate::clock::now_ms;
use crate::db::tables::processes::ProcessRow;
use crate::db::{Db, tables};
use crate::listeners::ListenerId;
use crate::telemetry::metric;

/// How often a process refreshes its heartbeat and checks the others.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
/// A process whose heartbeat is older than this is no longer live.
pub const STALE_AFTER: Duration = Duration::from_secs(15);
/// Rows of processes silent this long are deleted.
const FORGET_AFTER_MS: i64 = 24 * 3600 * 1000;
/// How often an unserved listener is logged again while it stays unserved (in heartbeats).
const WARN_EVERY: u32 = 12;

/// The enabled forwarder listeners no live process runs, as last checked.
#[derive(Debug, Default)]
pub struct Coverage {
    unserved: Mutex<Vec<String>>,
}

impl Coverage {
    pub fn unserved(&self) -> Vec<String> {
        self.unserved.lock().map(|u| u.clone()).unwrap_or_default()
    }

    fn set(&self, names: Vec<String>) {
        if let Ok(mut unserved) = self.unserved.lock() {
            *unserved = names;
        }
    }
}

/// A serving process: host, pid and start time (a restarted process is a new one), and the
/// id made of them, under which it records itself and marks the claims it holds.
#[derive(Debug, Clone)]
pub struct Identity {
    pub host: String,
    pub pid: i64,
    pub started_at_ms: i64,
    pub process_id: String,
}

/// This process's identity.
pub fn identity() -> Identity {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into());
    let pid = i64::from(std::process::id());
    let started = now_ms();
    let process_id = format!("{host}:{pid}:{started}");
    Identity {
        host,
        pid,
        started_at_ms: started,
        process_id,
    }
}

/// Registers this process, keeps its heartbeat and checks which listeners are served, until
/// `shutdown`; then removes its row.
pub async fn run(
    identity: Identity,
    db: Db,
    processor: Processor,
    all: Arc<[ListenerId]>,
    mine: Vec<&'static str>,
    coverage: Arc<Coverage>,
    mut shutdown: watch::Receiver<bool>,
) {
    let Identity {
        host,
        pid,
        started_at_ms,
        process_id,
    } = identity;
    let listeners = mine.join(",");
    tracing::info!(process_id, listeners, "registered as a serving process");
    let mut beats: u32 = 0;
    loop {
        let now = now_ms();
        let row = ProcessRow {
            process_id: process_id.clone(),
            host: host.clone(),
            pid,
            listeners: listeners.clone(),
            started_at_ms,
            heartbeat_at_ms: now,
        };
        let result = db
            .run(move |c| {
                tables::processes::heartbeat(c, &row)?;
                tables::processes::forget_process(c, "", now - FORGET_AFTER_MS)?;
                tables::processes::processes(c)
            })
            .await;
        match result {
            Ok(rows) => {
                let unserved = check(&processor, &all, &rows, now);
                let changed = unserved != coverage.unserved();
                if !unserved.is_empty() && (changed || beats % WARN_EVERY == 0) {
                    for name in &unserved {
                        tracing::warn!(
                            listener = %name,
                            "enabled listener is run by no live process: its forwarded events wait in the inbox (start `serve --listeners` with it)"
                        );
                    }
                } else if changed {
                    tracing::info!("every enabled listener is run by a live process again");
                }
                coverage.set(unserved);
            }
            Err(error) => tracing::warn!(%error, "recording this process's heartbeat failed"),
        }
        beats = beats.wrapping_add(1);
        tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            _ = tokio::time::sleep(HEARTBEAT_INTERVAL) => {}
        }
    }
    let id = process_id.clone();
    if let Err(error) = db
        .run(move |c| tables::processes::forget_process(c, &id, i64::MIN))
        .await
    {
        tracing::warn!(%error, "removing this process's registration failed");
    }
}

/// The enabled listeners of `all` that no live process in `rows` runs; sets the gauge of
/// live processes per listener.
fn check(processor: &Processor, all: &[ListenerId], rows: &[ProcessRow], now: i64) -> Vec<String> {
    let stale_before = now - crate::clock::millis(STALE_AFTER);
    let live: Vec<&ProcessRow> = rows
        .iter()
        .filter(|r| r.heartbeat_at_ms >= stale_before)
        .collect();
    let registry = processor.registry();
    let mut unserved = Vec::new();
    for &id in all {
        let Some(name) = processor.listener_name(id) else {
            continue;
        };
        let enabled = registry
            .get(id)
            .is_some_and(|e| e.enabled() || e.auto_disabled());
        let count = live
            .iter()
            .filter(|r| r.listeners.split(',').any(|l| l == name))
            .count();
        metric::listener_live_processes(name, count);
        if enabled && count == 0 {
            unserved.push(name.to_string());
        }
    }
    unserved
}
