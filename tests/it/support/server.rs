//! The real server in this process: [`TestApp`] builds its configuration and starts it on
//! 127.0.0.1:0 (with a metrics listener of its own); [`TestServer`] talks to it and looks
//! into its database.

use std::time::Duration;

use zulip_listeners::config::Config;
use zulip_listeners::server::{RunningServer, ServeOptions, start};

use super::db::{TestDatabase, count_of, inbox_counts};
use super::poll::eventually;
use super::process::ConfigFile;
use super::wire::{BOT_EMAIL, SECRET, TOKEN, batch, now_s, signed_events};
use zulip_listeners::db::tables::inbox::InboxStatus;

/// The admin token of [`TestApp::admin`].
pub const ADMIN: &str = "admin-token-for-tests-0123456789";

/// `[bots.helper]`: the bot `helper` ([`BOT_EMAIL`], [`TOKEN`]) running `listeners`.
pub fn helper_bot(listeners: &[&str]) -> String {
    let listeners = toml::Value::from(listeners.iter().map(|l| l.to_string()).collect::<Vec<_>>());
    format!(
        "[bots.helper]\nemail = \"{BOT_EMAIL}\"\ntoken = \"{TOKEN}\"\nlisteners = {listeners}\n"
    )
}

/// Tests keep a 16 MiB free-space floor instead of the default 256 MiB, so that a nearly full
/// disk on a test machine does not refuse their batches (the floor itself is tested with a
/// filesystem of its own, `fault_disk_full`).
pub const TEST_ROOM: &str = "min_free_space = \"16MiB\"\nmax_wal_size = \"16MiB\"\n";

/// A server configuration, built up from TOML fragments merged table by table (a later
/// value wins), then started. `[server]` binds 127.0.0.1:0 with 2 workers; `[database]` is
/// the test's own with a pool of 4.
pub struct TestApp {
    table: toml::Table,
    options: ServeOptions,
}

impl TestApp {
    pub fn new(db: &TestDatabase) -> TestApp {
        TestApp {
            table: toml::Table::new(),
            options: ServeOptions::default(),
        }
        .toml(&format!(
            "[server]\nbind = \"127.0.0.1:0\"\nworkers = 2\n[database]\nurl = \"{}\"\npool_size = 4\n{TEST_ROOM}",
            db.url
        ))
    }

    /// Merges a TOML fragment into the configuration.
    pub fn toml(mut self, fragment: &str) -> TestApp {
        let table: toml::Table = toml::from_str(fragment)
            .unwrap_or_else(|e| panic!("test configuration is TOML ({e}): {fragment}"));
        merge(&mut self.table, table);
        self
    }

    /// `[forwarder]` accepting batches signed with [`SECRET`].
    pub fn forwarder(self) -> TestApp {
        self.toml(&format!("[forwarder]\nsecrets = [\"{SECRET}\"]\n"))
    }

    /// The bot `helper` running `handlers` ([`helper_bot`]).
    pub fn helper(self, listeners: &[&str]) -> TestApp {
        self.toml(&helper_bot(listeners))
    }

    /// [`TestApp::forwarder`] with forwarded events going to keyword_alerts alone (one worker,
    /// 50 retries 50 ms apart), which alerts `{target}/alert` on messages saying "broken" (as
    /// [`super::broken_build`] does).
    pub fn alerting_on_broken(self, target: &str) -> TestApp {
        self.forwarder().toml(&format!(
            "[forwarder]\nlisteners = [\"keyword_alerts\"]\nworkers = 1\nretry_delay = \"50ms\"\nmax_retries = 50\n\
             [handlers.keyword_alerts]\nrules = [{{ name = \"broken\", pattern = \"broken\", webhook = \"{target}/alert\" }}]\n"
        ))
    }

    /// `[listeners.<name>]`: a keyword_alerts listener that alerts `webhook` on messages about
    /// deploys; `scope` is more of its keys (description, events, streams, rate_limits, …).
    pub fn deploy_alerts(self, name: &str, scope: &str, webhook: &str) -> TestApp {
        self.toml(&format!(
            "[listeners.{name}]\nhandler = \"keyword_alerts\"\n{scope}\
             [listeners.{name}.settings]\n\
             rules = [{{ name = \"deploy\", pattern = \"(?i)deploy\", webhook = \"{webhook}\" }}]\n"
        ))
    }

    /// The admin API and dashboard, with the token [`ADMIN`].
    pub fn admin(self) -> TestApp {
        self.toml(&format!("[admin]\ntoken = \"{ADMIN}\"\n"))
    }

    pub fn options(mut self, options: ServeOptions) -> TestApp {
        self.options = options;
        self
    }

    /// The configuration as the server would load it, with a metrics listener of its own.
    pub fn config(&self) -> Config {
        let text = toml::to_string(&self.table).expect("TOML");
        let mut config = Config::from_toml(&text).expect("test configuration is valid");
        config.metrics.bind = ([127, 0, 0, 1], 0).into();
        config
    }

    /// The configuration written to a file, for the binary's command-line tools.
    pub fn config_file(&self) -> ConfigFile {
        ConfigFile::new(&toml::to_string(&self.table).expect("TOML"))
    }

    pub async fn start(self) -> TestServer {
        TestServer::start(self.config(), self.options).await
    }

    /// Starts with the configuration changed by `edit` (for values TOML cannot reach).
    pub async fn start_edited(self, edit: impl FnOnce(&mut Config)) -> TestServer {
        let mut config = self.config();
        edit(&mut config);
        TestServer::start(config, self.options).await
    }
}

fn merge(into: &mut toml::Table, from: toml::Table) {
    for (key, value) in from {
        match (into.get_mut(&key), value) {
            (Some(toml::Value::Table(old)), toml::Value::Table(new)) => merge(old, new),
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
}

/// The real server, on a free loopback port.
pub struct TestServer {
    pub server: RunningServer,
    pub base: String,
    pub http: reqwest::Client,
}

/// An HTTP answer (always JSON): status and body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub json: serde_json::Value,
}

impl TestServer {
    pub async fn start(config: Config, options: ServeOptions) -> TestServer {
        let server = start(config, options).await.expect("server starts");
        let base = format!("http://{}", server.addr);
        TestServer {
            server,
            base,
            http: reqwest::Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends `request`; every answer must be JSON.
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
                .post(self.url(path))
                .header("content-type", "application/json")
                .body(body.to_string()),
        )
        .await
    }

    pub async fn post_form(&self, path: &str, body: &str) -> Answer {
        self.send(
            self.http
                .post(self.url(path))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body.to_string()),
        )
        .await
    }

    /// A request to the admin API with the token [`ADMIN`].
    pub fn admin(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, self.url(path)).bearer_auth(ADMIN)
    }

    /// `GET /health`.
    pub async fn health(&self) -> Answer {
        self.send(self.http.get(self.url("/health"))).await
    }

    /// A forwarder batch, signed now with `secret`.
    pub fn events_request(
        &self,
        webhook_id: &str,
        timestamp: i64,
        body: &str,
        secret: &str,
    ) -> reqwest::RequestBuilder {
        signed_events(&self.http, &self.base, webhook_id, timestamp, body, secret)
    }

    /// Posts a forwarder batch body, signed now with [`SECRET`].
    pub async fn post_batch(&self, webhook_id: &str, body: &str) -> Answer {
        self.send(self.events_request(webhook_id, now_s(), body, SECRET))
            .await
    }

    /// Posts `envelopes` as one batch, signed now with [`SECRET`].
    pub async fn post_events(&self, webhook_id: &str, envelopes: Vec<serde_json::Value>) -> Answer {
        self.post_batch(webhook_id, &batch(envelopes)).await
    }

    /// Waits up to 20 s until at least `done` inbox events are done and none is pending;
    /// returns the inbox counts.
    pub async fn settle(&self, done: i64) -> Vec<(InboxStatus, i64)> {
        let mut last = Vec::new();
        let settled = eventually(Duration::from_secs(20), async || {
            last = self.query(inbox_counts).await;
            count_of(&last, InboxStatus::Done) >= done && count_of(&last, InboxStatus::Pending) == 0
        })
        .await;
        assert!(settled, "inbox did not settle: {last:?}");
        last
    }

    /// The text of the server's `/metrics`.
    pub async fn metrics(&self) -> String {
        let addr = self.server.metrics_addr.expect("metrics listener");
        reqwest::get(format!("http://{addr}/metrics"))
            .await
            .expect("scrape")
            .text()
            .await
            .expect("body")
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
