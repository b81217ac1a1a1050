//! The checklist lines of the steps `verify` watches: the webhook received, the reply
//! visible, the forwarded event stored, each with its latency or the fix for its cause.

use super::Plan;
use super::advice;
use super::watch::{self, Seen};
use crate::cli::doctor::Check;

pub(super) fn webhook_line(plan: &Plan, seen: &Seen, sent_at: i64) -> Check {
    if let Err(check) = &plan.admin {
        return Check::fail(
            format!("webhook not checked: {}", check.what),
            check.fix.clone().unwrap_or_default(),
        );
    }
    match (&seen.webhook, &seen.admin_error) {
        (Some(webhook), _) => {
            let mut what = format!(
                "webhook received by this server {} after the mention was sent ({} listener run(s): {})",
                ms((webhook.at_ms - sent_at).max(0)),
                webhook.runs,
                webhook.listeners.join(", ")
            );
            if let Some(failure) = &webhook.failure {
                what.push_str(&format!("; failed: {failure}"));
            }
            Check::ok(what)
        }
        (None, Some(error)) => Check::fail(
            format!(
                "webhook not checked: the admin API at {}: {error}",
                watch::shown(plan)
            ),
            advice::admin(error),
        ),
        (None, None) => Check::fail(
            format!(
                "no webhook for message {} reached this server within {}{}",
                seen.mention,
                humantime::format_duration(plan.timeout),
                seen.failure
                    .as_ref()
                    .map(|f| format!("; Zulip posted \"{f}\""))
                    .unwrap_or_default()
            ),
            advice::webhook_missing(seen.failure.as_deref(), plan.bot_name.as_deref()),
        ),
    }
}

pub(super) fn reply_line(plan: &Plan, seen: &Seen, sent_at: i64) -> Check {
    match (&seen.reply, &seen.failure) {
        (Some((text, at_ms)), _) => {
            let (from, since) = match &seen.webhook {
                Some(webhook) => ("the webhook", webhook.at_ms),
                None => ("the mention was sent", sent_at),
            };
            Check::ok(format!(
                "reply visible in Zulip {} after {from}: \"{}\"",
                ms((at_ms - since).max(0)),
                crate::events::text::truncate_chars(text, 60).0
            ))
        }
        (None, Some(failure)) => Check::fail(
            format!("no reply: the bot's answer in Zulip is \"{failure}\""),
            advice::webhook_missing(Some(failure), plan.bot_name.as_deref()),
        ),
        (None, None) => Check::fail(
            format!(
                "no reply from the bot in Zulip within {}{}",
                humantime::format_duration(plan.timeout),
                seen.list_error
                    .as_ref()
                    .map(|e| format!(" (listing the conversation failed: {e})"))
                    .unwrap_or_default()
            ),
            advice::no_reply(
                seen.webhook.as_ref(),
                &plan.content,
                plan.bot_name.as_deref(),
            ),
        ),
    }
}

pub(super) fn forwarder_line(plan: &Plan, seen: &Seen, sent_at: i64) -> Check {
    if !plan.forwarder {
        return Check::skip(
            "forwarder: no [forwarder] secrets here, so not checked (--forwarder checks it anyway)",
        );
    }
    if let Err(check) = &plan.admin {
        return Check::fail(
            format!("forwarded event not checked: {}", check.what),
            check.fix.clone().unwrap_or_default(),
        );
    }
    match (&seen.forwarded, &seen.admin_error) {
        (Some((status, at_ms)), _) => Check::ok(format!(
            "forwarded message event stored {} after the mention was sent (status {status})",
            ms((at_ms - sent_at).max(0))
        )),
        (None, Some(error)) => Check::fail(
            format!(
                "forwarded event not checked: the admin API at {}: {error}",
                watch::shown(plan)
            ),
            advice::admin(error),
        ),
        (None, None) => Check::fail(
            format!(
                "no forwarded message event for message {} within {}",
                seen.mention,
                humantime::format_duration(plan.timeout)
            ),
            advice::FORWARDER_MISSING,
        ),
    }
}

/// A latency for a checklist line: `85 ms`, `1.2 s`.
pub(super) fn ms(value: i64) -> String {
    if value < 1000 {
        format!("{value} ms")
    } else {
        format!("{:.1} s", value as f64 / 1000.0)
    }
}
