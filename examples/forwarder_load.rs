//! Load generator for the forwarder path: signs batches of forwarder envelopes (Standard
//! Webhooks, like the Django forwarder) and posts them to a running server on loopback, then
//! waits until the server has processed every event, reading the inbox from the same database.
//!
//! ```text
//! cargo run --release --example forwarder_load -- \
//!     --url http://127.0.0.1:8080/zulip/events --secret whsec_… \
//!     --database sqlite://data/zulip-listeners.db --batches 2000 --batch-size 100 --concurrency 16
//! ```
//!
//! Every batch is built and signed before the clock starts (the Django forwarder runs on the
//! Zulip machine, not on ours), so the run measures the server. Prints accepted events/s
//! (intake, acknowledged after commit) and processed events/s (first request until no event
//! is pending any more).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use zulip_listeners::config::parse_database_url;
use zulip_listeners::db::{establish, store};
use zulip_listeners::verification::SigningKey;

struct Args {
    url: String,
    secret: String,
    database: String,
    batches: usize,
    batch_size: usize,
    concurrency: usize,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        url: "http://127.0.0.1:8080/zulip/events".into(),
        secret: String::new(),
        database: "sqlite://data/zulip-listeners.db".into(),
        batches: 1000,
        batch_size: 100,
        concurrency: 16,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let number = || value.parse::<usize>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--url" => a.url = value.clone(),
            "--secret" => a.secret = value.clone(),
            "--database" => a.database = value.clone(),
            "--batches" => a.batches = number()?,
            "--batch-size" => a.batch_size = number()?,
            "--concurrency" => a.concurrency = number()?,
            other => return Err(format!("unknown option {other}")),
        }
    }
    if a.secret.is_empty() {
        return Err("--secret whsec_… is required (the server's [forwarder] secrets)".into());
    }
    Ok(a)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A batch of realistic events: mostly messages, some reactions and typing, from 50 users in
/// 4 realms, each with an event id of its own.
fn batch_body(run: &str, batch: usize, size: usize) -> String {
    let now_ms = unix_now() * 1000;
    let events: Vec<String> = (0..size)
        .map(|i| {
            let n = batch * size + i;
            let user = 10 + (n % 50);
            let realm = 1 + (n % 4);
            let event = match n % 10 {
                0..=6 => format!(
                    r#"{{"type":"message","flags":[],"message":{{"id":{id},"sender_id":{user},"sender_full_name":"User {user}","sender_email":"user{user}@example.com","sender_realm_str":"r{realm}","avatar_url":null,"client":"website","content":"message number {n} with **some** markdown","content_type":"text/x-markdown","rendered_content":"<p>message number {n}</p>","is_me_message":false,"reactions":[],"submessages":[],"recipient_id":20,"subject":"load","topic_links":[],"timestamp":1700000000,"type":"stream","display_recipient":"general","stream_id":5}}}}"#,
                    id = 1_000_000 + n
                ),
                7 | 8 => format!(
                    r#"{{"type":"reaction","op":"add","user_id":{user},"message_id":{id},"emoji_name":"tada","emoji_code":"1f389","reaction_type":"unicode_emoji"}}"#,
                    id = 1_000_000 + n - 1
                ),
                _ => format!(
                    r#"{{"type":"typing","op":"start","message_type":"stream","sender":{{"user_id":{user},"email":"user{user}@example.com"}},"stream_id":5,"topic":"load"}}"#
                ),
            };
            let kind = if n % 10 <= 6 { "message" } else if n % 10 <= 8 { "reaction" } else { "typing" };
            let op = match kind { "message" => "null", "reaction" => "\"add\"", _ => "\"start\"" };
            format!(
                r#"{{"v":1,"event_id":"{run}-{n}","emitted_at_ms":{now_ms},"server":{{"host":"load","zulip_version":"10.2","feature_level":334}},"realm":{{"id":{realm},"uuid":"u{realm}","string_id":"r{realm}"}},"type":"{kind}","op":{op},"audience":{{"count":1,"user_ids":[{user}]}},"event":{event}}}"#
            )
        })
        .collect();
    format!(r#"{{"events":[{}]}}"#, events.join(","))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = match args() {
        Ok(a) => Arc::new(a),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let key = match SigningKey::parse(&args.secret) {
        Ok(k) => Arc::new(k),
        Err(e) => {
            eprintln!("error: --secret {e}");
            std::process::exit(2);
        }
    };
    let target = parse_database_url(&args.database).unwrap_or_else(|e| {
        eprintln!("error: --database {e}");
        std::process::exit(2)
    });
    let mut conn = establish(&target).unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(2)
    });
    let done_before = count(&mut conn, "done");
    let run = format!("load{}", unix_now());
    // Bodies are built and signed before the clock starts: the server is measured, not the
    // generator (the Django forwarder runs on the Zulip machine).
    let ts = unix_now();
    let requests: Arc<Vec<Request>> = Arc::new(
        (0..args.batches)
            .map(|b| {
                let body = batch_body(&run, b, args.batch_size);
                let id = format!("msg_{run}_{b}");
                let signature = key.sign(&id, ts, body.as_bytes());
                Request {
                    id,
                    signature,
                    body: body.into(),
                }
            })
            .collect(),
    );
    let http = reqwest::Client::new();
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (http, args, requests, next, failed) = (
            http.clone(),
            args.clone(),
            requests.clone(),
            next.clone(),
            failed.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let b = next.fetch_add(1, Ordering::Relaxed);
                let Some(request) = requests.get(b) else {
                    return;
                };
                let ok = http
                    .post(&args.url)
                    .header("content-type", "application/json")
                    .header("webhook-id", &request.id)
                    .header("webhook-timestamp", ts.to_string())
                    .header("webhook-signature", &request.signature)
                    .body(request.body.clone())
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if !ok {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let accepted_in = started.elapsed();
    let total = args.batches * args.batch_size;
    // Every event of this run was acknowledged (or its batch failed): wait for none pending.
    while store::pending_count(&mut conn).unwrap_or(0) > 0
        && started.elapsed() < Duration::from_secs(600)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let processed_in = started.elapsed();
    let done = count(&mut conn, "done") - done_before;
    println!(
        "RESULT events={total} failed_batches={} accepted_per_s={:.0} processed={done} processed_per_s={:.0}",
        failed.load(Ordering::Relaxed),
        total as f64 / accepted_in.as_secs_f64(),
        done as f64 / processed_in.as_secs_f64(),
    );
}

/// One signed batch, ready to post.
struct Request {
    id: String,
    signature: String,
    body: bytes::Bytes,
}

fn count(conn: &mut zulip_listeners::db::DbConnection, status: &str) -> i64 {
    store::inbox_counts(conn)
        .unwrap_or_default()
        .into_iter()
        .find(|(s, _)| s == status)
        .map_or(0, |(_, n)| n)
}
