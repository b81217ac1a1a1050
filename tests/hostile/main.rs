//! Hostile clients against the real server: slow and oversized bodies, invented methods,
//! unauthenticated admin bodies, extractor errors, upgrade requests. Every test sends a
//! bounded number of requests.
//!
//! A test binary of its own, not a module of `tests/it`: `invented_methods_share_one_metric_label`
//! counts the label sets of the process-wide metrics recorder, which the other integration tests
//! would fill if they ran in the same process. It shares their harness, `tests/it/support`.
//!
//! Long file: the hostile-client scenarios with the raw-socket reader they share, one per test.

// Not every part of the shared harness is used here.
#[allow(dead_code, unused_imports, unused_macros)]
#[path = "../it/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use crate::support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A raw HTTP answer read off a socket.
#[derive(Debug)]
struct RawAnswer {
    status: u16,
    head: String,
    body: String,
}

impl RawAnswer {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then_some(value.trim())
        })
    }

    fn json(&self) -> serde_json::Value {
        assert_eq!(
            self.header("content-type"),
            Some("application/json; charset=utf-8"),
            "JSON answer expected: {self:?}"
        );
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }
}

/// Reads one answer (head, then a `Content-Length` body or until the server closes).
async fn read_answer(stream: &mut TcpStream, within: Duration) -> Option<RawAnswer> {
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let status = head.split_whitespace().nth(1)?.parse().ok()?;
            let mut answer = RawAnswer {
                status,
                head,
                body: String::new(),
            };
            let length: usize = answer
                .header("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            while buf.len() < end + 4 + length {
                match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
                    Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                    _ => break,
                }
            }
            let body_end = buf.len().min(end + 4 + length);
            answer.body = String::from_utf8_lossy(&buf[end + 4..body_end]).into_owned();
            return Some(answer);
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    }
}

async fn connect(base: &str) -> TcpStream {
    let addr = base.trim_start_matches("http://");
    TcpStream::connect(addr).await.expect("connect")
}

/// A connection from another loopback address (`127.0.0.{host}`): another peer to the server.
async fn connect_from(base: &str, host: u8) -> TcpStream {
    let addr: std::net::SocketAddr = base
        .trim_start_matches("http://")
        .parse()
        .expect("server address");
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(([127, 0, 0, host], 0).into())
        .expect("bind a loopback address");
    socket.connect(addr).await.expect("connect")
}

/// The server with the admin API and `helper` running command_bot; `client_timeout` set
/// directly when given.
async fn start(db: &TestDatabase, client_timeout: Option<Duration>) -> TestServer {
    let app = TestApp::new(db).admin().helper(&["command_bot"]);
    match client_timeout {
        Some(timeout) => {
            app.start_edited(|c| c.server.client_timeout = timeout)
                .await
        }
        None => app.start().await,
    }
}

#[tokio::test]
async fn a_trickled_body_gets_408_within_the_deadline() {
    let db = TestDatabase::new(Backend::Sqlite);
    let t = start(&db, Some(Duration::from_secs(1))).await;
    let mut stream = connect(&t.base).await;
    stream
        .write_all(
            b"POST /zulip/outgoing HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{",
        )
        .await
        .expect("write");
    let started = Instant::now();
    // One byte every 200 ms: never idle, never done.
    let (mut read_half, mut write_half) = stream.into_split();
    let trickle = async move {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if write_half.write_all(b" ").await.is_err() {
                break;
            }
        }
    };
    let trickler = tokio::spawn(trickle);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match read_half.read(&mut chunk).await {
                Ok(n) if n > 0 => {
                    buf.extend_from_slice(&chunk[..n]);
                    if String::from_utf8_lossy(&buf).contains("request_timeout") {
                        break;
                    }
                }
                _ => break,
            }
        }
    })
    .await;
    trickler.abort();
    let elapsed = started.elapsed();
    let text = String::from_utf8_lossy(&buf);
    assert!(read.is_ok(), "no answer within 5 s to a trickled body");
    assert!(text.starts_with("HTTP/1.1 408"), "408 expected: {text}");
    assert!(text.contains("application/json"), "JSON expected: {text}");
    assert!(
        text.contains("server.client_timeout"),
        "names the setting: {text}"
    );
    assert!(
        elapsed < Duration::from_secs(3),
        "answered after {elapsed:?}"
    );
    t.stop().await;
}

#[tokio::test]
async fn a_slow_request_head_is_cut_off() {
    let db = TestDatabase::new(Backend::Sqlite);
    let t = start(&db, Some(Duration::from_secs(1))).await;
    let mut stream = connect(&t.base).await;
    stream
        .write_all(b"POST /zulip/outgoing HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let started = Instant::now();
    // The answer is a bare 408 (the framework writes it) or a closed connection.
    let answer = read_answer(&mut stream, Duration::from_secs(5)).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "connection held for {:?}",
        started.elapsed()
    );
    if let Some(answer) = answer {
        assert_eq!(answer.status, 408, "{answer:?}");
    }
    t.stop().await;
}

#[tokio::test]
async fn bodies_being_read_share_a_budget() {
    let db = TestDatabase::new(Backend::Sqlite);
    // Each connection sends 64 KiB of a declared 1 MiB body and then waits; the budget holds
    // 2 MiB (at least the largest body allowed: forwarder.max_body_bytes is lowered too).
    let t = TestApp::new(&db)
        .admin()
        .helper(&["command_bot"])
        .start_edited(|config| {
            config.server.client_timeout = Duration::from_secs(10);
            config.server.max_body_bytes = 1 << 20;
            config.forwarder.max_body_bytes = 1 << 20;
            config.server.unverified_body_bytes = 2 << 20;
        })
        .await;
    let piece = vec![b' '; 64 * 1024];
    let mut streams = Vec::new();
    // From 4 peers, each within its share (1 MiB: the largest body allowed), together over
    // the budget.
    for i in 0..40u8 {
        let mut stream = connect_from(&t.base, 2 + i % 4).await;
        stream
            .write_all(b"POST /zulip/outgoing HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1048576\r\n\r\n")
            .await
            .expect("head");
        stream.write_all(&piece).await.expect("piece");
        streams.push(stream);
    }
    let mut refused = 0;
    for stream in &mut streams {
        if let Some(answer) = read_answer(stream, Duration::from_millis(300)).await {
            assert_eq!(answer.status, 503, "{answer:?}");
            assert!(answer.header("retry-after").is_some(), "{answer:?}");
            let json = answer.json();
            assert_eq!(json["error"], "unavailable");
            assert!(
                json["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("server.unverified_body_bytes")),
                "{json}"
            );
            refused += 1;
        }
    }
    // 2 MiB hold 32 pieces of 64 KiB; the other connections are refused.
    assert!(
        refused >= 8,
        "only {refused} of 40 connections refused past the budget"
    );
    drop(streams);
    // Once they are gone, the budget is free again: a normal request goes through.
    let up = eventually(Duration::from_secs(5), async || {
        let answer = t
            .post_json(
                "/zulip/outgoing",
                &format!(
                    r#"{{"bot_email":"{BOT_EMAIL}","token":"{TOKEN}","trigger":"mention","message":{{"id":42,"content":"ping","type":"private","sender_id":1,"sender_email":"a@b.c","sender_full_name":"A","timestamp":1}}}}"#
                ),
            )
            .await;
        answer.status == 200
    })
    .await;
    assert!(up, "the budget was not given back");
    t.stop().await;
}

#[tokio::test]
async fn one_peer_gets_only_its_share_of_the_body_budget() {
    let db = TestDatabase::new(Backend::Sqlite);
    // An 8 MiB budget and 1 MiB bodies: a peer's share is 1 MiB (an eighth of the budget, and
    // the largest body allowed).
    let t = TestApp::new(&db)
        .forwarder()
        .helper(&["command_bot"])
        .start_edited(|config| {
            config.server.client_timeout = Duration::from_secs(10);
            config.server.max_body_bytes = 1 << 20;
            config.forwarder.max_body_bytes = 1 << 20;
            config.server.unverified_body_bytes = 8 << 20;
        })
        .await;
    // One peer (127.0.0.2) starts 40 bodies of a declared 1 MiB, sends 256 KiB of each (10 MiB
    // in all, more than the whole budget) and then waits.
    let piece = vec![b' '; 256 * 1024];
    let mut streams = Vec::new();
    for _ in 0..40 {
        let mut stream = connect_from(&t.base, 2).await;
        stream
            .write_all(b"POST /zulip/outgoing HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1048576\r\n\r\n")
            .await
            .expect("head");
        // A refused body may be answered before all of it is written: its answer counts.
        let _ = stream.write_all(&piece).await;
        streams.push(stream);
    }
    // Read every answer at once: a refused body is answered at once, a held one never.
    let answers = futures_util::future::join_all(
        streams
            .iter_mut()
            .map(|stream| read_answer(stream, Duration::from_secs(3))),
    )
    .await;
    let mut refused = 0;
    for answer in answers.into_iter().flatten() {
        assert_eq!(answer.status, 503, "{answer:?}");
        assert!(answer.header("retry-after").is_some(), "{answer:?}");
        let json = answer.json();
        assert!(
            json["message"]
                .as_str()
                .is_some_and(|m| m.contains("server.unverified_body_bytes_per_peer")),
            "{json}"
        );
        refused += 1;
    }
    // Its share holds 4 whole pieces (a few more in part, while they arrive side by side);
    // the others are refused.
    assert!(
        refused >= 30,
        "only {refused} of 40 bodies refused beyond the peer's share"
    );
    // While it holds them, another peer's outgoing webhook and signed batch go through.
    let answer = t.post_json("/zulip/outgoing", &ping(9001)).await;
    assert_eq!(answer.status, 200, "{:?}", answer.json);
    let answer = t
        .post_events(
            "msg_share_1",
            vec![envelope("share-1", message(9002, 10, "hello"))],
        )
        .await;
    assert_eq!(answer.status, 200, "{:?}", answer.json);
    drop(streams);
    t.stop().await;
}

#[tokio::test]
async fn declared_sizes_do_not_reserve_memory() {
    let db = TestDatabase::new(Backend::Sqlite);
    let config = db.config_file(&helper_bot(&["command_bot"]));
    let server = ServerProcess::start(&config.path).await;
    let pid = server.child.id();
    let rss = || -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    let before = rss();
    let mut streams = Vec::new();
    for _ in 0..300 {
        let mut stream = connect(&server.base).await;
        stream
            .write_all(b"POST /zulip/outgoing HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1048576\r\n\r\n{")
            .await
            .expect("write");
        streams.push(stream);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss();
    drop(streams);
    let grown_mib = after.saturating_sub(before) / 1024;
    assert!(
        grown_mib < 64,
        "300 connections declaring 1 MiB grew RSS by {grown_mib} MiB ({before} kB → {after} kB)"
    );
}

#[tokio::test]
async fn invented_methods_share_one_metric_label() {
    let db = TestDatabase::new(Backend::Sqlite);
    let t = start(&db, None).await;
    let mut stream = connect(&t.base).await;
    for i in 0..300 {
        let request = format!("XMETHOD{i:05} /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("write");
        let answer = read_answer(&mut stream, Duration::from_secs(5))
            .await
            .expect("answer");
        assert_eq!(answer.status, 405);
        answer.json();
    }
    let text = t.metrics().await;
    let series: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("zulip_listeners_http_requests_total{"))
        .collect();
    assert!(
        !text.contains("XMETHOD"),
        "an invented method became a label"
    );
    assert!(
        series
            .iter()
            .any(|l| l.contains("method=\"other\"") && l.contains("route=\"/healthz\"")),
        "{series:?}"
    );
    assert!(series.len() < 20, "{} series: {series:?}", series.len());
    t.stop().await;
}

#[tokio::test]
async fn admin_refuses_an_unauthenticated_body_before_reading_it() {
    let db = TestDatabase::new(Backend::Sqlite);
    let t = start(&db, None).await;
    let mut stream = connect(&t.base).await;
    // 3 MB declared, a few bytes sent: the answer must not wait for the rest.
    stream
        .write_all(b"POST /admin/dead-letters/replay HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 3000000\r\n\r\n{\"all\":")
        .await
        .expect("write");
    let answer = read_answer(&mut stream, Duration::from_secs(3))
        .await
        .expect("an answer before the body is sent");
    assert_eq!(answer.status, 401, "{answer:?}");
    assert_eq!(answer.json()["error"], "unauthorized");
    t.stop().await;
}

#[tokio::test]
async fn admin_extractor_errors_are_json() {
    let db = TestDatabase::new(Backend::Sqlite);
    let t = start(&db, None).await;
    let get = |path: &str| t.admin(reqwest::Method::GET, path);
    for path in [
        "/admin/events?page=abc",
        "/admin/events?success=maybe",
        "/admin/events?per_page=99999999999999999999999",
        "/admin/dead-letters?limit=x",
    ] {
        let answer = t.send(get(path)).await;
        assert_eq!(answer.status, 400, "{path}: {answer:?}");
        assert_eq!(answer.json["error"], "malformed_request", "{path}");
    }
    // A replay body that is not JSON, and one too large.
    let post = |body: Vec<u8>| {
        t.admin(reqwest::Method::POST, "/admin/dead-letters/replay")
            .header("content-type", "application/json")
            .body(body)
    };
    let answer = t.send(post(b"{not json".to_vec())).await;
    assert_eq!(answer.status, 400);
    // The too-large body is answered from its declared length, before it is read, and the
    // connection is closed: an HTTP client still writing the body may see a broken pipe
    // before it reads the answer, so this one is sent by hand and only partly.
    let mut stream = connect(&t.base).await;
    let head = format!(
        "POST /admin/dead-letters/replay HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        600 * 1024
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    stream.write_all(&[b' '; 16 * 1024]).await.expect("write");
    let answer = read_answer(&mut stream, Duration::from_secs(3))
        .await
        .expect("an answer before the body is sent");
    assert_eq!(answer.status, 413, "{answer:?}");
    assert_eq!(answer.json()["error"], "payload_too_large");
    t.stop().await;
}

#[tokio::test]
async fn admin_page_overflow_is_400() {
    let db = TestDatabase::new(Backend::Sqlite);
    let t = start(&db, None).await;
    let answer = t
        .send(t.admin(
            reqwest::Method::GET,
            "/admin/events?page=9223372036854775807&per_page=500",
        ))
        .await;
    assert_eq!(answer.status, 400, "{answer:?}");
    assert!(
        answer.json["message"]
            .as_str()
            .is_some_and(|m| m.contains("page")),
        "{answer:?}"
    );
    // A reasonable page still works.
    let answer = t
        .send(t.admin(reqwest::Method::GET, "/admin/events?page=3&per_page=10"))
        .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    t.stop().await;
}

#[tokio::test]
async fn upgrade_requests_are_answered_at_once() {
    let db = TestDatabase::new(Backend::Sqlite);
    let t = start(&db, None).await;
    for path in ["/zulip/outgoing", "/zulip/events", "/healthz"] {
        let mut stream = connect(&t.base).await;
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}"
        );
        stream.write_all(request.as_bytes()).await.expect("write");
        let started = Instant::now();
        let answer = read_answer(&mut stream, Duration::from_secs(3))
            .await
            .unwrap_or_else(|| panic!("{path}: an upgrade request was held unanswered"));
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(answer.status, 400, "{path}: {answer:?}");
        assert_eq!(answer.json()["error"], "upgrade_not_supported");
    }
    t.stop().await;
}

#[tokio::test]
async fn readyz_shows_no_database_details() {
    let db = TestDatabase::new(Backend::Sqlite);
    let t = start(&db, None).await;
    let answer = t.send(t.http.get(format!("{}/readyz", t.base))).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json["database"], "ok");
    // Many calls in a row reuse one ping (they all answer, quickly).
    let started = Instant::now();
    for _ in 0..50 {
        let answer = t.send(t.http.get(format!("{}/readyz", t.base))).await;
        assert_eq!(answer.status, 200);
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    t.stop().await;
}

#[tokio::test]
async fn malformed_requests_are_not_logged_as_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.toml");
    let log = dir.path().join("server.log");
    std::fs::write(
        &config,
        format!(
            "[database]\nurl = \"sqlite://{}\"\n[telemetry]\nformat = \"json\"\nlevel = \"info\"\nfile = \"{}\"\n",
            dir.path().join("db.sqlite").display(),
            log.display()
        ),
    )
    .expect("config");
    let server = ServerProcess::start(&config).await;
    for request in [
        &b"GARBAGE\r\n\r\n"[..],
        &b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad\x01Header: y\r\n\r\n"[..],
        &b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"[..],
    ] {
        let mut stream = connect(&server.base).await;
        stream.write_all(request).await.expect("write");
        let answer = read_answer(&mut stream, Duration::from_secs(3))
            .await
            .expect("an answer");
        assert_eq!(answer.status, 400, "{answer:?}");
    }
    // The server is fine and has logged nothing at ERROR for those.
    let ok = reqwest::get(format!("{}/healthz", server.base))
        .await
        .expect("healthz");
    assert!(ok.status().is_success());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let text = std::fs::read_to_string(&log).expect("log file");
    let errors: Vec<&str> = text.lines().filter(|l| l.contains("\"ERROR\"")).collect();
    assert!(
        errors.is_empty(),
        "client mistakes logged at ERROR: {errors:?}"
    );
}

#[tokio::test]
async fn a_slow_head_on_a_kept_alive_connection_is_cut_off() {
    let db = TestDatabase::new(Backend::Sqlite);
    let t = start(&db, Some(Duration::from_secs(1))).await;
    let mut stream = connect(&t.base).await;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let first = read_answer(&mut stream, Duration::from_secs(3))
        .await
        .expect("first answer");
    assert_eq!(first.status, 200);
    // The second request's head trickles in and never ends.
    let started = Instant::now();
    let (mut read_half, mut write_half) = stream.into_split();
    let trickler = tokio::spawn(async move {
        let _ = write_half.write_all(b"GET /healthz HTTP/1.1\r\n").await;
        for i in 0..100 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if write_half
                .write_all(format!("X-{i}: y\r\n").as_bytes())
                .await
                .is_err()
            {
                break;
            }
        }
    });
    let mut chunk = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(6), async {
        loop {
            match read_half.read(&mut chunk).await {
                Ok(n) if n > 0 => continue,
                _ => break,
            }
        }
    })
    .await;
    trickler.abort();
    assert!(
        closed.is_ok(),
        "a trickled second head held the connection for {:?}",
        started.elapsed()
    );
    assert!(started.elapsed() < Duration::from_secs(4));
    t.stop().await;
}
