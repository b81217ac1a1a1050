//! What may be shown of a secret-bearing value: the one place that turns URLs, database URLs,
//! handler settings and HTTP-client errors into text fit for logs, the event log, the admin API
//! and the command line.
//!
//! * A URL is shown as its origin (`https://hooks.example.com`): webhook URLs often carry their
//!   secret in the path or the query, and user info may hold a password.
//! * A database URL keeps everything but its password (user info password and `password=`
//!   query parameters).
//! * Handler settings keep their shape; secret keys (`token`, `api_key`, `password`, `secret`,
//!   …) become `"<redacted>"` and URL strings become their origin.
//! * An HTTP-client error is described without the URL reqwest puts in its text, with the
//!   origin instead and the chain of causes.

use std::error::Error as _;

use reqwest::Url;

/// Shown in place of a secret.
pub const REDACTED: &str = "<redacted>";

/// The origin of a URL (`scheme://host[:port]`), or a placeholder when it is not a URL.
pub fn url_origin(url: &str) -> String {
    match Url::parse(url) {
        Ok(parsed) => origin_of(&parsed),
        Err(_) => "<not a URL>".to_string(),
    }
}

/// The origin of a parsed URL (`scheme://host[:port]`).
pub fn origin_of(url: &Url) -> String {
    match url.host_str() {
        Some(host) => match url.port() {
            Some(port) => format!("{}://{host}:{port}", url.scheme()),
            None => format!("{}://{host}", url.scheme()),
        },
        None => format!("{}:", url.scheme()),
    }
}

/// A database URL with its password masked (`postgres://user:<redacted>@host/db`); SQLite
/// paths are shown as they are.
pub fn database_url(url: &str) -> String {
    let trimmed = url.trim();
    if !(trimmed.starts_with("postgres://") || trimmed.starts_with("postgresql://")) {
        return trimmed.to_string();
    }
    let Ok(mut parsed) = Url::parse(trimmed) else {
        // Unparseable: show the scheme only rather than risk the password.
        return format!(
            "{}://{REDACTED}",
            trimmed.split("://").next().unwrap_or("postgres")
        );
    };
    if parsed.password().is_some() && parsed.set_password(Some(REDACTED)).is_err() {
        // A password the URL type cannot replace: show nothing of the URL's authority.
        return format!("{}://{REDACTED}", parsed.scheme());
    }
    if parsed.query().is_some() {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(k, v)| {
                let v = if is_secret_key(&k) {
                    REDACTED.to_string()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.to_string()
}

/// Whether a settings key names a secret.
pub fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    [
        "token", "api_key", "apikey", "key", "password", "secret", "passfile",
    ]
    .iter()
    .any(|s| key == *s || key.ends_with(&format!("_{s}")) || key.ends_with(&format!("{s}s")))
}

/// Handler settings fit to be stored or shown: secret keys redacted, URLs cut to their origin,
/// at any depth.
pub fn settings(value: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let shown = if is_secret_key(k) && !v.is_null() {
                        Value::String(REDACTED.to_string())
                    } else {
                        settings(v)
                    };
                    (k.clone(), shown)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(settings).collect()),
        Value::String(s) if looks_like_url(s) => Value::String(url_origin(s)),
        other => other.clone(),
    }
}

fn looks_like_url(s: &str) -> bool {
    let lower = s.trim_start().to_ascii_lowercase();
    lower.starts_with("http://") || lower.starts_with("https://")
}

/// An HTTP-client error as text without its URL: what failed, the origin it was talking to,
/// and the causes.
pub fn http_error(error: reqwest::Error) -> String {
    let origin = error.url().map(origin_of);
    let error = error.without_url();
    let mut text = error.to_string();
    if let Some(origin) = origin {
        text.push_str(&format!(" (to {origin})"));
    }
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !cause_text.is_empty() && !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_cut_to_their_origin() {
        assert_eq!(
            url_origin("https://hooks.example.com/services/T000/B000/XXXXSECRET?x=1"),
            "https://hooks.example.com"
        );
        assert_eq!(
            url_origin("http://user:pw@127.0.0.1:5002/relay"),
            "http://127.0.0.1:5002"
        );
        assert_eq!(url_origin("not a url"), "<not a URL>");
    }

    #[test]
    fn database_passwords_are_masked() {
        let shown = database_url("postgres://listener:S3cretDbPass@db.internal/zl");
        assert!(!shown.contains("S3cretDbPass"), "{shown}");
        assert!(shown.contains("listener") && shown.contains("db.internal/zl"));
        let shown = database_url("postgresql://u@h/db?password=S3cret&sslmode=require");
        assert!(!shown.contains("S3cret"), "{shown}");
        assert!(shown.contains("sslmode=require"), "{shown}");
        assert_eq!(database_url("sqlite://data/x.db"), "sqlite://data/x.db");
        assert!(!database_url("postgres://u:p@[bad").contains(":p@"));
        assert!(!database_url("postgres://u:pw9@/db?host=/run/pg").contains("pw9"));
    }

    #[test]
    fn settings_keep_their_shape_without_secrets() {
        let value = serde_json::json!({
            "url": "https://bots.example.com/hook/SECRET",
            "token": "T0KEN",
            "token_file": "/etc/x",
            "timeout": "10s",
            "rules": [{ "name": "r", "webhook": "https://h.example.com/p/SECRET", "pattern": "x" }],
        });
        let shown = settings(&value).to_string();
        assert!(
            !shown.contains("SECRET") && !shown.contains("T0KEN"),
            "{shown}"
        );
        assert!(shown.contains("https://bots.example.com") && shown.contains("10s"));
        assert!(shown.contains("https://h.example.com"), "{shown}");
    }
}
