//! The network checks of `doctor`: each bot's Zulip site and API key, the public URL Zulip
//! calls, and this machine's clock compared with the `Date` those servers answer with.

use std::time::SystemTime;

use super::{CHECK_TIMEOUT, Check};
use crate::config::{BotConfig, Config};

/// Clock difference to a Zulip server above which the clock check fails. Forwarder batches
/// carry a signed timestamp that must be within `forwarder.tolerance` (5 min by default);
/// a clock this far off is drifting, and will get there.
const MAX_CLOCK_SKEW_SECS: i64 = 30;

/// Each bot's Zulip site and API key, the public URL, and the clock.
pub(super) async fn check_network(config: &Config, url: Option<&str>) -> Vec<Check> {
    let mut checks = Vec::new();
    // The server's own client rules: an API key is never re-sent to another origin.
    let http = match crate::outbound::client(CHECK_TIMEOUT) {
        Ok(http) => http,
        Err(error) => {
            checks.push(Check::fail(
                format!("cannot build an HTTP client: {error}"),
                "the system's TLS set-up is broken; reinstall ca-certificates",
            ));
            return checks;
        }
    };
    // (where the time came from, its offset from ours in seconds)
    let mut clock: Option<(String, i64)> = None;
    if config.bots.is_empty() {
        checks.push(Check::skip(
            "bots: none configured, so outgoing webhooks are answered 404",
        ));
    }
    for (name, bot) in &config.bots {
        let (check, offset) = check_bot(&http, name, bot).await;
        checks.push(check);
        if clock.is_none()
            && let Some(offset) = offset
        {
            clock = Some((format!("Zulip at {}", shown_site(bot)), offset));
        }
    }
    match url {
        None => checks.push(Check::skip(
            "public URL: not checked (give --url https://…/zulip/outgoing, the Endpoint URL Zulip calls)",
        )),
        Some(url) => {
            let (check, offset) = check_public_url(&http, url).await;
            checks.push(check);
            if clock.is_none()
                && let Some(offset) = offset
            {
                clock = Some((shown_url(url), offset));
            }
        }
    }
    checks.push(match clock {
        None => Check::skip(
            "clock: nothing to compare with (no bot with site + api_key answered, no --url)",
        ),
        Some((source, offset)) if offset.abs() <= MAX_CLOCK_SKEW_SECS => Check::ok(format!(
            "clock in sync with {source} (offset {offset:+} s, within ±{MAX_CLOCK_SKEW_SECS} s)"
        )),
        Some((source, offset)) => Check::fail(
            format!(
                "clock: {offset:+} s off {source}; forwarder signatures are refused beyond forwarder.tolerance (±5 min by default)"
            ),
            "synchronise the clock with NTP (`timedatectl set-ntp true`, or install chrony) here and on the Zulip server",
        ),
    });
    checks
}

fn site_of(bot: &BotConfig) -> String {
    bot.site
        .as_deref()
        .unwrap_or_default()
        .trim_end_matches('/')
        .to_string()
}

/// A bot's site as printed: its origin, without user info or path (they may hold a password).
fn shown_site(bot: &BotConfig) -> String {
    crate::redact::url_origin(&site_of(bot))
}

/// A URL given on the command line as printed: without its user info (a password).
fn shown_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() || !parsed.username().is_empty() {
                // Both only fail for URLs without a host, which have no user info to remove.
                let _ = parsed.set_password(None);
                let _ = parsed.set_username("");
            }
            parsed.to_string()
        }
        Err(_) => crate::redact::url_origin(url),
    }
}

/// An answer's body as JSON (`null` when it is not JSON, or longer than
/// [`crate::outbound::ANSWER_LIMIT`]).
async fn json_of(response: reqwest::Response) -> serde_json::Value {
    match crate::outbound::read_answer(response, crate::outbound::ANSWER_LIMIT).await {
        Ok(body) => serde_json::from_slice(&body).unwrap_or_default(),
        Err(_) => serde_json::Value::Null,
    }
}

/// The offset of a response's `Date` header from this machine's clock, in seconds.
fn date_offset(response: &reqwest::Response) -> Option<i64> {
    let date = response
        .headers()
        .get(reqwest::header::DATE)?
        .to_str()
        .ok()?;
    let theirs = httpdate::parse_http_date(date).ok()?;
    let ours = SystemTime::now();
    Some(match theirs.duration_since(ours) {
        Ok(ahead) => i64::try_from(ahead.as_secs()).unwrap_or(i64::MAX),
        Err(behind) => -i64::try_from(behind.duration().as_secs()).unwrap_or(i64::MAX),
    })
}

async fn check_bot(http: &reqwest::Client, name: &str, bot: &BotConfig) -> (Check, Option<i64>) {
    if bot.site.is_none() || bot.api_key.is_empty() {
        return (
            Check::skip(format!(
                "bot {name}: no api_key + site, so Zulip's REST API is not used (late replies are dropped)"
            )),
            None,
        );
    }
    let request = http
        .get(format!("{}/api/v1/users/me", site_of(bot)))
        .basic_auth(&bot.email, Some(bot.api_key.expose()));
    let site = shown_site(bot);
    let fix = format!(
        "check bots.{name}.site (scheme, host name, port), DNS, any proxy and the TLS certificate; try `curl {site}/api/v1/server_settings` from this machine"
    );
    let response = match send(request, &format!("bot {name}: Zulip at {site}"), fix).await {
        Ok(response) => response,
        Err(failed) => return failed,
    };
    let offset = date_offset(&response);
    let status = response.status();
    let body = json_of(response).await;
    let check = if status.is_success() && body["result"] == "success" {
        let email = body["email"].as_str().unwrap_or_default();
        let delivery = body["delivery_email"].as_str().unwrap_or_default();
        if email.eq_ignore_ascii_case(&bot.email) || delivery.eq_ignore_ascii_case(&bot.email) {
            Check::ok(format!(
                "bot {name}: Zulip at {site} accepts its api_key (user {email})"
            ))
        } else {
            Check::fail(
                format!(
                    "bot {name}: the api_key belongs to {email}, not to {}",
                    bot.email
                ),
                format!(
                    "set bots.{name}.api_key to the key shown for {} in Zulip (Personal settings → Bots), or correct bots.{name}.email",
                    bot.email
                ),
            )
        }
    } else if status.as_u16() == 401 || status.as_u16() == 403 {
        Check::fail(
            format!(
                "bot {name}: Zulip at {site} refuses its api_key ({status}: {})",
                body["msg"].as_str().unwrap_or("no message")
            ),
            format!(
                "copy the bot's API key from Zulip (Personal settings → Bots → the bot) into bots.{name}.api_key (or api_key_file), with bots.{name}.email its email"
            ),
        )
    } else {
        Check::fail(
            format!("bot {name}: {site}/api/v1/users/me answered {status}, not a Zulip API answer"),
            format!(
                "check that bots.{name}.site is the Zulip server's base URL (e.g. https://chat.example.com, no path)"
            ),
        )
    };
    (check, offset)
}

/// POSTs an empty body to the public URL: this server answers it with its own JSON error,
/// which shows that the route reaches it.
async fn check_public_url(http: &reqwest::Client, url: &str) -> (Check, Option<i64>) {
    let request = http
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body("{}");
    let fix = "check DNS, the reverse proxy (deploy/nginx/) and its TLS certificate, and that the server runs (`systemctl status zulip-listeners`)";
    let url = shown_url(url);
    let response = match send(request, &format!("public URL {url}"), fix).await {
        Ok(response) => response,
        Err(failed) => return failed,
    };
    let offset = date_offset(&response);
    let status = response.status();
    let body = json_of(response).await;
    let ours = body.get("error").is_some_and(serde_json::Value::is_string)
        || body.get("content").is_some()
        || body.get("response_not_required").is_some();
    let check = if ours && status.as_u16() != 404 && status.as_u16() != 405 {
        Check::ok(format!(
            "public URL {url} reaches this server (it answered an empty test body with {status})"
        ))
    } else {
        Check::fail(
            format!("public URL {url} answered {status}, but not as this server's webhook route"),
            "give the Endpoint URL configured in Zulip (…/zulip/outgoing, …/bots/<name> or the base URL), and check that the reverse proxy passes POST on it to server.bind",
        )
    };
    (check, offset)
}

/// Sends a check's request; `Err` is the failed check of a server that did not answer: `what`
/// unreachable, with the causes ([`crate::redact::http_error`]: the origin, not the URL).
async fn send(
    request: reqwest::RequestBuilder,
    what: &str,
    fix: impl Into<String>,
) -> Result<reqwest::Response, (Check, Option<i64>)> {
    request.send().await.map_err(|error| {
        (
            Check::fail(
                format!("{what} unreachable: {}", crate::redact::http_error(error)),
                fix,
            ),
            None,
        )
    })
}
