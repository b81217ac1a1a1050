//! `zulip-listeners verify` against a loopback stand-in of Zulip's REST API
//! ([`FakeZulip`]) that delivers the outgoing webhook to the real server under test and, with
//! the forwarder installed, posts the message to its `/zulip/events`: the whole path passing,
//! and each step failing on its own with the fix that names its cause.

use std::process::Output;

use crate::support::*;

/// The server under test: the admin API, the bot `helper` running `listeners`, and the
/// forwarder.
fn app(db: &TestDatabase, listeners: &[&str]) -> TestApp {
    TestApp::new(db).admin().forwarder().helper(listeners)
}

/// `verify` in a process of its own (off the test's runtime, where the stand-ins run), as
/// Alice with her key in a file, against `zulip` and the admin API at `admin_url`.
async fn verify(config: &ConfigFile, zulip: &str, admin_url: &str, more: &[&str]) -> Output {
    let dir = tempfile::tempdir().expect("dir");
    let key = dir.path().join("alice.key");
    std::fs::write(&key, format!("{PERSON_KEY}\n")).expect("key file");
    let mut args: Vec<String> = [
        "verify",
        "--site",
        zulip,
        "--email",
        PERSON_EMAIL,
        "--admin-url",
        admin_url,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(["--api-key-file".to_string(), key.display().to_string()]);
    args.extend(more.iter().map(|s| s.to_string()));
    let path = config.path.clone();
    let output = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&path, &args, &[])
    })
    .await
    .expect("verify ran");
    drop(dir);
    output
}

/// The line of a step, starting with its mark, e.g. `[FAIL] no webhook`.
fn line<'a>(said: &'a str, start: &str) -> &'a str {
    said.lines()
        .find(|l| l.starts_with(start))
        .unwrap_or_else(|| panic!("no line starting `{start}` in\n{said}"))
}

/// The `fix:` line under the step starting with `start`.
fn fix_of<'a>(said: &'a str, start: &str) -> &'a str {
    let mut lines = said.lines().skip_while(|l| !l.starts_with(start));
    lines.next();
    lines
        .next()
        .filter(|l| l.trim_start().starts_with("fix:"))
        .unwrap_or_else(|| panic!("no fix under `{start}` in\n{said}"))
}

/// Whether a line shows a latency (`85 ms`, `1.2 s`).
fn has_latency(line: &str) -> bool {
    let words: Vec<&str> = line
        .split_whitespace()
        .map(|w| w.trim_matches(|c| c == '(' || c == ')' || c == ','))
        .collect();
    words
        .windows(2)
        .any(|w| (w[1] == "ms" || w[1] == "s") && w[0].parse::<f64>().is_ok())
}

backend_test!(async fn verify_passes_when_every_step_does);
async fn verify_passes_when_every_step_does(backend: Backend) {
    let db = TestDatabase::new(backend);
    let builder = app(&db, &["command_bot"]);
    let config = builder.config_file();
    let t = builder.start().await;
    let mut setup = ZulipSetup::new(&t.base);
    setup.forwarder = Some((t.base.clone(), SECRET.to_string()));
    let zulip = FakeZulip::start(setup).await;
    let out = verify(&config, &zulip.url, &t.base, &["--channel", "test"]).await;
    let said = output_text(&out);
    assert!(out.status.success(), "{backend:?}: {said}");
    line(
        &said,
        &format!("[ ok ] {BOT_EMAIL} is an outgoing-webhook bot in Zulip (user {BOT_ID}"),
    );
    for start in [
        "[ ok ] Zulip at",
        "[ ok ] mention sent in #test > zulip-listeners verify",
        "[ ok ] webhook received by this server",
        "[ ok ] reply visible in Zulip",
        "[ ok ] forwarded message event stored",
    ] {
        assert!(
            has_latency(line(&said, start)),
            "{backend:?}: a latency in\n{said}"
        );
    }
    line(&said, "[ ok ] test messages deleted (2)");
    assert!(
        line(&said, "[ ok ] reply visible").contains("\"pong\""),
        "{said}"
    );
    assert!(
        line(&said, "[ ok ] webhook received").contains("command_bot"),
        "{said}"
    );
    assert!(said.contains("All 7 checks passed."), "{said}");
    assert!(
        !said.contains(PERSON_KEY) && !said.contains(ADMIN),
        "no secret shown: {said}"
    );
    assert!(
        zulip.message_ids().is_empty(),
        "test messages left: {:?}",
        zulip.message_ids()
    );
    assert!(
        zulip.forwarded().iter().all(|&s| s == 200),
        "{:?}",
        zulip.forwarded()
    );
    zulip.stop().await;
    t.stop().await;
}

#[actix_web::test]
async fn verify_in_a_direct_message_notes_what_it_may_not_delete() {
    let db = TestDatabase::new(Backend::Sqlite);
    let builder = app(&db, &["command_bot"]);
    let config = builder.config_file();
    let t = builder.start().await;
    let mut setup = ZulipSetup::new(&t.base);
    setup.forwarder = Some((t.base.clone(), SECRET.to_string()));
    setup.may_delete = false;
    let zulip = FakeZulip::start(setup).await;
    let out = verify(&config, &zulip.url, &t.base, &[]).await;
    let said = output_text(&out);
    assert!(out.status.success(), "a note is no failure: {said}");
    assert!(
        line(&said, "[ ok ] mention sent in").contains("a direct message to the bot"),
        "{said}"
    );
    assert!(
        line(&said, "[ ok ] reply visible").contains("\"pong\""),
        "{said}"
    );
    let note = line(&said, "[note]");
    assert!(
        note.contains("not permitted") && note.contains("You don't have permission"),
        "{note}"
    );
    assert_eq!(
        zulip.message_ids().len(),
        2,
        "the mention and the reply stay"
    );
    assert!(said.contains("All 6 checks passed."), "{said}");
    zulip.stop().await;
    t.stop().await;
}

#[actix_web::test]
async fn a_refused_webhook_token_is_named() {
    let db = TestDatabase::new(Backend::Sqlite);
    let builder = app(&db, &["command_bot"]);
    let config = builder.config_file();
    let t = builder.start().await;
    let mut setup = ZulipSetup::new(&t.base);
    setup.token = "some-other-token-00000000000000".into();
    setup.forwarder = Some((t.base.clone(), SECRET.to_string()));
    let zulip = FakeZulip::start(setup).await;
    let out = verify(&config, &zulip.url, &t.base, &["--channel", "general"]).await;
    let said = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    let webhook = line(&said, "[FAIL] no webhook for message");
    assert!(
        webhook.contains("Failure! Third party responded with 401"),
        "{webhook}"
    );
    assert!(
        fix_of(&said, "[FAIL] no webhook").contains("bots.helper.token"),
        "{said}"
    );
    assert!(
        line(&said, "[FAIL] no reply").contains("Failure!"),
        "{said}"
    );
    // Zulip's own steps and the forwarder are fine.
    assert!(
        line(&said, "[ ok ] forwarded message").contains("status"),
        "{said}"
    );
    zulip.stop().await;
    t.stop().await;
}

#[actix_web::test]
async fn a_bot_endpoint_zulip_cannot_reach_points_at_the_url_and_smokescreen() {
    let db = TestDatabase::new(Backend::Sqlite);
    let builder = app(&db, &["command_bot"]);
    let config = builder.config_file();
    let t = builder.start().await;
    let mut setup = ZulipSetup::new(&format!("http://127.0.0.1:{}", free_port()));
    setup.forwarder = Some((t.base.clone(), SECRET.to_string()));
    let zulip = FakeZulip::start(setup).await;
    let out = verify(&config, &zulip.url, &t.base, &["--channel", "general"]).await;
    let said = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        line(&said, "[FAIL] no webhook").contains("Failure! Bot is unavailable"),
        "{said}"
    );
    let fix = fix_of(&said, "[FAIL] no webhook");
    for named in [
        "endpoint URL in Zulip's bot settings",
        "Smokescreen",
        "allow_addresses",
        "zulip.conf",
    ] {
        assert!(fix.contains(named), "`{named}` in {fix}");
    }
    zulip.stop().await;
    t.stop().await;
}

#[actix_web::test]
async fn a_bot_that_does_not_answer_fails_only_the_reply() {
    let db = TestDatabase::new(Backend::Sqlite);
    let builder = app(&db, &["message_logger"]);
    let config = builder.config_file();
    let t = builder.start().await;
    let mut setup = ZulipSetup::new(&t.base);
    setup.forwarder = Some((t.base.clone(), SECRET.to_string()));
    let zulip = FakeZulip::start(setup).await;
    let out = verify(
        &config,
        &zulip.url,
        &t.base,
        &["--channel", "test", "--timeout", "2s"],
    )
    .await;
    let said = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        line(&said, "[ ok ] webhook received").contains("message_logger"),
        "{said}"
    );
    assert!(
        line(&said, "[FAIL] no reply").contains("within 2s"),
        "{said}"
    );
    let fix = fix_of(&said, "[FAIL] no reply");
    assert!(
        fix.contains("bots.helper.listeners") && fix.contains("`ping`"),
        "{fix}"
    );
    assert!(
        said.contains("[ ok ] forwarded message event stored"),
        "{said}"
    );
    assert!(said.contains("1 of 7 checks failed."), "{said}");
    zulip.stop().await;
    t.stop().await;
}

#[actix_web::test]
async fn a_wrong_admin_token_is_named() {
    let db = TestDatabase::new(Backend::Sqlite);
    let t = app(&db, &["command_bot"]).start().await;
    let config = app(&db, &["command_bot"])
        .toml("[admin]\ntoken = \"not-the-servers-admin-token-0000\"\n")
        .config_file();
    let mut setup = ZulipSetup::new(&t.base);
    setup.forwarder = Some((t.base.clone(), SECRET.to_string()));
    let zulip = FakeZulip::start(setup).await;
    let out = verify(&config, &zulip.url, &t.base, &["--channel", "test"]).await;
    let said = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        line(&said, "[FAIL] webhook not checked").contains("401"),
        "{said}"
    );
    let fix = fix_of(&said, "[FAIL] webhook not checked");
    assert!(
        fix.contains("wrong admin token") && fix.contains("[admin] token"),
        "{fix}"
    );
    assert!(
        line(&said, "[ ok ] reply visible").contains("\"pong\""),
        "{said}"
    );
    assert!(!said.contains("not-the-servers-admin-token"), "{said}");
    zulip.stop().await;
    t.stop().await;
}

#[actix_web::test]
async fn a_forwarder_that_sends_nothing_fails_only_its_step() {
    let db = TestDatabase::new(Backend::Sqlite);
    let builder = app(&db, &["command_bot"]);
    let config = builder.config_file();
    let t = builder.start().await;
    // Zulip without the forwarder installed; this configuration says it is.
    let zulip = FakeZulip::start(ZulipSetup::new(&t.base)).await;
    let out = verify(
        &config,
        &zulip.url,
        &t.base,
        &["--channel", "test", "--timeout", "2s"],
    )
    .await;
    let said = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("[ ok ] webhook received"), "{said}");
    assert!(said.contains("[ ok ] reply visible"), "{said}");
    assert!(
        line(&said, "[FAIL] no forwarded message event").contains("within 2s"),
        "{said}"
    );
    let fix = fix_of(&said, "[FAIL] no forwarded message event");
    assert!(
        fix.contains("supervisorctl status zulip-listeners-forwarder"),
        "{fix}"
    );
    assert!(said.contains("1 of 7 checks failed."), "{said}");
    zulip.stop().await;
    t.stop().await;
}

#[actix_web::test]
async fn without_a_forwarder_here_its_step_is_skipped() {
    let db = TestDatabase::new(Backend::Sqlite);
    let t = TestApp::new(&db)
        .admin()
        .helper(&["command_bot"])
        .start()
        .await;
    let config = ConfigFile::new(&format!(
        "{}[admin]\ntoken = \"{ADMIN}\"\n",
        helper_bot(&["command_bot"])
    ));
    let zulip = FakeZulip::start(ZulipSetup::new(&t.base)).await;
    // Email, key and site from Zulip's zuliprc.
    let zuliprc = ConfigFile::new(&format!(
        "[api]\nemail={PERSON_EMAIL}\nkey={PERSON_KEY}\nsite={}\n",
        zulip.url
    ));
    let (path, rc, admin) = (config.path.clone(), zuliprc.path.clone(), t.base.clone());
    let out = tokio::task::spawn_blocking(move || {
        let rc = rc.display().to_string();
        let args = [
            "verify",
            "--zuliprc",
            &rc,
            "--admin-url",
            &admin,
            "--channel",
            "test",
        ];
        run(&path, &args, &[])
    })
    .await
    .expect("verify ran");
    let said = output_text(&out);
    assert!(out.status.success(), "{said}");
    assert!(
        line(&said, "[skip] forwarder").contains("--forwarder"),
        "{said}"
    );
    // The key from the environment; with --forwarder the forwarder is checked (and fails:
    // Zulip forwards nothing).
    let (path, site, admin) = (config.path.clone(), zulip.url.clone(), t.base.clone());
    let out = tokio::task::spawn_blocking(move || {
        let args = [
            "verify",
            "--site",
            &site,
            "--email",
            PERSON_EMAIL,
            "--admin-url",
            &admin,
            "--channel",
            "test",
            "--forwarder",
            "--timeout",
            "1s",
        ];
        run(
            &path,
            &args,
            &[("ZULIP_LISTENERS_VERIFY_API_KEY", PERSON_KEY.to_string())],
        )
    })
    .await
    .expect("verify ran");
    let said = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("[ ok ] reply visible"), "{said}");
    assert!(said.contains("[FAIL] no forwarded message event"), "{said}");
    zulip.stop().await;
    t.stop().await;
}

backend_test!(async fn the_admin_api_finds_a_message_in_the_event_log_and_the_inbox);
async fn the_admin_api_finds_a_message_in_the_event_log_and_the_inbox(backend: Backend) {
    let db = TestDatabase::new(backend);
    let t = app(&db, &["command_bot"])
        .toml("[forwarder]\nlisteners = [\"message_logger\"]\n")
        .start()
        .await;
    for id in [101, 102] {
        let answer = t.post_json("/zulip/outgoing", &ping(id)).await;
        assert_eq!(
            answer.json["content"], "pong",
            "{backend:?}: {:?}",
            answer.json
        );
    }
    let forwarded = t
        .post_events("b1", vec![envelope("e-101", message(101, 10, "hello"))])
        .await;
    assert_eq!(forwarded.status, 200, "{:?}", forwarded.json);
    t.settle(1).await;
    t.server.flush().await;

    let get = async |path: &str| t.send(t.admin(reqwest::Method::GET, path)).await;
    let outgoing = get("/admin/events?message_id=101&source=outgoing").await;
    let rows = outgoing.json["events"].as_array().expect("events").clone();
    assert_eq!(rows.len(), 1, "{backend:?}: {:?}", outgoing.json);
    assert_eq!(rows[0]["listener"], "command_bot");
    assert_eq!(rows[0]["message_id"], 101);
    let both = get("/admin/events?message_id=101").await;
    let sources: Vec<&str> = both.json["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|r| r["source"].as_str())
        .collect();
    assert!(
        sources.contains(&"outgoing") && sources.contains(&"forwarder"),
        "{backend:?}: {sources:?}"
    );
    let later = get(&format!(
        "/admin/events?message_id=101&since_ms={}",
        i64::MAX / 2
    ))
    .await;
    assert_eq!(
        later.json["events"],
        serde_json::json!([]),
        "since_ms filters"
    );
    let bad = get("/admin/events?source=somewhere").await;
    assert_eq!(bad.status, 400, "{:?}", bad.json);

    let inbox = get("/admin/inbox?message_id=101").await;
    assert_eq!(inbox.status, 200, "{:?}", inbox.json);
    let events = inbox.json["events"].as_array().expect("events");
    assert_eq!(events.len(), 1, "{backend:?}: {:?}", inbox.json);
    assert_eq!(events[0]["event_type"], "message");
    assert_eq!(events[0]["status"], InboxStatus::Done.as_str());
    assert!(
        events[0]["received_at_ms"]
            .as_i64()
            .is_some_and(|ms| ms > 0)
    );
    let none = get("/admin/inbox?message_id=102").await;
    assert_eq!(
        none.json["events"],
        serde_json::json!([]),
        "{:?}",
        none.json
    );
    let missing = get("/admin/inbox").await;
    assert_eq!(missing.status, 400);
    assert_eq!(missing.json["field"], "message_id", "{:?}", missing.json);
    let refused = t
        .send(
            t.http
                .get(t.url("/admin/inbox?message_id=101"))
                .bearer_auth("wrong"),
        )
        .await;
    assert_eq!(refused.status, 401);
    t.stop().await;
}
