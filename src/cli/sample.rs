//! `zulip-listeners send-sample`: one signed batch, shaped like the forwarder's, posted to a
//! running server's `/zulip/events` with the configured secret — the forwarder path tried
//! without a Zulip server.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use serde_json::json;

use crate::config::Config;
use crate::output::outln;
use crate::verification::SigningKey;

/// Where the sample goes when no `--url` is given: `/zulip/events` of [`local_base`].
pub fn default_url(config: &Config) -> String {
    format!("{}/zulip/events", local_base(config))
}

/// This server as a command-line tool on the same machine reaches it: the configured listen
/// address, with a wildcard address replaced by loopback.
pub fn local_base(config: &Config) -> String {
    let mut bind = config.server.bind;
    if bind.ip().is_unspecified() {
        bind.set_ip(match bind {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    format!("http://{bind}")
}

/// The batch: a channel message and a typing notification from one user of realm 1.
pub fn sample_batch(now_ms: i64) -> String {
    let server =
        json!({"host": "zulip.example.com", "zulip_version": "10.2", "feature_level": 334});
    let realm =
        json!({"id": 1, "uuid": "00000000-0000-4000-8000-000000000001", "string_id": "sample"});
    let message_id = now_ms;
    json!({"events": [
        {"v": 1, "event_id": uuid::Uuid::new_v4().to_string(), "emitted_at_ms": now_ms,
         "server": server, "realm": realm, "type": "message", "op": null,
         "audience": {"count": 1, "user_ids": [10]},
         "event": {"type": "message", "flags": [], "message": {
             "id": message_id, "sender_id": 10, "sender_email": "user10@zulip.example.com",
             "sender_full_name": "Sample User", "content": "Hello from zulip-listeners send-sample",
             "type": "stream", "display_recipient": "general", "stream_id": 1,
             "subject": "send-sample", "timestamp": now_ms / 1000}}},
        {"v": 1, "event_id": uuid::Uuid::new_v4().to_string(), "emitted_at_ms": now_ms,
         "server": server, "realm": realm, "type": "typing", "op": "start",
         "audience": {"count": 1, "user_ids": [11]},
         "event": {"type": "typing", "op": "start", "message_type": "stream", "stream_id": 1,
                   "topic": "send-sample", "sender": {"user_id": 10, "email": "user10@zulip.example.com"}}}
    ]})
    .to_string()
}

/// Signs the sample with the first configured forwarder secret and posts it; prints the
/// server's answer. Fails (exit code 1) unless the server accepted it.
pub fn send(config: &Config, url: Option<&str>) -> anyhow::Result<()> {
    let secret = config.forwarder.secrets.first().context(
        "no forwarder secret is configured: set forwarder.secrets (make one with `zulip-listeners gen-secret`) for both the server and this command",
    )?;
    let key = SigningKey::parse(secret.expose())
        .map_err(|problem| anyhow::anyhow!("forwarder.secrets[0] {problem}"))?;
    let url = url.map_or_else(|| default_url(config), str::to_string);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("the system clock is before 1970")?;
    let now_ms = crate::clock::millis(now);
    let timestamp = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    let body = sample_batch(now_ms);
    let id = format!("msg_{}", uuid::Uuid::new_v4().simple());
    let signature = key.sign(&id, timestamp, body.as_bytes());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the HTTP client")?;
    let (status, answer) = runtime
        .block_on(async {
            let http = crate::outbound::client(Duration::from_secs(10))
                .map_err(crate::redact::http_error)?;
            let response = http
                .post(&url)
                .header("content-type", "application/json")
                .header("webhook-id", &id)
                .header("webhook-timestamp", timestamp.to_string())
                .header("webhook-signature", signature)
                .body(body)
                .send()
                .await
                .map_err(crate::redact::http_error)?;
            let status = response.status();
            let answer =
                crate::outbound::read_answer(response, crate::outbound::ANSWER_LIMIT).await?;
            Ok::<_, String>((status, String::from_utf8_lossy(&answer).into_owned()))
        })
        .map_err(|e| anyhow::anyhow!(e))
        .with_context(|| format!("posting the sample batch to {url} (is the server running?)"))?;
    outln!("POST {url} → {status}");
    outln!("{answer}");
    if status.is_success() {
        outln!(
            "The server accepted the signed batch (2 events: a message and a typing notification)."
        );
        return Ok(());
    }
    let hint = match status.as_u16() {
        401 => {
            "the signature was refused: the server runs with another forwarder secret, or the clocks differ by more than forwarder.tolerance"
        }
        404 => "the server has no forwarder secret configured, or the URL is not its /zulip/events",
        _ => "see the server's answer above",
    };
    anyhow::bail!("the server answered {status}: {hint}")
}
