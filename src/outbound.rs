//! Every HTTP client the server uses to call out (Zulip's REST API, relayed bot services, alert
//! and notification webhooks) is built here, with the same rules:
//!
//! * redirects are followed only within the origin of the first request (at most
//!   [`MAX_REDIRECTS`] hops); a redirect elsewhere is not followed, and the caller sees the 3xx
//!   answer, so that neither a bot token, an API key nor message content is re-sent to a host
//!   nobody configured;
//! * targets are `https://`, except on loopback (`localhost`, `127.0.0.0/8`, `::1`), where
//!   `http://` is accepted for a service on the same machine; [`check_url`] enforces this when
//!   the configuration is read;
//! * a loopback target is always called directly, never through a proxy (the environment's
//!   `HTTP_PROXY` / `ALL_PROXY` would otherwise receive plain-http content and credentials);
//!   other targets use the environment's proxy (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, with
//!   `NO_PROXY`), as [`Proxies`] reads it: an `https://` call goes through it as a CONNECT
//!   tunnel, so the proxy sees the host name and never the content;
//! * an answer's body is read with [`read_answer`]: at most a fixed number of bytes
//!   ([`ANSWER_LIMIT`] unless a call needs more), within the request's timeout.
//!
//! What every webhook a listener sends carries on top (Standard Webhooks id, timestamp and
//! signature) is in `handlers::webhooks`.

use std::net::IpAddr;
use std::time::Duration;

use reqwest::redirect::Policy;
use reqwest::{NoProxy, Proxy, Url};

/// Most redirects followed (all within the first request's origin).
pub const MAX_REDIRECTS: usize = 5;

/// Most bytes of an answer read ([`read_answer`]), unless a call says otherwise.
pub const ANSWER_LIMIT: usize = 64 * 1024;

/// Hosts never reached through a proxy, whatever `NO_PROXY` says (in its syntax).
const NEVER_PROXIED: &str = "localhost,127.0.0.0/8,::1";

/// A client with `timeout` for the whole request (body included), the redirect policy above,
/// and the environment's proxy for targets other than loopback.
pub fn client(timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    client_with(timeout, &Proxies::from_env())
}

/// [`client`] with the proxies given (the environment's, or a test's).
pub fn client_with(
    timeout: Duration,
    proxies: &Proxies,
) -> Result<reqwest::Client, reqwest::Error> {
    // `no_proxy()` drops reqwest's own reading of the environment, which proxies loopback too.
    let mut builder = reqwest::Client::builder()
        .timeout(timeout)
        .user_agent(concat!("zulip-listeners/", env!("CARGO_PKG_VERSION")))
        .redirect(same_origin_redirects())
        .no_proxy();
    let bypass = format!("{},{NEVER_PROXIED}", proxies.no_proxy);
    if let Some(proxy) = &proxies.http {
        builder =
            builder.proxy(Proxy::http(proxy.as_str())?.no_proxy(NoProxy::from_string(&bypass)));
    }
    if let Some(proxy) = &proxies.https {
        builder =
            builder.proxy(Proxy::https(proxy.as_str())?.no_proxy(NoProxy::from_string(&bypass)));
    }
    builder.build()
}

/// The proxies outbound calls use, read from variables named as in the environment:
/// `HTTPS_PROXY` for `https://` targets, `HTTP_PROXY` for `http://` ones, `ALL_PROXY` for
/// either when its own is not set (each also in lower case), and `NO_PROXY` for hosts to reach
/// directly. Loopback is always reached directly. A value that is not a URL is left out, with
/// a warning naming the variable (never its value, which may hold a password).
#[derive(Clone, Default)]
pub struct Proxies {
    http: Option<Url>,
    https: Option<Url>,
    no_proxy: String,
}

impl Proxies {
    /// The process environment's.
    pub fn from_env() -> Proxies {
        Proxies::from_vars(|name| std::env::var(name).ok())
    }

    /// From `var`, which looks a variable up by name.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Proxies {
        let first = |names: [&str; 2]| {
            names.into_iter().find_map(|name| {
                let value = var(name).filter(|v| !v.trim().is_empty())?;
                let value = value.trim();
                // As curl and reqwest do, a proxy without a scheme is an http:// one.
                let parsed = if value.contains("://") {
                    Url::parse(value)
                } else {
                    Url::parse(&format!("http://{value}"))
                };
                match parsed {
                    Ok(url) if url.host_str().is_some() => Some(url),
                    _ => {
                        tracing::warn!(variable = name, "not a proxy URL; ignored");
                        None
                    }
                }
            })
        };
        let all = first(["ALL_PROXY", "all_proxy"]);
        Proxies {
            http: first(["HTTP_PROXY", "http_proxy"]).or_else(|| all.clone()),
            https: first(["HTTPS_PROXY", "https_proxy"]).or(all),
            no_proxy: ["NO_PROXY", "no_proxy"]
                .into_iter()
                .find_map(&var)
                .unwrap_or_default(),
        }
    }
}

impl std::fmt::Debug for Proxies {
    /// Origins only: a proxy URL may carry a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxies")
            .field("http", &self.http.as_ref().map(crate::redact::origin_of))
            .field("https", &self.https.as_ref().map(crate::redact::origin_of))
            .field("no_proxy", &self.no_proxy)
            .finish()
    }
}

/// Reads an answer's body, at most `limit` bytes; a longer one is an error that says so,
/// and is not read further (the connection is dropped). The client's timeout covers the
/// body, so a peer that trickles it cannot hold the call beyond the request's deadline.
pub async fn read_answer(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<bytes::Bytes, String> {
    let origin = crate::redact::origin_of(response.url());
    let too_long = || {
        format!(
            "the answer from {origin} is longer than {}, the most this server reads",
            size_text(limit)
        )
    };
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(too_long());
    }
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = response.chunk().await.map_err(crate::redact::http_error)? {
        if body.len() + chunk.len() > limit {
            return Err(too_long());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// `64 KiB`, `1 MiB`, or bytes.
fn size_text(bytes: usize) -> String {
    match bytes {
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{} MiB", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{} KiB", n >> 10),
        n => format!("{n} bytes"),
    }
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

    #[test]
    fn proxies_come_from_the_variables_given() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            Proxies::from_vars(move |name| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| v.to_string())
            })
        };
        let only_all = vars(&[("ALL_PROXY", "http://user:pw@proxy.internal:3128")]);
        assert_eq!(
            only_all.http.as_ref().map(Url::as_str),
            Some("http://user:pw@proxy.internal:3128/")
        );
        assert_eq!(only_all.https, only_all.http);
        let shown = format!("{only_all:?}");
        assert!(!shown.contains("pw"), "{shown}");
        let split = vars(&[
            ("https_proxy", "proxy.internal:8443"),
            ("HTTP_PROXY", "http://p:1"),
            ("ALL_PROXY", "http://all:2"),
            ("NO_PROXY", "internal.example"),
        ]);
        assert_eq!(
            split.https.as_ref().map(Url::as_str),
            Some("http://proxy.internal:8443/")
        );
        assert_eq!(split.http.as_ref().map(Url::as_str), Some("http://p:1/"));
        assert_eq!(split.no_proxy, "internal.example");
        let broken = vars(&[("HTTPS_PROXY", "http://")]);
        assert!(broken.https.is_none() && broken.http.is_none());
        assert!(client_with(Duration::from_secs(1), &split).is_ok());
    }

    #[test]
    fn sizes_are_written_for_people() {
        assert_eq!(size_text(ANSWER_LIMIT), "64 KiB");
        assert_eq!(size_text(1 << 20), "1 MiB");
        assert_eq!(size_text(1000), "1000 bytes");
    }
}
