//! Outside effects exactly once: two real server processes sharing PostgreSQL run a listener
//! slower than its claim lease and POST each alert once (claims are renewed while a run
//! waits or runs); a killed process's work is taken over after the lease. Every webhook a
//! listener sends carries the Standard Webhooks headers — an id stable across retries,
//! replays and servers, a timestamp, and a signature when a secret is configured in the
//! file — and runtime changes cannot set that secret.

use std::collections::HashMap;
use std::time::Duration;

use crate::support::*;
use diesel::prelude::*;
use reqwest::Method;
use serde_json::{Value, json};
use zulip_listeners::db::DbConnection;
use zulip_listeners::verification::{SignedHeaders, SigningKey, verify};

/// The alert targets' signing secret (configured in the file).
const ALERT_SECRET: &str = OTHER_SECRET;

/// Whether a request a stub received carries a valid Standard Webhooks signature by `secret`.
fn signed_by(request: &Received, secret: &str) -> bool {
    let key = SigningKey::parse(secret).expect("key");
    let headers = SignedHeaders {
        id: request.header("webhook-id"),
        timestamp: request.header("webhook-timestamp"),
        signature: request.header("webhook-signature"),
    };
    verify(&[key], headers, request.body.as_bytes(), now_s(), 300).is_ok()
}

/// Requests per `webhook-id`.
fn by_id(requests: &[Received]) -> HashMap<String, Vec<&Received>> {
    let mut ids: HashMap<String, Vec<&Received>> = HashMap::new();
    for r in requests {
        let id = r.header("webhook-id").unwrap_or("<none>").to_string();
        ids.entry(id).or_default().push(r);
    }
    ids
}

/// The message id an alert is about.
fn alerted_message(request: &Received) -> i64 {
    serde_json::from_str::<Value>(&request.body).expect("json")["message"]["id"]
        .as_i64()
        .expect("message id")
}

/// One of two processes sharing `db`, both running keyword_alerts with a 1 s claim lease,
/// alerting `{alerts}/alert` (signed) on "alpha".
fn shared_config(db: &TestDatabase, alerts: &str) -> ConfigFile {
    db.config_file(&format!(
        "pool_size = 4\n\
         [forwarder]\nsecrets = [\"{SECRET}\"]\nworkers = 2\nclaim_lease = \"1s\"\n\
         retry_delay = \"200ms\"\nmax_retries = 20\nhandler_timeout = \"20s\"\n\
         listeners = [\"keyword_alerts\"]\n\
         [handlers.keyword_alerts]\ntimeout = \"20s\"\nsecret = \"{ALERT_SECRET}\"\n\
         rules = [{{ name = \"alpha\", pattern = \"alpha\", webhook = \"{alerts}/alert\" }}]\n"
    ))
}

/// Posts `n` matching messages of realm 2 (one lane: handled in order) with ids from `first`
/// as one signed batch; asserts it is acknowledged.
async fn post_alpha(http: &reqwest::Client, base: &str, first: i64, n: i64) {
    let envelopes: Vec<Value> = (first..first + n)
        .map(|id| envelope(&format!("fx{id}"), message(id, 10, "alpha incident")))
        .collect();
    let answer = signed_events(
        http,
        base,
        &format!("msg_fx_{first}"),
        now_s(),
        &batch(envelopes),
        SECRET,
    )
    .send()
    .await
    .expect("batch sent");
    assert!(answer.status().is_success(), "batch {first}: {answer:?}");
}

/// Successful keyword_alerts runs per event id.
fn alert_runs(c: &mut DbConnection) -> HashMap<String, i64> {
    use zulip_listeners::db::schema::event_log as log;
    let rows: Vec<Option<String>> = log::table
        .filter(log::success.eq(true))
        .filter(log::listener.eq("keyword_alerts"))
        .select(log::event_id)
        .load(c)
        .expect("event log");
    let mut runs = HashMap::new();
    for id in rows {
        *runs.entry(id.unwrap_or_default()).or_insert(0) += 1;
    }
    runs
}

async fn wait_done(c: &mut DbConnection, total: i64, within: Duration) {
    let mut last = (0, 0);
    let done = eventually(within, async || {
        last = (
            inbox_count(c, InboxStatus::Done),
            inbox_count(c, InboxStatus::Pending),
        );
        last.0 == total
    })
    .await;
    assert!(done, "(done, pending) = {last:?}, expected {total} done");
}

backend_test!(fn claims_are_renewed_and_taken_again_only_by_their_holder);
fn claims_are_renewed_and_taken_again_only_by_their_holder(backend: Backend) {
    use zulip_listeners::db::schema::inbox_work as w;
    use zulip_listeners::db::tables::claims::{renew_claims, retake_claim};
    use zulip_listeners::db::tables::inbox_work::{NewWorkRow, WorkStatus, insert_work};
    let db = TestDatabase::new(backend);
    let mut c = db.connect();
    let now = zulip_listeners::clock::now_ms();
    let row = |event: &str, owner: &str, until: i64| NewWorkRow {
        event_id: event.into(),
        listener: "keyword_alerts",
        status: WorkStatus::Pending,
        attempts: 0,
        next_attempt_at_ms: 0,
        claimed_until_ms: until,
        last_error: None,
        updated_at_ms: now,
        claimed_by: owner.into(),
    };
    let rows = [
        row("mine", "A", now + 1_000),
        row("theirs", "B", now + 1_000),
        row("mine-longer", "A", now + 60_000),
        row("released", "A", 0),
    ];
    insert_work(&mut c, &rows.iter().collect::<Vec<_>>()).expect("insert");
    let until = |c: &mut DbConnection, event: &str| -> (i64, String) {
        w::table
            .filter(w::event_id.eq(zulip_listeners::db::event_key::EventKey::of(event)))
            .select((w::claimed_until_ms, w::claimed_by))
            .first(c)
            .expect("row")
    };
    let ids = ["mine", "theirs", "mine-longer", "released"];
    let mut held = renew_claims(&mut c, "A", &ids, now + 5_000).expect("renew");
    held.sort();
    let expected = |e: &str| (e.to_string(), "keyword_alerts".to_string());
    assert_eq!(
        held,
        vec![expected("mine"), expected("mine-longer")],
        "{backend:?}"
    );
    assert_eq!(until(&mut c, "mine"), (now + 5_000, "A".into()));
    assert_eq!(
        until(&mut c, "mine-longer"),
        (now + 60_000, "A".into()),
        "never shortened"
    );
    assert_eq!(
        until(&mut c, "theirs"),
        (now + 1_000, "B".into()),
        "another's claim untouched"
    );
    assert_eq!(until(&mut c, "released").0, 0);
    // Taken again: one's own claim yes, another's live claim no, work moved on no.
    let retake = |c: &mut DbConnection, event: &str, attempts: i32| {
        retake_claim(c, "A", event, "keyword_alerts", attempts, now + 9_000).expect("retake")
    };
    assert!(retake(&mut c, "mine", 0));
    assert!(!retake(&mut c, "mine", 1), "another attempt has been made");
    assert!(!retake(&mut c, "theirs", 0), "B holds it");
    // B's claim lapses (B stopped renewing): A takes it.
    diesel::update(w::table.filter(w::claimed_by.eq("B")))
        .set(w::claimed_until_ms.eq(now - 1))
        .execute(&mut c)
        .expect("lapse");
    assert!(retake(&mut c, "theirs", 0));
    assert_eq!(until(&mut c, "theirs"), (now + 9_000, "A".into()));
}

#[actix_web::test]
async fn a_listener_slower_than_its_claim_alerts_once_across_two_processes() {
    let Some(db) = TestDatabase::postgres() else {
        return;
    };
    // The alert target answers after three leases.
    let alerts = Stub::start(r#"{"ok": true}"#, Duration::from_secs(3)).await;
    let config = shared_config(&db, &alerts.url);
    let mut a =
        ServerProcess::start_with_args(&config.path, &["--listeners", "keyword_alerts"]).await;
    let mut b =
        ServerProcess::start_with_args(&config.path, &["--listeners", "keyword_alerts"]).await;
    let http = reqwest::Client::new();
    // Four events queued behind each other in each process.
    post_alpha(&http, &a.base, 100, 4).await;
    post_alpha(&http, &b.base, 200, 4).await;
    let sent: Vec<i64> = (100..104).chain(200..204).collect();
    let mut conn = db.connect();
    wait_done(&mut conn, sent.len() as i64, Duration::from_secs(60)).await;
    // A run repeated by the other process would POST again: give it every chance to.
    let repeated = eventually(Duration::from_secs(5), async || {
        alerts.requests().len() > sent.len()
    })
    .await;
    let requests = alerts.requests();
    let ids = by_id(&requests);
    assert!(
        !repeated && requests.len() == sent.len(),
        "{} alerts POSTed for {} events; per webhook-id: {:?}",
        requests.len(),
        sent.len(),
        ids.iter().map(|(id, r)| (id, r.len())).collect::<Vec<_>>()
    );
    assert_eq!(ids.len(), sent.len(), "one webhook-id per alert");
    let mut alerted: Vec<i64> = requests.iter().map(alerted_message).collect();
    alerted.sort_unstable();
    assert_eq!(alerted, sent, "every event alerted");
    assert!(
        requests.iter().all(|r| signed_by(r, ALERT_SECRET)),
        "every alert is signed"
    );
    // Every event processed once.
    let runs = alert_runs(&mut conn);
    for id in &sent {
        assert_eq!(
            runs.get(&format!("fx{id}")),
            Some(&1),
            "event fx{id}: {runs:?}"
        );
    }
    // Both processes are alive and well.
    for p in [&mut a, &mut b] {
        assert!(
            p.child.try_wait().expect("status").is_none(),
            "a process exited"
        );
        let health = http
            .get(format!("{}/healthz", p.base))
            .send()
            .await
            .expect("healthz");
        assert!(health.status().is_success());
    }
    drop(conn);
    drop(a);
    drop(b);
    alerts.stop().await;
}

#[actix_web::test]
async fn a_killed_process_claims_lapse_and_the_other_takes_its_work() {
    let Some(db) = TestDatabase::postgres() else {
        return;
    };
    let alerts = Stub::start(r#"{"ok": true}"#, Duration::from_secs(2)).await;
    let config = shared_config(&db, &alerts.url);
    let mut a =
        ServerProcess::start_with_args(&config.path, &["--listeners", "keyword_alerts"]).await;
    let b = ServerProcess::start_with_args(&config.path, &["--listeners", "keyword_alerts"]).await;
    let http = reqwest::Client::new();
    post_alpha(&http, &a.base, 300, 4).await;
    // `a` is killed while its first alert is under way and three more wait behind it.
    let first = !alerts.wait_for(1, Duration::from_secs(10)).await.is_empty();
    assert!(first, "the first alert was sent");
    a.child.kill().expect("SIGKILL");
    a.child.wait().expect("reaped");
    // Its claims are no longer renewed: `b` takes the work once they lapse.
    let sent: Vec<i64> = (300..304).collect();
    let mut conn = db.connect();
    wait_done(&mut conn, sent.len() as i64, Duration::from_secs(60)).await;
    let requests = alerts.requests();
    let ids = by_id(&requests);
    // Only the alert under way at the kill may be sent again, with the same webhook-id, so
    // that the receiver can drop the repeat.
    assert_eq!(ids.len(), sent.len(), "{ids:?}");
    assert!(
        requests.len() <= sent.len() + 1,
        "{} alerts",
        requests.len()
    );
    for repeats in ids.values() {
        let message = alerted_message(repeats[0]);
        assert!(repeats.iter().all(|r| alerted_message(r) == message));
    }
    let runs = alert_runs(&mut conn);
    for id in &sent {
        assert_eq!(
            runs.get(&format!("fx{id}")),
            Some(&1),
            "event fx{id}: {runs:?}"
        );
    }
    drop(conn);
    drop(b);
    alerts.stop().await;
}

backend_test!(async fn alert_webhooks_keep_their_id_across_retries_and_replays);
async fn alert_webhooks_keep_their_id_across_retries_and_replays(backend: Backend) {
    let target = Stub::failing().await;
    let db = TestDatabase::new(backend);
    let t = TestApp::new(&db)
        .forwarder()
        .admin()
        .toml(&format!(
            "[forwarder]\nlisteners = [\"keyword_alerts\"]\nmax_retries = 1\nretry_delay = \"100ms\"\n\
             [handlers.keyword_alerts]\nsecret = \"{ALERT_SECRET}\"\nrules = [\
             {{ name = \"alpha\", pattern = \"alpha\", webhook = \"{0}/a\" }}, \
             {{ name = \"beta\", pattern = \"beta\", webhook = \"{0}/b\" }}]\n",
            target.url
        ))
        .start()
        .await;
    let answer = t
        .post_batch(
            "msg_ids_1",
            &batch(vec![envelope("ids-1", message(901, 10, "alpha and beta"))]),
        )
        .await;
    assert_eq!(answer.status, 200);
    // Two attempts per rule (the first and one retry), both refused: a dead letter.
    let dead = eventually(Duration::from_secs(20), async || {
        t.query(|c| inbox_count(c, InboxStatus::Dead)).await == 1
    })
    .await;
    assert!(dead, "{backend:?}: the event ends dead");
    // The target is back; the operator replays the dead letter.
    target.set_status(200);
    let replay = t
        .send(
            t.admin(Method::POST, "/admin/dead-letters/replay")
                .body(r#"{"all": true}"#),
        )
        .await;
    assert_eq!(replay.json["requeued"], 1, "{:?}", replay.json);
    t.settle(1).await;
    let requests = target.wait_for(6, Duration::from_secs(10)).await;
    assert_eq!(requests.len(), 6, "{backend:?}: three attempts per rule");
    let ids = by_id(&requests);
    assert_eq!(
        ids.len(),
        2,
        "{backend:?}: one id per (event, listener, rule): {ids:?}"
    );
    for (id, attempts) in &ids {
        assert!(id.starts_with("msg_"), "{id}");
        let paths: Vec<&str> = attempts.iter().map(|r| r.path.as_str()).collect();
        assert!(
            paths.iter().all(|p| *p == paths[0]),
            "{backend:?}: one id is one rule's target: {paths:?}"
        );
        assert!(attempts.iter().all(|r| signed_by(r, ALERT_SECRET)));
        assert!(!attempts.iter().any(|r| signed_by(r, SECRET)));
        assert!(attempts.iter().all(|r| {
            r.header("webhook-timestamp")
                .and_then(|ts| ts.parse::<i64>().ok())
                .is_some_and(|ts| (ts - now_s()).abs() < 60)
        }));
    }
    t.stop().await;
    target.stop().await;
}

/// A server whose bot `helper` relays to `service`, signing with [`ALERT_SECRET`].
async fn relaying(db: &TestDatabase, service: &Stub) -> TestServer {
    TestApp::new(db)
        .helper(&["relay"])
        .toml(&format!(
            "[handlers.relay]\nurl = \"{}/\"\nsecret = \"{ALERT_SECRET}\"\n",
            service.url
        ))
        .start()
        .await
}

#[actix_web::test]
async fn relayed_webhooks_are_signed_with_an_id_per_message() {
    let service = Stub::start(r#"{"content": "ok"}"#, Duration::ZERO).await;
    let first = TestDatabase::new(Backend::Sqlite);
    let t = relaying(&first, &service).await;
    for id in [7001, 7002] {
        let answer = t
            .post_json("/zulip/outgoing", &mention(id, "@**Helper** hi"))
            .await;
        assert_eq!(answer.json["content"], "ok", "{:?}", answer.json);
    }
    t.stop().await;
    // Another server (no record of the first's answers) relays message 7001 again.
    let second = TestDatabase::new(Backend::Sqlite);
    let t = relaying(&second, &service).await;
    let answer = t
        .post_json("/zulip/outgoing", &mention(7001, "@**Helper** hi"))
        .await;
    assert_eq!(answer.json["content"], "ok", "{:?}", answer.json);
    let received = service.wait_for(3, Duration::from_secs(5)).await;
    assert_eq!(received.len(), 3, "{received:?}");
    assert!(received.iter().all(|r| signed_by(r, ALERT_SECRET)));
    let ids: Vec<&str> = received
        .iter()
        .map(|r| r.header("webhook-id").expect("webhook-id"))
        .collect();
    assert_ne!(ids[0], ids[1], "two messages, two ids");
    assert_eq!(
        ids[0], ids[2],
        "the same message relayed again keeps its id"
    );
    t.stop().await;
    service.stop().await;
}

#[actix_web::test]
async fn signing_secrets_stay_in_the_file() {
    let target = Stub::start(r#"{"ok": true}"#, Duration::ZERO).await;
    let db = TestDatabase::new(Backend::Sqlite);
    let t = TestApp::new(&db)
        .admin()
        .helper(&["keyword_alerts"])
        .toml(&format!(
            "[handlers.keyword_alerts]\nsecret = \"{ALERT_SECRET}\"\n\
             rules = [{{ name = \"alpha\", pattern = \"alpha\", webhook = \"{}/a\" }}]\n",
            target.url
        ))
        .start()
        .await;
    let patch = |body: Value| {
        t.admin(Method::PATCH, "/admin/listeners/keyword_alerts")
            .header("content-type", "application/json")
            .body(body.to_string())
    };
    let other = SigningKey::generate();
    for (body, field) in [
        (json!({"settings": {"secret": other}}), "settings.secret"),
        (json!({"settings": {"secret": null}}), "settings.secret"),
        (
            json!({"settings": {"secret_file": "/etc/shadow"}}),
            "settings.secret_file",
        ),
        (
            json!({"settings": {"rules": [{"name": "b", "pattern": "b", "webhook": "https://x.example.com", "secret_file": "/etc/shadow"}]}}),
            "settings.rules[0].secret_file",
        ),
    ] {
        let answer = t.send(patch(body.clone())).await;
        assert_eq!(answer.status, 400, "{body}: {:?}", answer.json);
        assert_eq!(answer.json["field"], field, "{:?}", answer.json);
    }
    // Other settings still change at runtime, and the file's secret keeps signing.
    let answer = t.send(patch(json!({"settings": {"timeout": "5s"}}))).await;
    assert_eq!(answer.status, 200, "{:?}", answer.json);
    let shown = t
        .send(t.admin(Method::GET, "/admin/listeners/keyword_alerts"))
        .await;
    let text = shown.json.to_string();
    let encoded = ALERT_SECRET.trim_start_matches("whsec_");
    assert!(!text.contains(encoded), "the secret is shown: {text}");
    assert!(text.contains("<redacted>"), "{text}");
    let answer = t
        .post_json("/zulip/outgoing", &mention(8001, "@**Helper** alpha"))
        .await;
    assert_eq!(answer.status, 200);
    let received = target.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(received.len(), 1);
    assert!(signed_by(&received[0], ALERT_SECRET));
    t.stop().await;
    target.stop().await;
}
