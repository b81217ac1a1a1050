//! `cargo bench --bench dashboard`: the dashboard's pages with 1,000,000 event-log rows in
//! SQLite (a week of runs of five listeners, `listener_stats` aggregated as the server does,
//! 2,000 dead letters). Each page is fetched 20 times with the bearer token from the real
//! server on loopback; the median and the slowest are printed. The time is measured at the
//! client, so it includes the loopback round trip: the server's own time is below it.
//!
//! `DASHBOARD_BENCH_ROWS` changes the number of rows; the database is kept in
//! `target/dashboard-bench.db` and reused when it already has that many rows.

use std::time::{Duration, Instant};

use zulip_listeners::clock::{self, now_ms};
use zulip_listeners::config::{Config, parse_database_url};
use zulip_listeners::db::event_key::EventKey;
use zulip_listeners::db::tables::{
    event_log::EventLogRow,
    inbox::{InboxStatus, NewInboxRow},
};
use zulip_listeners::db::{establish, run_migrations, tables};
use zulip_listeners::server::{ServeOptions, start};

const ADMIN: &str = "dashboard-bench-admin-token-0123456789";
const LISTENERS: &[&str] = &["pinger", "alerts", "logger", "activity", "replies"];
const DAY_MS: i64 = 86_400_000;

fn config(url: &str) -> Config {
    let toml = format!(
        r#"[server]
bind = "127.0.0.1:0"
workers = 2
[database]
url = "{url}"
[metrics]
enabled = false
[admin]
token = "{ADMIN}"
[bots.helper]
email = "helper-bot@zulip.example"
token = "helper-bot-token-0123456789"
listeners = ["pinger"]
[listeners.pinger]
handler = "command_bot"
[listeners.alerts]
handler = "keyword_alerts"
[listeners.alerts.settings]
rules = [{{ name = "deploy", pattern = "deploy", webhook = "http://127.0.0.1:9/hook" }}]
[listeners.logger]
handler = "message_logger"
[listeners.activity]
handler = "user_activity_tracker"
[listeners.replies]
handler = "command_bot"
"#
    );
    match Config::from_toml(&toml) {
        Ok(config) => config,
        Err(e) => panic!("bench configuration: {e}"),
    }
}

fn fill(url: &str, rows: i64) {
    let target = parse_database_url(url).unwrap_or_else(|e| panic!("{e}"));
    let mut conn = establish(&target).unwrap_or_else(|e| panic!("{e}"));
    run_migrations(&mut conn).unwrap_or_else(|e| panic!("{e}"));
    let have = tables::event_log::count_event_logs(&mut conn).unwrap_or(0);
    if have == rows {
        println!("reusing {have} event-log rows");
        return;
    }
    assert_eq!(have, 0, "remove target/dashboard-bench.db to refill it");
    let now = now_ms();
    let start = now - 7 * DAY_MS;
    let step = (7 * DAY_MS / rows).max(1);
    let filled = Instant::now();
    let chunk = 20_000;
    let mut i = 0i64;
    while i < rows {
        let batch: Vec<EventLogRow> = (i..(i + chunk).min(rows))
            .map(|n| EventLogRow {
                id: 0,
                listener: LISTENERS[(n % 5) as usize].to_string(),
                source: if n % 3 == 0 { "outgoing" } else { "forwarder" }.into(),
                event_type: ["message", "reaction", "typing", "presence"][(n % 4) as usize].into(),
                bot: Some("helper".into()),
                realm: Some(format!("realm{}", n % 20)),
                realm_id: Some(n % 20),
                user_id: Some(n % 500),
                message_id: Some(n),
                event_id: Some(format!("{n:016x}")),
                duration_us: 200 + (n * 7919) % 20_000,
                success: n % 50 != 0,
                error: (n % 50 == 0).then(|| "webhook answered 502 Bad Gateway".to_string()),
                created_at_ms: start + n * step,
            })
            .collect();
        let refs: Vec<&EventLogRow> = batch.iter().collect();
        use diesel::Connection as _;
        conn.transaction(|c| tables::event_log::insert_event_logs(c, &refs))
            .unwrap_or_else(|e| panic!("{e}"));
        i += chunk;
    }
    let dead: Vec<NewInboxRow> = (0..2_000)
        .map(|n| NewInboxRow {
            event_id: format!("dead-{n}"),
            event_key: EventKey::of(&format!("dead-{n}")),
            webhook_id: format!("msg_{n}"),
            realm_id: n % 20,
            realm: format!("realm{}", n % 20),
            user_id: Some(n),
            event_type: "reaction".into(),
            op: Some("add".into()),
            payload: "{}".into(),
            status: InboxStatus::Dead,
            attempts: 5,
            next_attempt_at_ms: 0,
            claimed_until_ms: 0,
            last_error: Some("alerts: webhook answered 502 Bad Gateway".into()),
            emitted_at_ms: Some(now),
            received_at_ms: now - n,
            updated_at_ms: now,
            message_id: None,
            erases: Vec::new(),
        })
        .collect();
    tables::inbox::insert_inbox(&mut conn, &dead).unwrap_or_else(|e| panic!("{e}"));
    tables::listener_stats::aggregate_stats(&mut conn, 300_000, now)
        .unwrap_or_else(|e| panic!("{e}"));
    println!(
        "filled {rows} event-log rows in {:.1} s",
        filled.elapsed().as_secs_f64()
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rows: i64 = std::env::var("DASHBOARD_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("dashboard-bench.db");
    let url = format!("sqlite://{}", path.display());
    fill(&url, rows);
    let server = start(config(&url), ServeOptions::default())
        .await
        .unwrap_or_else(|e| panic!("server: {e}"));
    let base = format!("http://{}", server.addr);
    let http = reqwest::Client::new();
    // Three days ago, as the dashboard's time filter reads it.
    let since = clock::utc_text(now_ms() - 3 * DAY_MS).replace(' ', "T");
    let middle = rows / 2;
    let pages = [
        "/admin/".to_string(),
        "/admin/ui/listeners".into(),
        "/admin/ui/listeners/alerts".into(),
        "/admin/ui/events".into(),
        format!("/admin/ui/events?before={middle}"),
        "/admin/ui/events?listener=replies&success=false".into(),
        "/admin/ui/events?realm=no-such-realm".into(),
        format!("/admin/ui/events?type=typing&until={since}"),
        format!("/admin/ui/events/{middle}"),
        "/admin/ui/dead-letters".into(),
        "/admin/ui/dead-letters/replay?status=dead&all=1".into(),
    ];
    println!("{rows} event-log rows; 20 requests per page; time at the client on loopback");
    println!("{:<55} {:>9} {:>9}", "page", "median", "slowest");
    for page in &pages {
        let mut times: Vec<Duration> = Vec::new();
        for _ in 0..21 {
            let started = Instant::now();
            let answer = http
                .get(format!("{base}{page}"))
                .bearer_auth(ADMIN)
                .send()
                .await
                .unwrap_or_else(|e| panic!("{page}: {e}"));
            let status = answer.status();
            let _ = answer.bytes().await;
            times.push(started.elapsed());
            assert!(status.is_success(), "{page}: {status}");
        }
        times.remove(0); // the first request warms caches
        times.sort();
        println!(
            "{page:<55} {:>6.1} ms {:>6.1} ms",
            times[times.len() / 2].as_secs_f64() * 1000.0,
            times[times.len() - 1].as_secs_f64() * 1000.0
        );
    }
    let _ = server.stop().await;
}
