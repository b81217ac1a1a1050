//! What an admin credential can do to a listener at runtime, and no more: a change (admin API,
//! CLI, dashboard) cannot name a file (`*_file`) or a signing secret; files are read once, at
//! load, from the configuration file's definition (a regular file of at most 64 KiB); a bot
//! service's answer is not echoed into the event log; `null` restores the file's value; and
//! what the database overrides is shown beside the file's values and can be dropped again
//! (`DELETE /admin/listeners/{name}/overrides[/{field}]`, `listeners reset`, the dashboard),
//! recorded in the history.

use std::time::{Duration, Instant};

use crate::support::*;
use reqwest::Method;
use serde_json::{Value, json};

async fn admin(t: &TestServer, method: Method, path: &str, body: Option<Value>) -> Answer {
    let mut request = t.admin(method, path);
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    t.send(request).await
}

async fn patch(t: &TestServer, name: &str, body: Value) -> Answer {
    let path = format!("/admin/listeners/{name}");
    admin(t, Method::PATCH, &path, Some(body)).await
}

async fn show(t: &TestServer, name: &str) -> Value {
    let path = format!("/admin/listeners/{name}");
    admin(t, Method::GET, &path, None).await.json
}

/// The bot `helper` relaying to `collector`, with `token_file` naming `token` in the file.
fn relaying(db: &TestDatabase, collector: &Stub, token: &std::path::Path) -> TestApp {
    TestApp::new(db).admin().helper(&["relay"]).toml(&format!(
        "[handlers.relay]\nurl = \"{}/\"\ntoken_file = \"{}\"\n",
        collector.url,
        token.display()
    ))
}

/// A mention relayed to the collector; returns the body the collector received.
async fn relayed(t: &TestServer, collector: &Stub, id: i64) -> String {
    let before = collector.requests().len();
    let answer = t
        .post_json("/zulip/outgoing", &mention(id, "@**Helper** hi"))
        .await;
    assert_eq!(answer.status, 200, "{:?}", answer.json);
    let received = collector.wait_for(before + 1, Duration::from_secs(5)).await;
    received.last().map(|r| r.body.clone()).unwrap_or_default()
}

fn fifo(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&path)
        .status()
        .expect("mkfifo runs");
    assert!(made.success());
    path
}

backend_test!(async fn a_runtime_change_cannot_make_the_server_read_a_file);
async fn a_runtime_change_cannot_make_the_server_read_a_file(backend: Backend) {
    let collector = Stub::start(r#"{"content": "ok"}"#, Duration::ZERO).await;
    let dir = tempfile::tempdir().expect("dir");
    let token = dir.path().join("relay.token");
    std::fs::write(&token, "T0KEN-FROM-THE-FILE\n").expect("write");
    let key = dir.path().join("forwarder.key");
    std::fs::write(&key, "FORWARDER-SIGNING-KEY\n").expect("write");
    let pipe = fifo(dir.path());
    let db = TestDatabase::new(backend);
    let app = relaying(&db, &collector, &token);
    let config = app.config_file();
    let t = app.start().await;

    // The file's token_file was read at load and is relayed.
    assert!(
        relayed(&t, &collector, 9001)
            .await
            .contains("T0KEN-FROM-THE-FILE")
    );

    // No runtime change may name a file, wherever it sits, not even to remove one; and the
    // answer is the same whatever the path is (no file-system oracle), given at once.
    let mut answers = Vec::new();
    for (settings, field) in [
        (
            json!({"url": collector.url, "token_file": key}),
            "settings.token_file",
        ),
        (
            json!({"token_file": "/proc/self/environ"}),
            "settings.token_file",
        ),
        (
            json!({"token_file": "/no/such/file"}),
            "settings.token_file",
        ),
        (json!({"token_file": "/dev/zero"}), "settings.token_file"),
        (json!({"token_file": pipe}), "settings.token_file"),
        (json!({"token_file": null}), "settings.token_file"),
        (json!({"secret_file": key}), "settings.secret_file"),
        (json!({"secret": null}), "settings.secret"),
        (
            json!({"nested": [{"api_key_file": key}]}),
            "settings.nested[0].api_key_file",
        ),
    ] {
        let started = Instant::now();
        let refused = patch(&t, "relay", json!({ "settings": settings })).await;
        assert!(started.elapsed() < Duration::from_secs(2), "{settings}");
        assert_eq!(refused.status, 400, "{settings}: {:?}", refused.json);
        assert_eq!(refused.json["field"], field, "{:?}", refused.json);
        let message = refused.json["message"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(message.contains("configuration file"), "{message}");
        answers.push(message);
    }
    assert!(
        answers[..5].iter().all(|m| *m == answers[0]),
        "{answers:#?}"
    );
    // The command line and the dashboard go through the same rule.
    let (ok, said) = cli_status(
        &config.path,
        &[
            "listeners",
            "set",
            "relay",
            "--setting",
            &format!("token_file={}", key.display()),
        ],
    );
    assert!(!ok && said.contains("settings.token_file"), "{said}");
    let page = t
        .http
        .post(t.url("/admin/ui/listeners/relay"))
        .bearer_auth(ADMIN)
        .form(&[
            ("action", "edit"),
            ("settings", &json!({"token_file": key}).to_string()),
        ])
        .send()
        .await
        .expect("form");
    assert_eq!(page.status(), 400);
    assert!(
        page.text()
            .await
            .expect("page")
            .contains("settings.token_file")
    );

    // Nothing was stored; the signing key never left; the token is still the file's.
    let view = show(&t, "relay").await;
    assert_eq!(view["overridden"], json!([]), "{view}");
    assert_eq!(view["history"], json!([]), "{view}");
    let body = relayed(&t, &collector, 9002).await;
    assert!(!body.contains("FORWARDER-SIGNING-KEY"), "{body}");

    // Files are read once, at load: a runtime change of another setting builds the handler
    // again without reading the token file again.
    std::fs::write(&token, "CHANGED-ON-DISK\n").expect("write");
    let changed = patch(&t, "relay", json!({"settings": {"timeout": "7s"}})).await;
    assert_eq!(changed.status, 200, "{:?}", changed.json);
    let body = relayed(&t, &collector, 9003).await;
    assert!(
        body.contains("T0KEN-FROM-THE-FILE") && !body.contains("CHANGED-ON-DISK"),
        "{body}"
    );
    t.stop().await;
    collector.stop().await;
}

/// `check-config` with `[handlers.relay] token_file` naming `path`.
fn check_relay_token_file(path: &std::path::Path) -> (bool, String, Duration) {
    let config = ConfigFile::new(&format!(
        "[database]\nurl = \"sqlite:///nonexistent-dir-for-tests/x.db\"\n\
         [handlers.relay]\nurl = \"https://bots.example.com/\"\ntoken_file = \"{}\"\n",
        path.display()
    ));
    let started = Instant::now();
    let (ok, said) = cli_status(&config.path, &["check-config"]);
    (ok, said, started.elapsed())
}

#[test]
fn files_named_in_the_configuration_are_regular_and_small() {
    let dir = tempfile::tempdir().expect("dir");
    let fine = dir.path().join("token");
    std::fs::write(&fine, "t0ken\n").expect("write");
    let (ok, said, _) = check_relay_token_file(&fine);
    assert!(ok, "{said}");

    let large = dir.path().join("large");
    std::fs::write(&large, vec![b'a'; 1024 * 1024]).expect("write");
    let (ok, said, _) = check_relay_token_file(&large);
    assert!(!ok && said.contains("larger than 64 KiB"), "{said}");
    assert!(said.contains(&large.display().to_string()), "{said}");

    for path in [
        fifo(dir.path()),
        dir.path().to_path_buf(),
        "/dev/zero".into(),
    ] {
        let (ok, said, took) = check_relay_token_file(&path);
        assert!(!ok && said.contains("not a regular file"), "{said}");
        assert!(took < Duration::from_secs(10), "{path:?} took {took:?}");
    }
    // The configuration's own secret files follow the same rule.
    let config = ConfigFile::new(&format!(
        "[database]\nurl = \"sqlite:///nonexistent-dir-for-tests/x.db\"\n\
         [forwarder]\nsecrets_file = \"{}\"\n",
        large.display()
    ));
    let (ok, said) = cli_status(&config.path, &["check-config"]);
    assert!(!ok && said.contains("larger than 64 KiB"), "{said}");
}

backend_test!(async fn only_the_status_line_of_a_bot_services_answer_is_kept);
async fn only_the_status_line_of_a_bot_services_answer_is_kept(backend: Backend) {
    let service = Stub::start(
        "<html>internal admin console: db_password=hunter2</html>",
        Duration::ZERO,
    )
    .await;
    service.set_status(500);
    let db = TestDatabase::new(backend);
    let t = TestApp::new(&db)
        .admin()
        .helper(&["relay"])
        .toml(&format!("[handlers.relay]\nurl = \"{}/\"\n", service.url))
        .start()
        .await;
    for id in [9101, 9102] {
        let answer = t
            .post_json("/zulip/outgoing", &mention(id, "@**Helper** hi"))
            .await;
        assert_eq!(answer.status, 200);
        // A 2xx answer that is not JSON next.
        service.set_status(200);
    }
    let mut errors: Vec<String> = t
        .query(|c| log_errors(c, "relay"))
        .await
        .into_iter()
        .flatten()
        .collect();
    errors.sort();
    assert_eq!(
        errors,
        vec![
            "bot service answered 500 Internal Server Error".to_string(),
            "the bot service's answer is not JSON (56 bytes)".to_string(),
        ],
        "{backend:?}"
    );
    let events = admin(&t, Method::GET, "/admin/events?listener=relay", None).await;
    assert!(
        !events.json.to_string().contains("hunter2"),
        "{:?}",
        events.json
    );
    let view = show(&t, "relay").await;
    assert!(!view.to_string().contains("hunter2"), "{view}");
    let page = t
        .http
        .get(t.url("/admin/ui/events?listener=relay"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("page")
        .text()
        .await
        .expect("body");
    assert!(page.contains("bot service answered 500") && !page.contains("hunter2"));
    t.stop().await;
    service.stop().await;
}

backend_test!(async fn null_restores_the_files_value);
async fn null_restores_the_files_value(backend: Backend) {
    let alerts = Stub::start(r#"{"ok": true}"#, Duration::ZERO).await;
    let db = TestDatabase::new(backend);
    let app = TestApp::new(&db)
        .admin()
        .helper(&["keyword_alerts"])
        .toml(&format!(
            "[handlers.keyword_alerts]\ntimeout = \"9s\"\n\
         rules = [{{ name = \"outage\", pattern = \"outage\", webhook = \"{}/outage\" }}]\n",
            alerts.url
        ));
    let config = app.config_file();
    let t = app.start().await;
    let temporary = json!({"settings": {
        "rules": [{"name": "other", "pattern": "other", "webhook": format!("{}/other", alerts.url)}],
        "timeout": "2s"
    }});
    assert_eq!(patch(&t, "keyword_alerts", temporary).await.status, 200);
    let back = patch(&t, "keyword_alerts", json!({"settings": {"rules": null}})).await;
    assert_eq!(back.status, 200, "{:?}", back.json);
    assert_eq!(
        back.json["settings"]["rules"][0]["name"], "outage",
        "{:?}",
        back.json
    );
    assert_eq!(back.json["settings"]["timeout"], "2s");
    let overridden: Vec<&str> = back.json["overrides"]
        .as_array()
        .expect("overrides")
        .iter()
        .filter_map(|o| o["field"].as_str())
        .collect();
    assert_eq!(overridden, vec!["settings.timeout"]);
    // The command line's KEY=null does the same.
    cli(
        &config.path,
        &[
            "listeners",
            "set",
            "keyword_alerts",
            "--setting",
            "timeout=null",
        ],
    );
    let followed = eventually(Duration::from_secs(10), async || {
        show(&t, "keyword_alerts").await["settings"]["timeout"] == "9s"
    })
    .await;
    assert!(followed, "{backend:?}: the file's timeout applies again");
    assert_eq!(show(&t, "keyword_alerts").await["overridden"], json!([]));

    // The file's rule alerts again.
    let answer = t
        .post_json(
            "/zulip/outgoing",
            &mention(9201, "@**Helper** outage in eu"),
        )
        .await;
    assert_eq!(answer.status, 200);
    let received = alerts.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(received.len(), 1, "{backend:?}");
    assert_eq!(received[0].path, "/outage");
    t.stop().await;
    alerts.stop().await;
}

/// A `keyword_alerts` listener `alerts-eng` scoped to #Engineering, alerting a dead port.
fn alerting(db: &TestDatabase) -> TestApp {
    TestApp::new(db)
        .admin()
        .helper(&["alerts-eng"])
        .deploy_alerts(
            "alerts-eng",
            "description = \"Deploy talk\"\nstreams = [\"Engineering\"]\n",
            "http://127.0.0.1:9/eng",
        )
        .toml("[listeners.alerts-eng.settings]\ntimeout = \"10s\"\n")
}

fn fields(view: &Value) -> Vec<String> {
    view["overrides"]
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|o| o["field"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

backend_test!(async fn overrides_are_shown_beside_the_file_and_can_be_reset);
async fn overrides_are_shown_beside_the_file_and_can_be_reset(backend: Backend) {
    let db = TestDatabase::new(backend);
    let app = alerting(&db);
    let config = app.config_file();
    let t = app.start().await;
    let changed = patch(
        &t,
        "alerts-eng",
        json!({"description": "Deploys", "streams": ["ops"], "settings": {"timeout": "2s"}}),
    )
    .await;
    assert_eq!(changed.status, 200, "{:?}", changed.json);

    // Shown beside the file's values: admin API, `listeners show`, `check-config`.
    let view = show(&t, "alerts-eng").await;
    assert_eq!(
        view["overrides"],
        json!([
            {"field": "description", "file": "Deploy talk", "database": "Deploys"},
            {"field": "streams", "file": ["Engineering"], "database": ["ops"]},
            {"field": "settings.timeout", "file": "10s", "database": "2s"},
        ]),
        "{backend:?}"
    );
    assert_eq!(view["overrides_problem"], Value::Null);
    let text = cli(&config.path, &["listeners", "show", "alerts-eng"]);
    assert!(
        text.contains("by the database (file -> database)")
            && text
                .lines()
                .any(|l| l.contains("settings.timeout") && l.contains("10s -> 2s")),
        "{text}"
    );
    let text = cli(&config.path, &["check-config"]);
    assert!(
        text.contains("listener alerts-eng: runtime changes in the database")
            && text
                .lines()
                .any(|l| l.contains("description") && l.contains("Deploy talk -> Deploys")),
        "{text}"
    );

    // One settings key, then one field: the file's values apply, recorded in the history.
    let reset = admin(
        &t,
        Method::DELETE,
        "/admin/listeners/alerts-eng/overrides/settings.timeout",
        None,
    )
    .await;
    assert_eq!(reset.status, 200, "{:?}", reset.json);
    assert_eq!(reset.json["changed"], json!(["settings"]));
    assert_eq!(reset.json["settings"]["timeout"], "10s");
    assert_eq!(fields(&reset.json), vec!["description", "streams"]);
    let said = cli(
        &config.path,
        &["listeners", "reset", "alerts-eng", "streams"],
    );
    assert!(
        said.contains("alerts-eng: streams [\"ops\"] -> [\"Engineering\"]"),
        "{said}"
    );
    let view = show(&t, "alerts-eng").await;
    let history: Vec<(String, String)> = view["history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|h| {
            (
                h["field"].as_str().unwrap_or_default().into(),
                h["source"].as_str().unwrap_or_default().into(),
            )
        })
        .collect();
    assert_eq!(
        history[..2],
        [
            ("streams".into(), "CLI".into()),
            ("settings".into(), "admin API".into())
        ],
        "{history:?}"
    );

    // What is not overridden, or is no field, is refused with what can be reset.
    let missing = admin(
        &t,
        Method::DELETE,
        "/admin/listeners/alerts-eng/overrides/users",
        None,
    )
    .await;
    assert_eq!(missing.status, 404, "{:?}", missing.json);
    let message = missing.json["message"].as_str().unwrap_or_default();
    assert!(message.contains("changed are: description"), "{message}");
    let bogus = admin(
        &t,
        Method::DELETE,
        "/admin/listeners/alerts-eng/overrides/handler",
        None,
    )
    .await;
    assert_eq!((bogus.status, &bogus.json["field"]), (400, &json!("field")));
    let nobody = admin(&t, Method::DELETE, "/admin/listeners/nope/overrides", None).await;
    assert_eq!(nobody.status, 404);
    let unauthorised = t
        .send(
            t.http
                .delete(t.url("/admin/listeners/alerts-eng/overrides")),
        )
        .await;
    assert_eq!(unauthorised.status, 401);

    // Resetting `enabled` ends an operator's disable; resetting all leaves the file's values.
    let off = admin(
        &t,
        Method::POST,
        "/admin/listeners/alerts-eng/disable",
        None,
    )
    .await;
    assert_eq!(off.json["state"], ListenerState::Disabled.as_str());
    let on = admin(
        &t,
        Method::DELETE,
        "/admin/listeners/alerts-eng/overrides/enabled",
        None,
    )
    .await;
    assert_eq!(
        (on.status, &on.json["state"]),
        (200, &json!(ListenerState::Ok)),
        "{:?}",
        on.json
    );
    let all = admin(
        &t,
        Method::DELETE,
        "/admin/listeners/alerts-eng/overrides",
        None,
    )
    .await;
    assert_eq!(all.status, 200);
    assert_eq!(all.json["changed"], json!(["description"]));
    assert_eq!(all.json["description"], "Deploy talk");
    assert_eq!(
        (&all.json["overridden"], &all.json["overrides"]),
        (&json!([]), &json!([]))
    );
    let stored = t
        .query(|c| zulip_listeners::db::tables::listeners::row(c, "alerts-eng").expect("row"))
        .await;
    assert_eq!(stored.and_then(|r| r.overrides), None, "{backend:?}");
    // Again: nothing left to reset, nothing changes.
    let again = admin(
        &t,
        Method::DELETE,
        "/admin/listeners/alerts-eng/overrides",
        None,
    )
    .await;
    assert_eq!((again.status, &again.json["changed"]), (200, &json!([])));
    t.stop().await;
}

backend_test!(async fn stored_changes_naming_a_file_are_not_applied_and_can_be_reset);
async fn stored_changes_naming_a_file_are_not_applied_and_can_be_reset(backend: Backend) {
    let collector = Stub::start(r#"{"content": "ok"}"#, Duration::ZERO).await;
    let dir = tempfile::tempdir().expect("dir");
    let token = dir.path().join("relay.token");
    std::fs::write(&token, "T0KEN-FROM-THE-FILE\n").expect("write");
    let key = dir.path().join("forwarder.key");
    std::fs::write(&key, "FORWARDER-SIGNING-KEY\n").expect("write");
    let db = TestDatabase::new(backend);
    relaying(&db, &collector, &token).start().await.stop().await;
    // What an older version let a PATCH store.
    let mut conn = db.connect();
    let mut row = zulip_listeners::db::tables::listeners::row(&mut conn, "relay")
        .expect("read")
        .expect("row");
    row.overrides = Some(json!({"settings": {"token_file": key, "timeout": "5s"}}).to_string());
    zulip_listeners::db::tables::listeners::save(&mut conn, &row, &[]).expect("save");
    drop(conn);

    let t = relaying(&db, &collector, &token).start().await;
    let view = show(&t, "relay").await;
    let problem = view["overrides_problem"].as_str().unwrap_or_default();
    assert!(
        problem.contains("settings.token_file"),
        "{backend:?}: {view}"
    );
    assert_eq!(
        view["settings"]["timeout"], "30s",
        "the file's, not applied: {view}"
    );
    let body = relayed(&t, &collector, 9301).await;
    assert!(
        body.contains("T0KEN-FROM-THE-FILE") && !body.contains("FORWARDER-SIGNING-KEY"),
        "{body}"
    );
    // Every further change is refused until the file key is dropped.
    let refused = patch(&t, "relay", json!({"settings": {"timeout": "6s"}})).await;
    assert_eq!(
        (refused.status, &refused.json["field"]),
        (400, &json!("settings.token_file"))
    );
    let dropped = admin(
        &t,
        Method::DELETE,
        "/admin/listeners/relay/overrides/settings.token_file",
        None,
    )
    .await;
    assert_eq!(dropped.status, 200, "{:?}", dropped.json);
    assert_eq!(dropped.json["overrides_problem"], Value::Null);
    assert_eq!(dropped.json["settings"]["timeout"], "5s");
    assert_eq!(fields(&dropped.json), vec!["settings.timeout"]);
    assert!(
        !dropped.json.to_string().contains("forwarder.key"),
        "{:?}",
        dropped.json
    );
    t.stop().await;
    collector.stop().await;
}

/// Signs in to the dashboard; the session cookie and the CSRF token of a listener page.
async fn dashboard_session(t: &TestServer, http: &reqwest::Client) -> (String, String) {
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
    let page = http
        .get(t.url("/admin/ui/listeners/alerts-eng"))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("page")
        .text()
        .await
        .expect("body");
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a CSRF field")
        .to_string();
    (cookie, csrf)
}

backend_test!(async fn the_dashboard_shows_overrides_and_resets_them_after_a_confirmation);
async fn the_dashboard_shows_overrides_and_resets_them_after_a_confirmation(backend: Backend) {
    let db = TestDatabase::new(backend);
    let t = alerting(&db).start().await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    assert_eq!(
        patch(
            &t,
            "alerts-eng",
            json!({"description": "Deploys", "streams": ["ops"]})
        )
        .await
        .status,
        200
    );
    let page = |path: &str| http.get(t.url(path)).bearer_auth(ADMIN).send();
    let text = page("/admin/ui/listeners/alerts-eng")
        .await
        .expect("page")
        .text()
        .await
        .expect("body");
    assert!(
        text.contains("id=\"overrides-table\"") && text.contains("Deploy talk"),
        "{text}"
    );
    assert!(
        text.contains("/admin/ui/listeners/alerts-eng/reset?field=description"),
        "{text}"
    );
    let confirm = page("/admin/ui/listeners/alerts-eng/reset?field=description")
        .await
        .expect("page");
    assert_eq!(confirm.status(), 200);
    let confirm = confirm.text().await.expect("body");
    assert!(
        confirm.contains("id=\"confirm-reset\"") && confirm.contains("Deploys"),
        "{confirm}"
    );
    assert!(
        !confirm.contains("Engineering"),
        "only the field named: {confirm}"
    );

    // Without a session, or without the CSRF token, nothing is reset.
    let form = t.url("/admin/ui/listeners/alerts-eng/reset");
    let anonymous = http
        .get(t.url("/admin/ui/listeners/alerts-eng/reset"))
        .send()
        .await
        .expect("page");
    assert_eq!(anonymous.status(), 303);
    let anonymous = http
        .post(&form)
        .form(&[("field", "description")])
        .send()
        .await
        .expect("form");
    assert_eq!(anonymous.status(), 401);
    let (cookie, csrf) = dashboard_session(&t, &http).await;
    let no_csrf = http
        .post(&form)
        .header("cookie", &cookie)
        .form(&[("field", "description")])
        .send()
        .await
        .expect("form");
    assert_eq!(no_csrf.status(), 403);
    assert_eq!(show(&t, "alerts-eng").await["description"], "Deploys");

    // With both: reset, back to the listener's page, recorded as the dashboard's.
    let done = http
        .post(&form)
        .header("cookie", &cookie)
        .form(&[("field", "description"), ("csrf", csrf.as_str())])
        .send()
        .await
        .expect("form");
    assert_eq!(done.status(), 303);
    let location = done
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    // The notice is kept in the session, never carried in the link.
    assert_eq!(location, "/admin/ui/listeners/alerts-eng", "{location}");
    let view = show(&t, "alerts-eng").await;
    assert_eq!(view["description"], "Deploy talk");
    assert_eq!(fields(&view), vec!["streams"]);
    assert_eq!(view["history"][0]["source"], "dashboard");
    assert_eq!(
        view["history"][0]["actor"], "admin",
        "{}",
        view["history"][0]
    );
    let all = http
        .post(&form)
        .header("cookie", &cookie)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .expect("form");
    assert_eq!(all.status(), 303);
    assert_eq!(
        show(&t, "alerts-eng").await["overridden"],
        json!([]),
        "{backend:?}"
    );
    t.stop().await;
}
