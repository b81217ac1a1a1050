//! What a newcomer following README tripped over, each a test: output cut short by `| head`
//! ends a command quietly; a taken port, a forwarder secret without `whsec_`, a database
//! folder that does not exist and a database that cannot be reached each get a message that
//! names the key and the fix; `doctor` counts skipped checks apart; the try-it traffic is
//! logged (one INFO line per answered webhook and accepted batch, without content) while an
//! idle server and a default start stay quiet; and the dashboard's listeners page counts runs
//! as soon as they are in the event log.

use std::io::Read as _;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use zulip_listeners::clock::now_ms;
use zulip_listeners::db::tables;
use zulip_listeners::db::tables::event_log::EventLogRow;

use crate::support::*;

fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Runs the binary with `--config`, `args` and `env`, standard output to `stdout`; returns
/// its exit status and standard error. Fails the test if it is still running after 60 s.
fn run_to(
    config: &Path,
    args: &[&str],
    env: &[(&str, String)],
    stdout: Stdio,
) -> (ExitStatus, String) {
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(config)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the binary");
    let mut pipe = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut stderr = String::new();
        let _ = pipe.read_to_string(&mut stderr);
        stderr
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = reader.join().unwrap_or_default();
    match status {
        Some(status) => (status, stderr),
        None => panic!("{args:?} still running after 60 s; stderr: {stderr}"),
    }
}

/// A pipe whose reader is already closed: every write to it fails with EPIPE.
fn closed_pipe() -> Stdio {
    use std::os::fd::{FromRawFd as _, OwnedFd};
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two new descriptors into the array it is given. Close-on-exec, so
    // that no other test's child inherits the reader (the writer is duplicated onto the
    // command's standard output, which clears the flag there).
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2");
    // SAFETY: both descriptors were just made by pipe2 and are owned here only.
    let (reader, writer) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(reader);
    Stdio::from(writer)
}

#[test]
fn a_reader_that_goes_away_ends_a_command_quietly() {
    let dir = tempfile::tempdir().expect("dir");
    let config = ConfigFile::new(&format!(
        "[database]\nurl = \"sqlite://{}\"\n{TEST_ROOM}",
        dir.path().join("l.db").display()
    ));
    cli(&config.path, &["migrate"]);
    let commands: &[&[&str]] = &[
        &["check-config"],
        &["gen-secret"],
        &["migrate"],
        &["listeners"],
        &["listeners", "--json"],
        &["listeners", "show", "command_bot"],
        &["listeners", "enable", "command_bot"],
        &["stats", "aggregate"],
        &["stats", "show"],
        &["dead-letters", "list"],
        &["doctor"],
    ];
    for args in commands {
        // What the command does when its output is read to the end (here: thrown away).
        let (whole, _) = run_to(&config.path, args, &[], Stdio::null());
        // `zulip-listeners … | head -0`: the reader is gone before the first line.
        let (cut, stderr) = run_to(&config.path, args, &[], closed_pipe());
        assert!(
            !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
            "{args:?}: {stderr}"
        );
        assert_eq!(
            cut.code(),
            whole.code(),
            "{args:?} exits as it would have: {stderr}"
        );
        assert!(whole.success(), "{args:?} works here: {stderr}");
    }
}

/// `serve` with `env`; it must fail at start (the port is taken): its standard error.
fn serve_fails(env: &[(&str, String)]) -> String {
    let dir = tempfile::tempdir().expect("dir");
    let config = ConfigFile::new(&format!(
        "[database]\nurl = \"sqlite://{}\"\n{TEST_ROOM}",
        dir.path().join("l.db").display()
    ));
    let (status, stderr) = run_to(&config.path, &["serve"], env, Stdio::null());
    assert!(!status.success(), "{stderr}");
    stderr
}

#[test]
fn a_taken_port_names_its_key_and_that_another_instance_may_hold_it() {
    // Another instance (here: this test) holds the address.
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_addr = taken.local_addr().expect("addr").to_string();
    let free = format!("127.0.0.1:{}", free_port());

    let said = serve_fails(&[
        ("ZULIP_LISTENERS_SERVER__BIND", taken_addr.clone()),
        ("ZULIP_LISTENERS_METRICS__ENABLED", "false".into()),
    ]);
    for wanted in [
        taken_addr.as_str(),
        "(server.bind)",
        "ZULIP_LISTENERS_SERVER__BIND",
        "already in use",
        "another zulip-listeners instance",
    ] {
        assert!(said.contains(wanted), "`{wanted}` in: {said}");
    }

    let said = serve_fails(&[
        ("ZULIP_LISTENERS_SERVER__BIND", free),
        ("ZULIP_LISTENERS_METRICS__BIND", taken_addr.clone()),
    ]);
    for wanted in [
        taken_addr.as_str(),
        "(metrics.bind)",
        "ZULIP_LISTENERS_METRICS__BIND",
        "already in use",
        "another zulip-listeners instance",
    ] {
        assert!(said.contains(wanted), "`{wanted}` in: {said}");
    }
    drop(taken);
}

#[test]
fn a_forwarder_secret_without_whsec_is_called_that() {
    let config = ConfigFile::new("");
    for (secret, wanted) in [
        (
            "correct-horse-battery-staple",
            "does not start with `whsec_`",
        ),
        (
            "whsec_not base64!",
            "is not base64 after the `whsec_` prefix",
        ),
    ] {
        let env = [(
            "ZULIP_LISTENERS_FORWARDER__SECRETS",
            format!("[\"{secret}\"]"),
        )];
        let (status, said) = run_to(&config.path, &["check-config"], &env, Stdio::null());
        assert_eq!(status.code(), Some(2), "{said}");
        for part in ["forwarder.secrets[0]", wanted, "zulip-listeners gen-secret"] {
            assert!(said.contains(part), "`{part}` in: {said}");
        }
        assert!(!said.contains(secret), "the secret is not repeated: {said}");
    }
}

#[test]
fn only_the_default_data_folder_is_created_by_itself() {
    let dir = tempfile::tempdir().expect("dir");
    // A typo in the path: refused, with the path and the fix; nothing is created.
    let missing = dir.path().join("dta").join("zulip-listeners.db");
    let config = ConfigFile::new(&format!(
        "[database]\nurl = \"sqlite://{}\"\n",
        missing.display()
    ));
    let (status, said) = run_to(&config.path, &["migrate"], &[], Stdio::null());
    assert!(!status.success(), "{said}");
    let folder = dir.path().join("dta").display().to_string();
    for wanted in [
        format!("the folder `{folder}`"),
        "database.url".into(),
        format!("mkdir -p {folder}"),
        "ZULIP_LISTENERS_DATABASE__URL".into(),
    ] {
        assert!(said.contains(&wanted), "`{wanted}` in: {said}");
    }
    assert!(!dir.path().join("dta").exists(), "no folder was made");

    // The default relative `data/` folder (README's Quick start) is made on first start.
    let config = ConfigFile::new("[database]\nurl = \"sqlite://data/first.db\"\n");
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&config.path)
        .arg("migrate")
        .current_dir(dir.path())
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(dir.path().join("data/first.db").is_file());
}

#[test]
fn database_errors_name_database_url_and_say_the_cause_once() {
    let dir = tempfile::tempdir().expect("dir");
    // Nothing listens on port 1; a directory is no database file.
    for (url, cause) in [
        (
            "postgres://nobody@127.0.0.1:1/none".to_string(),
            "Connection refused",
        ),
        (
            format!("sqlite://{}", dir.path().display()),
            "unable to open database file",
        ),
    ] {
        let config = ConfigFile::new("");
        let env = [("ZULIP_LISTENERS_DATABASE__URL", url.clone())];
        let (status, said) = run_to(&config.path, &["listeners"], &env, Stdio::null());
        assert_eq!(status.code(), Some(1), "{url}: {said}");
        assert!(said.contains("database.url"), "{url}: {said}");
        assert_eq!(said.matches(cause).count(), 1, "{url}: said once: {said}");
    }
}

backend_test!(fn doctor_counts_skipped_checks_apart_from_passed_ones);
fn doctor_counts_skipped_checks_apart_from_passed_ones(backend: Backend) {
    let db = TestDatabase::new(backend);
    // No bot, no forwarder secret, no --url: those checks are skipped.
    let config = db.config_file("");
    cli(&config.path, &["migrate"]);
    let (ok, said) = cli_status(&config.path, &["doctor"]);
    assert!(ok, "{said}");
    let passed = said.lines().filter(|l| l.starts_with("[ ok ]")).count();
    let skipped = said.lines().filter(|l| l.starts_with("[skip]")).count();
    assert!(passed > 0 && skipped > 0, "{said}");
    assert!(
        said.ends_with(&format!("{passed} passed, {skipped} skipped.\n")),
        "{said}"
    );
    assert!(!said.contains("All "), "{said}");
}

/// The log file's JSON lines.
fn log_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

fn with_message<'a>(lines: &'a [Value], message: &str) -> Vec<&'a Value> {
    lines
        .iter()
        .filter(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with(message))
        })
        .collect()
}

#[actix_web::test]
async fn try_it_traffic_is_logged_and_an_idle_server_is_quiet() {
    let dir = tempfile::tempdir().expect("dir");
    let config = repo("config/try-it.toml");
    let log = dir.path().join("server.log");
    let port = free_port();
    let env = [
        (
            "ZULIP_LISTENERS_DATABASE__URL",
            format!("sqlite://{}", dir.path().join("try-it.db").display()),
        ),
        ("ZULIP_LISTENERS_SERVER__BIND", format!("127.0.0.1:{port}")),
        ("ZULIP_LISTENERS_METRICS__ENABLED", "false".to_string()),
        ("ZULIP_LISTENERS_TELEMETRY__FORMAT", "json".to_string()),
        ("ZULIP_LISTENERS_TELEMETRY__FILE", log.display().to_string()),
        // The rate limiters' housekeeping every second, and its module's DEBUG lines shown:
        // the line it writes must be DEBUG, not INFO.
        (
            "ZULIP_LISTENERS_TELEMETRY__LEVEL",
            "info,zulip_listeners::server::upkeep=debug".to_string(),
        ),
        (
            "ZULIP_LISTENERS_RATE_LIMITS__HOUSEKEEPING_INTERVAL",
            "1s".to_string(),
        ),
    ];
    // A listener disabled in the database is worth a warning; welcome_bot, off in
    // config/default.toml, is not.
    let disabled = run(
        &config,
        &[
            "listeners",
            "disable",
            "user_activity_tracker",
            "--reason",
            "not wanted here",
        ],
        &env,
    );
    assert!(disabled.status.success(), "{}", output_text(&disabled));
    let mut server = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the server");
    let base = format!("http://127.0.0.1:{port}");
    wait_until_up(&base).await;

    let body = std::fs::read_to_string(repo("examples/outgoing-ping.json")).expect("sample");
    let answer: Value = reqwest::Client::new()
        .post(format!("{base}/"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("POST /")
        .json()
        .await
        .expect("JSON");
    assert_eq!(answer["content"], "pong");
    let sent = run(&config, &["send-sample"], &env);
    assert!(sent.status.success(), "{}", output_text(&sent));

    let logged = eventually(Duration::from_secs(20), async || {
        let lines = log_lines(&log);
        !with_message(&lines, "forwarder batch accepted").is_empty()
            && !with_message(&lines, "outgoing webhook answered").is_empty()
            && with_message(&lines, "rate limiter keys tracked").len() >= 2
    })
    .await;
    let _ = server.kill();
    let _ = server.wait();
    let lines = log_lines(&log);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(logged, "{text}");

    // One INFO line per answered webhook and per accepted batch, without message content.
    let answered = with_message(&lines, "outgoing webhook answered");
    assert_eq!(answered.len(), 1, "{text}");
    assert_eq!(answered[0]["level"], "INFO", "{text}");
    assert_eq!(answered[0]["target"], "zulip_listeners::traffic", "{text}");
    assert_eq!(answered[0]["bot"], "tryit", "{text}");
    assert_eq!(answered[0]["replied"], true, "{text}");
    let accepted = with_message(&lines, "forwarder batch accepted");
    assert_eq!(accepted.len(), 1, "{text}");
    assert_eq!(accepted[0]["level"], "INFO", "{text}");
    assert_eq!(accepted[0]["accepted"], 2, "{text}");
    for content in ["** ping", "pong", "Hello from zulip-listeners"] {
        assert!(
            !text.contains(content),
            "no message content (`{content}`): {text}"
        );
    }
    // Idle housekeeping is DEBUG.
    for line in with_message(&lines, "rate limiter keys tracked") {
        assert_eq!(line["level"], "DEBUG", "{line}");
    }
    // The only warning is the listener disabled in the database, with its reason.
    let warnings: Vec<&Value> = lines.iter().filter(|l| l["level"] == "WARN").collect();
    assert_eq!(warnings.len(), 1, "{text}");
    assert_eq!(warnings[0]["listener"], "user_activity_tracker", "{text}");
    assert_eq!(warnings[0]["reason"], "not wanted here", "{text}");
    assert!(!text.contains("welcome_bot"), "{text}");
}

/// The runs column of a listener's row on the listeners page.
fn runs_cell(page: &str, listener: &str) -> i64 {
    page.split(&format!("id=\"listener-{listener}\""))
        .nth(1)
        .and_then(|row| row.split("<td class=\"num\">").nth(1))
        .and_then(|cell| cell.split('<').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no runs cell for {listener} in {page}"))
}

backend_test!(async fn the_listeners_page_counts_runs_not_yet_aggregated);
async fn the_listeners_page_counts_runs_not_yet_aggregated(backend: Backend) {
    let db = TestDatabase::new(backend);
    let t = TestApp::new(&db)
        .admin()
        .helper(&["command_bot"])
        .start()
        .await;
    // Two hours ago: three runs (one failed), aggregated into listener_stats as the
    // server's upkeep does.
    let now = now_ms();
    t.query(move |c| {
        let rows: Vec<EventLogRow> = (0..3)
            .map(|i| EventLogRow {
                id: 0,
                listener: "command_bot".into(),
                source: "outgoing".into(),
                event_type: "message".into(),
                bot: Some("helper".into()),
                realm: Some("zulip".into()),
                realm_id: Some(2),
                user_id: Some(10),
                message_id: Some(500 + i),
                event_id: None,
                duration_us: 1_000,
                success: i != 0,
                error: (i == 0).then(|| "failed".to_string()),
                created_at_ms: now - 7_200_000 + i * 1_000,
            })
            .collect();
        let refs: Vec<&EventLogRow> = rows.iter().collect();
        tables::event_log::insert_event_logs(c, &refs).expect("event log rows");
        tables::listener_stats::aggregate_stats(c, 300_000, now).expect("stats");
    })
    .await;
    // Now: two pings, in the event log and in no aggregated interval yet.
    for id in 1..=2 {
        let answer = t.post_json("/zulip/outgoing", &ping(id)).await;
        assert_eq!(answer.json["content"], "pong");
    }
    let logged = t.query(tables::event_log::count_event_logs).await;
    assert_eq!(logged.expect("count"), 5);

    let page = |path: &'static str| {
        let request = t.admin(reqwest::Method::GET, path);
        async move {
            let answer = request.send().await.expect("page");
            assert_eq!(answer.status(), 200);
            answer.text().await.expect("body")
        }
    };
    let listeners = page("/admin/ui/listeners").await;
    assert_eq!(runs_cell(&listeners, "command_bot"), 5, "{backend:?}");
    let one = page("/admin/ui/listeners/command_bot").await;
    assert!(one.contains("5 runs, 20.0 % failed in 24 h"), "{one}");
    // The same count as the admin API's (and `listeners`') from the event log.
    let api: Value = t
        .admin(reqwest::Method::GET, "/admin/listeners")
        .send()
        .await
        .expect("admin API")
        .json()
        .await
        .expect("JSON");
    let listed = api["listeners"]
        .as_array()
        .and_then(|l| l.iter().find(|l| l["name"] == "command_bot"))
        .expect("command_bot listed");
    assert_eq!(listed["runs"], 5);
    t.stop().await;
}
