//! Who an admin request comes from: the named admin tokens ([`AdminTokens`], every one
//! compared in constant time), the [`Admin`] that the admin API's handlers take to learn whose
//! token it was (put on the request by the admin gate), and the client's address as the
//! trusted proxies in front of the server name it ([`client_address`]).

use std::future::{Ready, ready};
use std::net::IpAddr;

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpMessage, HttpRequest, web};

use super::{ApiError, AppState};
use crate::config::{ProxyRange, Secret};
use crate::verification::token_matches;

/// The admin tokens with their names (`admin.token` is named `admin`); none: the admin API
/// and the dashboard are off.
pub struct AdminTokens(Vec<(String, Secret)>);

impl AdminTokens {
    pub fn new(tokens: Vec<(String, Secret)>) -> AdminTokens {
        AdminTokens(tokens)
    }

    /// No token configured: the admin API and the dashboard are off.
    pub fn is_off(&self) -> bool {
        self.0.is_empty()
    }

    /// The name of the token `given` is. Every token is compared (in constant time), so how
    /// long this takes does not tell which one matched, or how many there are before it.
    pub fn identify(&self, given: &str) -> Option<&str> {
        let mut found = None;
        for (name, token) in &self.0 {
            if token_matches(token, given) && found.is_none() {
                found = Some(name.as_str());
            }
        }
        found
    }
}

/// The admin who made a request: the name of the admin token it carried. An admin API
/// handler takes it as an argument; the admin gate has already checked the token and put it
/// on the request (without the gate, the token is checked here, 401 or 404 as the gate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admin {
    name: String,
}

impl Admin {
    pub fn new(name: impl Into<String>) -> Admin {
        Admin { name: name.into() }
    }

    /// The name of the token, as the history and the logs record it.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl FromRequest for Admin {
    type Error = actix_web::Error;
    type Future = Ready<Result<Admin, actix_web::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        if let Some(admin) = req.extensions().get::<Admin>() {
            return ready(Ok(admin.clone()));
        }
        let admin = match req.app_data::<web::Data<AppState>>() {
            Some(state) => super::admin::authorize(req, state),
            None => Err(ApiError::Internal(
                "the application state is missing".into(),
            )),
        };
        ready(admin.map_err(actix_web::Error::from))
    }
}

/// Most `X-Forwarded-For` hops looked at, from the right.
const MAX_HOPS: usize = 32;

/// The client's address: the TCP peer, unless the peer is one of the `trusted` proxies. Then
/// it is the right-most `X-Forwarded-For` hop that is not a trusted proxy (each proxy appends
/// the address it was reached from), or `X-Real-IP` when there is no `X-Forwarded-For`. A hop
/// that is not an address ends the walk at the last trusted one.
pub fn client_address(req: &HttpRequest, trusted: &[ProxyRange]) -> IpAddr {
    let peer = req
        .peer_addr()
        .map_or(IpAddr::from([0, 0, 0, 0]), |a| a.ip().to_canonical());
    let is_trusted = |ip: IpAddr| trusted.iter().any(|range| range.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let texts = |name: &str| -> Vec<&str> {
        req.headers()
            .get_all(name)
            .filter_map(|v| v.to_str().ok())
            .collect()
    };
    let forwarded = texts("x-forwarded-for");
    if forwarded.is_empty() {
        return texts("x-real-ip")
            .first()
            .and_then(|v| v.trim().parse::<IpAddr>().ok())
            .map_or(peer, |ip| ip.to_canonical());
    }
    let hops = forwarded
        .iter()
        .rev()
        .flat_map(|v| v.rsplit(','))
        .take(MAX_HOPS);
    let mut client = peer;
    for hop in hops {
        let Ok(ip) = hop.trim().parse::<IpAddr>() else {
            return client;
        };
        client = ip.to_canonical();
        if !is_trusted(client) {
            return client;
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    fn ranges(list: &[&str]) -> Vec<ProxyRange> {
        list.iter()
            .map(|r| r.parse().unwrap_or_else(|e| panic!("{e}")))
            .collect()
    }

    fn from(peer: &str, headers: &[(&str, &str)], trusted: &[&str]) -> String {
        let mut req = TestRequest::default().peer_addr(
            format!("{peer}:4000")
                .parse()
                .unwrap_or_else(|e| panic!("{e}")),
        );
        for (name, value) in headers {
            req = req.append_header((*name, *value));
        }
        client_address(&req.to_http_request(), &ranges(trusted)).to_string()
    }

    #[test]
    fn forwarded_addresses_count_only_from_trusted_proxies() {
        let loopback = ["127.0.0.0/8", "::1"];
        let xff = [("x-forwarded-for", "203.0.113.7")];
        assert_eq!(from("127.0.0.1", &xff, &loopback), "203.0.113.7");
        // Not from a trusted proxy: the header is the client's own word.
        assert_eq!(from("198.51.100.2", &xff, &loopback), "198.51.100.2");
        assert_eq!(from("127.0.0.1", &xff, &[]), "127.0.0.1");
        // A client's own X-Forwarded-For comes first; the proxy appended the real one.
        let spoofed = [("x-forwarded-for", "10.9.9.9, 203.0.113.7")];
        assert_eq!(from("127.0.0.1", &spoofed, &loopback), "203.0.113.7");
        // A chain of trusted proxies is walked through.
        let chain = [("x-forwarded-for", "203.0.113.7, 10.0.0.5")];
        assert_eq!(
            from("127.0.0.1", &chain, &["127.0.0.1", "10.0.0.0/8"]),
            "203.0.113.7"
        );
        let real_ip = [("x-real-ip", "2001:db8::5")];
        assert_eq!(from("127.0.0.1", &real_ip, &loopback), "2001:db8::5");
        let garbage = [("x-forwarded-for", "nonsense")];
        assert_eq!(from("127.0.0.1", &garbage, &loopback), "127.0.0.1");
        assert_eq!(from("127.0.0.1", &[], &loopback), "127.0.0.1");
    }

    #[test]
    fn a_token_names_its_admin() {
        let tokens = AdminTokens::new(vec![
            ("admin".into(), Secret::new("a".repeat(24))),
            ("alice".into(), Secret::new("b".repeat(24))),
        ]);
        assert_eq!(tokens.identify(&"b".repeat(24)), Some("alice"));
        assert_eq!(tokens.identify(&"a".repeat(24)), Some("admin"));
        assert_eq!(tokens.identify("nope"), None);
        assert_eq!(tokens.identify(""), None);
        assert!(AdminTokens::new(Vec::new()).is_off());
    }
}
