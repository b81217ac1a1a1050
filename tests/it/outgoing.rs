//! Outgoing webhooks over real HTTP against the real server, on SQLite and PostgreSQL.

use std::time::Duration;

use crate::support::*;
use diesel::prelude::*;
use serde_json::json;
use zulip_listeners::db::tables;

/// Zulip's official outgoing-webhook example (api docs, `zulip.yaml`), verbatim.
const OFFICIAL_EXAMPLE: &str = r#"{
    "bot_email": "outgoing-bot@localhost",
    "bot_full_name": "Outgoing webhook test",
    "data": "@**Outgoing webhook test** Zulip is the world\u2019s most productive group chat!",
    "message": {
        "avatar_url": "https://secure.gravatar.com/avatar/1f4f1575bf002ae562fea8fc4b861b09?d=identicon&version=1",
        "client": "website",
        "content": "@**Outgoing webhook test** Zulip is the world\u2019s most productive group chat!",
        "display_recipient": "Verona",
        "id": 112,
        "is_me_message": false,
        "reactions": [],
        "recipient_id": 20,
        "rendered_content": "<p><span class=\"user-mention\" data-user-id=\"25\">@Outgoing webhook test</span> Zulip is the world\u2019s most productive group chat!</p>",
        "sender_email": "iago@zulip.com",
        "sender_full_name": "Iago",
        "sender_id": 5,
        "sender_realm_str": "zulip",
        "stream_id": 5,
        "subject": "Verona2",
        "submessages": [],
        "timestamp": 1527876931,
        "topic_links": [],
        "type": "stream"
    },
    "token": "xvOzfurIutdRRVLzpXrIIHXJvNfaJLJ0",
    "trigger": "mention"
}"#;

/// The official example with another message id and content.
fn example(id: i64, content: &str) -> String {
    let mut body: serde_json::Value = serde_json::from_str(OFFICIAL_EXAMPLE).expect("valid");
    body["message"]["id"] = json!(id);
    body["message"]["content"] = json!(content);
    body["data"] = json!(content);
    body.to_string()
}

/// A direct message (shape from the reference §1.6) with the given trigger spelling.
fn direct_message(id: i64, trigger: &str, content: &str) -> String {
    json!({
        "bot_email": BOT_EMAIL,
        "bot_full_name": "Helper",
        "data": content,
        "message": {
            "client": "website",
            "content": content,
            "content_type": "text/x-markdown",
            "display_recipient": [
                {"id": 9, "email": "desdemona@zulip.example.com", "full_name": "Desdemona", "is_mirror_dummy": false},
                {"id": 42, "email": BOT_EMAIL, "full_name": "Helper", "is_mirror_dummy": false}
            ],
            "id": id,
            "recipient_id": 31,
            "sender_email": "desdemona@zulip.example.com",
            "sender_full_name": "Desdemona",
            "sender_id": 9,
            "sender_realm_str": "zulip",
            "subject": "",
            "timestamp": 1732371234,
            "type": "private"
        },
        "token": TOKEN,
        "trigger": trigger
    })
    .to_string()
}

backend_test!(async fn official_example_gets_a_reply_and_is_logged);
async fn official_example_gets_a_reply_and_is_logged(backend: Backend) {
    let db = TestDatabase::new(backend);
    let t = TestApp::new(&db)
        .helper(&["command_bot", "message_logger"])
        .start()
        .await;

    let answer = t.post_json("/zulip/outgoing", OFFICIAL_EXAMPLE).await;
    assert_eq!(answer.status, 200, "{backend:?}: {:?}", answer.json);
    let reply = answer.json["content"].as_str().expect("a reply");
    assert!(reply.contains("don't know the command `Zulip`"), "{reply}");

    let answer = t
        .post_json(
            "/zulip/outgoing",
            &example(113, "@**Outgoing webhook test** ping"),
        )
        .await;
    assert_eq!(answer.json, json!({"content": "pong"}), "{backend:?}");

    let (stored, logs) = t
        .query(|c| {
            (
                tables::messages::message_by_id(c, 112).expect("query"),
                log_rows_for(c, 112),
            )
        })
        .await;
    let stored = stored.expect("message 112 stored by message_logger");
    assert_eq!(
        stored.content,
        "@**Outgoing webhook test** Zulip is the world\u{2019}s most productive group chat!"
    );
    assert_eq!(stored.realm, "zulip");
    assert_eq!(stored.channel.as_deref(), Some("Verona"));
    assert_eq!(stored.topic.as_deref(), Some("Verona2"));
    assert_eq!(stored.sender_email.as_deref(), Some("iago@zulip.com"));
    assert_eq!(stored.sender_name.as_deref(), Some("Iago"));
    assert_eq!(
        logs,
        vec![
            ("command_bot".to_string(), true),
            ("message_logger".to_string(), true)
        ],
        "{backend:?}"
    );
    t.stop().await;
}

backend_test!(async fn direct_messages_with_both_trigger_spellings);
async fn direct_messages_with_both_trigger_spellings(backend: Backend) {
    let db = TestDatabase::new(backend);
    let t = TestApp::new(&db)
        .helper(&["command_bot", "message_logger"])
        .start()
        .await;
    for (id, trigger) in [(200, "direct_message"), (201, "private_message")] {
        let answer = t
            .post_json(
                "/zulip/outgoing",
                &direct_message(id, trigger, "echo hi there"),
            )
            .await;
        assert_eq!(answer.status, 200);
        assert_eq!(
            answer.json,
            json!({"content": "hi there"}),
            "{backend:?} {trigger}"
        );
    }
    let stored = t
        .query(|c| tables::messages::message_by_id(c, 201).expect("query"))
        .await
        .expect("stored");
    assert_eq!(stored.message_type, "private");
    let recipients: serde_json::Value =
        serde_json::from_str(stored.dm_recipients.as_deref().expect("recipients")).expect("json");
    assert_eq!(recipients[0]["id"], json!(9));
    t.stop().await;
}

#[actix_web::test]
async fn minimal_bodies_from_zulips_docs_work() {
    let db = TestDatabase::new(Backend::Sqlite);
    let t = TestApp::new(&db).helper(&["command_bot"]).start().await;

    // deploying-bots.md (E2) without its stray trailing comma; and the botserver's test (E6).
    let e2 = format!(
        r#"{{"message":{{"content":"@**My Bot User** ping"}},"bot_email":"{BOT_EMAIL}","trigger":"mention","token":"{TOKEN}"}}"#
    );
    assert_eq!(
        t.post_json("/zulip/outgoing", &e2).await.json,
        json!({"content": "pong"})
    );
    let e6 = format!(
        r#"{{"message":{{"content":"@**test** echo test message"}},"bot_email":"{BOT_EMAIL}","trigger":"mention","token":"{TOKEN}"}}"#
    );
    assert_eq!(
        t.post_json("/", &e6).await.json,
        json!({"content": "test message"})
    );
    // A captured Zulip 3.2 request (E5): no bot_email, no trigger, content only in `data`.
    let e5 = format!(
        r#"{{"data":"ping","token":"{TOKEN}","message":{{"sender_id":123456,"recipient_id":123456,"sender_full_name":"Jon Asch","type":"stream"}}}}"#
    );
    assert_eq!(
        t.post_json("/zulip/outgoing", &e5).await.json,
        json!({"content": "pong"})
    );
    // Empty topic in a channel, ASCII escapes and surrogate pairs.
    let escaped = format!(
        r#"{{"message":{{"id":7,"content":"echo h\u00e9llo \ud83d\ude00","subject":"","type":"stream"}},"bot_email":"{BOT_EMAIL}","trigger":"mention","token":"{TOKEN}"}}"#
    );
    assert_eq!(
        t.post_json("/zulip/outgoing", &escaped).await.json,
        json!({"content": "héllo 😀"})
    );
    // The documented E2 exactly as printed is not JSON: a clear 400.
    let broken = r#"{"message":{"content":"@**My Bot User** hello world",},"bot_email":"x","trigger":"mention","token":"XXXX"}"#;
    let answer = t.post_json("/zulip/outgoing", broken).await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.json["error"], "malformed_request");
    t.stop().await;
}

#[actix_web::test]
async fn slack_format_is_answered_with_text() {
    let db = TestDatabase::new(Backend::Sqlite);
    let t = TestApp::new(&db).helper(&["command_bot"]).start().await;
    let form = format!(
        "token={TOKEN}&team_id=T1512&team_domain=zulip.example.com&channel_id=C123&channel_name=integrations&thread_ts=1532078950&timestamp=1532078950&user_id=U21&user_name=Full+Name&text=%40%2A%2Atest%2A%2A+ping&trigger_word=mention&service_id=27"
    );
    let answer = t.post_form("/zulip/outgoing", &form).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json, json!({"text": "pong"}));
    let wrong = form.replace(TOKEN, "nope");
    assert_eq!(t.post_form("/zulip/outgoing", &wrong).await.status, 401);
    t.stop().await;
}

#[actix_web::test]
async fn mistakes_get_specific_json_errors() {
    let db = TestDatabase::new(Backend::Sqlite);
    let t = TestApp::new(&db)
        .helper(&["command_bot"])
        .start_edited(|config| config.server.max_body_bytes = 4096)
        .await;

    let wrong_token = example(300, "ping").replace(TOKEN, "wrongwrongwrongwrongwrongwrong00");
    let answer = t.post_json("/zulip/outgoing", &wrong_token).await;
    assert_eq!(
        (answer.status, answer.json["error"].as_str()),
        (401, Some("unauthorized"))
    );
    assert!(
        answer.json["message"]
            .as_str()
            .unwrap_or_default()
            .contains("helper")
    );

    let unknown_bot = example(301, "ping").replace(BOT_EMAIL, "someone-else@localhost");
    let answer = t.post_json("/zulip/outgoing", &unknown_bot).await;
    assert_eq!(
        (answer.status, answer.json["error"].as_str()),
        (404, Some("not_found"))
    );
    assert_eq!(
        t.post_json("/bots/nobody", &example(302, "ping"))
            .await
            .status,
        404
    );

    for malformed in [
        "",
        "not json",
        "[1,2]",
        r#"{"message": {"id": "x"}}"#,
        r#"{"token": 5}"#,
    ] {
        let answer = t.post_json("/zulip/outgoing", malformed).await;
        assert_eq!(answer.status, 400, "{malformed:?}");
        assert_eq!(answer.json["error"], "malformed_request");
        assert!(
            !answer.json["message"]
                .as_str()
                .unwrap_or_default()
                .is_empty()
        );
    }

    let huge = example(303, &"x".repeat(5000));
    let answer = t.post_json("/zulip/outgoing", &huge).await;
    assert_eq!(
        (answer.status, answer.json["error"].as_str()),
        (413, Some("payload_too_large"))
    );

    let answer = t.send(t.http.get(t.url("/zulip/outgoing"))).await;
    assert_eq!(
        (answer.status, answer.json["error"].as_str()),
        (405, Some("method_not_allowed"))
    );
    assert_eq!(t.send(t.http.get(t.url("/nowhere"))).await.status, 404);

    // A trigger this server does not act on is still a 2xx, so Zulip posts no failure.
    let other = example(304, "ping").replace(r#""trigger":"mention""#, r#""trigger":"reaction""#);
    let answer = t.post_json("/zulip/outgoing", &other).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json, json!({"response_not_required": true}));
    t.stop().await;
}

backend_test!(async fn retries_are_answered_once_even_across_a_restart);
async fn retries_are_answered_once_even_across_a_restart(backend: Backend) {
    let db = TestDatabase::new(backend);
    let app = || TestApp::new(&db).helper(&["command_bot", "message_logger"]);
    let t = app().start().await;
    let body = example(400, "@**Outgoing webhook test** echo once");
    let first = t.post_json("/zulip/outgoing", &body).await;
    let second = t.post_json("/zulip/outgoing", &body).await;
    assert_eq!(first.json, json!({"content": "once"}));
    assert_eq!(
        second.json, first.json,
        "{backend:?}: a retry gets the same answer"
    );
    assert_eq!(
        t.query(|c| log_rows_for(c, 400)).await.len(),
        2,
        "handlers ran once"
    );
    t.stop().await;

    let t = app().start().await;
    let third = t.post_json("/zulip/outgoing", &body).await;
    assert_eq!(
        third.json, first.json,
        "{backend:?}: remembered across a restart"
    );
    assert_eq!(
        t.query(|c| log_rows_for(c, 400)).await.len(),
        2,
        "still ran once"
    );
    t.stop().await;
}

backend_test!(async fn late_replies_reach_zulips_rest_api);
async fn late_replies_reach_zulips_rest_api(backend: Backend) {
    let bot_service = Stub::start(
        r#"{"content": "the slow answer"}"#,
        Duration::from_millis(1200),
    )
    .await;
    let zulip = Stub::start(
        r#"{"result": "success", "msg": "", "id": 4242}"#,
        Duration::ZERO,
    )
    .await;
    let db = TestDatabase::new(backend);
    let t = TestApp::new(&db)
        .helper(&["relay"])
        .toml(&format!(
            "[bots.helper]\napi_key = \"bot-api-key\"\nsite = \"{}\"\nreply_deadline = \"200ms\"\n[handlers.relay]\nurl = \"{}/\"\n",
            zulip.url, bot_service.url
        ))
        .start()
        .await;
    let before = zulip.requests().len();
    let started = std::time::Instant::now();
    let answer = t
        .post_json(
            "/zulip/outgoing",
            &example(500 + before as i64, "deploy please"),
        )
        .await;
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "answered at the deadline"
    );
    assert_eq!(answer.json, json!({"response_not_required": true}));

    let posted = zulip.wait_for(before + 1, Duration::from_secs(10)).await;
    let request = posted
        .get(before)
        .expect("late reply posted to the stub Zulip API");
    assert_eq!(request.path, "/api/v1/messages");
    let form: Vec<(String, String)> = serde_urlencoded::from_str(&request.body).expect("form");
    let field = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    assert_eq!(field("type"), Some("stream"));
    assert_eq!(field("to"), Some("5"));
    assert_eq!(field("topic"), Some("Verona2"));
    assert_eq!(field("content"), Some("the slow answer"));
    let expected_auth = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("{BOT_EMAIL}:bot-api-key")
        )
    );
    assert_eq!(
        request.authorization.as_deref(),
        Some(expected_auth.as_str())
    );
    // The relay saw Zulip's body, without the bot's token.
    let relayed = bot_service.requests();
    let last = relayed.last().expect("relayed");
    assert!(last.body.contains("deploy please") && !last.body.contains(TOKEN));
    t.stop().await;
    zulip.stop().await;
    bot_service.stop().await;
}

#[actix_web::test]
async fn botserverrc_from_zulip_configures_bots() {
    let dir = tempfile::tempdir().expect("dir");
    let rc = dir.path().join("botserverrc");
    std::fs::write(
        &rc,
        format!("[helper]\nemail={BOT_EMAIL}\nkey=\nsite=\ntoken={TOKEN}\n"),
    )
    .expect("write rc");
    let db = TestDatabase::new(Backend::Sqlite);
    let conf = dir.path().join("server.toml");
    std::fs::write(
        &conf,
        format!(
            "[server]\nbind = \"127.0.0.1:0\"\n[database]\nurl = \"{}\"\n",
            db.url
        ),
    )
    .expect("write config");
    let config = zulip_listeners::config::Config::load(&zulip_listeners::config::Sources {
        config_file: Some(conf),
        botserverrc: Some(rc),
    })
    .expect("loads");
    let t = TestServer::start(config, Default::default()).await;
    let answer = t
        .post_json(
            "/bots/helper",
            &example(600, "@**Outgoing webhook test** ping"),
        )
        .await;
    assert_eq!(answer.json, json!({"content": "pong"}));
    t.stop().await;
}

#[actix_web::test]
async fn dry_run_writes_only_the_event_log() {
    let db = TestDatabase::new(Backend::Sqlite);
    let t = TestApp::new(&db)
        .helper(&["command_bot", "message_logger"])
        .options(zulip_listeners::server::ServeOptions {
            dry_run: true,
            ..Default::default()
        })
        .start()
        .await;
    let answer = t.post_json("/zulip/outgoing", &example(700, "ping")).await;
    assert_eq!(answer.json, json!({"response_not_required": true}));
    let (logs, stored, replies) = t
        .query(|c| {
            use zulip_listeners::db::schema::outgoing_replies;
            (
                log_rows_for(c, 700),
                tables::messages::message_by_id(c, 700).expect("query"),
                outgoing_replies::table
                    .count()
                    .get_result::<i64>(c)
                    .expect("count"),
            )
        })
        .await;
    assert_eq!(logs.len(), 2, "handlers ran and were logged");
    assert!(stored.is_none(), "dry run stores no message");
    assert_eq!(replies, 0, "dry run keeps no reply record");
    t.stop().await;
}

backend_test!(async fn an_unknown_trigger_runs_the_listeners_without_a_reply);
/// A trigger this server does not know (Zulip's planned `all_received`, per-bot triggers):
/// Zulip still gets `response_not_required`, but the event is logged and the bot's listeners
/// get it with its trigger; command_bot answers only when the bot is addressed, and a user over
/// the quota gets no notice for a message that was not addressed to the bot.
async fn an_unknown_trigger_runs_the_listeners_without_a_reply(backend: Backend) {
    let db = TestDatabase::new(backend);
    let t = TestApp::new(&db)
        .helper(&["command_bot", "message_logger"])
        .toml("[rate_limits.per_user]\nper_minute = 1\nburst = 2\n")
        .start()
        .await;
    let with_trigger = |id: i64, content: &str, trigger: &str| {
        let mut body: serde_json::Value =
            serde_json::from_str(&example(id, content)).expect("json");
        body["trigger"] = json!(trigger);
        body.to_string()
    };
    let unaddressed = t
        .post_json(
            "/zulip/outgoing",
            &with_trigger(300, "ping", "all_received"),
        )
        .await;
    assert_eq!(unaddressed.status, 200);
    assert_eq!(unaddressed.json, json!({"response_not_required": true}));
    let addressed = t
        .post_json(
            "/zulip/outgoing",
            &with_trigger(301, "@**Outgoing webhook test** ping", "mention"),
        )
        .await;
    assert_eq!(addressed.json, json!({"content": "pong"}), "{backend:?}");
    t.server.flush().await;
    let logged = t.query(|c| log_rows_for(c, 300)).await;
    assert_eq!(
        logged,
        vec![
            ("command_bot".to_string(), true),
            ("message_logger".to_string(), true)
        ],
        "{backend:?}: both listeners ran on the unaddressed message"
    );
    let stored = t
        .query(|c| tables::messages::message_by_id(c, 300).expect("query"))
        .await;
    assert!(stored.is_some(), "message_logger stored it");

    // Over the quota (burst 2): no notice for a message the bot was not addressed in.
    let limited = t
        .post_json(
            "/zulip/outgoing",
            &with_trigger(302, "hello", "all_received"),
        )
        .await;
    assert_eq!(limited.status, 200);
    assert_eq!(limited.json, json!({"response_not_required": true}));
    t.stop().await;
}

backend_test!(async fn realm_scopes_by_id_match_outgoing_webhooks);
/// Zulip's outgoing payload names the realm only by subdomain (`sender_realm_str`): a listener
/// scoped by realm id runs on a bot's messages once the id is known — from the bot's
/// `realm_id`, or from a forwarded batch of that realm — and not for another realm.
async fn realm_scopes_by_id_match_outgoing_webhooks(backend: Backend) {
    let db = TestDatabase::new(backend);
    let scoped = "[listeners.zulip_log]\nhandler = \"message_logger\"\nrealms = [7]\n";
    let logged = |t: &TestServer, id: i64| {
        let t = t.server.db.clone();
        async move {
            t.run(move |c| tables::messages::message_by_id(c, id))
                .await
                .expect("query")
                .is_some()
        }
    };
    // With the bot's realm id configured.
    let t = TestApp::new(&db)
        .helper(&["command_bot", "zulip_log"])
        .toml(&format!("{scoped}[bots.helper]\nrealm_id = 7\n"))
        .start()
        .await;
    let answer = t
        .post_json(
            "/zulip/outgoing",
            &example(400, "@**Outgoing webhook test** ping"),
        )
        .await;
    assert_eq!(answer.json, json!({"content": "pong"}));
    t.server.flush().await;
    assert!(
        logged(&t, 400).await,
        "{backend:?}: the id-scoped listener ran"
    );
    t.stop().await;

    // Without it, the forwarder teaches the id: not known yet, then known.
    let t = TestApp::new(&db)
        .helper(&["command_bot", "zulip_log"])
        .forwarder()
        .toml(scoped)
        .start()
        .await;
    t.post_json(
        "/zulip/outgoing",
        &example(401, "@**Outgoing webhook test** ping"),
    )
    .await;
    t.server.flush().await;
    assert!(
        !logged(&t, 401).await,
        "{backend:?}: realm 7 is not known to be `zulip` yet"
    );
    let taught = t
        .post_events(
            "msg_realm_7",
            vec![
                Envelope::new(
                    "realm-7-typing",
                    json!({"type": "typing", "op": "start",
                "sender": {"user_id": 10, "email": "u10@zulip.example.com"},
                "recipients": [], "message_type": "direct"}),
                )
                .realm(7, "Zulip")
                .json(),
            ],
        )
        .await;
    assert_eq!(taught.status, 200, "{:?}", taught.json);
    t.post_json(
        "/zulip/outgoing",
        &example(402, "@**Outgoing webhook test** ping"),
    )
    .await;
    t.server.flush().await;
    assert!(
        logged(&t, 402).await,
        "{backend:?}: learned from the forwarded batch"
    );
    t.stop().await;
}

#[test]
fn a_realm_id_scope_nothing_can_match_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("dir");
    let config = ConfigFile::new(&format!(
        "[database]\nurl = \"sqlite://{}/x.db\"\n{}[listeners.zulip_log]\nhandler = \"message_logger\"\nrealms = [7]\n",
        dir.path().display(),
        helper_bot(&["command_bot", "zulip_log"]),
    ));
    let (ok, said) = cli_status(&config.path, &["check-config"]);
    assert!(!ok, "{said}");
    assert!(said.contains("listeners.zulip_log.realms"), "{said}");
    assert!(said.contains("bots.helper.realm_id"), "{said}");
}
