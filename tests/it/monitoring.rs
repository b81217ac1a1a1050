//! The alert rules (`deploy/monitoring/`) against what the server really exports: the binary is
//! started with the shipped default configuration, scraped, and the scrape, held for hours, is
//! fed to `promtool test rules` as input series. A healthy default install sets off no alert; a
//! forwarder silent since the start and a listener disabled at run time do, a listener off in
//! the file does not. Also: every alert has a promtool test file of its own that makes it fire
//! and keeps it silent (`.ci/run` runs them).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};

use crate::support::*;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The alert names in the rules file.
fn alerts() -> Vec<String> {
    let rules = std::fs::read_to_string(repo("deploy/monitoring/zulip-listeners.rules.yml"))
        .expect("rules");
    rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .map(|name| name.trim().to_string())
        .collect()
}

/// `ZulipListenersHandlerDisabled` → `handler-disabled`.
fn kebab(alert: &str) -> String {
    let name = alert.strip_prefix("ZulipListeners").unwrap_or(alert);
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('-');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

#[test]
fn every_alert_has_a_promtool_test_that_fires_it_and_one_that_keeps_it_silent() {
    let alerts = alerts();
    assert!(alerts.len() >= 17, "{alerts:?}");
    let dir = repo("deploy/monitoring/tests");
    for alert in &alerts {
        let path = dir.join(format!("{}.test.yml", kebab(alert)));
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{alert}: no test file {} ({e})", path.display()));
        assert!(
            text.contains("rule_files:\n  - ../zulip-listeners.rules.yml"),
            "{alert}"
        );
        // Each check of this alert: an expectation that it fires, and one that it is silent.
        let checks: Vec<&str> = text
            .split("alertname: ")
            .skip(1)
            .filter(|c| c.starts_with(&format!("{alert}\n")))
            .collect();
        let fires = checks.iter().any(|c| c.contains("exp_labels:"));
        let silent = checks.iter().any(|c| {
            c.lines()
                .nth(1)
                .is_some_and(|l| l.trim() == "exp_alerts: []")
        });
        assert!(fires && silent, "{alert}: fires {fires}, silent {silent}");
        assert!(
            text.contains("healthy default install"),
            "{alert}: a case for a healthy default install"
        );
    }
    // No test file without its alert (a renamed alert would leave one behind).
    for entry in std::fs::read_dir(&dir).expect("tests dir") {
        let name = entry
            .expect("entry")
            .file_name()
            .into_string()
            .expect("utf-8");
        assert!(
            alerts
                .iter()
                .any(|a| name == format!("{}.test.yml", kebab(a))),
            "{name} tests no alert"
        );
    }
}

/// The server binary started with `config/default.toml` as shipped, on free loopback ports,
/// metrics on, a database of its own; killed when dropped.
struct DefaultServer {
    child: Child,
    metrics: String,
    db_url: String,
    _dir: tempfile::TempDir,
}

impl DefaultServer {
    async fn start(env: &[(&str, String)]) -> DefaultServer {
        let dir = tempfile::tempdir().expect("dir");
        let db_url = format!("sqlite://{}", dir.path().join("z.db").display());
        let (port, metrics_port) = (free_port(), free_port());
        let child = Command::new(BIN)
            .arg("--config")
            .arg(repo("config/default.toml"))
            .arg("serve")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("ZULIP_LISTENERS_SERVER__BIND", format!("127.0.0.1:{port}"))
            .env(
                "ZULIP_LISTENERS_METRICS__BIND",
                format!("127.0.0.1:{metrics_port}"),
            )
            .env("ZULIP_LISTENERS_DATABASE__URL", &db_url)
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the server");
        let server = DefaultServer {
            child,
            metrics: format!("http://127.0.0.1:{metrics_port}/metrics"),
            db_url,
            _dir: dir,
        };
        wait_until_up(&format!("http://127.0.0.1:{port}")).await;
        server
    }

    /// A scrape once the server is ready (its first upkeep pass done) and has a line starting
    /// with each of `wanted`, and the time it was taken.
    async fn scrape_when(&self, wanted: &[&str]) -> (String, f64) {
        let mut last = String::new();
        let seen = eventually(Duration::from_secs(20), async || {
            last = match reqwest::get(&self.metrics).await {
                Ok(r) => r.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            ["zulip_listeners_ready 1"]
                .iter()
                .chain(wanted)
                .all(|w| last.lines().any(|l| l.starts_with(w)))
        })
        .await;
        assert!(seen, "no scrape with {wanted:?}:\n{last}");
        (last, unix_now())
    }
}

impl Drop for DefaultServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The scrape as promtool input series, each held at its scraped value for `minutes` (so
/// counters do not move), as Prometheus would label them (`job`, `instance`), with Prometheus's
/// own `up` at 1. promtool's clock starts at 0: unix times (`*_timestamp_seconds`,
/// `process_start_time_seconds`) are moved so that the scrape happens at time 0.
fn input_series(scrape: &str, scraped_at: f64, minutes: u32) -> String {
    let target = r#"job="zulip-listeners",instance="a""#;
    let mut out = format!("      - series: 'up{{{target}}}'\n        values: '1x{minutes}'\n");
    for line in scrape.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(mut value) = value.parse::<f64>() else {
            continue;
        };
        if !value.is_finite() {
            continue;
        }
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, format!("{target},{rest}")),
            None => (series, format!("{target}}}")),
        };
        if name.ends_with("_timestamp_seconds") || name == "process_start_time_seconds" {
            value -= scraped_at;
        }
        let series = format!("{name}{{{labels}").replace('\'', "''");
        out.push_str(&format!(
            "      - series: '{series}'\n        values: '{value}x{minutes}'\n"
        ));
    }
    out
}

/// Runs `promtool test rules` on the shipped rules with `series` as input and checks that the
/// alerts firing at each time are exactly `expected` (`alertname`, and the
/// `listener` label when it has one). `None` when promtool is not installed.
fn promtool_alerts(series: &str, expected: &[(u32, &[(&str, &str)])]) -> Option<()> {
    let Ok(version) = Command::new("promtool").arg("--version").output() else {
        return None;
    };
    assert!(version.status.success());
    let mut checks = String::new();
    for (minute, alerts) in expected {
        checks.push_str(&format!(
            "      - expr: 'count by (alertname, listener) (ALERTS{{alertstate=\"firing\"}})'\n        eval_time: {minute}m\n        exp_samples:"
        ));
        if alerts.is_empty() {
            checks.push_str(" []\n");
        }
        for (alert, listener) in *alerts {
            let listener = if listener.is_empty() {
                String::new()
            } else {
                format!(r#",listener="{listener}""#)
            };
            checks.push_str(&format!(
                "\n          - labels: '{{alertname=\"{alert}\"{listener}}}'\n            value: 1\n"
            ));
        }
    }
    let rules = repo("deploy/monitoring/zulip-listeners.rules.yml");
    let test = format!(
        "rule_files:\n  - {}\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n    input_series:\n{series}    promql_expr_test:\n{checks}",
        rules.display()
    );
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("scrape.test.yml");
    std::fs::write(&path, &test).expect("write");
    let output = Command::new("promtool")
        .args(["test", "rules"])
        .arg(&path)
        .output()
        .expect("promtool");
    assert!(output.status.success(), "{}\n{test}", output_text(&output));
    Some(())
}

fn skipped(test: &str) {
    eprintln!("SKIPPED {test}: promtool is not installed (Debian package prometheus)");
}

/// A freshly started default install (forwarder off, welcome_bot off in the file) sets off no
/// alert, not even hours later with nothing happening.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_default_install_sets_off_no_alert() {
    let server = DefaultServer::start(&[]).await;
    // What the alerts look at, as a default start exports it.
    let (scrape, at) = server
        .scrape_when(&[
            r#"zulip_listeners_listener_enabled{listener="welcome_bot"} 0"#,
            r#"zulip_listeners_listener_enabled_in_file{listener="welcome_bot"} 0"#,
            r#"zulip_listeners_listener_circuit_open{listener="relay"} 0"#,
            "process_resident_memory_bytes ",
            "process_open_fds ",
            "process_max_fds ",
            "zulip_listeners_memory_budget_bytes ",
            "zulip_listeners_database_free_bytes ",
            "zulip_listeners_storage_refusing 0",
            r#"zulip_listeners_inbox_events{status="dead"} 0"#,
            r#"zulip_listeners_listener_live_processes{listener="message_logger"} 1"#,
        ])
        .await;
    assert!(
        !scrape.contains("zulip_listeners_forwarder_last_batch_timestamp_seconds"),
        "the forwarder is off by default:\n{scrape}"
    );
    let series = input_series(&scrape, at, 240);
    let quiet: &[(&str, &str)] = &[];
    if promtool_alerts(
        &series,
        &[(1, quiet), (20, quiet), (90, quiet), (240, quiet)],
    )
    .is_none()
    {
        skipped("a_fresh_default_install_sets_off_no_alert");
    }
}

/// With the forwarder on, the last-batch gauge holds the start time until a batch arrives, so
/// a forwarder that never sends after a start alerts 15 minutes later, and nothing else does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarder_silent_since_the_start_alerts() {
    let secrets = (
        "ZULIP_LISTENERS_FORWARDER__SECRETS",
        format!("[\"{SECRET}\"]"),
    );
    let server = DefaultServer::start(&[secrets]).await;
    let (scrape, at) = server
        .scrape_when(&[
            "zulip_listeners_forwarder_last_batch_timestamp_seconds ",
            "process_start_time_seconds ",
        ])
        .await;
    let value = |name: &str| {
        scrape
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{name}:\n{scrape}"))
    };
    let last_batch = value("zulip_listeners_forwarder_last_batch_timestamp_seconds");
    let started = value("process_start_time_seconds");
    assert!(
        (last_batch - started).abs() < 10.0 && last_batch <= at,
        "the start time: {last_batch} against {started}"
    );
    let series = input_series(&scrape, at, 30);
    let silent = [("ZulipListenersForwarderSilent", "")];
    if promtool_alerts(&series, &[(14, &[]), (16, &silent), (30, &silent)]).is_none() {
        skipped("a_forwarder_silent_since_the_start_alerts");
    }
}

/// A listener disabled at run time (`listeners disable`) alerts after an hour; welcome_bot,
/// off in the shipped file, never does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_disabled_at_run_time_alerts_one_off_in_the_file_does_not() {
    let server = DefaultServer::start(&[]).await;
    let output = run(
        &repo("config/default.toml"),
        &["listeners", "disable", "keyword_alerts"],
        &[("ZULIP_LISTENERS_DATABASE__URL", server.db_url.clone())],
    );
    assert!(output.status.success(), "{}", output_text(&output));
    let (scrape, at) = server
        .scrape_when(&[r#"zulip_listeners_listener_enabled{listener="keyword_alerts"} 0"#])
        .await;
    assert!(
        scrape
            .contains("\nzulip_listeners_listener_enabled_in_file{listener=\"keyword_alerts\"} 1"),
        "{scrape}"
    );
    let series = input_series(&scrape, at, 120);
    let disabled = [("ZulipListenersHandlerDisabled", "keyword_alerts")];
    let checks: &[(u32, &[(&str, &str)])] = &[(59, &[]), (61, &disabled), (120, &disabled)];
    if promtool_alerts(&series, checks).is_none() {
        skipped("a_listener_disabled_at_run_time_alerts_one_off_in_the_file_does_not");
    }
}
