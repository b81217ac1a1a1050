//! Load generator for the forwarder path: signs batches of forwarder envelopes (Standard
//! Webhooks, like the Django forwarder) and posts them to a running server on loopback.
//!
//! ```text
//! # throughput: 2,000 batches of 100, built and signed before the clock starts
//! cargo run --release --example forwarder_load -- \
//!     --url http://127.0.0.1:8080/zulip/events --secret whsec_… \
//!     --database sqlite://data/zulip-listeners.db --batches 2000 --ids uuid7
//! # soak: 4,000 events/s for 10 minutes from 100,000 users, the server's RSS every 10 s
//! cargo run --release --example forwarder_load -- --secret whsec_… \
//!     --soak 10m --users 100000 --rate 4000 --pid $(pgrep -n zulip-listeners)
//! ```
//!
//! The traffic is shaped like the shipped forwarder's: envelopes v1 with client-facing events
//! (messages with `rendered_content`, audiences of the realm's users), a mix of event types
//! (`--mix`, default message 30 %, typing 20 %, update_message_flags 15 %, presence 10 %,
//! reaction 10 %, update_message 7 %, delete_message 3 %, subscription 3 %, realm_user 2 %),
//! `--realms` realms sharing `--users` users, each batch of one realm with the forwarder's
//! routing header (`X-Zulip-Listeners-Realm`), and event ids that are UUIDv7 (`--ids uuid7`,
//! what the forwarder sends) or random UUID4 (`--ids uuid4`, older forwarders and replays).
//!
//! Throughput mode (`--batches`) builds and signs every batch before the clock starts (the
//! Django forwarder runs on the Zulip machine, not on ours), so the run measures the server,
//! and prints accepted events/s (acknowledged after commit) and, with `--database`, processed
//! events/s (first request until no event is pending any more). `--duration` instead builds
//! batches while it runs, for as long as asked. Soak mode (`--soak`) posts at `--rate`
//! events/s and samples the server's resident memory every `--sample` (from
//! `/proc/<--pid>/status`, or from the server's `process_resident_memory_bytes` at `--metrics`,
//! default `http://127.0.0.1:9898/metrics`),
//! then prints the curve with its peak and end values.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use zulip_listeners::config::parse_database_url;
use zulip_listeners::db::{DbConnection, establish, tables};
use zulip_listeners::verification::SigningKey;

/// The event types sent, with the default share of each (per cent).
const DEFAULT_MIX: &[(&str, u32)] = &[
    ("message", 30),
    ("typing", 20),
    ("update_message_flags", 15),
    ("presence", 10),
    ("reaction", 10),
    ("update_message", 7),
    ("delete_message", 3),
    ("subscription", 3),
    ("realm_user", 2),
];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Ids {
    Uuid7,
    Uuid4,
}

struct Args {
    url: String,
    secret: String,
    database: Option<String>,
    batches: usize,
    duration: Option<Duration>,
    batch_size: usize,
    connections: usize,
    realms: u64,
    users: u64,
    mix: Vec<(&'static str, u32)>,
    ids: Ids,
    soak: Option<Duration>,
    rate: f64,
    pid: Option<u32>,
    sample: Duration,
    metrics: String,
}

fn parse_mix(text: &str) -> Result<Vec<(&'static str, u32)>, String> {
    let mut mix = Vec::new();
    for part in text.split(',').filter(|p| !p.trim().is_empty()) {
        let (name, share) = part
            .split_once('=')
            .ok_or(format!("--mix: `{part}` is not type=percent"))?;
        let kind = DEFAULT_MIX
            .iter()
            .map(|(k, _)| *k)
            .find(|k| *k == name.trim())
            .ok_or(format!(
                "--mix: unknown type `{name}` (one of {})",
                DEFAULT_MIX
                    .iter()
                    .map(|(k, _)| *k)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))?;
        let share: u32 = share
            .trim()
            .parse()
            .map_err(|e| format!("--mix {name}: {e}"))?;
        mix.push((kind, share));
    }
    if mix.iter().map(|(_, s)| s).sum::<u32>() == 0 {
        return Err("--mix: the shares add up to 0".into());
    }
    Ok(mix)
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        url: "http://127.0.0.1:8080/zulip/events".into(),
        secret: String::new(),
        database: None,
        batches: 2000,
        duration: None,
        batch_size: 100,
        connections: 8,
        realms: 4,
        users: 1600,
        mix: DEFAULT_MIX.to_vec(),
        ids: Ids::Uuid7,
        soak: None,
        rate: 4000.0,
        pid: None,
        sample: Duration::from_secs(10),
        metrics: "http://127.0.0.1:9898/metrics".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let number = || value.parse::<u64>().map_err(|e| format!("{flag}: {e}"));
        let duration = || humantime::parse_duration(&value).map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--url" => a.url = value.clone(),
            "--secret" => a.secret = value.clone(),
            "--database" => a.database = Some(value.clone()),
            "--batches" => a.batches = number()? as usize,
            "--duration" => a.duration = Some(duration()?),
            "--batch-size" => a.batch_size = number()? as usize,
            "--connections" | "--concurrency" => a.connections = number()? as usize,
            "--realms" => a.realms = number()?,
            "--users" => a.users = number()?,
            "--users-per-realm" => a.users = number()? * a.realms,
            "--mix" => a.mix = parse_mix(&value)?,
            "--ids" => {
                a.ids = match value.as_str() {
                    "uuid7" => Ids::Uuid7,
                    "uuid4" => Ids::Uuid4,
                    other => return Err(format!("--ids {other}: uuid7 or uuid4")),
                }
            }
            "--soak" => a.soak = Some(duration()?),
            "--rate" => a.rate = value.parse().map_err(|e| format!("{flag}: {e}"))?,
            "--pid" => a.pid = Some(number()? as u32),
            "--sample" => a.sample = duration()?,
            "--metrics" => a.metrics = value.clone(),
            other => return Err(format!("unknown option {other}")),
        }
    }
    if a.secret.is_empty() {
        return Err("--secret whsec_… is required (the server's [forwarder] secrets)".into());
    }
    if a.realms == 0 || a.users < a.realms || a.batch_size == 0 || a.connections == 0 {
        return Err("--realms, --users (at least one per realm), --batch-size and --connections must be positive".into());
    }
    if a.rate <= 0.0 {
        return Err("--rate must be positive".into());
    }
    Ok(a)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Makes event ids like the forwarder's `new_event_id` (UUIDv7: milliseconds, a 12-bit
/// sequence within the millisecond, random bits) or random UUID4s.
struct IdMaker {
    kind: Ids,
    last_ms: u64,
    seq: u64,
}

impl IdMaker {
    fn next(&mut self, rng: &mut StdRng) -> String {
        let value: u128 = match self.kind {
            Ids::Uuid4 => {
                (rng.random::<u128>() & !(0xF << 76) & !(0b11 << 62)) | (0x4 << 76) | (0b10 << 62)
            }
            Ids::Uuid7 => {
                let mut ms = now_ms();
                if ms <= self.last_ms {
                    ms = self.last_ms;
                    self.seq += 1;
                    if self.seq > 0xFFF {
                        ms += 1;
                        self.seq = 0;
                    }
                } else {
                    self.seq = rng.random_range(0..0x800);
                }
                self.last_ms = ms;
                (u128::from(ms & 0xFFFF_FFFF_FFFF) << 80)
                    | (0x7 << 76)
                    | (u128::from(self.seq) << 64)
                    | (0b10 << 62)
                    | u128::from(rng.random::<u64>() >> 2)
            }
        };
        let hex = format!("{value:032x}");
        format!(
            "{}-{}-{}-{}-{}",
            &hex[0..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..32]
        )
    }
}

/// Builds batches of envelopes; one per connection task (its own random stream and ids).
struct Generator {
    rng: StdRng,
    ids: IdMaker,
    realms: u64,
    users_per_realm: u64,
    mix: Vec<(&'static str, u32)>,
    mix_total: u32,
    /// Messages sent so far in each realm. Message ids are unique over all realms
    /// (interleaved, as Zulip's are), and a realm's edits, reactions and deletions only ever
    /// name that realm's own messages.
    sent: Vec<u64>,
    first_message_id: u64,
}

const WORDS: &[&str] = &[
    "the",
    "deploy",
    "looks",
    "good",
    "but",
    "staging",
    "still",
    "shows",
    "an",
    "old",
    "build",
    "could",
    "you",
    "check",
    "**before**",
    "we",
    "merge",
    "this",
    "tomorrow",
    "morning",
    "thanks",
    "`cargo test`",
    "fails",
    "on",
    "CI",
    "again",
    "see",
    "ticket",
    "review",
    "please",
];

impl Generator {
    fn new(args: &Args, seed: u64) -> Generator {
        Generator {
            rng: StdRng::seed_from_u64(seed),
            ids: IdMaker {
                kind: args.ids,
                last_ms: 0,
                seq: 0,
            },
            realms: args.realms,
            users_per_realm: args.users / args.realms,
            mix: args.mix.clone(),
            mix_total: args.mix.iter().map(|(_, s)| s).sum(),
            sent: vec![0; usize::try_from(args.realms).unwrap_or(1)],
            first_message_id: 1_000_000 + seed * 100_000_000,
        }
    }

    fn kind(&mut self) -> &'static str {
        let mut pick = self.rng.random_range(0..self.mix_total);
        for (kind, share) in &self.mix {
            if pick < *share {
                return kind;
            }
            pick -= share;
        }
        "message"
    }

    fn user_id(&self, realm: u64, index: u64) -> u64 {
        1000 + realm * self.users_per_realm + index
    }

    /// `n` user ids of the realm (a stream's subscribers, a typing audience), `first` among them.
    fn audience(&mut self, realm: u64, first: u64, n: u64) -> String {
        let mut ids = vec![first];
        let start = self.rng.random_range(0..self.users_per_realm);
        for k in 0..n.min(self.users_per_realm).saturating_sub(1) {
            let id = self.user_id(realm, (start + k * 7) % self.users_per_realm);
            if id != first {
                ids.push(id);
            }
        }
        let list: Vec<String> = ids.iter().map(u64::to_string).collect();
        format!(
            r#"{{"count":{},"user_ids":[{}]}}"#,
            ids.len(),
            list.join(",")
        )
    }

    /// The id of realm `realm`'s `n`th message.
    fn message_id(&self, realm: u64, n: u64) -> u64 {
        self.first_message_id + n * self.realms + realm
    }

    fn sentence(&mut self, words: usize) -> String {
        (0..words)
            .map(|_| WORDS[self.rng.random_range(0..WORDS.len())])
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn envelope(&mut self, realm: u64, emitted_at_ms: u64) -> String {
        let index = self.rng.random_range(0..self.users_per_realm);
        let user = self.user_id(realm, index);
        let kind = self.kind();
        let stream = 5 + self.rng.random_range(0..20u64);
        let sent = self.sent[realm as usize];
        let back = self.rng.random_range(1..500);
        let recent = self.message_id(realm, sent.saturating_sub(back));
        let (op, event, audience) = match kind {
            "message" => {
                self.sent[realm as usize] += 1;
                let id = self.message_id(realm, sent + 1);
                let words = self.rng.random_range(8..34);
                let text = self.sentence(words);
                let rendered = format!("<p>{}</p>", text.replace("**", ""));
                (
                    "null",
                    format!(
                        r#"{{"type":"message","flags":[],"message":{{"id":{id},"sender_id":{user},"sender_full_name":"User {user}","sender_email":"user{user}@r{realm}.example.com","sender_realm_str":"r{realm}","avatar_url":null,"client":"website","content":"{text}","rendered_content":"{rendered}","content_type":"text/x-markdown","is_me_message":false,"reactions":[],"submessages":[],"recipient_id":{recipient},"subject":"release planning","topic_links":[],"timestamp":{ts},"type":"stream","display_recipient":"engineering","stream_id":{stream}}}}}"#,
                        id = id,
                        recipient = stream + 10,
                        ts = emitted_at_ms / 1000,
                    ),
                    self.audience(realm, user, 40),
                )
            }
            "typing" => (
                r#""start""#,
                format!(
                    r#"{{"type":"typing","op":"start","message_type":"stream","sender":{{"user_id":{user},"email":"user{user}@r{realm}.example.com"}},"stream_id":{stream},"topic":"release planning"}}"#
                ),
                self.audience(realm, user, 35),
            ),
            "update_message_flags" => (
                r#""add""#,
                format!(
                    r#"{{"type":"update_message_flags","op":"add","operation":"add","flag":"read","messages":[{recent},{},{}],"all":false}}"#,
                    recent + 1,
                    recent + 2
                ),
                format!(r#"{{"count":1,"user_ids":[{user}]}}"#),
            ),
            "presence" => (
                "null",
                format!(
                    r#"{{"type":"presence","email":"user{user}@r{realm}.example.com","user_id":{user},"server_timestamp":{ts}.25,"presence":{{"website":{{"client":"website","status":"active","timestamp":{ts},"pushable":false}}}}}}"#,
                    ts = emitted_at_ms / 1000
                ),
                self.audience(realm, user, 60),
            ),
            "reaction" => (
                r#""add""#,
                format!(
                    r#"{{"type":"reaction","op":"add","user_id":{user},"message_id":{recent},"emoji_name":"tada","emoji_code":"1f389","reaction_type":"unicode_emoji"}}"#
                ),
                self.audience(realm, user, 40),
            ),
            "update_message" => {
                let before = self.sentence(12);
                let after = self.sentence(14);
                (
                    "null",
                    format!(
                        r#"{{"type":"update_message","user_id":{user},"edit_timestamp":{ts},"message_id":{recent},"rendering_only":false,"stream_name":"engineering","stream_id":{stream},"message_ids":[{recent}],"orig_content":"{before}","orig_rendered_content":"<p>{b}</p>","content":"{after}","rendered_content":"<p>{a}</p>","is_me_message":false,"flags":[]}}"#,
                        ts = emitted_at_ms / 1000,
                        b = before.replace("**", ""),
                        a = after.replace("**", ""),
                    ),
                    self.audience(realm, user, 25),
                )
            }
            "delete_message" => (
                "null",
                format!(
                    r#"{{"type":"delete_message","message_ids":[{recent}],"message_type":"stream","stream_id":{stream},"topic":"release planning"}}"#
                ),
                self.audience(realm, user, 25),
            ),
            "subscription" => (
                r#""peer_add""#,
                format!(
                    r#"{{"type":"subscription","op":"peer_add","stream_ids":[{stream}],"user_ids":[{user}]}}"#
                ),
                self.audience(realm, user, 40),
            ),
            _ => (
                r#""update""#,
                format!(
                    r#"{{"type":"realm_user","op":"update","person":{{"user_id":{user},"full_name":"User {user} (away)"}}}}"#
                ),
                self.audience(realm, user, 60),
            ),
        };
        let event_id = self.ids.next(&mut self.rng);
        format!(
            r#"{{"v":1,"event_id":"{event_id}","emitted_at_ms":{emitted_at_ms},"server":{{"host":"zulip.example.com","zulip_version":"10.2","feature_level":334}},"realm":{{"id":{rid},"uuid":"6c0b1a2e-0000-4000-8000-00000000000{r}","string_id":"r{realm}"}},"type":"{kind}","op":{op},"audience":{audience},"event":{event}}}"#,
            rid = realm_id(realm),
            r = realm % 10,
        )
    }

    /// One batch body, its realm's id and the bytes of its envelopes. Like the forwarder's,
    /// each batch holds events of one realm (chosen at random for each batch).
    fn batch(&mut self, size: usize) -> (String, u64, usize) {
        let now = now_ms();
        let realm = self.rng.random_range(0..self.realms);
        let events: Vec<String> = (0..size).map(|_| self.envelope(realm, now)).collect();
        let bytes = events.iter().map(String::len).sum();
        (
            format!(r#"{{"events":[{}]}}"#, events.join(",")),
            realm_id(realm),
            bytes,
        )
    }
}

/// The header in which the forwarder names a batch's realm.
const ROUTING_HEADER: &str = "X-Zulip-Listeners-Realm";

/// The `realm.id` of the generator's realm number `realm`.
fn realm_id(realm: u64) -> u64 {
    realm + 2
}

/// One signed batch, ready to post.
struct Request {
    id: String,
    /// Sent in the forwarder's routing header.
    realm_id: u64,
    timestamp: i64,
    signature: String,
    body: bytes::Bytes,
}

fn sign(key: &SigningKey, run: &str, n: usize, body: String, realm_id: u64) -> Request {
    let id = format!("msg_{run}_{n}");
    let timestamp = unix_now();
    let signature = key.sign(&id, timestamp, body.as_bytes());
    Request {
        id,
        realm_id,
        timestamp,
        signature,
        body: body.into(),
    }
}

async fn post(http: &reqwest::Client, url: &str, request: &Request) -> bool {
    http.post(url)
        .header("content-type", "application/json")
        .header("webhook-id", &request.id)
        .header("webhook-timestamp", request.timestamp.to_string())
        .header("webhook-signature", &request.signature)
        .header(ROUTING_HEADER, request.realm_id.to_string())
        .body(request.body.clone())
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

fn fail(message: String) -> ! {
    eprintln!("error: {message}");
    std::process::exit(2)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Arc::new(args().unwrap_or_else(|e| fail(e)));
    let key =
        Arc::new(SigningKey::parse(&args.secret).unwrap_or_else(|e| fail(format!("--secret {e}"))));
    let mut conn = args.database.as_ref().map(|url| {
        let target = parse_database_url(url).unwrap_or_else(|e| fail(format!("--database {e}")));
        establish(&target).unwrap_or_else(|e| fail(e.to_string()))
    });
    let done_before = conn.as_mut().map_or(0, |c| count(c, "done"));
    let run = format!("load{}", now_ms());
    println!(
        "traffic: {} realms x {} users, batches of {}, {} connections, ids {:?}, mix {}",
        args.realms,
        args.users / args.realms,
        args.batch_size,
        args.connections,
        args.ids,
        args.mix
            .iter()
            .map(|(k, s)| format!("{k}={s}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let http = reqwest::Client::new();
    let sent = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let envelope_bytes = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let started;
    let on_the_fly = args.soak.or(args.duration);
    if let Some(length) = on_the_fly {
        // Built while running: for a duration, as fast as the server takes them; soaking, at
        // --rate (batch k is due at k × batch size / rate).
        let paced = args.soak.is_some();
        let per_batch = Duration::from_secs_f64(args.batch_size as f64 / args.rate);
        let next = Arc::new(AtomicUsize::new(0));
        started = Instant::now();
        for task in 0..args.connections {
            let (http, args, key, next, sent, failed, bytes_total, run) = (
                http.clone(),
                args.clone(),
                key.clone(),
                next.clone(),
                sent.clone(),
                failed.clone(),
                envelope_bytes.clone(),
                run.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut generator = Generator::new(&args, task as u64 + 1);
                loop {
                    let b = next.fetch_add(1, Ordering::Relaxed);
                    if paced {
                        let due = per_batch.mul_f64(b as f64);
                        if due >= length {
                            return;
                        }
                        tokio::time::sleep_until((started + due).into()).await;
                    } else if started.elapsed() >= length {
                        return;
                    }
                    let (body, realm_id, bytes) = generator.batch(args.batch_size);
                    bytes_total.fetch_add(bytes as u64, Ordering::Relaxed);
                    let request = sign(&key, &run, b, body, realm_id);
                    if post(&http, &args.url, &request).await {
                        sent.fetch_add(args.batch_size, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
    } else {
        // Bodies are built and signed before the clock starts: the server is measured, not
        // the generator (the Django forwarder runs on the Zulip machine).
        let mut generator = Generator::new(&args, 1);
        let requests: Arc<Vec<Request>> = Arc::new(
            (0..args.batches)
                .map(|b| {
                    let (body, realm_id, bytes) = generator.batch(args.batch_size);
                    envelope_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
                    sign(&key, &run, b, body, realm_id)
                })
                .collect(),
        );
        let next = Arc::new(AtomicUsize::new(0));
        started = Instant::now();
        for _ in 0..args.connections {
            let (http, args, requests, next, sent, failed) = (
                http.clone(),
                args.clone(),
                requests.clone(),
                next.clone(),
                sent.clone(),
                failed.clone(),
            );
            tasks.push(tokio::spawn(async move {
                loop {
                    let b = next.fetch_add(1, Ordering::Relaxed);
                    let Some(request) = requests.get(b) else {
                        return;
                    };
                    if post(&http, &args.url, request).await {
                        sent.fetch_add(args.batch_size, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
    }
    let sampler = args
        .soak
        .map(|_| tokio::spawn(sample_rss(http.clone(), args.clone(), started)));
    for t in tasks {
        let _ = t.await;
    }
    let accepted_in = started.elapsed();
    let total = sent.load(Ordering::Relaxed);
    let built = total + failed.load(Ordering::Relaxed) * args.batch_size;
    println!(
        "mean envelope size: {:.0} bytes",
        envelope_bytes.load(Ordering::Relaxed) as f64 / built.max(1) as f64
    );
    let mut line = format!(
        "RESULT events={total} failed_batches={} accepted_per_s={:.0}",
        failed.load(Ordering::Relaxed),
        total as f64 / accepted_in.as_secs_f64(),
    );
    if let Some(conn) = conn.as_mut() {
        // Every event of this run was acknowledged (or its batch failed): wait for none pending.
        while tables::inbox::pending_count(conn).unwrap_or(0) > 0
            && started.elapsed() < accepted_in + Duration::from_secs(600)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let processed_in = started.elapsed();
        let done = count(conn, "done") - done_before;
        line += &format!(
            " processed={done} processed_per_s={:.0}",
            done as f64 / processed_in.as_secs_f64()
        );
    }
    if let Some(sampler) = sampler {
        sampler.abort();
        let curve = RSS.lock().map(|c| c.clone()).unwrap_or_default();
        let mib = |b: u64| b as f64 / 1048576.0;
        let peak = curve.iter().map(|(_, b)| *b).max().unwrap_or(0);
        let end = curve.last().map_or(0, |(_, b)| *b);
        println!(
            "RSS_CURVE {}",
            curve
                .iter()
                .map(|(t, b)| format!("{t}s:{:.1}", mib(*b)))
                .collect::<Vec<_>>()
                .join(" ")
        );
        line += &format!(
            " rss_start_mib={:.1} rss_peak_mib={:.1} rss_end_mib={:.1}",
            curve.first().map_or(0.0, |(_, b)| mib(*b)),
            mib(peak),
            mib(end)
        );
    }
    println!("{line}");
}

/// The RSS samples of a soak: (seconds since the start, bytes).
static RSS: std::sync::Mutex<Vec<(u64, u64)>> = std::sync::Mutex::new(Vec::new());

/// Every `--sample`: the server's RSS (from `/proc/<pid>/status`, else its `/metrics`), with
/// what `/metrics` says about where memory goes.
async fn sample_rss(http: reqwest::Client, args: Arc<Args>, started: Instant) {
    let metrics_url = &args.metrics;
    loop {
        let metrics = match http.get(metrics_url).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        let gauge = |name: &str| -> Option<f64> {
            metrics
                .lines()
                .filter(|l| l.starts_with(name))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .reduce(|a, b| a + b)
        };
        let rss = match args.pid {
            Some(pid) => std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find(|l| l.starts_with("VmRSS:"))
                        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                })
                .map(|kib| kib * 1024),
            None => gauge("process_resident_memory_bytes").map(|b| b as u64),
        };
        let t = started.elapsed().as_secs();
        if let Some(rss) = rss {
            if let Ok(mut curve) = RSS.lock() {
                curve.push((t, rss));
            }
            println!(
                "t={t}s rss={:.1}MiB sqlite={:.1}MiB limiter_keys={:.0}",
                rss as f64 / 1048576.0,
                gauge("zulip_listeners_sqlite_memory_bytes").unwrap_or(0.0) / 1048576.0,
                gauge("zulip_listeners_rate_limiter_keys{path=\"forwarder\"}").unwrap_or(0.0),
            );
        }
        tokio::time::sleep(args.sample).await;
    }
}

fn count(conn: &mut DbConnection, status: &str) -> i64 {
    tables::inbox::inbox_counts(conn)
        .unwrap_or_default()
        .into_iter()
        .find(|(s, _)| s.as_str() == status)
        .map_or(0, |(_, n)| n)
}
