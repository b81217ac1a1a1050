//! `[server]` (the HTTP listener, its limits and the memory budget, with [`MemoryPlan`], how
//! that budget is shared out) and `[metrics]` (the separate `/metrics` listener).

use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

use super::checked;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on, e.g. `127.0.0.1:8080`.
    #[serde(deserialize_with = "checked::address")]
    pub bind: SocketAddr,
    /// HTTP worker threads; 0 means one per CPU core.
    pub workers: usize,
    /// Largest request body accepted on the outgoing-webhook routes, in bytes.
    #[serde(deserialize_with = "checked::count::<1024, { u64::MAX }, _, _>")]
    pub max_body_bytes: usize,
    /// How long listeners may take before the HTTP answer is sent without a reply; `None`
    /// derives it from `zulip_outgoing_webhook_timeout` (see [`ServerConfig::reply_deadline`]).
    #[serde(default, with = "humantime_serde")]
    pub reply_deadline: Option<Duration>,
    /// Zulip's `OUTGOING_WEBHOOK_TIMEOUT_SECONDS` (default 10 s): how long Zulip waits for an
    /// answer before it gives up and retries.
    #[serde(deserialize_with = "checked::duration::<1000, 600_000, _>")]
    pub zulip_outgoing_webhook_timeout: Duration,
    /// How long a graceful shutdown may take before connections are dropped.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// How long a client may take to send a request head, and separately its body (408
    /// after it).
    #[serde(deserialize_with = "checked::duration::<100, 600_000, _>")]
    pub client_timeout: Duration,
    /// Most connections open at once (over all workers); more wait in the kernel's backlog.
    pub max_connections: NonZeroUsize,
    /// Most bytes of request bodies being read (not yet verified) at once, over all
    /// requests; a body that would exceed it is answered 503 with `Retry-After`.
    pub unverified_body_bytes: usize,
    /// Most of those bytes one peer (an IPv4 address, an IPv6 /64) may hold at once; `None`
    /// is [`ServerConfig::body_share`]'s default.
    #[serde(default)]
    pub unverified_body_bytes_per_peer: Option<usize>,
    /// The memory the server sizes its caches and pools for, in bytes, written like
    /// `"64MiB"`: a quarter of it is SQLite's page cache, shared evenly by every connection
    /// (see [`ServerConfig::memory`]).
    #[serde(deserialize_with = "memory_budget")]
    pub memory_budget: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    pub enabled: bool,
    /// Address of the separate listener that serves `GET /metrics`.
    #[serde(deserialize_with = "checked::address")]
    pub bind: SocketAddr,
}

/// Smallest `server.memory_budget` accepted.
const MIN_MEMORY_BUDGET: u64 = 16 << 20;
/// Smallest SQLite page cache a connection may be left with (8 pages of 16 KiB).
pub(super) const MIN_SQLITE_CACHE_PER_CONNECTION: u64 = 128 << 10;

/// How `server.memory_budget` is shared out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryPlan {
    /// The whole budget, in bytes.
    pub budget_bytes: u64,
    /// SQLite connections that hold a page cache: the pool, the writer's and the
    /// checkpointer's.
    pub sqlite_connections: u64,
    /// Page cache of the writer's connection, in bytes. Every acknowledged event goes through
    /// it, and a transaction whose changed pages do not fit in it writes them to the log more
    /// than once (and reads them back), so it gets half of the page caches' share.
    pub sqlite_writer_cache: u64,
    /// Page cache of each other SQLite connection (pooled, the checkpointer's), in bytes.
    pub sqlite_cache_per_connection: u64,
}

impl MemoryPlan {
    /// A quarter of `budget_bytes` for SQLite's page caches: half of it for the writer's
    /// connection, the other half split over the pool's connections and the checkpointer's.
    /// The rest of the budget is headroom for what traffic allocates (bodies being read,
    /// batches in flight, rate-limiter keys).
    pub fn new(budget_bytes: u64, pool_size: u32) -> MemoryPlan {
        let page_caches = budget_bytes / 4;
        let sqlite_writer_cache = page_caches / 2;
        let others = u64::from(pool_size) + 1;
        MemoryPlan {
            budget_bytes,
            sqlite_connections: others + 1,
            sqlite_writer_cache,
            sqlite_cache_per_connection: (page_caches - sqlite_writer_cache) / others,
        }
    }

    /// The value for `PRAGMA cache_size` of a pooled or the checkpointer's connection
    /// (negative: KiB rather than pages).
    pub fn sqlite_cache_size_pragma(&self) -> i64 {
        kib_pragma(self.sqlite_cache_per_connection)
    }

    /// The value for `PRAGMA cache_size` of the writer's connection.
    pub fn sqlite_writer_cache_size_pragma(&self) -> i64 {
        kib_pragma(self.sqlite_writer_cache)
    }

    /// Page-cache bytes of every SQLite connection together, at most.
    pub fn sqlite_cache_total(&self) -> u64 {
        self.sqlite_writer_cache + self.sqlite_cache_per_connection * (self.sqlite_connections - 1)
    }
}

fn kib_pragma(bytes: u64) -> i64 {
    -i64::try_from(bytes / 1024).unwrap_or(i64::MAX)
}

/// Reads a size like `64MiB`, `512 KiB`, `1GiB`, `65536` (bytes); `MB`/`KB`/`GB` are read as
/// their binary counterparts.
pub fn parse_byte_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size like \"64MiB\""))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{text}` (use B, KiB, MiB or GiB)"
            ));
        }
    };
    number
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("`{text}` is too large"))
}

/// `server.memory_budget`: a size of at least 16MiB.
fn memory_budget<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    let budget = parse_byte_size(&String::deserialize(deserializer)?).map_err(D::Error::custom)?;
    if budget < MIN_MEMORY_BUDGET {
        return Err(D::Error::custom(format!(
            "must be at least 16MiB (is {budget} bytes)"
        )));
    }
    Ok(budget)
}

impl ServerConfig {
    /// Most bytes of request bodies one peer may have being read at once:
    /// `unverified_body_bytes_per_peer` when set, else an eighth of `unverified_body_bytes`
    /// but at least `largest_body` (the largest body a route allows), so that one body of any
    /// allowed size always fits.
    pub fn body_share(&self, largest_body: usize) -> usize {
        self.unverified_body_bytes_per_peer
            .unwrap_or((self.unverified_body_bytes / 8).max(largest_body))
            .min(self.unverified_body_bytes)
    }

    /// How the memory budget is shared out with a pool of `pool_size` connections.
    pub fn memory(&self, pool_size: NonZeroU32) -> MemoryPlan {
        MemoryPlan::new(self.memory_budget, pool_size.get())
    }

    /// The reply deadline: `reply_deadline` when set, else four fifths of Zulip's timeout
    /// (8 s for Zulip's default 10 s), which leaves time for the answer to travel back.
    pub fn reply_deadline(&self) -> Duration {
        self.reply_deadline
            .unwrap_or_else(|| self.zulip_outgoing_webhook_timeout.mul_f64(0.8))
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use std::time::Duration;

    #[test]
    fn reply_deadline_follows_zulips_outgoing_webhook_timeout() {
        let longer = Config::from_toml("[server]\nzulip_outgoing_webhook_timeout = \"30s\"\n")
            .expect("a longer Zulip timeout loads");
        assert_eq!(longer.server.reply_deadline(), Duration::from_secs(24));
        let explicit = Config::from_toml(
            "[server]\nzulip_outgoing_webhook_timeout = \"30s\"\nreply_deadline = \"20s\"\n",
        )
        .expect("a deadline below a longer Zulip timeout loads");
        assert_eq!(explicit.server.reply_deadline(), Duration::from_secs(20));
        let shorter = Config::from_toml("[server]\nzulip_outgoing_webhook_timeout = \"5s\"\n")
            .expect("a shorter Zulip timeout loads");
        assert_eq!(shorter.server.reply_deadline(), Duration::from_secs(4));

        let err = Config::from_toml(
            "[server]\nzulip_outgoing_webhook_timeout = \"5s\"\nreply_deadline = \"8s\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("server.reply_deadline") && err.contains("zulip_outgoing_webhook_timeout"),
            "{err}"
        );
        let err = Config::from_toml(
            "[server]\nzulip_outgoing_webhook_timeout = \"5s\"\n[bots.b]\nemail = \"b@x\"\ntoken = \"t\"\nreply_deadline = \"6s\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("bots.b.reply_deadline"), "{err}");
        let err = Config::from_toml("[server]\nzulip_outgoing_webhook_timeout = \"0s\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("server.zulip_outgoing_webhook_timeout"),
            "{err}"
        );
    }

    #[test]
    fn one_peers_share_of_the_body_budget() {
        let largest = |c: &Config| c.server.max_body_bytes.max(c.forwarder.max_body_bytes);
        let default = Config::from_toml("").expect("defaults load");
        assert_eq!(default.server.body_share(largest(&default)), 5 << 20);
        let big =
            Config::from_toml("[server]\nunverified_body_bytes = 268435456\n").expect("loads");
        assert_eq!(big.server.body_share(largest(&big)), 32 << 20, "an eighth");
        let set = Config::from_toml("[server]\nunverified_body_bytes_per_peer = 33554432\n")
            .expect("loads");
        assert_eq!(set.server.body_share(largest(&set)), 32 << 20);
        for wrong in ["1024", "33554433"] {
            let err = Config::from_toml(&format!(
                "[server]\nunverified_body_bytes_per_peer = {wrong}\n"
            ))
            .unwrap_err()
            .to_string();
            assert!(
                err.contains("server.unverified_body_bytes_per_peer")
                    && err.contains("largest body"),
                "{err}"
            );
        }
    }

    #[test]
    fn addresses_are_checked_with_their_key() {
        let err = Config::from_toml("[server]\nbind = \"localhost\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("server.bind") && err.contains("127.0.0.1:8080"),
            "{err}"
        );
    }
}
