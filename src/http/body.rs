//! Reading request bodies from clients that may be hostile.
//!
//! Memory follows what actually arrives, never what a client declares in `Content-Length`;
//! the whole body must arrive within `server.client_timeout` (408 otherwise); and all bodies
//! being read at once share one budget, `server.unverified_body_bytes` (503 with
//! `Retry-After` beyond it), so that many slow or idle connections cannot add up to more
//! than a fixed amount of memory before their requests are authenticated.
//!
//! One peer (a client address: an IPv4 address, or the /64 network of an IPv6 one) may hold
//! at most its share of that budget, `server.unverified_body_bytes_per_peer`, so that one
//! client holding many slow bodies cannot take the whole budget from the others (503 too).
//! The peers are counted only while they have a body being read: at most one entry per open
//! connection, removed when its last body ends.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use actix_web::web::{self, Bytes, BytesMut};
use actix_web::{HttpRequest, http::header};
use futures_util::StreamExt;

use super::ApiError;
use crate::telemetry::metric;

/// The most reserved up front for a body, whatever its declared length.
const INITIAL_CAPACITY: usize = 16 * 1024;

/// How bodies are read: the deadline and the shared budget.
#[derive(Clone)]
pub struct BodyRules {
    pub deadline: Duration,
    pub budget: Arc<BodyBudget>,
}

impl BodyRules {
    /// `budget_bytes` over every peer, `per_peer` for one.
    pub fn new(deadline: Duration, budget_bytes: usize, per_peer: usize) -> BodyRules {
        BodyRules {
            deadline,
            budget: Arc::new(BodyBudget::new(budget_bytes, per_peer)),
        }
    }
}

/// Who a body comes from, for the per-peer share: an IPv4 address, or an IPv6 address's /64
/// network (one host commonly has a whole /64); `None` when the address is not known.
type Peer = Option<IpAddr>;

fn peer_of(addr: Option<SocketAddr>) -> Peer {
    Some(match addr?.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
        v4 => v4,
    })
}

/// Why a body could not take more of the budget.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    /// The whole budget is taken.
    Full,
    /// This peer holds its share already.
    PeerShare,
}

/// Bytes of bodies being read, over every request (at most `limit`) and per peer (at most
/// `per_peer`).
pub struct BodyBudget {
    limit: usize,
    per_peer: usize,
    in_use: AtomicUsize,
    /// Bytes held per peer, for the peers with a body being read (no entry at zero).
    peers: Mutex<HashMap<Peer, usize>>,
}

impl BodyBudget {
    pub fn new(limit: usize, per_peer: usize) -> BodyBudget {
        BodyBudget {
            limit,
            per_peer: per_peer.min(limit),
            in_use: AtomicUsize::new(0),
            peers: Mutex::new(HashMap::new()),
        }
    }

    /// Bytes currently held by bodies being read.
    pub fn in_use(&self) -> usize {
        self.in_use.load(Ordering::Relaxed)
    }

    /// Peers with a body being read.
    pub fn peers(&self) -> usize {
        self.peers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    fn try_take(&self, peer: Peer, n: usize) -> Result<(), Refusal> {
        // Short and never held across an await: the map is updated with the total.
        let mut peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        let held = peers.get(&peer).copied().unwrap_or(0);
        if held
            .checked_add(n)
            .is_none_or(|after| after > self.per_peer)
        {
            return Err(Refusal::PeerShare);
        }
        self.in_use
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|total| *total <= self.limit)
            })
            .map_err(|_| Refusal::Full)?;
        peers.insert(peer, held + n);
        Ok(())
    }

    fn give_back(&self, peer: Peer, n: usize) {
        if n == 0 {
            return;
        }
        let mut peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(held) = peers.get_mut(&peer) {
            *held = held.saturating_sub(n);
            if *held == 0 {
                peers.remove(&peer);
            }
        }
        self.in_use.fetch_sub(n, Ordering::AcqRel);
    }
}

/// What one body holds of the budget; given back when the read ends, however it ends.
struct Reservation<'a> {
    budget: &'a BodyBudget,
    peer: Peer,
    held: usize,
}

impl Reservation<'_> {
    fn grow(&mut self, n: usize) -> Result<(), Refusal> {
        self.budget.try_take(self.peer, n)?;
        self.held += n;
        Ok(())
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.budget.give_back(self.peer, self.held);
    }
}

/// Reads the whole body: at most `limit` bytes (413), within the deadline (408), within the
/// shared budget (503).
pub async fn read_body(
    req: &HttpRequest,
    payload: web::Payload,
    limit: usize,
    rules: &BodyRules,
) -> Result<Bytes, ApiError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let deadline = rules.deadline;
    let peer = peer_of(req.peer_addr());
    match tokio::time::timeout(deadline, read_within(payload, declared, limit, rules, peer)).await {
        Ok(result) => result,
        Err(_) => {
            metric::body_refused("timeout");
            tracing::info!(
                path = req.path(),
                "request body not received within server.client_timeout; answered 408"
            );
            Err(ApiError::RequestTimeout(format!(
                "the request body did not arrive within {} (server.client_timeout)",
                humantime::format_duration(deadline)
            )))
        }
    }
}

async fn read_within(
    mut payload: web::Payload,
    declared: Option<usize>,
    limit: usize,
    rules: &BodyRules,
    peer: Peer,
) -> Result<Bytes, ApiError> {
    let mut reservation = Reservation {
        budget: &rules.budget,
        peer,
        held: 0,
    };
    let mut body = BytesMut::with_capacity(declared.unwrap_or(1024).min(INITIAL_CAPACITY));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::BadRequest(format!("the request body could not be read: {e}"))
        })?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge { limit });
        }
        match reservation.grow(chunk.len()) {
            Ok(()) => {}
            Err(Refusal::Full) => {
                metric::body_refused("budget");
                tracing::warn!(
                    in_use = rules.budget.in_use(),
                    "too many request bodies being read at once (server.unverified_body_bytes); answered 503"
                );
                return Err(ApiError::Unavailable(
                    "the server is reading too many request bodies at once \
                     (server.unverified_body_bytes); send it again later"
                        .into(),
                ));
            }
            Err(Refusal::PeerShare) => {
                metric::body_refused("peer_share");
                tracing::warn!(
                    peer = ?peer,
                    share = rules.budget.per_peer,
                    "one client is sending too many request bodies at once \
                     (server.unverified_body_bytes_per_peer); answered 503"
                );
                return Err(ApiError::Unavailable(format!(
                    "this client is already sending {} bytes of request bodies, its share of \
                     server.unverified_body_bytes (server.unverified_body_bytes_per_peer); \
                     send it again once those are done",
                    rules.budget.per_peer
                )));
            }
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reservation(budget: &BodyBudget, peer: Peer) -> Reservation<'_> {
        Reservation {
            budget,
            peer,
            held: 0,
        }
    }

    #[test]
    fn the_budget_is_shared_and_given_back() {
        let budget = BodyBudget::new(100, 100);
        let one = Some(IpAddr::from([192, 0, 2, 1]));
        {
            let mut a = reservation(&budget, one);
            assert_eq!(a.grow(60), Ok(()));
            let mut b = reservation(&budget, one);
            assert_eq!(b.grow(41), Err(Refusal::PeerShare), "over the peer's share");
            assert_eq!(b.grow(40), Ok(()));
            assert_eq!(budget.in_use(), 100);
        }
        assert_eq!(budget.in_use(), 0, "every reservation is given back");
        assert_eq!(
            budget.peers(),
            0,
            "no peer is remembered once its bodies are read"
        );
        assert!(budget.try_take(one, usize::MAX).is_err(), "no overflow");
    }

    #[test]
    fn each_peer_gets_its_share_and_no_more() {
        let budget = BodyBudget::new(100, 30);
        let (a, b, c, d) = (
            Some(IpAddr::from([192, 0, 2, 1])),
            Some(IpAddr::from([192, 0, 2, 2])),
            Some(IpAddr::from([192, 0, 2, 3])),
            Some(IpAddr::from([192, 0, 2, 4])),
        );
        let mut held = Vec::new();
        for peer in [a, b, c] {
            let mut r = reservation(&budget, peer);
            assert_eq!(r.grow(30), Ok(()));
            held.push(r);
        }
        let mut more = reservation(&budget, a);
        assert_eq!(more.grow(1), Err(Refusal::PeerShare));
        let mut last = reservation(&budget, d);
        assert_eq!(
            last.grow(11),
            Err(Refusal::Full),
            "the whole budget still counts"
        );
        assert_eq!(last.grow(10), Ok(()));
        assert_eq!(budget.peers(), 4);
        drop(held);
        drop(last);
        assert_eq!((budget.in_use(), budget.peers()), (0, 0));
    }

    #[test]
    fn peers_are_addresses_or_ipv6_networks() {
        let at = |ip: &str| peer_of(Some(SocketAddr::new(ip.parse().expect("ip"), 1)));
        assert_eq!(at("2001:db8:1:2:aaaa::1"), at("2001:db8:1:2:bbbb::9"));
        assert_ne!(at("2001:db8:1:2::1"), at("2001:db8:1:3::1"));
        assert_eq!(at("::ffff:192.0.2.7"), at("192.0.2.7"));
        assert_ne!(at("192.0.2.7"), at("192.0.2.8"));
        assert_eq!(peer_of(None), None);
    }
}
