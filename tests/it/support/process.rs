//! The server binary in processes of its own: `serve` ([`ServerProcess`]) and the command-line
//! tools ([`cli`], [`cli_status`]).

use std::net::TcpListener;
use std::time::Duration;

use super::poll::eventually;

/// The server binary.
pub const BIN: &str = env!("CARGO_BIN_EXE_zulip-listeners");

/// A configuration file in a temporary directory of its own, removed when dropped.
pub struct ConfigFile {
    _dir: tempfile::TempDir,
    pub path: std::path::PathBuf,
}

impl ConfigFile {
    pub fn new(text: &str) -> ConfigFile {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("config.toml");
        std::fs::write(&path, text).expect("write the configuration");
        ConfigFile { _dir: dir, path }
    }
}

/// A free loopback port (nothing listens on it once this returns).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Waits up to 20 s until the server at `base` answers `/healthz`.
pub async fn wait_until_up(base: &str) {
    let http = reqwest::Client::new();
    let up = eventually(Duration::from_secs(20), async || {
        http.get(format!("{base}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    assert!(up, "server at {base} did not come up");
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
        let port = free_port();
        let child = std::process::Command::new(BIN)
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
        wait_until_up(&server.base).await;
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

/// Runs the binary with `--config`, `args` and extra environment; never panics on its exit
/// code.
pub fn run(
    config: &std::path::Path,
    args: &[&str],
    env: &[(&str, String)],
) -> std::process::Output {
    std::process::Command::new(BIN)
        .arg("--config")
        .arg(config)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("run the binary")
}

/// Standard output and error together.
pub fn output_text(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs a command-line tool of the binary with `--config`; returns its standard output.
pub fn cli(config: &std::path::Path, args: &[&str]) -> String {
    let output = run(config, args, &[]);
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
    let output = run(config, args, &[]);
    (output.status.success(), output_text(&output))
}
