//! The operator's toolkit: a binary without system libpq, logs without colour codes off a
//! terminal, `doctor`, the monitoring bundle's metric names, the "Try it" commands
//! (`curl` → pong, `send-sample`), and the `listeners` table and its JSON.
//!
//! Long file: the operator's toolkit (doctor, logs, monitoring bundle, Try it, listeners table) with its two stand-ins, one scenario per test.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime};

use crate::support::*;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use base64::Engine as _;
use serde_json::{Value, json};
use zulip_listeners::verification::SigningKey;

const API_KEY: &str = "bot-api-key-0123456789abcdef";

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The server binary with stderr to a pipe; killed when dropped.
struct Piped {
    child: std::process::Child,
    base: String,
}

impl Piped {
    fn start(config: &Path, env: &[(&str, String)], port: u16) -> Piped {
        let child = Command::new(BIN)
            .arg("--config")
            .arg(config)
            .arg("serve")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("ZULIP_LISTENERS_SERVER__BIND", format!("127.0.0.1:{port}"))
            .env("ZULIP_LISTENERS_METRICS__ENABLED", "false")
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the server");
        Piped {
            child,
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    /// Stops it with SIGTERM and returns everything it wrote to stderr.
    fn stop(mut self) -> Vec<u8> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
        let mut stderr = Vec::new();
        if let Some(mut pipe) = self.child.stderr.take() {
            let _ = pipe.read_to_end(&mut stderr);
        }
        stderr
    }
}

impl Drop for Piped {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn binary_needs_no_libpq_or_openssl_from_the_system() {
    let Ok(output) = Command::new("ldd").arg(BIN).output() else {
        eprintln!("note: ldd is not installed; the linkage check is skipped");
        return;
    };
    let listing = String::from_utf8_lossy(&output.stdout);
    assert!(
        listing.contains("libc.so"),
        "ldd listed the libraries: {listing}"
    );
    for library in ["libpq.so", "libssl.so", "libcrypto.so"] {
        assert!(
            !listing.contains(library),
            "the binary links the system's {library}:\n{listing}"
        );
    }
}

#[actix_web::test]
async fn logs_carry_no_colour_codes_off_a_terminal() {
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("c.toml");
    let db = dir.path().join("l.db");
    std::fs::write(
        &config,
        format!("[database]\nurl = \"{}\"\n{TEST_ROOM}", db.display()),
    )
    .expect("config");
    for format in ["pretty", "plain", "json"] {
        let server = Piped::start(
            &config,
            &[("ZULIP_LISTENERS_TELEMETRY__FORMAT", format.to_string())],
            free_port(),
        );
        wait_until_up(&server.base).await;
        let stderr = server.stop();
        let log = String::from_utf8_lossy(&stderr);
        assert!(
            log.contains("stopped"),
            "{format}: the log was written: {log}"
        );
        assert!(
            !stderr.contains(&0x1b),
            "{format}: an ESC byte (ANSI colour) in the piped log: {log:?}"
        );
        match format {
            "json" => {
                for line in log.lines() {
                    serde_json::from_str::<Value>(line)
                        .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
                }
            }
            "plain" => {
                let first = log.lines().next().unwrap_or_default();
                assert!(
                    first.trim_start().starts_with("INFO")
                        || first.trim_start().starts_with("WARN"),
                    "plain lines start with the level (journald adds the time): {first}"
                );
            }
            _ => {}
        }
    }
}

/// Where the `listeners` table puts a column: the character index of its heading.
fn column(header: &str, heading: &str) -> usize {
    let byte = header.find(heading).expect("heading");
    header[..byte].chars().count()
}

#[actix_web::test]
async fn listeners_table_aligns_whatever_the_content_and_has_json() {
    let db = TestDatabase::new(Backend::Sqlite);
    let file = TestApp::new(&db)
        .helper(&["command_bot", "message_logger"])
        .forwarder()
        .config_file();
    let config = &file.path;
    let reason = "Wartung — läuft wieder ab Montag, siehe #ops";
    cli(
        config,
        &["listeners", "disable", "keyword_alerts", "--reason", reason],
    );

    let listed: Value = serde_json::from_str(&cli(config, &["listeners", "--json"])).expect("JSON");
    let rows = listed.as_array().expect("an array");
    let alerts = rows
        .iter()
        .find(|r| r["name"] == "keyword_alerts")
        .expect("keyword_alerts listed");
    assert_eq!(alerts["enabled"], false);
    assert_eq!(alerts["disabled_reason"], reason);
    let logger = rows
        .iter()
        .find(|r| r["name"] == "message_logger")
        .expect("message_logger listed");
    assert_eq!(logger["used_by"], json!(["bot:helper", "forwarder"]));
    assert_eq!(logger["runs"], 0);

    let table = cli(config, &["listeners"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), rows.len() + 1, "{table}");
    let header = lines[0];
    let why = column(header, "disabled why");
    let used = column(header, "used by");
    let runs_end = column(header, "runs") + "runs".len();
    for (line, row) in lines[1..].iter().zip(rows) {
        let chars: Vec<char> = line.chars().collect();
        let from = |i: usize| chars[i.min(chars.len())..].iter().collect::<String>();
        let reason = row["disabled_reason"].as_str().unwrap_or("-");
        assert!(
            from(why).starts_with(reason),
            "column `disabled why`:\n{table}"
        );
        let users: Vec<&str> = row["used_by"]
            .as_array()
            .expect("used_by")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let users = if users.is_empty() {
            "-".to_string()
        } else {
            users.join(", ")
        };
        assert_eq!(from(used), users, "column `used by`:\n{table}");
        let runs = row["runs"].to_string();
        let cell: String = chars[runs_end - runs.len()..runs_end].iter().collect();
        assert_eq!(cell, runs, "column `runs` is right-aligned:\n{table}");
    }
}

#[actix_web::test]
async fn try_it_curl_gets_pong_and_send_sample_is_accepted() {
    let dir = tempfile::tempdir().expect("dir");
    let config = repo("config/try-it.toml");
    let db = dir.path().join("try-it.db");
    let port = free_port();
    let env = [
        (
            "ZULIP_LISTENERS_DATABASE__URL",
            format!("sqlite://{}", db.display()),
        ),
        ("ZULIP_LISTENERS_SERVER__BIND", format!("127.0.0.1:{port}")),
    ];
    let server = Piped::start(&config, &env, port);
    wait_until_up(&server.base).await;

    // README: curl … -d @examples/outgoing-ping.json http://127.0.0.1:8080/
    let readme = std::fs::read_to_string(repo("README.md")).expect("README");
    assert!(
        readme.contains("-d @examples/outgoing-ping.json http://127.0.0.1:8080/"),
        "README shows the curl command"
    );
    assert!(readme.contains("--config config/try-it.toml send-sample"));
    let body = std::fs::read_to_string(repo("examples/outgoing-ping.json")).expect("sample");
    let answer: Value = reqwest::Client::new()
        .post(format!("{}/", server.base))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("POST /")
        .json()
        .await
        .expect("JSON");
    assert_eq!(answer, json!({"content": "pong"}));

    // send-sample finds the server from server.bind and signs with the configured secret.
    let sent = run(&config, &["send-sample"], &env);
    assert!(sent.status.success(), "{}", output_text(&sent));
    assert!(
        output_text(&sent).contains("accepted"),
        "{}",
        output_text(&sent)
    );
    let target = zulip_listeners::config::parse_database_url(&env[0].1).expect("url");
    let stored = eventually(Duration::from_secs(10), async || {
        let mut conn = zulip_listeners::db::establish(&target).expect("connect");
        zulip_listeners::db::tables::inbox::inbox_counts(&mut conn)
            .expect("counts")
            .iter()
            .map(|(_, n)| n)
            .sum::<i64>()
            == 2
    })
    .await;
    assert!(stored, "both sample events are in the inbox");

    // With another secret the signature is refused, and the command says why.
    let mut wrong = env.to_vec();
    wrong.push((
        "ZULIP_LISTENERS_FORWARDER__SECRETS",
        format!("[\"{}\"]", SigningKey::generate()),
    ));
    let refused = run(&config, &["send-sample"], &wrong);
    assert!(!refused.status.success(), "{}", output_text(&refused));
    assert!(
        output_text(&refused).contains("signature was refused"),
        "{}",
        output_text(&refused)
    );
    drop(server);
}

/// A loopback stand-in for Zulip's `GET /api/v1/users/me`: accepts `email:API_KEY` with
/// HTTP basic auth, and sends a `Date` header `skew` seconds off the real time.
struct FakeZulip {
    url: String,
    skew: Arc<AtomicI64>,
    handle: actix_web::dev::ServerHandle,
}

impl FakeZulip {
    async fn start() -> FakeZulip {
        let skew = Arc::new(AtomicI64::new(0));
        let shared = skew.clone();
        let (url, handle) = serve_loopback(move |listener| {
            Ok(HttpServer::new(move || {
                let skew = shared.clone();
                App::new().route(
                    "/api/v1/users/me",
                    web::get().to(move |req: HttpRequest| {
                        let skew = skew.load(Ordering::SeqCst);
                        async move {
                            let given = req
                                .headers()
                                .get("authorization")
                                .and_then(|v| v.to_str().ok())
                                .and_then(|v| v.strip_prefix("Basic "))
                                .and_then(|v| {
                                    base64::engine::general_purpose::STANDARD.decode(v).ok()
                                })
                                .map(|v| String::from_utf8_lossy(&v).into_owned())
                                .unwrap_or_default();
                            let (email, key) = given.split_once(':').unwrap_or_default();
                            let when = if skew >= 0 {
                                SystemTime::now() + Duration::from_secs(skew.unsigned_abs())
                            } else {
                                SystemTime::now() - Duration::from_secs(skew.unsigned_abs())
                            };
                            let date = httpdate::fmt_http_date(when);
                            if key == API_KEY {
                                HttpResponse::Ok()
                                    .insert_header(("date", date))
                                    .json(json!({
                                "result": "success", "msg": "", "email": email,
                                "user_id": 42, "is_bot": true, "full_name": "Helper"}))
                            } else {
                                HttpResponse::Unauthorized()
                                    .insert_header(("date", date))
                                    .json(json!({"result": "error", "msg": "Invalid API key",
                                             "code": "INVALID_API_KEY"}))
                            }
                        }
                    }),
                )
            })
            .workers(1)
            .listen(listener)?
            .run())
        });
        FakeZulip { url, skew, handle }
    }
}

/// `doctor` in a process of its own, off the test's runtime (the stand-ins run on it).
async fn doctor(config: PathBuf, url: Option<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        let mut args = vec!["doctor".to_string()];
        if let Some(url) = url {
            args.extend(["--url".to_string(), url]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&config, &args, &[])
    })
    .await
    .expect("doctor ran")
}

backend_test!(async fn doctor_passes_on_a_sound_installation);
async fn doctor_passes_on_a_sound_installation(backend: Backend) {
    let zulip = FakeZulip::start().await;
    let db = TestDatabase::new(backend);
    let bot = format!(
        "{}api_key = \"{API_KEY}\"\nsite = \"{}/\"\n",
        helper_bot(&["command_bot"]),
        zulip.url
    );
    let config = db.config_file(&format!("{bot}[forwarder]\nsecrets = [\"{SECRET}\"]\n"));
    cli(&config.path, &["migrate"]);
    let t = TestApp::new(&db).toml(&bot).start().await;
    let out = doctor(
        config.path.clone(),
        Some(format!("{}/zulip/outgoing", t.base)),
    )
    .await;
    let said = output_text(&out);
    assert!(out.status.success(), "{backend:?}: {said}");
    assert!(!said.contains("[FAIL]"), "{said}");
    for expected in [
        "[ ok ] configuration valid",
        "[ ok ] database reachable",
        "[ ok ] database schema up to date",
        "[ ok ] forwarder secret forwarder.secrets[0] well-formed (24 bytes)",
        "[ ok ] bot helper: Zulip at",
        "[ ok ] public URL",
        "[ ok ] clock in sync",
    ] {
        assert!(
            said.contains(expected),
            "{backend:?}: `{expected}` in\n{said}"
        );
    }
    if backend == Backend::Sqlite {
        assert!(said.contains("[ ok ] disk space"), "{said}");
    }
    t.stop().await;
    zulip.handle.stop(false).await;
}

#[actix_web::test]
async fn doctor_names_a_fix_for_every_failure_and_exits_non_zero() {
    let zulip = FakeZulip::start().await;
    zulip.skew.store(-600, Ordering::SeqCst);
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("c.toml");
    let closed = format!("http://127.0.0.1:{}", free_port());
    // A secret the server accepts (24 bytes) but without the `whsec_` prefix the forwarder's
    // library expects.
    let short = base64::engine::general_purpose::STANDARD.encode([7u8; 24]);
    std::fs::write(
        &config,
        format!(
            "[database]\nurl = \"sqlite://{}\"\n\
             [bots.helper]\nemail = \"{BOT_EMAIL}\"\ntoken = \"{TOKEN}\"\napi_key = \"wrong-key\"\nsite = \"{}\"\n\
             [bots.gone]\nemail = \"gone-bot@localhost\"\ntoken = \"another-token-0123456789\"\napi_key = \"{API_KEY}\"\nsite = \"{closed}\"\n\
             [forwarder]\nsecrets = [\"{short}\"]\n",
            dir.path().join("never-created.db").display(),
            zulip.url
        ),
    )
    .expect("config");
    let out = doctor(config.clone(), Some(format!("{closed}/zulip/outgoing"))).await;
    let said = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    let failures = said.lines().filter(|l| l.starts_with("[FAIL]")).count();
    let fixes = said
        .lines()
        .filter(|l| l.trim_start().starts_with("fix: "))
        .count();
    assert_eq!(failures, 6, "{said}");
    assert_eq!(fixes, failures, "a fix for every failure:\n{said}");
    for expected in [
        "does not exist yet",
        "zulip-listeners migrate",
        "bot helper: Zulip at",
        "refuses its api_key (401 Unauthorized: Invalid API key)",
        "bot gone: Zulip at",
        "unreachable",
        "lacks the `whsec_` prefix",
        "public URL",
        "clock: -600 s off",
        "NTP",
        "6 of",
    ] {
        assert!(said.contains(expected), "`{expected}` in\n{said}");
    }
    assert!(!said.contains("wrong-key"), "no secret is printed:\n{said}");

    // An invalid configuration is a failure with a fix too, not a bare error.
    std::fs::write(&config, "[server]\nworkers = \"many\"\n").expect("config");
    let out = doctor(config, None).await;
    let said = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("[FAIL] configuration")
            && said.contains("server.workers")
            && said.contains("fix: "),
        "{said}"
    );
    zulip.handle.stop(false).await;
}

/// Metric names a monitoring file uses.
fn metric_names(text: &str) -> Vec<String> {
    let pattern = regex::Regex::new(r"zulip_listeners_[a-z0-9_]+").expect("pattern");
    let mut names: Vec<String> = pattern
        .find_iter(text)
        .map(|m| m.as_str().to_string())
        .collect();
    names.sort();
    names.dedup();
    names
}

#[actix_web::test]
async fn monitoring_bundle_uses_only_exported_metrics() {
    let rules = std::fs::read_to_string(repo("deploy/monitoring/zulip-listeners.rules.yml"))
        .expect("rules");
    let dashboard =
        std::fs::read_to_string(repo("deploy/monitoring/zulip-listeners.dashboard.json"))
            .expect("dashboard");
    serde_json::from_str::<Value>(&dashboard).expect("the dashboard is JSON");
    for alert in [
        "HandlerFailing",
        "CircuitOpen",
        "HandlerAutoDisabled",
        "DeadLettersGrowing",
        "QueueLag",
        "ForwarderSilent",
        "ServerErrors",
        "NotReady",
        "ListenerUnserved",
    ] {
        assert!(
            rules.contains(&format!("alert: ZulipListeners{alert}")),
            "{alert}"
        );
    }

    let db = TestDatabase::new(Backend::Sqlite);
    let t = TestApp::new(&db)
        .helper(&["command_bot", "message_logger"])
        .forwarder()
        .start()
        .await;
    assert_eq!(
        t.post_json("/zulip/outgoing", &ping(7)).await.json["content"],
        "pong"
    );
    let body = zulip_listeners::cli::sample::sample_batch(now_s() * 1000);
    let answer = t.post_batch("msg_1", &body).await;
    assert_eq!(answer.status, 200, "{:?}", answer.json);

    let wanted: Vec<String> = metric_names(&rules)
        .into_iter()
        .chain(metric_names(&dashboard))
        .collect();
    let mut missing = Vec::new();
    let all_there = eventually(Duration::from_secs(15), async || {
        let scrape = t.metrics().await;
        let exported: Vec<&str> = scrape
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split(['{', ' ']).next())
            .collect();
        missing = wanted
            .iter()
            .filter(|name| !exported.contains(&name.as_str()))
            .cloned()
            .collect();
        missing.is_empty()
    })
    .await;
    assert!(
        all_there,
        "used by deploy/monitoring/ but not exported: {missing:?}"
    );
    t.stop().await;
}

#[derive(diesel::QueryableByName)]
struct SslRow {
    #[diesel(sql_type = diesel::sql_types::Bool)]
    ssl: bool,
}

#[test]
fn postgres_over_tls_works_with_the_bundled_libpq() {
    let Some(db) = TestDatabase::postgres() else {
        return;
    };
    use diesel::prelude::*;
    let url = format!("{}&sslmode=require", db.url);
    let mut conn = diesel::PgConnection::establish(&url)
        .unwrap_or_else(|e| panic!("TLS connection to PostgreSQL ({e}); is ssl on there?"));
    let row: SslRow = diesel::sql_query("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .get_result(&mut conn)
        .expect("pg_stat_ssl");
    assert!(row.ssl, "the connection is encrypted");

    // The binary's libpq speaks TLS too.
    let config = ConfigFile::new(&format!("[database]\nurl = \"{url}\"\n"));
    let said = cli(&config.path, &["migrate"]);
    assert!(!said.is_empty(), "{said}");
}
