//! Announcing listener health transitions (circuit breaker opened or closed, listener
//! disabled automatically): a log line and a metric always; a JSON POST to
//! `error_handling.notification_webhook` (`listener`, `state`, `message`, and `handler`, the
//! deprecated name of `listener`) and a message in Zulip from `error_handling.notification_bot`
//! when configured. Auto-disable is also persisted. The log lines keep the field name
//! `handler` for the listener.

use super::tasks::TaskTracker;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::db::Db;
use crate::listeners::breaker::Transition;
use crate::listeners::{AUTO_DISABLED, Entry, Registry, changes};
use crate::telemetry::metric;
use crate::zulip_api::{BotApi, Destination, ZulipClient};

/// Where transitions go.
pub struct Announcer {
    db: Db,
    registry: Arc<Registry>,
    http: reqwest::Client,
    webhook: Option<String>,
    zulip: Option<(ZulipClient, BotApi, Destination)>,
    tasks: TaskTracker,
}

impl Announcer {
    pub fn new(
        config: &Config,
        db: Db,
        registry: Arc<Registry>,
        zulip: ZulipClient,
        tasks: TaskTracker,
    ) -> Result<Announcer, reqwest::Error> {
        let e = &config.error_handling;
        let via_zulip = e.notification_bot.as_ref().and_then(|name| {
            let api = BotApi::from_config(config.bots.get(name)?)?;
            Some((
                zulip.clone(),
                api,
                Destination::Channel {
                    to: e.notification_stream.clone()?,
                    topic: e
                        .notification_topic
                        .clone()
                        .unwrap_or_else(|| "zulip-listeners".into()),
                },
            ))
        });
        Ok(Announcer {
            db,
            registry,
            http: crate::outbound::client(Duration::from_secs(10))?,
            webhook: e.notification_webhook.clone(),
            zulip: via_zulip,
            tasks,
        })
    }

    /// Acts on the transitions of `entry` (on a task of its own; never blocks the caller).
    pub fn announce(self: &Arc<Self>, entry: &Entry, transitions: Vec<Transition>) {
        let listener = entry.name().to_string();
        for transition in &transitions {
            match transition {
                Transition::Opened { failures, cooldown } => {
                    tracing::warn!(
                        handler = listener,
                        failures,
                        cooldown_s = cooldown.as_secs(),
                        "circuit breaker opened"
                    );
                    metric::listener_transition(&listener, "open");
                }
                Transition::Closed => {
                    tracing::info!(handler = listener, "circuit breaker closed");
                    metric::listener_transition(&listener, "closed");
                }
                Transition::Disable { failures_last_hour } => {
                    tracing::error!(
                        handler = listener,
                        failures_last_hour,
                        "handler disabled automatically"
                    );
                    metric::listener_transition(&listener, "disabled");
                    metric::listener_enabled(&listener, false);
                    entry.disable_automatically();
                }
            }
        }
        let this = self.clone();
        self.tasks.spawn(async move {
            for transition in transitions {
                this.deliver(&listener, &transition).await;
            }
        });
    }

    async fn deliver(&self, listener: &str, transition: &Transition) {
        let (state, text) = match transition {
            Transition::Opened { failures, cooldown } => (
                "breaker_open",
                format!(
                    "Listener `{listener}` failed {failures} times in a row; it is paused for {} s.",
                    cooldown.as_secs()
                ),
            ),
            Transition::Closed => (
                "breaker_closed",
                format!("Listener `{listener}` works again."),
            ),
            Transition::Disable { failures_last_hour } => (
                "disabled",
                format!(
                    "Listener `{listener}` failed {failures_last_hour} times within an hour and was disabled. \
                     Enable it again with `zulip-listeners listeners enable {listener}` or the admin API."
                ),
            ),
        };
        if let Transition::Disable { .. } = transition {
            let reason = format!("{AUTO_DISABLED} {text}");
            let registry = self.registry.clone();
            let name = listener.to_string();
            if let Err(error) = self
                .db
                .run(move |c| {
                    changes::disable_automatically(c, &registry, &name, &reason)
                        .map_err(|e| crate::db::DbError::Task(e.to_string()))
                })
                .await
            {
                tracing::error!(handler = listener, %error, "could not persist the auto-disable");
            }
        }
        if let Some(url) = &self.webhook {
            // `handler`: the deprecated name of `listener`, sent until it is removed.
            let body = serde_json::json!({
                "listener": listener,
                "state": state,
                "message": text,
                "handler": listener,
            });
            match self.http.post(url).json(&body).send().await {
                Ok(r) if r.status().is_success() => {}
                Ok(r) => {
                    tracing::warn!(status = %r.status(), target = %crate::redact::url_origin(url), "notification webhook refused the notice")
                }
                Err(error) => tracing::warn!(
                    error = %crate::redact::http_error(error),
                    "notification webhook unreachable"
                ),
            }
        }
        if let Some((client, api, destination)) = &self.zulip
            && let Err(error) = client.send_message(api, destination, &text).await
        {
            tracing::warn!(%error, "could not post the notice to Zulip");
        }
    }
}
