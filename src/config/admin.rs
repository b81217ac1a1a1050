//! `[admin]` (the admin tokens, each with the name recorded with what it does; the proxies
//! trusted to name the client; the dashboard's public path) and `[error_handling]` (circuit
//! breakers, auto-disable, and where their transitions are announced).

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, Secret, checked, invalid};

/// Shortest admin token accepted, in characters.
pub const MIN_ADMIN_TOKEN_CHARS: usize = 24;
/// The name `admin.token` is known by in records.
pub const DEFAULT_ADMIN_NAME: &str = "admin";
/// Longest name of an admin token, in characters.
const MAX_ADMIN_NAME_CHARS: usize = 64;

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Bearer token for `/admin/`, known as [`DEFAULT_ADMIN_NAME`]; the admin API is off while
    /// neither it nor `tokens` holds one.
    #[serde(default)]
    pub token: Secret,
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Named admin tokens (name → token): every admin action records the name of the token
    /// that made it.
    #[serde(default)]
    pub tokens: BTreeMap<String, Secret>,
    /// Named admin tokens read from files (name → path); a name is in `tokens` or here.
    #[serde(default)]
    pub token_files: BTreeMap<String, PathBuf>,
    /// Peers (addresses or CIDR ranges) whose `X-Forwarded-For` / `X-Real-IP` names the
    /// client of a dashboard sign-in (for the failed-attempt limit and the log); any other
    /// peer is the client itself.
    #[serde(default = "loopback")]
    pub trusted_proxies: Vec<ProxyRange>,
    /// The path in front of `/admin` under which the browser reaches the dashboard through a
    /// reverse proxy (e.g. `/listeners`); unset: the proxy's `X-Forwarded-Prefix`, if any.
    #[serde(default)]
    pub public_path: Option<String>,
}

fn loopback() -> Vec<ProxyRange> {
    ["127.0.0.0/8", "::1"]
        .into_iter()
        .filter_map(|r| r.parse().ok())
        .collect()
}

impl fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminConfig")
            .field("token", &self.token)
            .field("tokens", &self.tokens.keys().collect::<Vec<_>>())
            .field("trusted_proxies", &self.trusted_proxies)
            .finish_non_exhaustive()
    }
}

impl AdminConfig {
    /// Every admin token with its name: `admin.token` as [`DEFAULT_ADMIN_NAME`], then
    /// `admin.tokens` (after their files were read); empty: the admin API is off.
    pub fn named_tokens(&self) -> Vec<(String, Secret)> {
        let token = self.token.expose().trim();
        let default =
            (!token.is_empty()).then(|| (DEFAULT_ADMIN_NAME.to_string(), Secret::new(token)));
        default
            .into_iter()
            .chain(
                self.tokens
                    .iter()
                    .map(|(name, t)| (name.clone(), Secret::new(t.expose().trim()))),
            )
            .collect()
    }

    /// Reads `token_files` into `tokens`.
    pub(super) fn read_token_files(
        &mut self,
        read: impl Fn(&std::path::Path, &str) -> Result<Secret, ConfigError>,
    ) -> Result<(), ConfigError> {
        for (name, path) in std::mem::take(&mut self.token_files) {
            let key = format!("admin.token_files.{name}");
            if self.tokens.contains_key(&name) {
                return Err(invalid(
                    key,
                    format!("`{name}` is also in admin.tokens: give each token once"),
                ));
            }
            let token = read(&path, &key)?;
            self.tokens.insert(name, token);
        }
        Ok(())
    }

    /// Each token long enough, each name plain and used once, no token under two names.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let short = |key: String| {
            invalid(
                key,
                format!(
                    "is too short: use at least {MIN_ADMIN_TOKEN_CHARS} random characters \
                     (e.g. `openssl rand -hex 24`)"
                ),
            )
        };
        let token = self.token.expose().trim();
        if !token.is_empty() && token.chars().count() < MIN_ADMIN_TOKEN_CHARS {
            return Err(short("admin.token".into()));
        }
        let mut seen: Vec<(&str, &str)> = Vec::new();
        if !token.is_empty() {
            seen.push((DEFAULT_ADMIN_NAME, token));
        }
        for (name, secret) in &self.tokens {
            let key = format!("admin.tokens.{name}");
            let plain = !name.is_empty()
                && name.chars().count() <= MAX_ADMIN_NAME_CHARS
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._@-".contains(&b));
            if !plain {
                return Err(invalid(
                    key,
                    format!(
                        "a name is 1 to {MAX_ADMIN_NAME_CHARS} letters, digits and `._@-` \
                         (it is shown in logs and the history)"
                    ),
                ));
            }
            if name == DEFAULT_ADMIN_NAME && !token.is_empty() {
                return Err(invalid(
                    key,
                    "`admin` is the name of admin.token: give this token another name",
                ));
            }
            let value = secret.expose().trim();
            if value.chars().count() < MIN_ADMIN_TOKEN_CHARS {
                return Err(short(key));
            }
            if let Some((other, _)) = seen.iter().find(|(_, t)| *t == value) {
                return Err(invalid(
                    key,
                    format!(
                        "is the same token as `{other}`: give everyone a token of their own, \
                         so that the records name who acted"
                    ),
                ));
            }
            seen.push((name, value));
        }
        Ok(())
    }
}

/// An address or a CIDR range (`10.0.0.0/8`, `::1`) of proxies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct ProxyRange {
    network: IpAddr,
    prefix: u8,
}

impl ProxyRange {
    /// Whether `ip` is in the range (an IPv4-mapped IPv6 address counts as its IPv4 one).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for ProxyRange {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network = IpAddr::from_str(address)
            .map_err(|_| {
                format!("`{text}` is not an IP address or a CIDR range such as 10.0.0.0/8")
            })?
            .to_canonical();
        let most = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => most,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= most)
                .ok_or_else(|| format!("`{text}`: the prefix length must be 0 to {most}"))?,
        };
        Ok(ProxyRange { network, prefix })
    }
}

impl TryFrom<String> for ProxyRange {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorHandlingConfig {
    /// Consecutive failures of a listener that open its circuit breaker.
    #[serde(deserialize_with = "checked::count::<1, { u64::MAX }, _, _>")]
    pub breaker_failures: u32,
    /// How long an open breaker keeps the listener from running.
    #[serde(with = "humantime_serde")]
    pub breaker_cooldown: Duration,
    /// Failures within an hour above which a listener is disabled until an operator enables it.
    #[serde(deserialize_with = "checked::count::<1, { u64::MAX }, _, _>")]
    pub max_failures_per_hour: u32,
    /// A URL that receives a JSON POST for every breaker and auto-disable transition.
    #[serde(default, deserialize_with = "checked::outbound_url")]
    pub notification_webhook: Option<String>,
    /// A bot (with api_key and site) that posts the transitions to `notification_stream`.
    #[serde(default)]
    pub notification_bot: Option<String>,
    #[serde(default)]
    pub notification_stream: Option<String>,
    #[serde(default)]
    pub notification_topic: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(text: &str) -> ProxyRange {
        text.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn proxy_ranges_match_addresses_and_networks() {
        let ip = |t: &str| IpAddr::from_str(t).unwrap_or_else(|e| panic!("{e}"));
        assert!(range("127.0.0.0/8").contains(ip("127.0.0.9")));
        assert!(range("127.0.0.0/8").contains(ip("::ffff:127.0.0.1")));
        assert!(!range("127.0.0.0/8").contains(ip("128.0.0.1")));
        assert!(range("10.1.2.3").contains(ip("10.1.2.3")));
        assert!(!range("10.1.2.3").contains(ip("10.1.2.4")));
        assert!(range("0.0.0.0/0").contains(ip("192.0.2.1")));
        assert!(!range("0.0.0.0/0").contains(ip("2001:db8::1")));
        assert!(range("fc00::/7").contains(ip("fd12::1")));
        assert!(range("::1").contains(ip("::1")));
        for bad in ["localhost", "10.0.0.0/33", "::/129", "10.0.0.0/x", ""] {
            assert!(bad.parse::<ProxyRange>().is_err(), "{bad}");
        }
    }
}
