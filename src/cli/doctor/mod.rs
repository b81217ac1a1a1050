//! `zulip-listeners doctor`: the checklist an administrator runs after installing. Every
//! check prints one line, and every failure a fix; the exit code is 0 only when nothing
//! failed. This file holds the checklist and the checks that need only the configuration
//! (its validity, the forwarder secrets); [`database`] and [`network`] hold the others. The
//! checklist lines ([`Check`], [`render`]) are also those of `zulip-listeners verify`.

mod database;
mod network;

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use crate::config::{Config, ConfigError, Sources};
use crate::listeners::Registry;
use crate::output::out;
use crate::verification::SigningKey;

/// How long one network check (database, Zulip, the public URL) may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    Ok,
    Fail,
    Skip,
    /// Worth knowing, not a check: not counted.
    Note,
}

/// One line of the checklist.
pub(crate) struct Check {
    pub(crate) status: Status,
    pub(crate) what: String,
    pub(crate) fix: Option<String>,
}

impl Check {
    pub(crate) fn ok(what: impl Into<String>) -> Check {
        Check {
            status: Status::Ok,
            what: what.into(),
            fix: None,
        }
    }

    pub(crate) fn fail(what: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            status: Status::Fail,
            what: what.into(),
            fix: Some(fix.into()),
        }
    }

    pub(crate) fn skip(what: impl Into<String>) -> Check {
        Check {
            status: Status::Skip,
            what: what.into(),
            fix: None,
        }
    }

    pub(crate) fn note(what: impl Into<String>) -> Check {
        Check {
            status: Status::Note,
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
    out!("{}", render(&checks));
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

/// The checklist: one line per check (`[ ok ]`, `[FAIL]` with a `fix:` line, `[skip]`,
/// `[note]`), then the count of failures.
pub(crate) fn render(checks: &[Check]) -> String {
    let mut out: String = checks.iter().map(Check::render).collect();
    out.push_str(&summary(checks));
    out
}

impl Check {
    /// The check's line, and its `fix:` line under a failure.
    pub(crate) fn render(&self) -> String {
        let mark = match self.status {
            Status::Ok => "[ ok ]",
            Status::Fail => "[FAIL]",
            Status::Skip => "[skip]",
            Status::Note => "[note]",
        };
        let mut out = format!("{mark} {}\n", self.what);
        if let Some(fix) = &self.fix {
            let _ = writeln!(out, "       fix: {fix}");
        }
        out
    }
}

/// The last line of the checklist: how many checks failed, passed and were skipped (notes
/// are not checks; a skipped check is not counted as passed).
pub(crate) fn summary(checks: &[Check]) -> String {
    let count = |status| checks.iter().filter(|c| c.status == status).count();
    let (passed, failed, skipped) = (count(Status::Ok), count(Status::Fail), count(Status::Skip));
    let made = passed + failed;
    match (failed, skipped) {
        (0, 0) => format!("All {made} checks passed.\n"),
        (0, _) => format!("{passed} passed, {skipped} skipped.\n"),
        (_, 0) => format!("{failed} of {made} checks failed.\n"),
        _ => format!("{failed} of {made} checks failed, {skipped} skipped.\n"),
    }
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
    checks.extend(database::check_database(&config.database.url));
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
    let network = runtime.block_on(network::check_network(config, url));
    runtime.shutdown_timeout(Duration::from_secs(1));
    checks.extend(network);
    checks
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checklist_counts_failures() {
        let text = render(&[
            Check::ok("a"),
            Check::fail("b", "do c"),
            Check::skip("d"),
            Check::note("e"),
        ]);
        assert!(text.contains("[note] e\n"), "{text}");
        assert!(text.contains("[FAIL] b\n       fix: do c\n"), "{text}");
        assert!(
            text.ends_with("1 of 2 checks failed, 1 skipped.\n"),
            "{text}"
        );
    }

    #[test]
    fn skipped_checks_are_not_counted_as_passed() {
        let checks = [Check::ok("a"), Check::skip("b"), Check::skip("c")];
        assert_eq!(summary(&checks), "1 passed, 2 skipped.\n");
        assert_eq!(summary(&checks[..1]), "All 1 checks passed.\n");
        assert_eq!(
            summary(&[Check::fail("a", "fix"), Check::ok("b")]),
            "1 of 2 checks failed.\n"
        );
    }
}
