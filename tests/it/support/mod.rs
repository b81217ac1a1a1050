//! Shared test harness: real databases (a temporary SQLite file, and a fresh schema on the
//! PostgreSQL server named by `ZULIP_LISTENERS_TEST_PG_URL` when set), the real server
//! started on 127.0.0.1:0, and loopback stand-ins for external systems (Zulip's REST API, an
//! existing bot service).

use std::net::TcpListener;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use diesel::prelude::*;
use zulip_listeners::config::Config;
use zulip_listeners::server::{RunningServer, ServeOptions, start};

pub const PG_ENV: &str = "ZULIP_LISTENERS_TEST_PG_URL";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// SQLite always; PostgreSQL too when `ZULIP_LISTENERS_TEST_PG_URL` is set.
pub fn backends() -> Vec<Backend> {
    let mut list = vec![Backend::Sqlite];
    if std::env::var(PG_ENV).is_ok_and(|v| !v.is_empty()) {
        list.push(Backend::Postgres);
    } else {
        eprintln!("note: {PG_ENV} is not set; PostgreSQL variants of this test are not run");
    }
    list
}

/// A database of its own for one test, removed afterwards.
pub struct TestDatabase {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    pg: Option<(String, String)>,
}

impl TestDatabase {
    pub fn new(backend: Backend) -> TestDatabase {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temporary directory");
                let url = format!("sqlite://{}", dir.path().join("test.db").display());
                TestDatabase {
                    url,
                    _dir: Some(dir),
                    pg: None,
                }
            }
            Backend::Postgres => {
                let base = std::env::var(PG_ENV).expect("PostgreSQL URL");
                let schema = format!("zl_test_{}", uuid::Uuid::new_v4().simple());
                let mut conn = PgConnection::establish(&base).expect("connect to PostgreSQL");
                diesel::sql_query(format!("CREATE SCHEMA {schema}"))
                    .execute(&mut conn)
                    .expect("create schema");
                let sep = if base.contains('?') { '&' } else { '?' };
                let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
                TestDatabase {
                    url,
                    _dir: None,
                    pg: Some((base, schema)),
                }
            }
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let Some((base, schema)) = &self.pg
            && let Ok(mut conn) = PgConnection::establish(base)
        {
            let _ = diesel::sql_query(format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                .execute(&mut conn);
        }
    }
}

pub const TOKEN: &str = "xvOzfurIutdRRVLzpXrIIHXJvNfaJLJ0";
pub const BOT_EMAIL: &str = "outgoing-bot@localhost";

/// A bot named `helper` with the official example's email and token.
pub fn helper_bot(handlers: &str) -> String {
    format!("[bots.helper]\nemail = \"{BOT_EMAIL}\"\ntoken = \"{TOKEN}\"\nhandlers = {handlers}\n")
}

/// The real server, on a free loopback port.
pub struct TestServer {
    pub server: RunningServer,
    pub base: String,
    pub http: reqwest::Client,
}

pub fn config_for(db: &TestDatabase, extra: &str) -> Config {
    let toml = format!(
        "[server]\nbind = \"127.0.0.1:0\"\nworkers = 2\n[database]\nurl = \"{}\"\npool_size = 4\n{extra}",
        db.url
    );
    let mut config = Config::from_toml(&toml).expect("test configuration is valid");
    // Every test server gets a metrics listener of its own.
    config.metrics.bind = "127.0.0.1:0".into();
    config
}

pub async fn start_server(db: &TestDatabase, extra: &str) -> TestServer {
    start_with(config_for(db, extra), ServeOptions::default()).await
}

pub async fn start_with(config: Config, options: ServeOptions) -> TestServer {
    let server = start(config, options).await.expect("server starts");
    let base = format!("http://{}", server.addr);
    TestServer {
        server,
        base,
        http: reqwest::Client::new(),
    }
}

/// An HTTP answer (always JSON): status and body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub json: serde_json::Value,
}

impl TestServer {
    pub async fn send(&self, request: reqwest::RequestBuilder) -> Answer {
        let response = request.send().await.expect("request sent");
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let text = response.text().await.expect("body");
        let json = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {text:?}"));
        assert_eq!(
            content_type, "application/json; charset=utf-8",
            "every answer is JSON"
        );
        Answer { status, json }
    }

    pub async fn post_json(&self, path: &str, body: &str) -> Answer {
        self.send(
            self.http
                .post(format!("{}{path}", self.base))
                .header("content-type", "application/json")
                .body(body.to_string()),
        )
        .await
    }

    pub async fn post_form(&self, path: &str, body: &str) -> Answer {
        self.send(
            self.http
                .post(format!("{}{path}", self.base))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body.to_string()),
        )
        .await
    }

    /// Runs a query on the server's database after everything queued is written.
    pub async fn query<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut zulip_listeners::db::DbConnection) -> T + Send + 'static,
    ) -> T {
        self.server.flush().await;
        self.server
            .db
            .run(move |c| Ok(work(c)))
            .await
            .expect("database reachable")
    }

    /// Stops gracefully; the client goes first so that no idle keep-alive connection holds
    /// the shutdown open.
    pub async fn stop(self) {
        let TestServer { server, http, .. } = self;
        drop(http);
        server.stop().await.expect("clean stop");
    }
}

/// Event-log rows for a message: (handler, success), in the order they ran.
pub fn log_rows_for(
    conn: &mut zulip_listeners::db::DbConnection,
    message: i64,
) -> Vec<(String, bool)> {
    use zulip_listeners::db::schema::event_log as log;
    log::table
        .filter(log::message_id.eq(message))
        .order(log::id)
        .select((log::listener, log::success))
        .load(conn)
        .expect("event log")
}

/// A request received by a loopback stand-in.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub authorization: Option<String>,
    pub body: String,
}

/// A loopback HTTP server standing in for an external system. Every request is recorded and
/// answered with `answer` after `delay`.
pub struct Stub {
    pub url: String,
    pub received: Arc<Mutex<Vec<Received>>>,
    /// The status every answer gets (200 unless changed).
    pub status: Arc<AtomicU16>,
    handle: actix_web::dev::ServerHandle,
}

impl Stub {
    pub async fn start(answer: &'static str, delay: Duration) -> Stub {
        let received = Arc::new(Mutex::new(Vec::new()));
        let status = Arc::new(AtomicU16::new(200));
        let shared = received.clone();
        let shared_status = status.clone();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind stub");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let server = HttpServer::new(move || {
            let shared = shared.clone();
            let shared_status = shared_status.clone();
            App::new().default_service(web::to(move |req: HttpRequest, body: web::Bytes| {
                let shared = shared.clone();
                let status = shared_status.load(Ordering::SeqCst);
                async move {
                    shared.lock().expect("stub lock").push(Received {
                        path: req.path().to_string(),
                        authorization: req
                            .headers()
                            .get("authorization")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_string),
                        body: String::from_utf8_lossy(&body).into_owned(),
                    });
                    tokio::time::sleep(delay).await;
                    let code = actix_web::http::StatusCode::from_u16(status)
                        .unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR);
                    HttpResponse::build(code)
                        .content_type("application/json")
                        .body(answer)
                }
            }))
        })
        .workers(1)
        .listen(listener)
        .expect("listen")
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        Stub {
            url,
            received,
            status,
            handle,
        }
    }

    pub fn set_status(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    pub fn requests(&self) -> Vec<Received> {
        self.received.lock().expect("stub lock").clone()
    }

    /// Waits up to `within` for `n` requests.
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let requests = self.requests();
            if requests.len() >= n || tokio::time::Instant::now() > deadline {
                return requests;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn stop(self) {
        self.handle.stop(false).await;
    }
}

/// Polls `check` until it returns true or `within` passes; returns the last result.
pub async fn eventually(within: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The server binary in a process of its own, on a free loopback port and without the
/// metrics listener (both set through the environment, which wins over the file); killed
/// when dropped, so that a failing test leaves nothing running.
pub struct ServerProcess {
    pub child: std::process::Child,
    pub base: String,
}

impl ServerProcess {
    /// Starts `zulip-listeners --config <config> serve` and waits until `/healthz` answers.
    pub async fn start(config: &std::path::Path) -> ServerProcess {
        ServerProcess::start_with_args(config, &[]).await
    }

    /// Like [`ServerProcess::start`], with more arguments after `serve`.
    pub async fn start_with_args(config: &std::path::Path, args: &[&str]) -> ServerProcess {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_zulip-listeners"))
            .arg("--config")
            .arg(config)
            .arg("serve")
            .args(args)
            .env("ZULIP_LISTENERS_SERVER__BIND", format!("127.0.0.1:{port}"))
            .env("ZULIP_LISTENERS_METRICS__ENABLED", "false")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start the server");
        let server = ServerProcess {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        let http = reqwest::Client::new();
        let up = eventually(Duration::from_secs(20), async || {
            http.get(format!("{}/healthz", server.base))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
        assert!(up, "server at {} did not come up", server.base);
        server
    }

    /// Sends a signal by name (`TERM`, `HUP`, …).
    pub fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a command-line tool of the binary with `--config`; returns its standard output.
pub fn cli(config: &std::path::Path, args: &[&str]) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_zulip-listeners"))
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .expect("run the CLI");
    assert!(
        output.status.success(),
        "{args:?}: {:?} {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs a command-line tool that may fail: whether it succeeded, and its standard output and
/// error together.
pub fn cli_status(config: &std::path::Path, args: &[&str]) -> (bool, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_zulip-listeners"))
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .expect("run the CLI");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}
