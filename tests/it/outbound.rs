//! Outbound calls against loopback stand-ins: loopback targets never go through the
//! environment's proxy while other targets still do; answers are read up to a cap, so a
//! bot service or a Zulip that answers without end fails the call cleanly; `doctor` prints
//! no credentials of a bot's `site`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use actix_web::{App, HttpResponse, HttpServer, web};
use zulip_listeners::config::Secret;
use zulip_listeners::outbound::{self, Proxies};
use zulip_listeners::zulip_api::{BotApi, Destination, ZulipClient};

use crate::support::*;

/// `me()`'s answer, as Zulip gives it.
const ME: &str = r#"{"result": "success", "msg": "", "email": "outgoing-bot@localhost", "user_id": 42, "is_bot": true, "full_name": "Helper"}"#;

/// The binary's `doctor`, off the test's runtime (the stand-ins run on it), with the
/// environment's proxy variables replaced by `env`.
async fn doctor(
    config: std::path::PathBuf,
    args: Vec<String>,
    env: Vec<(&'static str, String)>,
) -> String {
    tokio::task::spawn_blocking(move || {
        let mut command = std::process::Command::new(BIN);
        command
            .arg("--config")
            .arg(&config)
            .arg("doctor")
            .args(&args);
        for name in [
            "HTTP_PROXY",
            "http_proxy",
            "HTTPS_PROXY",
            "https_proxy",
            "ALL_PROXY",
            "all_proxy",
            "NO_PROXY",
            "no_proxy",
        ] {
            command.env_remove(name);
        }
        command.envs(env);
        output_text(&command.output().expect("doctor ran"))
    })
    .await
    .expect("doctor ran")
}

#[actix_web::test]
async fn loopback_calls_never_go_through_the_environments_proxy() {
    let proxy = Stub::start(ME, Duration::ZERO).await;
    let zulip = Stub::start(ME, Duration::ZERO).await;
    let db = TestDatabase::new(Backend::Sqlite);
    let config = db.config_file(&format!(
        "{}api_key = \"bot-api-key-0123456789\"\nsite = \"{}\"\n",
        helper_bot(&["command_bot"]),
        zulip.url
    ));
    // The binary in a process of its own, with every proxy variable pointing at the proxy.
    let env = [
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
        "HTTPS_PROXY",
    ]
    .into_iter()
    .map(|name| (name, proxy.url.clone()))
    .collect();
    let said = doctor(config.path.clone(), Vec::new(), env).await;
    assert!(said.contains("bot helper: Zulip at"), "{said}");
    let reached = zulip.requests();
    assert_eq!(
        reached.len(),
        1,
        "the target got the call directly:\n{said}"
    );
    assert_eq!(reached[0].path, "/api/v1/users/me");
    assert!(reached[0].authorization.is_some());
    assert!(
        proxy.requests().is_empty(),
        "the proxy saw the API key in clear text: {:?}",
        proxy.requests()
    );
    proxy.stop().await;
    zulip.stop().await;
}

#[actix_web::test]
async fn other_targets_still_use_the_environments_proxy() {
    let proxy = Stub::start(r#"{"via": "proxy"}"#, Duration::ZERO).await;
    let direct = Stub::start(r#"{"via": "direct"}"#, Duration::ZERO).await;
    let proxy_url = proxy.url.clone();
    let proxies = Proxies::from_vars(|name| (name == "HTTP_PROXY").then(|| proxy_url.clone()));
    let http = outbound::client_with(Duration::from_secs(5), &proxies).expect("client");
    // A host only the proxy can reach (`.invalid` never resolves): it gets the whole request.
    let answer = http
        .get("http://zulip.example.invalid/api/v1/server_settings")
        .send()
        .await
        .expect("through the proxy");
    assert_eq!(answer.status(), 200);
    let seen = proxy.requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].header("host"), Some("zulip.example.invalid"));
    // The same client calls loopback directly.
    let answer = http
        .get(format!("{}/x", direct.url))
        .send()
        .await
        .expect("direct");
    assert_eq!(answer.text().await.expect("text"), r#"{"via": "direct"}"#);
    assert_eq!(proxy.requests().len(), 1, "loopback went through the proxy");
    proxy.stop().await;
    direct.stop().await;
}

/// A service that answers every request 200 with a JSON-looking body of `total` bytes sent
/// in 64 KiB chunks without a `Content-Length`; counts the bytes it has produced.
struct Endless {
    url: String,
    produced: Arc<AtomicUsize>,
    handle: actix_web::dev::ServerHandle,
}

impl Endless {
    async fn start(total: usize) -> Endless {
        let produced = Arc::new(AtomicUsize::new(0));
        let counter = produced.clone();
        let (url, handle) = serve_loopback(move |listener| {
            Ok(HttpServer::new(move || {
                let counter = counter.clone();
                App::new().default_service(web::to(move || {
                    let counter = counter.clone();
                    async move {
                        let chunk = web::Bytes::from(vec![b' '; 64 * 1024]);
                        let body = futures_util::stream::unfold(0usize, move |sent| {
                            let chunk = chunk.clone();
                            let counter = counter.clone();
                            async move {
                                (sent < total).then(|| {
                                    counter.fetch_add(chunk.len(), Ordering::SeqCst);
                                    (Ok::<_, std::io::Error>(chunk.clone()), sent + chunk.len())
                                })
                            }
                        });
                        HttpResponse::Ok()
                            .content_type("application/json")
                            .streaming(body)
                    }
                }))
            })
            .workers(1)
            .listen(listener)?
            .run())
        });
        Endless {
            url,
            produced,
            handle,
        }
    }

    fn produced(&self) -> usize {
        self.produced.load(Ordering::SeqCst)
    }
}

/// Most a service may have produced once the caller gave up at 64 KiB: what the loopback
/// socket buffers hold, far below the 128 MiB on offer.
const GAVE_UP_BELOW: usize = 32 << 20;

#[actix_web::test]
async fn a_bot_service_that_answers_without_end_fails_the_relay_cleanly() {
    let service = Endless::start(128 << 20).await;
    let db = TestDatabase::new(Backend::Sqlite);
    let t = TestApp::new(&db)
        .helper(&["relay"])
        .toml(&format!(
            "[handlers.relay]\nurl = \"{}/\"\ntimeout = \"20s\"\n",
            service.url
        ))
        .start()
        .await;
    let answer = t
        .post_json("/zulip/outgoing", &mention(7001, "@**Helper** hi"))
        .await;
    assert_eq!(answer.status, 200);
    let mut error = String::new();
    let failed = eventually(Duration::from_secs(20), async || {
        let errors = t.query(|c| log_errors(c, "relay")).await;
        error = errors.into_iter().flatten().next().unwrap_or_default();
        !error.is_empty()
    })
    .await;
    assert!(failed, "no error recorded for the relay");
    assert!(
        error.contains("bot service answer unreadable") && error.contains("64 KiB"),
        "{error}"
    );
    assert!(
        service.produced() < GAVE_UP_BELOW,
        "the answer was read on: {} bytes",
        service.produced()
    );
    // The server is up and answers the next mention.
    assert_eq!(t.health().await.status, 200);
    let again = t
        .post_json("/zulip/outgoing", &mention(7002, "@**Helper** again"))
        .await;
    assert_eq!(again.status, 200);
    t.stop().await;
    service.handle.stop(false).await;
}

#[actix_web::test]
async fn a_zulip_that_answers_without_end_fails_the_api_call_cleanly() {
    let zulip = Endless::start(128 << 20).await;
    let api = BotApi {
        site: zulip.url.clone(),
        email: BOT_EMAIL.into(),
        api_key: Secret::new("bot-api-key-0123456789"),
    };
    let client = ZulipClient::new().expect("client");
    let error = client.me(&api).await.expect_err("too long").to_string();
    assert!(error.contains("longer than 64 KiB"), "{error}");
    assert!(zulip.produced() < GAVE_UP_BELOW, "{}", zulip.produced());
    let to = Destination::Direct { to: "[1]".into() };
    let error = client
        .send_message(&api, &to, "hi")
        .await
        .expect_err("too long")
        .to_string();
    assert!(error.contains("longer than 64 KiB"), "{error}");
    // An answer of ordinary size is read as before.
    let normal = Stub::start(ME, Duration::ZERO).await;
    let api = BotApi {
        site: normal.url.clone(),
        ..api
    };
    assert_eq!(client.me(&api).await.expect("me").user_id, 42);
    zulip.handle.stop(false).await;
    normal.stop().await;
}

#[actix_web::test]
async fn doctor_prints_no_credentials_of_a_site() {
    let zulip = Stub::start(r#"{"result": "error", "msg": "nope"}"#, Duration::ZERO).await;
    zulip.set_status(500);
    let closed = free_port();
    let port = zulip.url.rsplit(':').next().expect("port").to_string();
    let db = TestDatabase::new(Backend::Sqlite);
    let config = db.config_file(&format!(
        "[bots.helper]\nemail = \"{BOT_EMAIL}\"\ntoken = \"{TOKEN}\"\napi_key = \"key-0123456789\"\n\
         site = \"http://siteuser:SitePassw0rd@127.0.0.1:{closed}/\"\n\
         [bots.other]\nemail = \"other-bot@localhost\"\ntoken = \"other-token-0123456789\"\napi_key = \"key-0123456789\"\n\
         site = \"http://otheruser:OtherPassw0rd@127.0.0.1:{port}/\"\n"
    ));
    let said = doctor(
        config.path.clone(),
        vec![
            "--url".into(),
            format!("http://urluser:UrlPassw0rd@127.0.0.1:{closed}/zulip/outgoing"),
        ],
        Vec::new(),
    )
    .await;
    for secret in [
        "siteuser",
        "SitePassw0rd",
        "otheruser",
        "OtherPassw0rd",
        "UrlPassw0rd",
    ] {
        assert!(!said.contains(secret), "`{secret}` printed:\n{said}");
    }
    for expected in [
        format!("bot helper: Zulip at http://127.0.0.1:{closed} unreachable"),
        format!("curl http://127.0.0.1:{closed}/api/v1/server_settings"),
        format!("bot other: http://127.0.0.1:{port}/api/v1/users/me answered 500"),
        format!("public URL http://127.0.0.1:{closed}/zulip/outgoing unreachable"),
    ] {
        assert!(said.contains(&expected), "`{expected}` in\n{said}");
    }
    assert!(
        zulip.requests()[0].authorization.is_some(),
        "the check still authenticates"
    );
    zulip.stop().await;
}
