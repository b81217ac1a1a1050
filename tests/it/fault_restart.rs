//! Fault: restarts under a continuous stream of outgoing webhooks, each on a fresh connection.
//! The test holds the listening socket the way systemd does with
//! `deploy/systemd/zulip-listeners.socket` and hands it to each server process it starts
//! (`LISTEN_PID`, `LISTEN_FDS=1`, the socket as descriptor 3). While one process stops and the
//! next starts, connections wait in the socket's accept queue: every request must get 200 with
//! the reply — none refused, reset or timed out (Zulip would post "Failure! Bot is unavailable"
//! after 4 quick attempts).

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::*;

/// Starts `serve` with `socket` passed as systemd passes it.
fn start_activated(
    config: &std::path::Path,
    socket: &std::net::TcpListener,
) -> std::process::Child {
    let fd = socket.as_raw_fd();
    let mut command = std::process::Command::new("sh");
    command
        .arg("-c")
        .arg(r#"export LISTEN_PID=$$; exec "$0" "$@""#)
        .arg(BIN)
        .arg("--config")
        .arg(config)
        .arg("serve")
        .env("LISTEN_FDS", "1")
        .env("ZULIP_LISTENERS_METRICS__ENABLED", "false")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: between fork and exec only dup2/fcntl run, which are async-signal-safe.
    unsafe {
        command.pre_exec(move || {
            if fd == 3 {
                // Already descriptor 3: only let it survive exec.
                if libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command.spawn().expect("start the server")
}

/// SIGTERM, then waits for the process to end (its graceful stop).
async fn stop(mut child: std::process::Child) {
    let status = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .expect("kill");
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join")
        .expect("wait");
    assert!(exit.success(), "a graceful stop exits 0: {exit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restarts_with_the_socket_from_systemd_refuse_no_webhook() {
    // systemd's socket: it stays open while the processes come and go.
    let socket = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let base = format!("http://{}", socket.local_addr().expect("addr"));
    let db = TestDatabase::new(Backend::Sqlite);
    // server.bind names another port: with a socket from systemd it is not used.
    let config = db.config_file(&format!(
        "[server]\nbind = \"127.0.0.1:{}\"\n\
         [rate_limits.per_user]\nper_minute = 1000000\nburst = 100000\n\
         [rate_limits.per_realm]\nper_minute = 1000000\nburst = 100000\n{}",
        free_port(),
        helper_bot(&["command_bot"])
    ));
    let mut child = start_activated(&config.path, &socket);
    wait_until_up(&base).await;

    // Four senders, each request on a new connection, as Zulip's workers send them.
    let running = Arc::new(AtomicBool::new(true));
    let next_id = Arc::new(AtomicI64::new(1));
    let mut senders = Vec::new();
    for _ in 0..4 {
        let (running, next_id, base) = (running.clone(), next_id.clone(), base.clone());
        senders.push(tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .timeout(Duration::from_secs(10))
                .build()
                .expect("client");
            let mut answers = Vec::new();
            while running.load(Ordering::Relaxed) {
                let id = next_id.fetch_add(1, Ordering::Relaxed);
                let started = Instant::now();
                let answer = http
                    .post(format!("{base}/zulip/outgoing"))
                    .header("content-type", "application/json")
                    .body(ping(id))
                    .send()
                    .await;
                let outcome = match answer {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        let body: Value = response.json().await.unwrap_or(Value::Null);
                        Ok((status, body))
                    }
                    Err(error) => Err(error.to_string()),
                };
                answers.push((started, started.elapsed(), outcome));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            answers
        }));
    }

    // Three restarts, the way `systemctl restart` does them: stop, wait for the exit, start.
    let mut gaps = Vec::new();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let stopping = Instant::now();
        stop(child).await;
        child = start_activated(&config.path, &socket);
        wait_until_up(&base).await;
        gaps.push((stopping, Instant::now()));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    running.store(false, Ordering::Relaxed);
    let mut answers = Vec::new();
    for sender in senders {
        answers.extend(sender.await.expect("sender"));
    }
    stop(child).await;

    let failed: Vec<_> = answers
        .iter()
        .filter(|(_, _, outcome)| !matches!(outcome, Ok((200, body)) if body["content"] == "pong"))
        .collect();
    let slowest = answers.iter().map(|(_, took, _)| *took).max();
    let took: Vec<Duration> = gaps.iter().map(|(from, to)| *to - *from).collect();
    eprintln!(
        "{} webhooks over 3 restarts (stop to ready: {took:?}); slowest answer {slowest:?}",
        answers.len()
    );
    assert!(
        answers.len() > 100,
        "a continuous stream: {}",
        answers.len()
    );
    assert!(
        failed.is_empty(),
        "{} of {} webhooks failed, e.g. {:?}",
        failed.len(),
        answers.len(),
        failed.first()
    );
    // Webhooks were sent during every restart, between the SIGTERM and the next process
    // answering, and got their reply like the others.
    for (from, to) in &gaps {
        let during = answers
            .iter()
            .filter(|(started, _, _)| started > from && started < to)
            .count();
        assert!(during > 0, "no webhook was sent during a restart");
    }
}

/// A descriptor passed without being a listening TCP socket is refused at start with a clear
/// error, not served on or ignored.
#[test]
fn a_socket_that_is_not_listening_is_refused() {
    let db = TestDatabase::new(Backend::Sqlite);
    let config = db.config_file("");
    // A connected socket, not a listening one.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let stream =
        std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
    let fd = stream.as_raw_fd();
    let mut command = std::process::Command::new("sh");
    command
        .arg("-c")
        .arg(r#"export LISTEN_PID=$$; exec "$0" "$@""#)
        .arg(BIN)
        .arg("--config")
        .arg(&config.path)
        .arg("serve")
        .env("LISTEN_FDS", "1")
        .env("ZULIP_LISTENERS_METRICS__ENABLED", "false");
    // SAFETY: only dup2 runs between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let output = command.output().expect("run");
    assert!(!output.status.success());
    let text = output_text(&output);
    assert!(text.contains("not a listening TCP socket"), "{text}");
}

/// The shipped units (`deploy/systemd/`) pass `systemd-analyze verify` without a warning: the
/// service and its socket, and the process split's templates as an instance. The binary path
/// is pointed at the one just built (verify checks that it can be executed).
#[test]
fn the_systemd_units_pass_systemd_analyze_verify() {
    let Ok(version) = std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
    else {
        eprintln!(
            "SKIPPED the_systemd_units_pass_systemd_analyze_verify: systemd-analyze is not installed (Debian package systemd)"
        );
        return;
    };
    assert!(version.status.success());
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/systemd");
    let dir = tempfile::tempdir().expect("dir");
    let units = [
        ("zulip-listeners.socket", "zulip-listeners.socket"),
        ("zulip-listeners.service", "zulip-listeners.service"),
        ("zulip-listeners@.socket", "zulip-listeners@8081.socket"),
        ("zulip-listeners@.service", "zulip-listeners@8081.service"),
    ];
    for (name, as_name) in units {
        let text = std::fs::read_to_string(source.join(name)).expect("unit");
        if name.ends_with(".service") {
            assert!(text.contains("/usr/bin/zulip-listeners"), "{name}");
        }
        std::fs::write(
            dir.path().join(as_name),
            text.replace("/usr/bin/zulip-listeners", BIN),
        )
        .expect("write");
    }
    let output = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .args(units.map(|(_, as_name)| dir.path().join(as_name)))
        .output()
        .expect("systemd-analyze verify");
    let said = output_text(&output);
    assert!(output.status.success(), "{said}");
    let warnings: Vec<&str> = said
        .lines()
        .filter(|l| l.contains("zulip-listeners"))
        .collect();
    assert!(warnings.is_empty(), "{said}");
}
