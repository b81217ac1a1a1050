//! `welcome_bot` against the real server: signed forwarder batches in, greetings out to a
//! loopback stand-in for Zulip's REST API, each greeting sent once across retries, repeated
//! events and restarts.
//!
//! Long file: welcome_bot end to end, with its stand-ins for Zulip, one scenario per test, read best together.

use std::time::Duration;

use crate::support::*;
use diesel::prelude::*;
use serde_json::{Value, json};
use zulip_listeners::db::DbConnection;
use zulip_listeners::server::ServeOptions;

const GREETER_EMAIL: &str = "greeter-bot@acme.example.com";
const ZULIP_OK: &str = r#"{"result": "success", "msg": "", "id": 42}"#;

/// A server whose forwarded events go to welcome_bot, posting as `greeter` to Zulip at
/// `site`; `welcome` is more of its settings.
fn app(db: &TestDatabase, site: &str, welcome: &str) -> TestApp {
    TestApp::new(db).forwarder().toml(&format!(
        "[bots.greeter]\nemail = \"{GREETER_EMAIL}\"\ntoken = \"{TOKEN}\"\napi_key = \"KEY123\"\nsite = \"{site}\"\n\
         [forwarder]\nlisteners = [\"welcome_bot\"]\nmax_retries = 5\nretry_delay = \"100ms\"\n\
         [handlers.welcome_bot]\nenabled = true\nbot = \"greeter\"\n{welcome}"
    ))
}

const CHANNELS: &str = "channels = [\n  { channel = \"Engineering\", message = \"Welcome to {channel}, {mention}!\" },\n  { channel = \"help\", topic = \"new faces\" },\n]\n";

fn envelope(event_id: &str, audience: &[i64], event: Value) -> Value {
    Envelope::new(event_id, event).audience(audience).json()
}

/// `realm_user` / `add` in Zulip's shape (`create_user.py` `notify_created_user`).
fn user_added(user_id: i64, full_name: &str, is_bot: bool) -> Value {
    json!({"type": "realm_user", "op": "add", "person": {
        "user_id": user_id, "email": format!("user{user_id}@acme.example.com"),
        "delivery_email": null, "full_name": full_name, "avatar_url": null, "avatar_version": 1,
        "is_admin": false, "is_owner": false, "is_guest": false, "role": 400, "is_bot": is_bot,
        "is_active": true, "is_imported_stub": false, "timezone": "",
        "date_joined": "2026-12-01T00:00:00+00:00", "profile_data": {}}})
}

/// `subscription` / `add` as Zulip sends it to the one user subscribed.
fn subscribed(channels: &[(i64, &str)]) -> Value {
    let subs: Vec<Value> = channels
        .iter()
        .map(|(id, name)| {
            json!({"name": name, "stream_id": id, "color": "#76ce90", "is_muted": false,
                   "in_home_view": true, "pin_to_top": false, "subscribers": [], "subscriber_count": 3})
        })
        .collect();
    json!({"type": "subscription", "op": "add", "subscriptions": subs})
}

/// Posts `envelopes` as one batch, which must be accepted.
async fn post(t: &TestServer, webhook_id: &str, envelopes: Vec<Value>) {
    let answer = t.post_events(webhook_id, envelopes).await;
    assert_eq!(answer.status, 200, "{:?}", answer.json);
}

/// A greeting the stand-in received, as form fields.
fn fields(received: &Received) -> std::collections::HashMap<String, String> {
    serde_urlencoded::from_str(&received.body).expect("form body")
}

/// A row of welcome_bot's own table (`welcome_greetings`, which it keeps to itself).
#[derive(diesel::QueryableByName)]
struct Greeting {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    realm_id: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    user_id: i64,
    #[diesel(sql_type = diesel::sql_types::Text)]
    greeting: String,
}

/// The greetings recorded: (realm, user, greeting), by user and greeting.
fn greetings(c: &mut DbConnection) -> Vec<(i64, i64, String)> {
    let query = diesel::sql_query(
        "SELECT realm_id, user_id, greeting FROM welcome_greetings ORDER BY user_id, greeting",
    );
    let rows: Vec<Greeting> = match c {
        DbConnection::Sqlite(c) => query.load(c),
        DbConnection::Postgres(c) => query.load(c),
    }
    .expect("welcome_greetings");
    rows.into_iter()
        .map(|g| (g.realm_id, g.user_id, g.greeting))
        .collect()
}

backend_test!(async fn a_new_member_is_greeted_once_and_bots_never);
async fn a_new_member_is_greeted_once_and_bots_never(backend: Backend) {
    let zulip = Stub::start(ZULIP_OK, Duration::ZERO).await;
    let db = TestDatabase::new(backend);
    let before = zulip.requests().len();
    let t = app(&db, &zulip.url, CHANNELS).start().await;
    post(
        &t,
        "b1",
        vec![envelope(
            "u14",
            &[10, 11],
            user_added(14, "New Person", false),
        )],
    )
    .await;
    t.settle(1).await;
    let sent = zulip.requests()[before..].to_vec();
    assert_eq!(sent.len(), 1, "{backend:?}: {sent:?}");
    assert_eq!(sent[0].path, "/api/v1/messages");
    assert!(
        sent[0]
            .authorization
            .as_deref()
            .is_some_and(|a| a.starts_with("Basic ")),
        "posted as the bot"
    );
    let form = fields(&sent[0]);
    assert_eq!(
        (form["type"].as_str(), form["to"].as_str()),
        ("private", "[14]"),
        "a direct message to the new user"
    );
    assert!(
        form["content"].starts_with("Welcome, @**New Person|14**!"),
        "{form:?}"
    );
    assert!(!form["content"].contains("acme.example.com"), "no email");

    // Zulip's other `add` events for the same user (another audience; the placeholder for
    // guests), and the same event again in a new batch: no second greeting.
    let mut placeholder = user_added(14, "Unknown user", false);
    placeholder["inaccessible_user"] = json!(true);
    post(
        &t,
        "b2",
        vec![
            envelope("u14-b", &[12], user_added(14, "New Person", false)),
            envelope("u14-c", &[13], placeholder),
        ],
    )
    .await;
    post(
        &t,
        "b3",
        vec![envelope(
            "u14",
            &[10, 11],
            user_added(14, "New Person", false),
        )],
    )
    .await;
    // A bot joins, then is subscribed to a greeted channel: neither is greeted.
    post(
        &t,
        "b4",
        vec![envelope("u15", &[10], user_added(15, "Helper Bot", true))],
    )
    .await;
    t.settle(4).await;
    post(
        &t,
        "b5",
        vec![envelope("s15", &[15], subscribed(&[(7, "engineering")]))],
    )
    .await;
    t.settle(5).await;
    assert_eq!(
        zulip.requests().len() - before,
        1,
        "{backend:?}: greeted once"
    );
    // Zulip's `add` events for one user in one batch: the second runs before the first's
    // record is committed, and still does not greet again.
    post(
        &t,
        "b5b",
        vec![
            envelope("u16-a", &[10], user_added(16, "Other Person", false)),
            envelope("u16-b", &[12], user_added(16, "Other Person", false)),
        ],
    )
    .await;
    t.settle(7).await;
    assert_eq!(
        zulip.requests().len() - before,
        2,
        "{backend:?}: user 16 greeted once"
    );
    assert_eq!(
        t.query(greetings).await,
        vec![
            (2, 14, "realm".to_string()),
            (2, 15, "bot".to_string()),
            (2, 16, "realm".to_string())
        ]
    );
    t.stop().await;

    // After a restart (nothing remembered in memory), the record still holds.
    let t = app(&db, &zulip.url, CHANNELS).start().await;
    post(
        &t,
        "b6",
        vec![envelope(
            "u14-d",
            &[20],
            user_added(14, "New Person", false),
        )],
    )
    .await;
    t.settle(8).await;
    assert_eq!(
        zulip.requests().len() - before,
        2,
        "{backend:?}: not greeted again after a restart"
    );
    t.stop().await;
    zulip.stop().await;
}

#[actix_web::test]
async fn subscriptions_greet_in_configured_channels_only() {
    let zulip = Stub::start(ZULIP_OK, Duration::ZERO).await;
    let db = TestDatabase::new(Backend::Sqlite);
    let t = app(
        &db,
        &zulip.url,
        &format!("new_user_message = \"\"\n{CHANNELS}"),
    )
    .start()
    .await;

    // Not configured: nothing.
    post(
        &t,
        "s1",
        vec![envelope("s20-a", &[20], subscribed(&[(9, "random")]))],
    )
    .await;
    t.settle(1).await;
    assert!(zulip.requests().is_empty(), "{:?}", zulip.requests());

    // Configured (names match regardless of case): a direct message by default, a post in the
    // channel where the entry has a topic.
    post(
        &t,
        "s2",
        vec![envelope(
            "s20-b",
            &[20],
            subscribed(&[(7, "engineering"), (8, "help"), (9, "random")]),
        )],
    )
    .await;
    t.settle(2).await;
    let sent: Vec<_> = zulip
        .wait_for(2, Duration::from_secs(5))
        .await
        .iter()
        .map(fields)
        .collect();
    assert_eq!(sent.len(), 2, "{sent:?}");
    let dm = sent
        .iter()
        .find(|f| f["type"] == "private")
        .expect("a direct message");
    assert_eq!(dm["to"], "[20]");
    assert_eq!(dm["content"], "Welcome to #**Engineering**, @**|20**!");
    let post_in_channel = sent
        .iter()
        .find(|f| f["type"] == "stream")
        .expect("a channel post");
    assert_eq!(
        (
            post_in_channel["to"].as_str(),
            post_in_channel["topic"].as_str()
        ),
        ("help", "new faces")
    );
    assert_eq!(
        post_in_channel["content"],
        "Welcome to #**help**, @**|20**!"
    );

    // Unsubscribed and subscribed again: already greeted there. A new user joining (with
    // new_user_message = "") is not greeted either.
    post(
        &t,
        "s3",
        vec![envelope("s20-c", &[20], subscribed(&[(7, "Engineering")]))],
    )
    .await;
    post(
        &t,
        "s4",
        vec![envelope("u21", &[10], user_added(21, "Someone", false))],
    )
    .await;
    t.settle(4).await;
    assert_eq!(zulip.requests().len(), 2);
    assert_eq!(
        t.query(greetings).await,
        vec![
            (2, 20, "channel:engineering".to_string()),
            (2, 20, "channel:help".to_string())
        ]
    );
    t.stop().await;
    zulip.stop().await;
}

#[actix_web::test]
async fn a_failing_zulip_is_retried_and_greets_once() {
    let zulip = Stub::start(
        r#"{"result": "error", "msg": "Internal server error"}"#,
        Duration::ZERO,
    )
    .await;
    zulip.set_status(500);
    let db = TestDatabase::new(Backend::Sqlite);
    let t = app(&db, &zulip.url, CHANNELS).start().await;
    post(
        &t,
        "f1",
        vec![envelope(
            "u30",
            &[10],
            user_added(30, "Retry Person", false),
        )],
    )
    .await;
    let failed = zulip.wait_for(2, Duration::from_secs(10)).await;
    assert!(failed.len() >= 2, "tried and retried: {failed:?}");
    assert!(
        t.query(greetings).await.is_empty(),
        "nothing recorded while Zulip fails"
    );

    zulip.set_status(200);
    let switched = zulip.requests().len();
    t.settle(1).await;
    // Give a wrongly repeated run time to show up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after: Vec<_> = zulip.requests()[switched..].to_vec();
    assert_eq!(
        after.len(),
        1,
        "greeted once when Zulip was back: {after:?}"
    );
    assert_eq!(fields(&after[0])["to"], "[30]");
    assert_eq!(t.query(greetings).await, vec![(2, 30, "realm".to_string())]);
    let runs: Vec<bool> = t
        .query(|c| {
            use zulip_listeners::db::schema::event_log as log;
            log::table
                .filter(log::listener.eq("welcome_bot"))
                .order(log::id)
                .select(log::success)
                .load::<bool>(c)
                .expect("event log")
        })
        .await;
    assert!(
        runs.len() >= 3 && runs.last() == Some(&true) && runs.iter().filter(|ok| **ok).count() == 1,
        "failed runs, then one success: {runs:?}"
    );
    t.stop().await;
    zulip.stop().await;
}

#[actix_web::test]
async fn dry_run_sends_and_records_nothing() {
    let zulip = Stub::start(ZULIP_OK, Duration::ZERO).await;
    let db = TestDatabase::new(Backend::Sqlite);
    let t = app(&db, &zulip.url, CHANNELS)
        .options(ServeOptions {
            dry_run: true,
            ..ServeOptions::default()
        })
        .start()
        .await;
    post(
        &t,
        "d1",
        vec![
            envelope("u40", &[10], user_added(40, "Dry Person", false)),
            envelope("s40", &[40], subscribed(&[(7, "engineering")])),
        ],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(zulip.requests().is_empty(), "{:?}", zulip.requests());
    assert!(t.query(greetings).await.is_empty());
    t.stop().await;
    zulip.stop().await;
}

/// `check-config` with `[handlers.welcome_bot]` settings; returns (success, output).
fn check_config(settings: &str, forwarder_handlers: &str) -> (bool, String) {
    let db = TestDatabase::new(Backend::Sqlite);
    let enabled = if settings.contains("enabled") {
        ""
    } else {
        "enabled = true\n"
    };
    let config = db.config_file(&format!(
        "[bots.greeter]\nemail = \"{GREETER_EMAIL}\"\ntoken = \"{TOKEN}\"\napi_key = \"K\"\nsite = \"https://chat.example.com\"\n\
         [bots.plain]\nemail = \"plain-bot@acme.example.com\"\ntoken = \"{TOKEN}x\"\n\
         [forwarder]\nsecrets = [\"{SECRET}\"]\nlisteners = {forwarder_handlers}\n\
         [handlers.welcome_bot]\n{enabled}{settings}"
    ));
    cli_status(&config.path, &["check-config"])
}

#[test]
fn invalid_settings_are_refused_naming_the_key() {
    let listed = "[\"welcome_bot\"]";
    let (ok, out) = check_config(&format!("bot = \"greeter\"\n{CHANNELS}"), listed);
    assert!(ok, "a valid configuration: {out}");
    for (settings, handlers, key) in [
        ("", listed, "handlers.welcome_bot.bot`"),
        ("bot = \"nobody\"\n", listed, "handlers.welcome_bot.bot`"),
        ("bot = \"plain\"\n", listed, "handlers.welcome_bot.bot`"),
        (
            "bot = \"greeter\"\nnew_user_message = 5\n",
            listed,
            "handlers.welcome_bot.new_user_message`",
        ),
        (
            "bot = \"greeter\"\nnew_user_mesage = \"hi\"\n",
            listed,
            "handlers.welcome_bot.new_user_mesage`",
        ),
        (
            "bot = \"greeter\"\nnew_user_message = \"Hi {email}\"\n",
            listed,
            "handlers.welcome_bot.new_user_message`",
        ),
        (
            "bot = \"greeter\"\ntopic = \"t\"\n",
            listed,
            "handlers.welcome_bot.topic`",
        ),
        (
            "bot = \"greeter\"\ntimeout = \"soon\"\n",
            listed,
            "handlers.welcome_bot.timeout`",
        ),
        (
            "bot = \"greeter\"\nchannels = [{ channel = \"a\", mesage = \"x\" }]\n",
            listed,
            "handlers.welcome_bot.channels`",
        ),
        (
            "bot = \"greeter\"\nchannels = [{ channel = \"a\" }, { channel = \"b\", message = \"{name} is here\" }]\n",
            listed,
            "handlers.welcome_bot.channels[1].message`",
        ),
        (
            "bot = \"greeter\"\nchannels = [{ channel = \"a\" }, { channel = \"A\" }]\n",
            listed,
            "handlers.welcome_bot.channels[1].channel`",
        ),
        // Not listed for the forwarder, the settings are still checked.
        ("bot = \"nobody\"\n", "[]", "handlers.welcome_bot.bot`"),
    ] {
        let (ok, out) = check_config(settings, handlers);
        assert!(
            !ok && out.contains(key),
            "{settings:?}: expected `{key}` in: {out}"
        );
    }
    // No bot, and not listed or switched off: fine (config/default.toml is like this).
    let (ok, out) = check_config("", "[]");
    assert!(ok, "{out}");
    let (ok, out) = check_config("enabled = false\n", listed);
    assert!(ok, "{out}");
}

/// A stand-in for Zulip that answers 500 to channel posts while `fail_channel_posts` is set,
/// and 200 to everything else; records every request body.
struct PickyZulip {
    url: String,
    bodies: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    fail_channel_posts: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: actix_web::dev::ServerHandle,
}

impl PickyZulip {
    fn start() -> PickyZulip {
        use actix_web::{App, HttpResponse, HttpServer, web};
        use std::sync::atomic::Ordering;
        let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let fail = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (shared_bodies, shared_fail) = (bodies.clone(), fail.clone());
        let (url, handle) = serve_loopback(move |listener| {
            Ok(HttpServer::new(move || {
                let (bodies, fail) = (shared_bodies.clone(), shared_fail.clone());
                App::new().default_service(web::to(move |body: web::Bytes| {
                    let text = String::from_utf8_lossy(&body).into_owned();
                    let refuse = fail.load(Ordering::SeqCst) && text.contains("type=stream");
                    bodies.lock().expect("lock").push(text);
                    async move {
                        if refuse {
                            HttpResponse::InternalServerError()
                                .body(r#"{"result":"error","msg":"x"}"#)
                        } else {
                            HttpResponse::Ok().body(ZULIP_OK)
                        }
                    }
                }))
            })
            .workers(1)
            .listen(listener)?
            .run())
        });
        PickyZulip {
            url,
            bodies,
            fail_channel_posts: fail,
            handle,
        }
    }

    fn bodies(&self) -> Vec<String> {
        self.bodies.lock().expect("lock").clone()
    }
}

#[actix_web::test]
async fn a_partly_failed_run_is_retried_without_repeating_what_was_sent() {
    let zulip = PickyZulip::start();
    let db = TestDatabase::new(Backend::Sqlite);
    let t = app(&db, &zulip.url, CHANNELS)
        .toml("[forwarder]\nmax_retries = 20\n")
        .start()
        .await;
    // Engineering greets by direct message (accepted), help posts in the channel (refused).
    post(
        &t,
        "p1",
        vec![envelope(
            "s50",
            &[50],
            subscribed(&[(7, "engineering"), (8, "help")]),
        )],
    )
    .await;
    let tried = eventually(Duration::from_secs(10), async || {
        zulip
            .bodies()
            .iter()
            .filter(|b| b.contains("type=stream"))
            .count()
            >= 3
    })
    .await;
    assert!(tried, "the channel post was retried: {:?}", zulip.bodies());
    let direct = |bodies: &[String]| bodies.iter().filter(|b| b.contains("type=private")).count();
    assert_eq!(
        direct(&zulip.bodies()),
        1,
        "the direct message is not sent again"
    );
    assert_eq!(
        t.query(greetings).await,
        vec![(2, 50, "channel:engineering".to_string())],
        "what was delivered is recorded although the run failed"
    );

    zulip
        .fail_channel_posts
        .store(false, std::sync::atomic::Ordering::SeqCst);
    t.settle(1).await;
    assert_eq!(direct(&zulip.bodies()), 1);
    assert_eq!(
        t.query(greetings).await,
        vec![
            (2, 50, "channel:engineering".to_string()),
            (2, 50, "channel:help".to_string())
        ]
    );
    t.stop().await;
    zulip.handle.stop(false).await;
}
