//! Dead letters an operator can clear: one is shown with its envelope redacted as logs are;
//! one, many and all are discarded with a reason through the admin API, the command line and
//! the dashboard, each recorded in the audit trail; a discarded event leaves `/health`, is
//! never processed again (not by a replay of all either) and a re-sent copy is a duplicate;
//! the errors (404, 400 naming the field, 409 naming the status); the dashboard's replay is
//! audited; and upkeep discards only the dead letters older than `retention.dead_letter_days`.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::*;
use zulip_listeners::clock::now_ms;
use zulip_listeners::db::DbConnection;
use zulip_listeners::db::event_key::EventKey;
use zulip_listeners::db::tables;
use zulip_listeners::db::tables::inbox::{InboxStatus, NewInboxRow};
use zulip_listeners::http::api::DeadLetterList;

/// An API key the envelope of `d1` carries; never shown.
const API_KEY: &str = "zK3yV4lu3ThatMustNotShow";

async fn admin_json(t: &TestServer, method: Method, path: &str, body: Option<Value>) -> Answer {
    let request = t.admin(method, path);
    let request = match body {
        Some(body) => request
            .header("content-type", "application/json")
            .body(body.to_string()),
        None => request,
    };
    t.send(request).await
}

/// The last replays or discards (`kind`) of `GET /admin/dead-letters`, newest first, as
/// (source, old_value, new_value).
async fn audit(t: &TestServer, kind: &str) -> Vec<(String, String, String)> {
    let answer = admin_json(t, Method::GET, "/admin/dead-letters", None).await;
    let listed: DeadLetterList = serde_json::from_value(answer.json.clone())
        .unwrap_or_else(|e| panic!("not a dead-letter list ({e}): {:?}", answer.json));
    let rows = match kind {
        "replays" => listed.replays,
        "discards" => listed.discards,
        other => panic!("no audit of {other}"),
    };
    rows.into_iter()
        .map(|r| {
            (
                r.source,
                r.old_value.unwrap_or_default(),
                r.new_value.unwrap_or_default(),
            )
        })
        .collect()
}

fn assert_refused(answer: &Answer, status: u16, code: &str) {
    assert_eq!(
        (answer.status, answer.json["error"].as_str()),
        (status, Some(code)),
        "{:?}",
        answer.json
    );
}

/// Message ids the alert target was asked about, after its first `skip` requests.
fn alerted_messages(target: &Stub, skip: usize) -> Vec<i64> {
    target
        .requests()
        .iter()
        .skip(skip)
        .filter_map(|r| serde_json::from_str::<Value>(&r.body).ok())
        .filter_map(|v| v["message"]["id"].as_i64())
        .collect()
}

backend_test!(async fn dead_letters_are_shown_redacted_and_discarded_for_good);
async fn dead_letters_are_shown_redacted_and_discarded_for_good(backend: Backend) {
    let target = Stub::failing().await;
    let db = TestDatabase::new(backend);
    let t = TestApp::new(&db)
        .alerting_on_broken(&target.url)
        .admin()
        .toml("[forwarder]\nmax_retries = 1\n[error_handling]\nbreaker_failures = 1000\nmax_failures_per_hour = 1000\n")
        .start()
        .await;
    let mut first = broken_build("d1", 901, 10);
    first["event"]["message"]["api_key"] = json!(API_KEY);
    let mut events = vec![first];
    events.extend((2..=5).map(|i| broken_build(&format!("d{i}"), 900 + i, 10)));
    events.push(envelope("ok1", message(950, 10, "all is fine")));
    assert_eq!(t.post_events("msg_dl", events).await.status, 200);
    let mut counts = Vec::new();
    let settled = eventually(Duration::from_secs(20), async || {
        counts = t.query(inbox_counts).await;
        count_of(&counts, InboxStatus::Dead) == 5 && count_of(&counts, InboxStatus::Done) == 1
    })
    .await;
    assert!(settled, "{backend:?}: {counts:?}");
    let degraded = t.health().await;
    assert_eq!(degraded.json["dead_letters"], 5, "{:?}", degraded.json);

    // Show: status, listener, attempts, error, times, and the envelope redacted.
    let shown = admin_json(&t, Method::GET, "/admin/dead-letters/d1", None).await;
    assert_eq!(shown.status, 200, "{:?}", shown.json);
    let d1 = &shown.json;
    assert_eq!(d1["status"], InboxStatus::Dead.as_str());
    assert_eq!(d1["attempts"], 2, "first attempt and one retry: {d1:?}");
    assert_eq!(d1["listeners"][0]["listener"], "keyword_alerts");
    assert_eq!(d1["listeners"][0]["status"], WorkStatus::Dead.as_str());
    assert!(
        d1["last_error"].as_str().is_some_and(|e| e.contains("500")),
        "{d1:?}"
    );
    assert!(d1["received_at_ms"].as_i64().is_some_and(|at| at > 0));
    let message = &d1["payload"]["event"]["message"];
    assert_eq!(message["api_key"], "<redacted>", "{d1:?}");
    assert_eq!(message["content"], "the build is broken");
    assert_eq!(
        message["sender_email"], "u…@acme.example.com",
        "emails masked as in the logs"
    );
    assert!(!d1.to_string().contains(API_KEY), "{d1:?}");
    let file = db.config_file("");
    let printed = cli(&file.path, &["dead-letters", "show", "d1"]);
    assert!(
        printed.contains("<redacted>") && !printed.contains(API_KEY),
        "{printed}"
    );
    assert!(
        printed.contains("keyword_alerts") && printed.contains(InboxStatus::Dead.as_str()),
        "{printed}"
    );

    // Errors: unknown id, missing reason, not a dead letter; nothing is changed by them.
    let unknown = admin_json(&t, Method::GET, "/admin/dead-letters/nope", None).await;
    assert_refused(&unknown, 404, "not_found");
    let no_reason = admin_json(
        &t,
        Method::POST,
        "/admin/dead-letters/discard",
        Some(json!({"ids": ["d1"]})),
    )
    .await;
    assert_refused(&no_reason, 400, "invalid_field");
    assert_eq!(no_reason.json["field"], "reason");
    let blank = admin_json(
        &t,
        Method::POST,
        "/admin/dead-letters/discard",
        Some(json!({"ids": ["d1"], "reason": "  "})),
    )
    .await;
    assert_eq!(blank.json["field"], "reason", "{:?}", blank.json);
    for (method, path, body) in [
        (
            Method::POST,
            "/admin/dead-letters/discard",
            Some(json!({"ids": ["ok1"], "reason": "x"})),
        ),
        (
            Method::POST,
            "/admin/dead-letters/replay",
            Some(json!({"ids": ["ok1"]})),
        ),
        (Method::GET, "/admin/dead-letters/ok1", None),
    ] {
        let done = admin_json(&t, method, path, body).await;
        assert_refused(&done, 409, "wrong_status");
        assert_eq!(
            done.json["status"],
            InboxStatus::Done.as_str(),
            "{path}: {:?}",
            done.json
        );
    }
    let mixed = admin_json(
        &t,
        Method::POST,
        "/admin/dead-letters/discard",
        Some(json!({"ids": ["d2", "nope"], "reason": "x"})),
    )
    .await;
    assert_refused(&mixed, 404, "not_found");
    assert_eq!(
        t.query(|c| inbox_count(c, InboxStatus::Dead)).await,
        5,
        "all or nothing"
    );

    // One through the admin API, two through the command line, the rest by a filter.
    let one = admin_json(
        &t,
        Method::POST,
        "/admin/dead-letters/discard",
        Some(json!({"ids": ["d1"], "reason": "poison message, see #ops"})),
    )
    .await;
    assert_eq!(one.json["discarded"], 1, "{:?}", one.json);
    let (status, payload) = t.query(|c| inbox_status(c, "d1")).await;
    assert_eq!((status, payload.as_str()), (InboxStatus::Discarded, ""));
    let work = t
        .query(|c| tables::inbox_work::work_of(c, "d1").expect("work"))
        .await;
    assert!(work.is_empty(), "{work:?}");
    let gone = admin_json(&t, Method::GET, "/admin/dead-letters/d1", None).await;
    assert_eq!(
        (gone.json["status"].as_str(), &gone.json["payload"]),
        (Some(InboxStatus::Discarded.as_str()), &Value::Null)
    );
    assert!(
        gone.json["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("poison message"))
    );
    let many = cli(
        &file.path,
        &[
            "dead-letters",
            "discard",
            "d2",
            "d3",
            "--reason",
            "webhook retired",
        ],
    );
    assert!(many.starts_with("2 event(s) discarded"), "{many}");
    let nobody = admin_json(
        &t,
        Method::POST,
        "/admin/dead-letters/discard",
        Some(json!({"all": true, "listener": "nobody", "reason": "no match"})),
    )
    .await;
    assert_eq!(nobody.json["discarded"], 0, "{:?}", nobody.json);
    let rest = admin_json(&t, Method::POST, "/admin/dead-letters/discard", Some(json!({"all": true, "status": "dead", "listener": "keyword_alerts", "reason": "outage over"}))).await;
    assert_eq!(rest.json["discarded"], 2, "{:?}", rest.json);
    let listed = cli(
        &file.path,
        &["dead-letters", "list", "--status", "discarded"],
    );
    assert!(
        (1..=5).all(|i| listed.contains(&format!("d{i} "))),
        "{listed}"
    );

    // The audit trail: who, what, how many, why; newest first.
    let discards = audit(&t, "discards").await;
    let expected = [
        (
            "admin API",
            "dead: all of listener `keyword_alerts`",
            "2 discarded: outage over",
        ),
        (
            "admin API",
            "dead: all of listener `nobody`",
            "0 discarded: no match",
        ),
        ("CLI", "ids: d2, d3", "2 discarded: webhook retired"),
        (
            "admin API",
            "ids: d1",
            "1 discarded: poison message, see #ops",
        ),
    ];
    let got: Vec<(&str, &str, &str)> = discards
        .iter()
        .map(|(s, o, n)| (s.as_str(), o.as_str(), n.as_str()))
        .collect();
    assert_eq!(got, expected, "{backend:?}");

    // The last dead letter gone, /health is ok again.
    let mut last = None;
    let ok = eventually(Duration::from_secs(10), async || {
        let answer = t.health().await;
        let ok = answer.json["status"] == "ok";
        last = Some(answer.json);
        ok
    })
    .await;
    assert!(ok, "{backend:?}: {last:?}");

    // Never processed again: the target recovers, a replay of all finds nothing, one by id is
    // refused, and a new event is alerted alone; a re-sent copy is a duplicate.
    target.set_status(200);
    let before = target.requests().len();
    let replayed = admin_json(
        &t,
        Method::POST,
        "/admin/dead-letters/replay",
        Some(json!({"all": true})),
    )
    .await;
    assert_eq!(replayed.json["requeued"], 0, "{:?}", replayed.json);
    let by_id = admin_json(
        &t,
        Method::POST,
        "/admin/dead-letters/replay",
        Some(json!({"ids": ["d4"]})),
    )
    .await;
    assert_refused(&by_id, 409, "wrong_status");
    assert_eq!(by_id.json["status"], InboxStatus::Discarded.as_str());
    let refused = admin_json(
        &t,
        Method::POST,
        "/admin/dead-letters/replay",
        Some(json!({"all": true, "status": "discarded"})),
    )
    .await;
    assert_refused(&refused, 400, "invalid_field");
    let resent = t
        .post_events(
            "msg_dl_again",
            vec![broken_build("d5", 905, 10), broken_build("n1", 960, 10)],
        )
        .await;
    assert_eq!(resent.json["duplicates"], 1, "{:?}", resent.json);
    let alerted = eventually(Duration::from_secs(15), async || {
        alerted_messages(&target, before).contains(&960)
    })
    .await;
    assert!(alerted, "{backend:?}: the new event is processed");
    t.settle(2).await;
    assert_eq!(
        alerted_messages(&target, before),
        vec![960],
        "{backend:?}: only the new event ran"
    );
    assert_eq!(t.query(|c| inbox_count(c, InboxStatus::Discarded)).await, 5);
    t.stop().await;
    target.stop().await;
}

/// Signs in with the form; returns the session cookie and the CSRF token of a page.
async fn sign_in(t: &TestServer, http: &reqwest::Client) -> (String, String) {
    let answer = http
        .post(t.url("/admin/login"))
        .form(&[("token", ADMIN)])
        .send()
        .await
        .expect("sign in");
    let cookie = answer
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .expect("a session cookie")
        .to_string();
    let page = page(http, &t.url("/admin/ui/dead-letters"), &cookie)
        .await
        .1;
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a CSRF field")
        .to_string();
    (cookie, csrf)
}

async fn page(http: &reqwest::Client, url: &str, cookie: &str) -> (u16, String) {
    let answer = http
        .get(url)
        .header("cookie", cookie)
        .send()
        .await
        .expect("page");
    (answer.status().as_u16(), answer.text().await.expect("body"))
}

/// A form post with the session; returns the status and the `Location`.
async fn post_form(
    http: &reqwest::Client,
    url: &str,
    cookie: &str,
    form: &[(&str, &str)],
) -> (u16, String) {
    let answer = http
        .post(url)
        .header("cookie", cookie)
        .form(form)
        .send()
        .await
        .expect("form");
    let location = answer
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (answer.status().as_u16(), location)
}

/// Dead letters `ids` stored as if they had failed `updated_ms_ago` ago, with an envelope
/// carrying [`API_KEY`].
fn seed_dead(c: &mut DbConnection, ids: &[&str], status: InboxStatus, updated_ms_ago: i64) {
    let now = now_ms();
    let rows: Vec<NewInboxRow> = ids
        .iter()
        .map(|id| NewInboxRow {
            event_id: id.to_string(),
            event_key: EventKey::of(id),
            webhook_id: format!("msg_{id}"),
            realm_id: 2,
            realm: "acme".into(),
            user_id: Some(10),
            event_type: "reaction".into(),
            op: Some("add".into()),
            payload: json!({"event_id": id, "type": "reaction", "event": {"type": "reaction", "api_key": API_KEY}}).to_string(),
            status,
            attempts: 3,
            next_attempt_at_ms: 0,
            claimed_until_ms: 0,
            last_error: Some("alerts: webhook answered 502".into()),
            emitted_at_ms: Some(now - updated_ms_ago - 1000),
            received_at_ms: now - updated_ms_ago - 1000,
            updated_at_ms: now - updated_ms_ago,
            message_id: None,
            erases: Vec::new(),
        })
        .collect();
    tables::inbox::insert_inbox(c, &rows).expect("dead letters");
}

backend_test!(async fn the_dashboard_shows_discards_and_replays_with_an_audit_record);
async fn the_dashboard_shows_discards_and_replays_with_an_audit_record(backend: Backend) {
    let db = TestDatabase::new(backend);
    let t = TestApp::new(&db).admin().start().await;
    t.query(|c| seed_dead(c, &["x-0", "x-1"], InboxStatus::Dead, 60_000))
        .await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let (cookie, csrf) = sign_in(&t, &http).await;

    let (status, list) = page(&http, &t.url("/admin/ui/dead-letters"), &cookie).await;
    assert_eq!(status, 200);
    assert!(
        list.contains("/admin/ui/dead-letters/x-0") && list.contains("Discard all 2"),
        "{list}"
    );
    let (status, detail) = page(&http, &t.url("/admin/ui/dead-letters/x-0"), &cookie).await;
    assert_eq!(status, 200);
    assert!(
        detail.contains("&lt;redacted&gt;") && !detail.contains(API_KEY),
        "{detail}"
    );
    let (status, _) = page(&http, &t.url("/admin/ui/dead-letters/none"), &cookie).await;
    assert_eq!(status, 404);
    let confirm = t.url("/admin/ui/dead-letters/discard?status=dead&id=x-0");
    let (status, form) = page(&http, &confirm, &cookie).await;
    assert_eq!(status, 200);
    assert!(
        form.contains("name=\"reason\"") && form.contains("name=\"csrf\""),
        "{form}"
    );

    // Refused without the CSRF token and without a reason: nothing is discarded.
    let discard = t.url("/admin/ui/dead-letters/discard");
    let no_csrf = [("status", "dead"), ("id", "x-0"), ("reason", "stale")];
    assert_eq!(post_form(&http, &discard, &cookie, &no_csrf).await.0, 403);
    let no_reason = [("csrf", csrf.as_str()), ("status", "dead"), ("id", "x-0")];
    assert_eq!(post_form(&http, &discard, &cookie, &no_reason).await.0, 400);
    assert_eq!(t.query(|c| inbox_count(c, InboxStatus::Dead)).await, 2);

    let form = [
        ("csrf", csrf.as_str()),
        ("status", "dead"),
        ("id", "x-0"),
        ("reason", "stale test data"),
    ];
    let (status, location) = post_form(&http, &discard, &cookie, &form).await;
    assert_eq!(
        (status, location.as_str()),
        (303, "/admin/ui/dead-letters?status=dead")
    );
    let (_, shown) = page(&http, &t.url(&location), &cookie).await;
    assert!(shown.contains("1 event(s) discarded."), "{shown}");
    let replay = t.url("/admin/ui/dead-letters/replay");
    let form = [("csrf", csrf.as_str()), ("status", "dead"), ("id", "x-1")];
    let (status, location) = post_form(&http, &replay, &cookie, &form).await;
    assert_eq!(
        (status, location.as_str()),
        (303, "/admin/ui/dead-letters?status=dead")
    );
    let (_, payload) = t.query(|c| inbox_status(c, "x-0")).await;
    assert_eq!(payload, "", "the envelope is erased");

    assert_eq!(
        audit(&t, "discards").await,
        vec![(
            "dashboard".into(),
            "ids: x-0".into(),
            "1 discarded: stale test data".into()
        )]
    );
    assert_eq!(
        audit(&t, "replays").await,
        vec![("dashboard".into(), "ids: x-1".into(), "1 requeued".into())],
        "{backend:?}: the dashboard's replay is audited"
    );
    t.stop().await;
}

backend_test!(async fn upkeep_discards_only_dead_letters_older_than_dead_letter_days);
async fn upkeep_discards_only_dead_letters_older_than_dead_letter_days(backend: Backend) {
    let db = TestDatabase::new(backend);
    let day = 86_400_000;
    {
        let mut c = db.connect();
        seed_dead(&mut c, &["old-1", "old-2"], InboxStatus::Dead, 8 * day);
        seed_dead(&mut c, &["new-1"], InboxStatus::Dead, 6 * day);
        seed_dead(&mut c, &["parked-1"], InboxStatus::Parked, 30 * day);
        // Off (0 days): nothing expires.
        let expired = zulip_listeners::processing::dead_letters::expire(&mut c, 0, now_ms(), 100)
            .expect("expire");
        assert_eq!(expired, 0);
    }
    // The daily pass runs at start-up; one row per batch.
    let t = TestApp::new(&db)
        .admin()
        .toml("[retention]\ndead_letter_days = 7\nbatch_size = 1\n")
        .start()
        .await;
    let expired = eventually(Duration::from_secs(10), async || {
        t.query(|c| inbox_count(c, InboxStatus::Discarded)).await == 2
    })
    .await;
    assert!(expired, "{backend:?}: {:?}", t.query(inbox_counts).await);
    for (id, status) in [
        ("old-1", InboxStatus::Discarded),
        ("old-2", InboxStatus::Discarded),
        ("new-1", InboxStatus::Dead),
        ("parked-1", InboxStatus::Parked),
    ] {
        let (stored, _) = t.query(move |c| inbox_status(c, id)).await;
        assert_eq!(stored, status, "{backend:?}: {id}");
    }
    let shown = admin_json(&t, Method::GET, "/admin/dead-letters/old-1", None).await;
    assert!(
        shown.json["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("expired after 7 days")),
        "{:?}",
        shown.json
    );
    let record = (
        "retention".to_string(),
        "dead: unchanged for 7 days".to_string(),
        "1 discarded: expired after 7 days".to_string(),
    );
    assert_eq!(audit(&t, "discards").await, vec![record.clone(), record]);
    t.stop().await;
}
