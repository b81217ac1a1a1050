//! Fault: the SQLite database's filesystem fills up while the forwarder keeps sending. The
//! real binary runs on a small tmpfs of its own; the test fills that filesystem from outside,
//! as another program on the same disk would. What must hold: intake is refused (503
//! `storage_full`, `Retry-After`) before the disk is full, outgoing webhooks are still answered,
//! `/health` and the metrics say why, and once space is freed the server accepts again by
//! itself within 10 s; every batch acknowledged, and every one refused and sent again, is
//! stored exactly once and processed, and the database passes `integrity_check`.
//! Mounting needs root (CI runs as root); elsewhere the test says it is skipped.

use std::collections::HashSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use serde_json::Value;

use crate::support::*;

const MIB: u64 = 1 << 20;

/// A tmpfs of `size` bytes mounted on a temporary directory; unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// `None` (with the reason) where mounting is impossible.
    fn mount(size: u64) -> Result<SmallDisk, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        mount_tmpfs(dir.path(), size)?;
        Ok(SmallDisk { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn free(&self) -> u64 {
        free_bytes(self.path())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

fn free_bytes(path: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("path");
    // SAFETY: statvfs writes only the struct it is given.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated and lives through the call.
    assert_eq!(
        unsafe { libc::statvfs(c.as_ptr(), &mut stat) },
        0,
        "statvfs"
    );
    stat.f_bavail * stat.f_frsize
}

/// Writes `bytes` of ballast (or until the filesystem is full, when `bytes` is `None`).
fn ballast(path: &Path, bytes: Option<u64>) -> PathBuf {
    let mut file = std::fs::File::create(path).expect("ballast file");
    let chunk = vec![0xa5u8; 256 * 1024];
    let mut written = 0u64;
    loop {
        let want = match bytes {
            Some(total) if written >= total => break,
            Some(total) => (total - written).min(chunk.len() as u64) as usize,
            None => chunk.len(),
        };
        match file.write(&chunk[..want]) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if bytes.is_none() => {
                assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
                break;
            }
            Err(e) => panic!("ballast: {e}"),
        }
    }
    let _ = file.sync_all();
    path.to_path_buf()
}

/// One forwarder batch: its webhook-id, body and event ids.
struct Batch {
    id: String,
    body: String,
    events: Vec<String>,
}

/// `n` message events of about 2 KiB each from 100 different users, message ids from `first`.
fn messages(first: i64, n: i64) -> Batch {
    let mut events = Vec::new();
    let envelopes = (first..first + n)
        .map(|id| {
            let event_id = uuid::Uuid::new_v4().to_string();
            events.push(event_id.clone());
            let text = format!("message {id}: {}", "lorem ipsum dolor sit amet ".repeat(40));
            Envelope::new(&event_id, message(id, 1000 + id % 100, &text)).json()
        })
        .collect();
    Batch {
        id: format!("msg_{}", uuid::Uuid::new_v4().simple()),
        body: batch(envelopes),
        events,
    }
}

/// What the server answered a batch.
struct Reply {
    status: u16,
    retry_after: Option<String>,
    json: Value,
}

async fn post(http: &reqwest::Client, base: &str, b: &Batch) -> Reply {
    let response = signed_events(http, base, &b.id, now_s(), &b.body, SECRET)
        .send()
        .await
        .expect("the server answers");
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let json = response.json().await.unwrap_or(Value::Null);
    Reply {
        status,
        retry_after,
        json,
    }
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct Line {
    #[diesel(sql_type = Text)]
    integrity_check: String,
}

fn count(conn: &mut zulip_listeners::db::DbConnection, sql: &str) -> i64 {
    zulip_listeners::per_backend!(conn, c => diesel::sql_query(sql).get_result::<Count>(c))
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_intake_before_it_breaks_and_recovers_by_itself() {
    let disk = match SmallDisk::mount(48 * MIB) {
        Ok(disk) => disk,
        Err(why) => {
            eprintln!(
                "SKIPPED a_full_disk_refuses_intake_before_it_breaks_and_recovers_by_itself: {why}"
            );
            return;
        }
    };
    let db_path = disk.path().join("zl.db");
    let metrics_port = free_port();
    let config = ConfigFile::new(&format!(
        "[server]\nworkers = 2\n\
         [database]\nurl = \"sqlite://{}\"\nmin_free_space = \"16MiB\"\nmax_wal_size = \"8MiB\"\n\
         [forwarder]\nsecrets = [\"{SECRET}\"]\nlisteners = [\"message_logger\"]\n\
         [metrics]\nbind = \"127.0.0.1:{metrics_port}\"\n{}",
        db_path.display(),
        helper_bot(&["command_bot"]),
    ));
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let child = std::process::Command::new(BIN)
        .arg("--config")
        .arg(&config.path)
        .arg("serve")
        .env("ZULIP_LISTENERS_SERVER__BIND", format!("127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the server");
    let mut server = ServerProcess {
        child,
        base: base.clone(),
    };
    wait_until_up(&base).await;
    let http = reqwest::Client::new();

    // Another program takes most of the disk: 24 MiB stay free, 8 MiB above the floor.
    let first_ballast = ballast(
        &disk.path().join("ballast-1"),
        Some(disk.free().saturating_sub(24 * MIB)),
    );

    // The forwarder sends until the server refuses for lack of room, for 2 s in a row.
    let mut acknowledged: HashSet<String> = HashSet::new();
    let mut refused: Vec<Batch> = Vec::new();
    let mut refusal: Option<Reply> = None;
    let mut next_message = 1i64;
    let mut refused_since: Option<Instant> = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    while refused_since.is_none_or(|at| at.elapsed() < Duration::from_secs(2)) {
        assert!(Instant::now() < deadline, "the server never refused");
        let b = messages(next_message, 100);
        next_message += 100;
        let reply = post(&http, &base, &b).await;
        match reply.status {
            200 => {
                acknowledged.extend(b.events.iter().cloned());
                refused_since = None;
            }
            503 => {
                assert_eq!(reply.json["error"], "storage_full", "{}", reply.json);
                refused_since.get_or_insert_with(Instant::now);
                refused.push(b);
                refusal = Some(reply);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => panic!("batch answered {other}: {}", reply.json),
        }
    }
    let refusal = refusal.expect("refused");
    assert!(refusal.retry_after.is_some(), "503 with Retry-After");
    let message = refusal.json["message"].as_str().unwrap_or_default();
    assert!(message.contains("database.min_free_space"), "{message}");
    assert!(!acknowledged.is_empty(), "some batches were stored first");
    let free = disk.free();
    assert!(
        free > 4 * MIB,
        "refused before the disk was full ({free} bytes left)"
    );

    // /health says why, and the gauges show how close it is.
    let health: Value = http
        .get(format!("{base}/health"))
        .send()
        .await
        .expect("health")
        .json()
        .await
        .expect("JSON");
    assert_eq!(health["status"], "degraded", "{health}");
    assert!(health["storage"]["refusing"].is_string(), "{health}");
    let reasons = health["reasons"].to_string();
    assert!(reasons.contains("no room for new work"), "{reasons}");
    let metrics = reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let gauge = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("{name} in {metrics}"))
    };
    assert!(gauge("zulip_listeners_database_free_bytes ") < (16 * MIB) as f64);
    assert_eq!(
        gauge("zulip_listeners_database_min_free_bytes "),
        (16 * MIB) as f64
    );
    assert_eq!(gauge("zulip_listeners_storage_refusing "), 1.0);

    // Outgoing webhooks are still answered, with the reply: never a public "Failure!".
    let pong = http
        .post(format!("{base}/zulip/outgoing"))
        .header("content-type", "application/json")
        .body(ping(900_001))
        .send()
        .await
        .expect("outgoing");
    assert_eq!(pong.status(), 200);
    let pong: Value = pong.json().await.expect("JSON");
    assert_eq!(pong["content"], "pong", "{pong}");

    // Then the disk fills up to the last byte: still a clean refusal, still answered.
    let second_ballast = ballast(&disk.path().join("ballast-2"), None);
    assert!(disk.free() < MIB, "the disk is full");
    let b = messages(next_message, 100);
    next_message += 100;
    let reply = post(&http, &base, &b).await;
    assert_eq!(reply.status, 503, "{}", reply.json);
    assert_eq!(reply.json["error"], "storage_full");
    refused.push(b);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pong = http
        .post(format!("{base}/zulip/outgoing"))
        .header("content-type", "application/json")
        .body(ping(900_002))
        .send()
        .await
        .expect("outgoing");
    assert_eq!(pong.status(), 200, "a full disk is no Failure! in Zulip");

    // Space comes back: the server accepts again by itself within 10 s.
    std::fs::remove_file(&first_ballast).expect("free the disk");
    std::fs::remove_file(&second_ballast).expect("free the disk");
    let freed = Instant::now();
    let b = messages(next_message, 100);
    next_message += 100;
    loop {
        let reply = post(&http, &base, &b).await;
        if reply.status == 200 {
            acknowledged.extend(b.events.iter().cloned());
            break;
        }
        assert_eq!(reply.status, 503, "{}", reply.json);
        assert!(
            freed.elapsed() < Duration::from_secs(10),
            "still refused 10 s after space was freed: {}",
            reply.json
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let recovered_in = freed.elapsed();
    eprintln!("accepting again {recovered_in:?} after space was freed");

    // The forwarder sends the refused batches again (same webhook-id), and new ones. A burst
    // of resends can push the write-ahead log over `max_wal_size` for a moment; the server
    // then refuses with `storage_full` until its checkpoint empties the log, and the forwarder
    // sends the batch again after Retry-After, as it does here (within 10 s).
    for b in refused
        .iter()
        .chain(std::iter::once(&messages(next_message, 100)))
    {
        let resent = Instant::now();
        loop {
            let reply = post(&http, &base, b).await;
            if reply.status == 200 {
                break;
            }
            assert_eq!(reply.status, 503, "{}", reply.json);
            assert_eq!(reply.json["error"], "storage_full", "{}", reply.json);
            assert!(
                resent.elapsed() < Duration::from_secs(10),
                "a resent batch still refused after 10 s: {}",
                reply.json
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        acknowledged.extend(b.events.iter().cloned());
    }
    let total = acknowledged.len() as i64;

    // Every acknowledged event stored once and processed, the outgoing runs recorded.
    let settled = eventually(Duration::from_secs(60), async || {
        let mut conn = zulip_listeners::db::establish(
            &zulip_listeners::config::DatabaseTarget::Sqlite(db_path.clone()),
        )
        .expect("open");
        count(
            &mut conn,
            "SELECT COUNT(*) AS n FROM inbox WHERE status = 'done'",
        ) == total
    })
    .await;
    let mut conn = zulip_listeners::db::establish(
        &zulip_listeners::config::DatabaseTarget::Sqlite(db_path.clone()),
    )
    .expect("open");
    assert!(
        settled,
        "{} of {total} events done",
        count(
            &mut conn,
            "SELECT COUNT(*) AS n FROM inbox WHERE status = 'done'"
        )
    );
    assert_eq!(count(&mut conn, "SELECT COUNT(*) AS n FROM inbox"), total);
    assert_eq!(
        count(
            &mut conn,
            "SELECT COUNT(*) AS n FROM messages WHERE message_id < 900000"
        ),
        total,
        "message_logger stored each message once"
    );
    let outgoing = eventually(Duration::from_secs(10), async || {
        count(
            &mut conn,
            "SELECT COUNT(*) AS n FROM event_log WHERE message_id IN (900001, 900002)",
        ) == 2
    })
    .await;
    assert!(
        outgoing,
        "the outgoing runs made while refusing are recorded"
    );
    assert!(
        server.child.try_wait().expect("status").is_none(),
        "the server is alive"
    );
    drop(server);
    let mut sqlite =
        diesel::SqliteConnection::establish(&db_path.display().to_string()).expect("open");
    let check: Line = diesel::sql_query("PRAGMA integrity_check")
        .get_result(&mut sqlite)
        .expect("integrity_check");
    assert_eq!(check.integrity_check, "ok");
}

/// Without a floor (`min_free_space = "0"`) nothing warns before the disk is full: the write
/// itself fails. The batch is still refused cleanly (503 `storage_full`), the results of runs
/// already made wait instead of being dropped, and accepting resumes by itself once space is
/// freed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_finds_the_disk_full_is_refused_and_retried_after_space_is_freed() {
    let disk = match SmallDisk::mount(32 * MIB) {
        Ok(disk) => disk,
        Err(why) => {
            eprintln!(
                "SKIPPED a_write_that_finds_the_disk_full_is_refused_and_retried_after_space_is_freed: {why}"
            );
            return;
        }
    };
    let db_path = disk.path().join("zl.db");
    let config = ConfigFile::new(&format!(
        "[server]\nworkers = 2\n\
         [database]\nurl = \"sqlite://{}\"\nmin_free_space = \"0\"\nmax_wal_size = \"8MiB\"\n\
         [forwarder]\nsecrets = [\"{SECRET}\"]\nlisteners = [\"message_logger\"]\n",
        db_path.display(),
    ));
    let server = ServerProcess::start(&config.path).await;
    let http = reqwest::Client::new();
    let first = messages(1, 50);
    assert_eq!(post(&http, &server.base, &first).await.status, 200);

    let full = ballast(&disk.path().join("ballast"), None);
    let b = messages(1_000, 100);
    let reply = post(&http, &server.base, &b).await;
    assert_eq!(reply.status, 503, "{}", reply.json);
    assert_eq!(reply.json["error"], "storage_full", "{}", reply.json);
    assert!(reply.retry_after.is_some());

    std::fs::remove_file(&full).expect("free the disk");
    let freed = Instant::now();
    loop {
        let reply = post(&http, &server.base, &b).await;
        if reply.status == 200 {
            break;
        }
        assert_eq!(reply.status, 503, "{}", reply.json);
        assert!(
            freed.elapsed() < Duration::from_secs(10),
            "still refused 10 s after space was freed: {}",
            reply.json
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let done = eventually(Duration::from_secs(30), async || {
        let mut conn = zulip_listeners::db::establish(
            &zulip_listeners::config::DatabaseTarget::Sqlite(db_path.clone()),
        )
        .expect("open");
        count(&mut conn, "SELECT COUNT(*) AS n FROM messages") == 150
    })
    .await;
    assert!(done, "both batches stored and processed once");
}
