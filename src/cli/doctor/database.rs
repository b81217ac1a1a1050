//! The database checks of `doctor`: reachable within the timeout, migrations applied, and for
//! SQLite the free space of the file system that holds it.

use std::path::Path;
use std::sync::mpsc;

use super::{CHECK_TIMEOUT, Check};
use crate::config::DatabaseTarget;
use crate::db::{establish, pending_migrations};

/// Free space below which the SQLite database's file system fails the check.
const MIN_FREE_BYTES: u64 = 512 * 1024 * 1024;

/// Database reachable, migrations current and, for SQLite, disk space.
pub(super) fn check_database(target: &DatabaseTarget) -> Vec<Check> {
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
}
