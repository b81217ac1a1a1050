//! `zulip-listeners doctor`: the checklist an administrator runs after installing. Every
//! check prints one line, and every failure a fix; the exit code is 0 only when nothing
//! failed.

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use crate::config::{BotConfig, Config, ConfigError, DatabaseTarget, Sources};
use crate::db::{establish, pending_migrations};
use crate::listeners::Registry;
use crate::verification::SigningKey;

/// How long one network check (database, Zulip, the public URL) may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);
/// Free space below which the SQLite database's file system fails the check.
const MIN_FREE_BYTES: u64 = 512 * 1024 * 1024;
/// Clock difference to a Zulip server above which the clock check fails. Forwarder batches
/// carry a signed timestamp that must be within `forwarder.tolerance` (5 min by default);
/// a clock this far off is drifting, and will get there.
const MAX_CLOCK_SKEW_SECS: i64 = 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Ok,
    Fail,
    Skip,
}

/// One line of the checklist.
struct Check {
    status: Status,
    what: String,
    fix: Option<String>,
}

impl Check {
    fn ok(what: impl Into<String>) -> Check {
        Check {
            status: Status::Ok,
            what: what.into(),
            fix: None,
        }
    }

    fn fail(what: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            status: Status::Fail,
            what: what.into(),
            fix: Some(fix.into()),
        }
    }

    fn skip(what: impl Into<String>) -> Check {
        Check {
            status: Status::Skip,
            what: what.into(),
            fix: None,
        }
    }
}

/// Runs every check, prints the checklist on stdout and returns the exit code (0 when all
/// passed, 1 otherwise).
pub fn run(sources: &Sources, url: Option<&str>) -> ExitCode {
    let checks = match Config::load(sources) {
        Ok(config) => check_all(&config, url),
        Err(error) => vec![config_failure(&error)],
    };
    print!("{}", render(&checks));
    if checks.iter().any(|c| c.status == Status::Fail) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn config_failure(error: &ConfigError) -> Check {
    let what = error.to_string();
    let what = if what.starts_with("configuration") {
        what
    } else {
        format!("configuration: {what}")
    };
    Check::fail(
        what,
        "correct the key named above in your --config file or ZULIP_LISTENERS_* variable (config/default.toml documents every key), then run `zulip-listeners check-config`",
    )
}

fn render(checks: &[Check]) -> String {
    let mut out = String::new();
    for check in checks {
        let mark = match check.status {
            Status::Ok => "[ ok ]",
            Status::Fail => "[FAIL]",
            Status::Skip => "[skip]",
        };
        let _ = writeln!(out, "{mark} {}", check.what);
        if let Some(fix) = &check.fix {
            let _ = writeln!(out, "       fix: {fix}");
        }
    }
    let failed = checks.iter().filter(|c| c.status == Status::Fail).count();
    let _ = if failed == 0 {
        writeln!(out, "All {} checks passed.", checks.len())
    } else {
        writeln!(out, "{failed} of {} checks failed.", checks.len())
    };
    out
}

fn check_all(config: &Config, url: Option<&str>) -> Vec<Check> {
    let mut checks = Vec::new();
    match Registry::build(config) {
        Ok(_) => checks.push(Check::ok(format!(
            "configuration valid ({} bot(s), {} forwarder secret(s))",
            config.bots.len(),
            config.forwarder.secrets.len()
        ))),
        Err(error) => checks.push(Check::fail(
            format!("configuration: {error:#}"),
            "correct the handler settings named above, then run `zulip-listeners check-config`",
        )),
    }
    checks.extend(check_database(&config.database.url));
    checks.extend(check_secrets(config));

    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            checks.push(Check::fail(
                format!("cannot start the network checks: {error}"),
                "the system is out of resources (threads, file descriptors); retry",
            ));
            return checks;
        }
    };
    let network = runtime.block_on(check_network(config, url));
    runtime.shutdown_timeout(Duration::from_secs(1));
    checks.extend(network);
    checks
}

/// Database reachable, migrations current and, for SQLite, disk space.
fn check_database(target: &DatabaseTarget) -> Vec<Check> {
    let mut checks = Vec::new();
    let shown = match target {
        DatabaseTarget::Sqlite(path) => format!("SQLite {}", path.display()),
        DatabaseTarget::Postgres(url) => format!("PostgreSQL {}", redact_url(url)),
    };
    if let DatabaseTarget::Sqlite(path) = target
        && !path.is_file()
    {
        checks.push(Check::fail(
            format!("database: {shown} does not exist yet"),
            "run `zulip-listeners migrate` (or start the server once) to create it, or correct database.url",
        ));
        return checks;
    }
    // A connection attempt can hang (a firewall dropping packets); it runs on a thread of its
    // own that is abandoned after the timeout.
    let (tx, rx) = mpsc::channel();
    let owned = target.clone();
    std::thread::spawn(move || {
        let result = establish(&owned).and_then(|mut conn| pending_migrations(&mut conn));
        let _ = tx.send(result);
    });
    match rx.recv_timeout(CHECK_TIMEOUT) {
        Ok(Ok(pending)) => {
            checks.push(Check::ok(format!("database reachable: {shown}")));
            if pending.is_empty() {
                checks.push(Check::ok("database schema up to date"));
            } else {
                checks.push(Check::fail(
                    format!(
                        "database schema: {} migration(s) not applied ({})",
                        pending.len(),
                        pending.join(", ")
                    ),
                    "run `zulip-listeners migrate` (the server also applies them when it starts)",
                ));
            }
        }
        Ok(Err(error)) => checks.push(Check::fail(
            format!("database: {shown}: {error}"),
            match target {
                DatabaseTarget::Sqlite(_) => {
                    "check that the service user may read and write the file and its folder"
                }
                DatabaseTarget::Postgres(_) => {
                    "check database.url (host, port, user, password, database name), that PostgreSQL is running, and that pg_hba.conf admits this host and user"
                }
            },
        )),
        Err(_) => checks.push(Check::fail(
            format!(
                "database: {shown}: no answer within {} s",
                CHECK_TIMEOUT.as_secs()
            ),
            "check that the database host is reachable from here (firewall, host name, port)",
        )),
    }
    match target {
        DatabaseTarget::Sqlite(path) => checks.push(check_disk(path)),
        DatabaseTarget::Postgres(_) => checks.push(Check::skip(
            "disk space: the database is on the PostgreSQL server; watch its disk there",
        )),
    }
    checks
}

/// Free space on the file system holding `path`, from `df -Pk`.
fn check_disk(path: &Path) -> Check {
    let folder = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let output = std::process::Command::new("df")
        .arg("-Pk")
        .arg(folder)
        .output();
    let available_kib = output.ok().and_then(|o| {
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        text.lines()
            .nth(1)
            .and_then(|line| line.split_whitespace().nth(3))
            .and_then(|field| field.parse::<u64>().ok())
    });
    match available_kib {
        None => Check::skip(format!(
            "disk space: could not be read for {} (`df` missing or unusual)",
            folder.display()
        )),
        Some(kib) => {
            let bytes = kib.saturating_mul(1024);
            let shown = format!("{:.1} GiB", bytes as f64 / (1024.0 * 1024.0 * 1024.0));
            if bytes >= MIN_FREE_BYTES {
                Check::ok(format!("disk space: {shown} free for {}", folder.display()))
            } else {
                Check::fail(
                    format!(
                        "disk space: only {shown} free for {} (less than {} MiB)",
                        folder.display(),
                        MIN_FREE_BYTES / (1024 * 1024)
                    ),
                    "free space on that file system, or lower retention.retention_days and run `zulip-listeners cleanup --days N`",
                )
            }
        }
    }
}

/// The forwarder's signing secrets: present, readable, long enough, not repeated.
fn check_secrets(config: &Config) -> Vec<Check> {
    let secrets = &config.forwarder.secrets;
    if secrets.is_empty() {
        return vec![Check::skip(
            "forwarder secret: none set, so POST /zulip/events answers 404 (fine without the forwarder; else `zulip-listeners gen-secret` into forwarder.secrets)",
        )];
    }
    let mut checks = Vec::new();
    for (i, secret) in secrets.iter().enumerate() {
        let key = format!("forwarder.secrets[{i}]");
        let raw = secret.expose().trim();
        let encoded = raw.strip_prefix("whsec_").unwrap_or(raw);
        let bytes = {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map_or(0, |b| b.len())
        };
        let check = match SigningKey::parse(raw) {
            _ if raw.is_empty() => Check::fail(
                format!("forwarder secret {key} is empty"),
                "make one with `zulip-listeners gen-secret`",
            ),
            Err(problem) => Check::fail(
                format!("forwarder secret {key} {problem}"),
                "make one with `zulip-listeners gen-secret` and give the same value to the forwarder",
            ),
            Ok(_) if !raw.starts_with("whsec_") => Check::fail(
                format!("forwarder secret {key} ({bytes} bytes) lacks the `whsec_` prefix"),
                "write it as `whsec_<base64>`, the form the forwarder's `standardwebhooks` library expects",
            ),
            Ok(_) => Check::ok(format!(
                "forwarder secret {key} well-formed ({bytes} bytes)"
            )),
        };
        checks.push(check);
    }
    for (i, a) in secrets.iter().enumerate() {
        if secrets[..i].iter().any(|b| b.expose() == a.expose()) {
            checks.push(Check::fail(
                format!("forwarder secret forwarder.secrets[{i}] repeats an earlier one"),
                "remove the duplicate",
            ));
        }
    }
    checks
}

/// Each bot's Zulip site and API key, the public URL, and the clock.
async fn check_network(config: &Config, url: Option<&str>) -> Vec<Check> {
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
            clock = Some((format!("Zulip at {}", site_of(bot)), offset));
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
                clock = Some((url.to_string(), offset));
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
    let site = site_of(bot);
    let response = http
        .get(format!("{site}/api/v1/users/me"))
        .basic_auth(&bot.email, Some(bot.api_key.expose()))
        .send()
        .await;
    let response = match response {
        Ok(response) => response,
        Err(error) => {
            return (
                Check::fail(
                    format!("bot {name}: Zulip at {site} unreachable: {}", chain(&error)),
                    format!(
                        "check bots.{name}.site (scheme, host name, port), DNS, any proxy and the TLS certificate; try `curl {site}/api/v1/server_settings` from this machine"
                    ),
                ),
                None,
            );
        }
    };
    let offset = date_offset(&response);
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
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
    let response = http
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body("{}")
        .send()
        .await;
    let response = match response {
        Ok(response) => response,
        Err(error) => {
            return (
                Check::fail(
                    format!("public URL {url} unreachable: {}", chain(&error)),
                    "check DNS, the reverse proxy (deploy/nginx/) and its TLS certificate, and that the server runs (`systemctl status zulip-listeners`)",
                ),
                None,
            );
        }
    };
    let offset = date_offset(&response);
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
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

/// An error with its causes ("error sending request: connection refused"), as reqwest's
/// own message leaves them out.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

/// A PostgreSQL URL without its password.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{user}{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(
            redact_url("postgres://zulip:hunter2@db/listeners"),
            "postgres://zulip@db/listeners"
        );
        assert_eq!(redact_url("postgres://db/x"), "postgres://db/x");
    }

    #[test]
    fn the_checklist_counts_failures() {
        let text = render(&[Check::ok("a"), Check::fail("b", "do c"), Check::skip("d")]);
        assert!(text.contains("[FAIL] b\n       fix: do c\n"), "{text}");
        assert!(text.ends_with("1 of 3 checks failed.\n"), "{text}");
    }
}
