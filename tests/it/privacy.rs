//! Data protection against the real server and binary: deleted messages keep no content,
//! secrets and webhook URLs stay out of every output, outbound calls do not follow redirects
//! to other hosts and need https, `relay` does not pass the bot token on, weak keys are refused.

use std::time::Duration;

use crate::support::*;
use actix_web::{App, HttpResponse, HttpServer, web};
use diesel::prelude::*;
use serde_json::{Value, json};
use zulip_listeners::config::Config;
use zulip_listeners::db::tables;
use zulip_listeners::listeners::Registry;

fn direct_message(id: i64, content: &str) -> Value {
    json!({"type": "message", "flags": [], "message": {
    "id": id, "sender_id": 10, "sender_full_name": "Alice Example",
    "sender_email": "alice@acme.example.com", "sender_realm_str": "acme",
    "client": "website", "content": content, "content_type": "text/x-markdown",
    "recipient_id": 30, "subject": "", "timestamp": 1700000000, "type": "private",
    "display_recipient": [
        {"id": 10, "email": "alice@acme.example.com", "full_name": "Alice Example"},
        {"id": 11, "email": "bob@acme.example.com", "full_name": "Bob Example"}
    ]}})
}

backend_test!(async fn a_deleted_message_keeps_no_content_nor_personal_data);
async fn a_deleted_message_keeps_no_content_nor_personal_data(backend: Backend) {
    let db = TestDatabase::new(backend);
    let t = TestApp::new(&db).forwarder().start().await;
    let answer = t
        .post_events(
            "msg_p1",
            vec![envelope(
                "p1",
                direct_message(3001, "my password is hunter2"),
            )],
        )
        .await;
    assert_eq!(answer.status, 200, "{backend:?}: {:?}", answer.json);
    let stored = t
        .query(|c| tables::messages::message_by_id(c, 3001).expect("q"))
        .await
        .expect("stored");
    assert!(
        stored.content.contains("hunter2"),
        "{backend:?}: {stored:?}"
    );

    let delete =
        json!({"type": "delete_message", "message_ids": [3001], "message_type": "private"});
    let answer = t.post_events("msg_p2", vec![envelope("p2", delete)]).await;
    assert_eq!(answer.status, 200, "{backend:?}: {:?}", answer.json);
    // A copy re-sent later (another event id) and a late edit do not bring it back.
    let late_edit = json!({"type": "update_message", "user_id": 10, "edit_timestamp": 1700000100,
        "message_id": 3001, "message_ids": [3001], "rendering_only": false,
        "content": "edited: hunter2 again", "flags": []});
    let answer = t
        .post_events(
            "msg_p3",
            vec![
                envelope("p3", direct_message(3001, "my password is hunter2")),
                envelope("p4", late_edit),
            ],
        )
        .await;
    assert_eq!(answer.status, 200, "{backend:?}: {:?}", answer.json);

    let deleted = eventually(Duration::from_secs(10), async || {
        t.query(|c| tables::messages::message_by_id(c, 3001).expect("q"))
            .await
            .is_some_and(|m| m.deleted)
    })
    .await;
    assert!(deleted, "{backend:?}: delete applied");
    let m = t
        .query(|c| tables::messages::message_by_id(c, 3001).expect("q"))
        .await
        .expect("tombstone kept");
    assert_eq!(m.content, "", "{backend:?}: {m:?}");
    assert_eq!(
        (&m.sender_email, &m.sender_name, &m.dm_recipients, &m.topic),
        (&None, &None, &None, &None),
        "{backend:?}: {m:?}"
    );
    assert_eq!(m.sender_id, Some(10), "{backend:?}: ids are kept");
    t.stop().await;
}

#[test]
fn check_config_does_not_print_the_database_password() {
    let config =
        ConfigFile::new("[database]\nurl = \"postgres://listener:S3cretDbPass@db.internal/zl\"\n");
    let out = cli(&config.path, &["check-config"]);
    assert!(!out.contains("S3cretDbPass"), "{out}");
    assert!(
        out.contains("listener@db.internal/zl") || out.contains("db.internal"),
        "{out}"
    );

    let parsed =
        Config::from_toml("[database]\nurl = \"postgres://u:S3cretDbPass@h/db\"\n").expect("valid");
    let shown = format!("{parsed:?} {:?}", parsed.database.url);
    assert!(!shown.contains("S3cretDbPass"), "{shown}");
}

#[actix_web::test]
async fn webhook_urls_stay_out_of_the_event_log_admin_api_and_listeners() {
    let port = free_port();
    let db = TestDatabase::new(Backend::Sqlite);
    let t = TestApp::new(&db)
        .helper(&["keyword_alerts"])
        .admin()
        .toml(&format!(
            "[handlers.keyword_alerts]\nrules = [{{ name = \"leak\", pattern = \"outage\", webhook = \"http://127.0.0.1:{port}/hooks/SECRETPATH0123?key=QUERYSECRET\" }}]\n"
        ))
        .start()
        .await;
    let answer = t
        .post_json(
            "/zulip/outgoing",
            &mention(4001, "@**Helper** outage in prod"),
        )
        .await;
    assert_eq!(answer.status, 200, "{:?}", answer.json);

    let errors: Vec<Option<String>> = t.query(|c| log_errors(c, "keyword_alerts")).await;
    let error = errors.first().cloned().flatten().expect("a failed run");
    assert!(
        !error.contains("SECRETPATH0123") && !error.contains("QUERYSECRET"),
        "{error}"
    );
    assert!(
        error.contains(&format!("127.0.0.1:{port}")),
        "names the origin: {error}"
    );

    let events = t
        .send(t.admin(
            reqwest::Method::GET,
            "/admin/events?listener=keyword_alerts",
        ))
        .await;
    assert_eq!(events.status, 200);
    let shown = events.json.to_string();
    assert!(!shown.contains("SECRETPATH0123"), "{shown}");

    let stored: Vec<String> = t.query(listener_configs).await;
    let stored = stored.join("\n");
    assert!(
        !stored.contains("SECRETPATH0123") && !stored.contains("QUERYSECRET"),
        "{stored}"
    );
    t.stop().await;
}

/// The stored configuration of every listener.
fn listener_configs(c: &mut zulip_listeners::db::DbConnection) -> Vec<String> {
    use zulip_listeners::db::schema::listeners;
    listeners::table
        .select(listeners::config)
        .load(c)
        .expect("listeners")
}

/// A loopback server that answers every request with `307 Location: <to>`.
async fn redirector(to: String) -> (String, actix_web::dev::ServerHandle) {
    serve_loopback(move |listener| {
        Ok(HttpServer::new(move || {
            let to = to.clone();
            App::new().default_service(web::to(move || {
                let to = to.clone();
                async move {
                    HttpResponse::TemporaryRedirect()
                        .insert_header(("location", to))
                        .finish()
                }
            }))
        })
        .workers(1)
        .listen(listener)?
        .run())
    })
}

#[actix_web::test]
async fn relay_follows_no_redirect_to_another_host() {
    let elsewhere = Stub::start(r#"{"content": "stolen"}"#, Duration::ZERO).await;
    // Same port family, another origin: `localhost` is not `127.0.0.1`.
    let target = elsewhere.url.replace("127.0.0.1", "localhost");
    let (redirect_url, redirect) = redirector(format!("{target}/collect")).await;
    let db = TestDatabase::new(Backend::Sqlite);
    let t = TestApp::new(&db)
        .helper(&["relay"])
        .toml(&format!("[handlers.relay]\nurl = \"{redirect_url}/\"\n"))
        .start()
        .await;
    let answer = t
        .post_json("/zulip/outgoing", &mention(5001, "@**Helper** hi"))
        .await;
    assert_eq!(answer.status, 200);
    assert_ne!(answer.json["content"], "stolen", "{:?}", answer.json);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        elsewhere.requests().is_empty(),
        "the webhook (with its token) went to another host: {:?}",
        elsewhere.requests()
    );
    t.stop().await;
    redirect.stop(false).await;
    elsewhere.stop().await;
}

#[actix_web::test]
async fn relay_sends_its_own_token_not_the_bots() {
    let service = Stub::start(r#"{"content": "ok"}"#, Duration::ZERO).await;
    let db = TestDatabase::new(Backend::Sqlite);
    let t = TestApp::new(&db)
        .helper(&["relay"])
        .toml(&format!(
            "[handlers.relay]\nurl = \"{}/\"\ntoken = \"relay-own-token-0123456789\"\n",
            service.url
        ))
        .start()
        .await;
    let answer = t
        .post_json("/zulip/outgoing", &mention(6001, "@**Helper** hi"))
        .await;
    assert_eq!(answer.json["content"], "ok", "{:?}", answer.json);
    let form = t
        .post_form(
            "/zulip/outgoing",
            &format!(
                "token={TOKEN}&team_id=T1512&team_domain=zulip.example.com&channel_id=C123&channel_name=integrations&thread_ts=1532078951&timestamp=1532078951&user_id=U21&user_name=Full+Name&text=%40%2A%2Ahelper%2A%2A+hello&trigger_word=mention&service_id=27"
            ),
        )
        .await;
    assert_eq!(form.status, 200, "{:?}", form.json);
    let received = service.wait_for(2, Duration::from_secs(5)).await;
    assert_eq!(received.len(), 2, "{received:?}");
    for request in &received {
        assert!(!request.body.contains(TOKEN), "{}", request.body);
        assert!(
            request.body.contains("relay-own-token-0123456789"),
            "{}",
            request.body
        );
    }
    let stored: Vec<String> = t.query(listener_configs).await;
    assert!(
        !stored.join("").contains("relay-own-token"),
        "settings are stored without secrets: {stored:?}"
    );
    t.stop().await;
    service.stop().await;
}

/// The configuration error for `extra` (validation, then the handlers' settings and the
/// forwarder's signing keys, as `check-config` does).
fn config_error(extra: &str) -> String {
    match Config::from_toml(extra) {
        Err(e) => e.to_string(),
        Ok(config) => match Registry::build(&config) {
            Err(e) => e.to_string(),
            Ok(_) => match zulip_listeners::verification::signing_keys(&config.forwarder.secrets) {
                Err(e) => e.to_string(),
                Ok(_) => panic!("accepted: {extra}"),
            },
        },
    }
}

#[test]
fn outbound_targets_need_https_except_on_loopback() {
    let bot = "[bots.h]\nemail = \"h-bot@x.org\"\ntoken = \"t0123456789\"\napi_key = \"k\"\n";
    let err = config_error(&format!("{bot}site = \"http://chat.example.com\"\n"));
    assert!(
        err.contains("bots.h.site") && err.contains("https://"),
        "{err}"
    );
    let err = config_error(
        "[error_handling]\nnotification_webhook = \"http://hooks.example.com/T/SECRET\"\n",
    );
    assert!(err.contains("error_handling.notification_webhook"), "{err}");
    assert!(!err.contains("SECRET"), "{err}");
    let err = config_error("[handlers.relay]\nurl = \"http://bots.example.com/\"\n");
    assert!(err.contains("relay") && err.contains("url"), "{err}");
    let err = config_error(
        "[handlers.keyword_alerts]\nrules = [{ name = \"r\", pattern = \"x\", webhook = \"http://hooks.example.com/a\" }]\n",
    );
    assert!(err.contains("rules[0].webhook"), "{err}");
    // https anywhere and http on loopback are fine.
    for ok in [
        format!("{bot}site = \"https://chat.example.com\"\n"),
        format!("{bot}site = \"http://127.0.0.1:9991\"\n"),
        "[handlers.relay]\nurl = \"http://localhost:5002/\"\n".to_string(),
    ] {
        let config = Config::from_toml(&ok).expect("valid");
        Registry::build(&config).expect("handlers build");
    }
}

#[test]
fn weak_signing_keys_and_short_admin_tokens_are_refused() {
    // 16 random bytes: accepted before, although the error text asked for 24.
    let err = config_error("[forwarder]\nsecrets = [\"whsec_MfKQ9r8GKYqrTwjUPD8ILA==\"]\n");
    assert!(
        err.contains("forwarder.secrets[0]") && err.contains("24"),
        "{err}"
    );
    let err = config_error("[admin]\ntoken = \"letmein\"\n");
    assert!(err.contains("admin.token") && err.contains("24"), "{err}");
    assert!(!err.contains("letmein"), "{err}");
    Config::from_toml(&format!("[admin]\ntoken = \"{ADMIN}\"\n")).expect("a long token is fine");
}

#[test]
fn retention_settings_are_validated_with_their_key() {
    let err = config_error("[retention]\nmessage_retention_days = 100000\n");
    assert!(err.contains("retention.message_retention_days"), "{err}");
    let err = config_error("[retention]\nalert_retention_days = 1\n");
    assert!(
        err.contains("retention.alert_retention_days") && err.contains("max_event_age"),
        "{err}"
    );
    let config = Config::from_toml("").expect("defaults");
    assert_eq!(
        (
            config.retention.message_retention_days,
            config.retention.activity_retention_days,
            config.retention.alert_retention_days
        ),
        (30, 90, 30)
    );
}
