//! Every HTTP client the server uses to call out (Zulip's REST API, relayed bot services, alert
//! and notification webhooks) is built here, with the same rules:
//!
//! * redirects are followed only within the origin of the first request (at most
//!   [`MAX_REDIRECTS`] hops); a redirect elsewhere is not followed, and the caller sees the 3xx
//!   answer, so that neither a bot token, an API key nor message content is re-sent to a host
//!   nobody configured;
//! * targets are `https://`, except on loopback (`localhost`, `127.0.0.0/8`, `::1`), where
//!   `http://` is accepted for a service on the same machine; [`check_url`] enforces this when
//!   the configuration is read.
//!
//! What every webhook a listener sends carries on top (Standard Webhooks id, timestamp and
//! signature) is in `handlers::webhooks`.

use std::net::IpAddr;
use std::time::Duration;

use reqwest::Url;
use reqwest::redirect::Policy;

/// Most redirects followed (all within the first request's origin).
pub const MAX_REDIRECTS: usize = 5;

/// A client with `timeout` for the whole request and the redirect policy above.
pub fn client(timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .timeout(timeout)
        .user_agent(concat!("zulip-listeners/", env!("CARGO_PKG_VERSION")))
        .redirect(same_origin_redirects())
        .build()
}

/// Follows a redirect only when it stays on the origin of the first request.
fn same_origin_redirects() -> Policy {
    Policy::custom(|attempt| {
        let first = attempt.previous().first().cloned();
        if attempt.previous().len() > MAX_REDIRECTS {
            return attempt.stop();
        }
        match first {
            Some(first) if first.origin() == attempt.url().origin() => attempt.follow(),
            _ => attempt.stop(),
        }
    })
}

/// Whether a URL's host is the loopback interface.
pub fn is_loopback(url: &Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Parses an outbound target: an `https://` URL with a host, or `http://` on loopback. The
/// error says what is wrong without repeating the URL (it may hold a secret).
pub fn check_url(url: &str) -> Result<Url, String> {
    let parsed =
        Url::parse(url.trim()).map_err(|e| format!("is not a URL ({e}); give an https:// URL"))?;
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("has no host; give an https:// URL".into());
    }
    match parsed.scheme() {
        "https" => Ok(parsed),
        "http" if is_loopback(&parsed) => Ok(parsed),
        "http" => Err(format!(
            "`{}` uses http://; outbound calls need https:// (plain http is accepted only on \
             loopback: localhost, 127.0.0.1, ::1)",
            crate::redact::origin_of(&parsed)
        )),
        other => Err(format!("has the scheme `{other}`; give an https:// URL")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_everywhere_http_only_on_loopback() {
        assert!(check_url("https://chat.example.com").is_ok());
        assert!(check_url("http://127.0.0.1:5002/").is_ok());
        assert!(check_url("http://localhost:5002/").is_ok());
        assert!(check_url("http://[::1]:5002/").is_ok());
        let err = check_url("http://bots.example.com/hook/SECRET").unwrap_err();
        assert!(err.contains("https://") && !err.contains("SECRET"), "{err}");
        assert!(check_url("ftp://x.org/").is_err());
        assert!(check_url("chat.example.com").is_err());
    }
}
