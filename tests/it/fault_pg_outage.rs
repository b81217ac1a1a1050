//! A PostgreSQL outage under forwarder load, injected for real: a private PostgreSQL instance
//! (initdb into a temporary directory, a port of its own; the shared server is never touched)
//! under the server binary, stopped with `pg_ctl stop -m immediate` while a sender that
//! behaves like the forwarder posts signed batches, and started again 8 s later. Every
//! acknowledged event must be stored once and processed once, the outage answered 503 with
//! `Retry-After`, `/health` must say what is wrong while it lasts, and the server must be
//! ready again by itself.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use diesel::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use zulip_listeners::db::event_key::EventKey;
use zulip_listeners::db::{DbConnection, establish};

use crate::support::*;

/// Events per batch: the forwarder's default batch size; each batch holds one realm's.
const BATCH_SIZE: usize = 100;
/// Realms (ids); each has a sender of its own, like the forwarder's per-realm lanes.
const REALMS: [i64; 4] = [2, 3, 4, 5];
const USERS_PER_REALM: i64 = 400;
/// The sender's pause before it sends a refused batch again (shorter than the forwarder's
/// back-off, so the outage gets more attempts).
const RESEND_PAUSE: Duration = Duration::from_millis(250);
/// How soon `/readyz` must be ready once PostgreSQL is back.
const READY_WITHIN: Duration = Duration::from_secs(10);
/// How soon every event must be processed once the last batch is acknowledged: far less
/// than the claim lease (`forwarder.claim_lease`, 5 min), which work whose results were given
/// up on would wait for.
const PROCESSED_WITHIN: Duration = Duration::from_secs(120);
/// The keyword_alerts rule (a non-pure listener: its events go through the workers).
const ALERT_WORD: &str = "deploy";

/// A PostgreSQL instance of this test's own, in a temporary directory; stopped and removed
/// when dropped, also when the test fails.
struct PrivatePostgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    as_postgres: bool,
}

impl PrivatePostgres {
    /// initdb and start; `None` (said on stderr) when the PostgreSQL binaries are missing.
    fn start() -> Option<PrivatePostgres> {
        let Some(bin) = postgres_bin_dir() else {
            eprintln!(
                "note: initdb/pg_ctl not found on PATH or in /usr/lib/postgresql/*/bin; \
                 the PostgreSQL outage test is skipped"
            );
            return None;
        };
        let dir = tempfile::Builder::new()
            .prefix("zl-pg-outage-")
            .tempdir()
            .expect("temporary directory");
        // initdb and postgres refuse to run as root: as root, run them as `postgres`.
        let as_postgres = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
        if as_postgres {
            let chown = Command::new("chown")
                .arg("postgres:postgres")
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(
                chown.success(),
                "chown the instance's directory to postgres"
            );
        }
        let pg = PrivatePostgres {
            bin,
            dir,
            port: free_port(),
            as_postgres,
        };
        let data = pg.data();
        pg.run(
            "initdb",
            &[
                "-D",
                &data,
                "--auth=trust",
                "--username=postgres",
                "--encoding=UTF8",
                "--no-sync",
            ],
        );
        let settings = format!(
            "port = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             fsync = off\nfull_page_writes = off\nmax_connections = 50\n",
            pg.port,
            pg.dir.path().display()
        );
        let conf = Path::new(&data).join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).expect("postgresql.conf");
        text.push_str(&settings);
        std::fs::write(&conf, text).expect("write postgresql.conf");
        pg.pg_ctl_start();
        Some(pg)
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn log(&self) -> String {
        self.dir.path().join("postgres.log").display().to_string()
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Runs one of the PostgreSQL tools (as `postgres` when we are root).
    fn command(&self, tool: &str, args: &[&str]) -> std::process::Output {
        let tool = self.bin.join(tool);
        let mut command = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(tool);
            c
        } else {
            Command::new(tool)
        };
        command.args(args).output().expect("run a PostgreSQL tool")
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let output = self.command(tool, args);
        assert!(
            output.status.success(),
            "{tool} {args:?}: {}\nserver log:\n{}",
            output_text(&output),
            std::fs::read_to_string(self.log()).unwrap_or_default()
        );
    }

    fn pg_ctl_start(&self) {
        let (data, log) = (self.data(), self.log());
        self.run(
            "pg_ctl",
            &["start", "-w", "-t", "60", "-D", &data, "-l", &log],
        );
    }

    fn stop_immediately(&self) {
        let data = self.data();
        self.run("pg_ctl", &["stop", "-m", "immediate", "-w", "-D", &data]);
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let data = self.data();
        // Stopped already (a test that failed during the outage) is fine.
        let _ = self.command("pg_ctl", &["stop", "-m", "immediate", "-D", &data]);
    }
}

/// Realistic forwarded events: client-facing events of the forwarder's usual mix (as in
/// `examples/forwarder_load.rs`), in envelopes with audiences of the realm's users.
struct Traffic {
    rng: StdRng,
    next_message: i64,
    /// Each realm's messages sent so far, for edits, reactions and read flags.
    sent: HashMap<i64, Vec<i64>>,
}

/// What was sent, to check against the database: events by type and message ids.
#[derive(Default)]
struct Expected {
    types: HashMap<String, &'static str>,
    messages: Vec<i64>,
    alerted: HashSet<i64>,
    reactions_added: i64,
}

const WORDS: &[&str] = &[
    "the", "deploy", "looks", "good", "but", "staging", "still", "shows", "an", "old", "build",
    "could", "you", "check", "before", "we", "merge", "this", "tomorrow", "thanks", "CI",
];

impl Traffic {
    fn user(&mut self, realm: i64) -> i64 {
        1000 + realm * 1000 + self.rng.random_range(0..USERS_PER_REALM)
    }

    fn audience(&mut self, realm: i64, first: i64, n: i64) -> Vec<i64> {
        let mut ids = vec![first];
        ids.extend((1..n).map(|_| self.user(realm)).filter(|u| *u != first));
        ids
    }

    /// A message of `realm` sent earlier in the test, or an older one when none was.
    fn earlier_message(&mut self, realm: i64) -> i64 {
        let sent = &self.sent[&realm];
        match sent.len() {
            0 => 1 + realm,
            n => sent[n - 1 - self.rng.random_range(0..n.min(50))],
        }
    }

    fn event(&mut self, realm: i64, expected: &mut Expected) -> (&'static str, Value, Vec<i64>) {
        let user = self.user(realm);
        let email = format!("user{user}@r{realm}.example.com");
        let stream = 5 + self.rng.random_range(0..20i64);
        let now = now_s();
        let kind = match self.rng.random_range(0..100) {
            0..30 => "message",
            30..50 => "typing",
            50..65 => "update_message_flags",
            65..75 => "presence",
            75..85 => "reaction",
            85..92 => "update_message",
            92..95 => "delete_message",
            95..98 => "subscription",
            _ => "realm_user",
        };
        let earlier = self.earlier_message(realm);
        let (event, audience) = match kind {
            "message" => {
                self.next_message += 1;
                let id = self.next_message;
                let words = self.rng.random_range(8..30);
                let text = (0..words)
                    .map(|_| WORDS[self.rng.random_range(0..WORDS.len())])
                    .collect::<Vec<_>>()
                    .join(" ");
                self.sent.entry(realm).or_default().push(id);
                expected.messages.push(id);
                if text.split(' ').any(|w| w == ALERT_WORD) {
                    expected.alerted.insert(id);
                }
                let event = channel_message(id, user, &text, ("engineering", stream, "release"));
                (event, self.audience(realm, user, 40))
            }
            "typing" => (
                json!({"type": "typing", "op": "start", "message_type": "stream",
                       "sender": {"user_id": user, "email": email}, "stream_id": stream,
                       "topic": "release"}),
                self.audience(realm, user, 30),
            ),
            "update_message_flags" => (
                json!({"type": "update_message_flags", "op": "add", "operation": "add",
                       "flag": "read", "messages": [earlier], "all": false}),
                vec![user],
            ),
            "presence" => (
                json!({"type": "presence", "email": email, "user_id": user,
                       "server_timestamp": now as f64 + 0.25,
                       "presence": {"website": {"client": "website", "status": "active",
                                                "timestamp": now, "pushable": false}}}),
                self.audience(realm, user, 60),
            ),
            "reaction" => {
                expected.reactions_added += 1;
                (
                    json!({"type": "reaction", "op": "add", "user_id": user,
                           "message_id": earlier, "emoji_name": "tada", "emoji_code": "1f389",
                           "reaction_type": "unicode_emoji"}),
                    self.audience(realm, user, 40),
                )
            }
            "update_message" => (
                json!({"type": "update_message", "user_id": user, "edit_timestamp": now,
                       "message_id": earlier, "rendering_only": false,
                       "stream_name": "engineering", "stream_id": stream,
                       "message_ids": [earlier], "orig_content": "before",
                       "orig_rendered_content": "<p>before</p>", "content": "after the edit",
                       "rendered_content": "<p>after the edit</p>", "is_me_message": false,
                       "flags": []}),
                self.audience(realm, user, 25),
            ),
            // A message from before the test: the messages of this test all stay stored.
            "delete_message" => (
                json!({"type": "delete_message", "message_ids": [realm], "message_type": "stream",
                       "stream_id": stream, "topic": "release"}),
                self.audience(realm, user, 25),
            ),
            "subscription" => (
                json!({"type": "subscription", "op": "peer_add", "stream_ids": [stream],
                       "user_ids": [user]}),
                self.audience(realm, user, 40),
            ),
            _ => (
                json!({"type": "realm_user", "op": "update",
                       "person": {"user_id": user, "full_name": format!("User {user} (away)")}}),
                self.audience(realm, user, 60),
            ),
        };
        (kind, event, audience)
    }

    /// One batch of `realm`: its webhook-id, body and event ids.
    fn batch(&mut self, realm: i64, n: usize, expected: &mut Expected) -> Batch {
        let mut ids = Vec::with_capacity(n);
        let envelopes = (0..n)
            .map(|_| {
                let id = uuid::Uuid::new_v4().to_string();
                let (kind, event, audience) = self.event(realm, expected);
                expected.types.insert(id.clone(), kind);
                let envelope = Envelope::new(&id, event)
                    .realm(realm, &format!("r{realm}"))
                    .audience(&audience)
                    .json();
                ids.push(id);
                envelope
            })
            .collect();
        Batch {
            webhook_id: format!("msg_{}", uuid::Uuid::new_v4().simple()),
            realm,
            body: batch(envelopes),
            event_ids: ids,
        }
    }
}

struct Batch {
    webhook_id: String,
    realm: i64,
    body: String,
    event_ids: Vec<String>,
}

/// One POST of a batch, timed from the start of the traffic.
#[derive(Debug)]
struct Attempt {
    /// 0: no answer (connection error or timeout).
    status: u16,
    sent: Duration,
    answered: Duration,
    retry_after: Option<String>,
    /// The body of a refusal.
    body: String,
}

/// What one sender saw.
#[derive(Default, Debug)]
struct Sent {
    acknowledged: Vec<String>,
    attempts: Vec<Attempt>,
    /// 2xx answers whose counts are not "every event accepted or a duplicate".
    odd_answers: Vec<String>,
}

/// Sends `batches` one after the other like the forwarder: each until it is acknowledged
/// (2xx), a refused one (503, 429, no answer) again with the same webhook-id and a fresh
/// signature after [`RESEND_PAUSE`].
async fn send_like_the_forwarder(
    base: String,
    batches: Vec<Batch>,
    acknowledged: Arc<AtomicUsize>,
    started: Instant,
    deadline: Instant,
) -> Sent {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let mut sent = Sent::default();
    for b in batches {
        loop {
            assert!(
                Instant::now() < deadline,
                "batch {} never acknowledged: {:?}",
                b.webhook_id,
                sent.attempts.last()
            );
            let at = started.elapsed();
            let answer = signed_events(&http, &base, &b.webhook_id, now_s(), &b.body, SECRET)
                .header("x-zulip-listeners-realm", b.realm.to_string())
                .send()
                .await;
            let (status, retry_after, body) = match answer {
                Ok(r) => {
                    let status = r.status().as_u16();
                    let retry_after = r
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    (status, retry_after, r.text().await.unwrap_or_default())
                }
                Err(e) => (0, None, e.to_string()),
            };
            let ok = (200..300).contains(&status);
            if ok {
                let counts: Value = serde_json::from_str(&body).unwrap_or_default();
                let stored = counts["accepted"].as_u64().unwrap_or(0)
                    + counts["duplicates"].as_u64().unwrap_or(0);
                if stored != b.event_ids.len() as u64 {
                    sent.odd_answers.push(body.clone());
                }
            }
            sent.attempts.push(Attempt {
                status,
                sent: at,
                answered: started.elapsed(),
                retry_after,
                body: if ok { String::new() } else { body },
            });
            if ok {
                acknowledged.fetch_add(b.event_ids.len(), Ordering::Relaxed);
                sent.acknowledged.extend(b.event_ids);
                break;
            }
            tokio::time::sleep(RESEND_PAUSE).await;
        }
    }
    sent
}

/// `GET {base}{path}`: status and JSON body (status 0 without an answer).
async fn probe(http: &reqwest::Client, base: &str, path: &str) -> (u16, Value) {
    match http.get(format!("{base}{path}")).send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.json().await.unwrap_or_default())
        }
        Err(_) => (0, Value::Null),
    }
}

/// The server's log, for a failure message.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Inbox rows of the test's events: (event id, status).
fn inbox_rows(c: &mut DbConnection) -> Vec<(String, InboxStatus)> {
    use zulip_listeners::db::schema::inbox;
    inbox::table
        .select((inbox::event_id, inbox::status))
        .load::<(EventKey, InboxStatus)>(c)
        .expect("inbox")
        .into_iter()
        .map(|(k, s)| (String::from(k), s))
        .collect()
}

/// The operator's measurement: 20,000 events, PostgreSQL down for 8 s.
#[actix_web::test]
async fn acknowledged_events_survive_a_postgresql_outage_under_load() {
    outage_under_load(Duration::from_secs(8), 200).await;
}

/// An outage longer than the writer's retries (about 9 s): the results it could not write
/// are kept until the database is back, not given up on.
#[actix_web::test]
async fn an_outage_longer_than_the_writers_retries_loses_no_results() {
    outage_under_load(Duration::from_secs(20), 60).await;
}

/// `batches` batches of realistic events sent like the forwarder does, with PostgreSQL
/// stopped (`-m immediate`) for `outage` once a quarter of them is acknowledged.
async fn outage_under_load(outage: Duration, batches: usize) {
    if !postgres_enabled() {
        return;
    }
    let Some(pg) = PrivatePostgres::start() else {
        return;
    };
    let pg = Arc::new(pg);
    let alerts = Stub::start(r#"{"ok": true}"#, Duration::ZERO).await;
    let logs = tempfile::tempdir().expect("dir");
    let log = logs.path().join("server.log");
    let config = ConfigFile::new(&format!(
        "[database]\nurl = \"{}\"\n\
         [telemetry]\nformat = \"plain\"\nfile = \"{}\"\n\
         [forwarder]\nsecrets = [\"{SECRET}\"]\n\
         listeners = [\"message_logger\", \"user_activity_tracker\", \"keyword_alerts\"]\n\
         [handlers.keyword_alerts]\nrules = [{{ name = \"deploys\", pattern = \"\\\\b{ALERT_WORD}\\\\b\", webhook = \"{}/alerts\" }}]\n",
        pg.url(),
        log.display(),
        alerts.url
    ));
    let mut server = ServerProcess::start(&config.path).await;
    let base = server.base.clone();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    assert_eq!(
        probe(&http, &base, "/readyz").await.0,
        200,
        "{}",
        tail(&log)
    );

    // The traffic, built before the clock starts.
    let mut traffic = Traffic {
        rng: StdRng::seed_from_u64(14),
        next_message: 100_000,
        sent: REALMS.iter().map(|r| (*r, Vec::new())).collect(),
    };
    let mut expected = Expected::default();
    let mut lanes: HashMap<i64, Vec<Batch>> = HashMap::new();
    for n in 0..batches {
        let realm = REALMS[n % REALMS.len()];
        let b = traffic.batch(realm, BATCH_SIZE, &mut expected);
        lanes.entry(realm).or_default().push(b);
    }
    let total = batches * BATCH_SIZE;

    let started = Instant::now();
    let deadline = started + Duration::from_secs(90);
    let acknowledged = Arc::new(AtomicUsize::new(0));
    let senders: Vec<_> = lanes
        .into_values()
        .map(|batches| {
            tokio::spawn(send_like_the_forwarder(
                base.clone(),
                batches,
                acknowledged.clone(),
                started,
                deadline,
            ))
        })
        .collect();

    // A quarter in, PostgreSQL goes down hard.
    let alive = |server: &mut ServerProcess| {
        let status = server.child.try_wait().expect("wait");
        assert!(
            status.is_none(),
            "the server exited: {status:?}\n{}",
            tail(&log)
        );
    };
    while acknowledged.load(Ordering::Relaxed) < total / 4 {
        assert!(
            Instant::now() < deadline,
            "no progress before the outage\n{}",
            tail(&log)
        );
        alive(&mut server);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before_outage = acknowledged.load(Ordering::Relaxed);
    let pg_stop = pg.clone();
    tokio::task::spawn_blocking(move || pg_stop.stop_immediately())
        .await
        .expect("stop PostgreSQL");
    let down_at = started.elapsed();

    // While it is down: what /readyz and /health say.
    let mut readyz_during = Vec::new();
    let mut health_during = Vec::new();
    while started.elapsed() < down_at + outage {
        alive(&mut server);
        readyz_during.push(probe(&http, &base, "/readyz").await);
        health_during.push(probe(&http, &base, "/health").await);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let up_from = started.elapsed();
    let pg_start = pg.clone();
    tokio::task::spawn_blocking(move || pg_start.pg_ctl_start())
        .await
        .expect("start PostgreSQL");
    let up_at = started.elapsed();

    // Ready again by itself.
    let back = Instant::now();
    let ready = eventually(READY_WITHIN, async || {
        alive(&mut server);
        probe(&http, &base, "/readyz").await.0 == 200
    })
    .await;
    let ready_after = back.elapsed();
    assert!(
        ready,
        "/readyz not ready {READY_WITHIN:?} after PostgreSQL is back\n{}",
        tail(&log)
    );

    let mut sent = Sent::default();
    for sender in senders {
        let s = sender.await.expect("sender");
        sent.acknowledged.extend(s.acknowledged);
        sent.attempts.extend(s.attempts);
        sent.odd_answers.extend(s.odd_answers);
    }
    let sending_took = started.elapsed();
    alive(&mut server);
    let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
    for a in &sent.attempts {
        *statuses.entry(a.status).or_default() += 1;
    }

    // The outage was answered 503 with Retry-After and a body naming the problem; no 500, no
    // request without an answer, and nothing acknowledged while nothing could be stored.
    let outage_answers: Vec<&Attempt> = sent.attempts.iter().filter(|a| a.status == 503).collect();
    for a in &outage_answers {
        let body: Value = serde_json::from_str(&a.body).unwrap_or_default();
        assert!(
            a.retry_after
                .as_deref()
                .is_some_and(|v| v.parse::<u64>().is_ok()),
            "503 without a numeric Retry-After: {a:?}"
        );
        assert_eq!(body["error"], "unavailable", "{a:?}");
        let message = body["message"].as_str().unwrap_or_default();
        assert!(message.contains("could not be stored"), "{a:?}");
    }
    let named = outage_answers
        .iter()
        .find(|a| a.body.contains("cannot connect to the database"))
        .unwrap_or_else(|| panic!("no 503 naming the unreachable database: {outage_answers:?}"));
    let unexpected: Vec<_> = sent
        .attempts
        .iter()
        .filter(|a| !(200..300).contains(&a.status) && a.status != 503 && a.status != 429)
        .collect();
    assert!(
        unexpected.is_empty(),
        "answers other than 2xx, 503, 429: {unexpected:?}"
    );
    assert!(sent.odd_answers.is_empty(), "{:?}", sent.odd_answers);
    let acknowledged_while_down: Vec<_> = sent
        .attempts
        .iter()
        .filter(|a| (200..300).contains(&a.status) && a.sent > down_at && a.answered < up_from)
        .collect();
    assert!(
        acknowledged_while_down.is_empty(),
        "acknowledged while PostgreSQL was down: {acknowledged_while_down:?}"
    );
    let longest = sent
        .attempts
        .iter()
        .map(|a| a.answered - a.sent)
        .max()
        .unwrap_or_default();

    // /readyz and /health said so while it lasted.
    assert!(
        readyz_during
            .iter()
            .any(|(s, b)| *s == 503 && b["database"] == "unreachable"),
        "/readyz during the outage: {readyz_during:?}"
    );
    let outage_health = health_during
        .iter()
        .find(|(s, b)| *s == 503 && b["status"] == "unavailable")
        .unwrap_or_else(|| panic!("/health during the outage: {health_during:?}"));
    assert_eq!(
        outage_health.1["database"], "unreachable",
        "{:?}",
        outage_health.1
    );
    assert!(
        outage_health.1["reasons"]
            .to_string()
            .contains("database cannot be reached"),
        "{:?}",
        outage_health.1
    );

    // Every acknowledged event is stored exactly once and processed.
    assert_eq!(sent.acknowledged.len(), total);
    let mut conn = establish(&zulip_listeners::config::parse_database_url(&pg.url()).expect("url"))
        .expect("connect");
    let mut rows = Vec::new();
    let processed = eventually(PROCESSED_WITHIN, async || {
        rows = inbox_rows(&mut conn);
        rows.len() >= total && rows.iter().all(|(_, s)| *s == InboxStatus::Done)
    })
    .await;
    let processing_took = started.elapsed();
    let mut by_status: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, s) in &rows {
        *by_status.entry(s.as_str()).or_default() += 1;
    }
    assert!(processed, "inbox by status: {by_status:?}\n{}", tail(&log));
    let stored: HashSet<&str> = rows.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(rows.len(), stored.len(), "an event stored twice");
    assert_eq!(rows.len(), total, "events stored that were never sent");
    assert!(
        sent.acknowledged
            .iter()
            .all(|id| stored.contains(id.as_str())),
        "an acknowledged event is missing"
    );

    check_listener_rows(&mut conn, &expected);
    let alert_posts = alerts.requests().len();
    assert!(
        alert_posts >= expected.alerted.len(),
        "every alert was sent: {alert_posts} of {}",
        expected.alerted.len()
    );
    alive(&mut server);
    let (health, after) = probe(&http, &base, "/health").await;
    drop(conn);
    drop(server);
    alerts.stop().await;
    eprintln!(
        "PostgreSQL outage of {outage:?}: down at {down_at:?} for {:?} ({before_outage} events acknowledged \
         before); answers {statuses:?}, the longest after {longest:?}; a 503 at {:?}: \
         Retry-After {:?} {}; /readyz ready {ready_after:?} after PostgreSQL was back; every \
         batch acknowledged at {sending_took:?}, every event processed at {processing_took:?}; \
         {alert_posts} alert POSTs for {} alerts; /health afterwards {health} {after}",
        up_at - down_at,
        named.sent,
        named.retry_after,
        named.body,
        expected.alerted.len(),
    );
}

/// Each listener's rows exactly once: a successful event-log row per (event, listener) that
/// wants the event, the messages stored by message_logger, the activity counts of
/// user_activity_tracker and the alert records of keyword_alerts.
fn check_listener_rows(conn: &mut DbConnection, expected: &Expected) {
    use zulip_listeners::db::schema::{event_log, keyword_alerts, messages, user_activity};
    let wants = |listener: &str, kind: &str| match listener {
        "message_logger" => ["message", "update_message", "delete_message"].contains(&kind),
        "user_activity_tracker" => [
            "message",
            "update_message",
            "reaction",
            "presence",
            "typing",
        ]
        .contains(&kind),
        _ => kind == "message",
    };
    let logged: Vec<(String, Option<String>)> = event_log::table
        .filter(event_log::success.eq(true))
        .select((event_log::listener, event_log::event_id))
        .load(conn)
        .expect("event log");
    let mut runs: HashMap<(String, String), usize> = HashMap::new();
    for (listener, event_id) in logged {
        *runs
            .entry((listener, event_id.unwrap_or_default()))
            .or_default() += 1;
    }
    let twice: Vec<_> = runs.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(
        twice.is_empty(),
        "listener runs logged more than once: {twice:?}"
    );
    for listener in ["message_logger", "user_activity_tracker", "keyword_alerts"] {
        let missing: Vec<_> = expected
            .types
            .iter()
            .filter(|(id, kind)| {
                wants(listener, kind) && !runs.contains_key(&(listener.to_string(), (*id).clone()))
            })
            .take(5)
            .collect();
        assert!(missing.is_empty(), "{listener} never ran: {missing:?}");
    }

    let stored: Vec<i64> = messages::table
        .select(messages::message_id)
        .load(conn)
        .expect("messages");
    let stored: HashSet<i64> = stored.into_iter().collect();
    assert_eq!(
        stored,
        expected.messages.iter().copied().collect(),
        "message_logger's rows"
    );
    let counts: Vec<(i64, i64)> = user_activity::table
        .select((user_activity::message_count, user_activity::reaction_count))
        .load(conn)
        .expect("activity");
    let counted = counts
        .iter()
        .fold((0, 0), |(m, r), (dm, dr)| (m + dm, r + dr));
    assert_eq!(
        counted,
        (expected.messages.len() as i64, expected.reactions_added),
        "user_activity_tracker counted each message and reaction once"
    );
    let alerted: Vec<i64> = keyword_alerts::table
        .select(keyword_alerts::message_id)
        .load(conn)
        .expect("alerts");
    assert_eq!(
        alerted.len(),
        expected.alerted.len(),
        "one alert record per message"
    );
    assert_eq!(
        alerted.into_iter().collect::<HashSet<_>>(),
        expected.alerted
    );
}
