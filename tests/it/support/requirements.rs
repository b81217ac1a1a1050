//! What the tests that need more than the build look for, and why each is skipped without it:
//! a PostgreSQL server (`ZULIP_LISTENERS_TEST_PG_URL`), PostgreSQL's own binaries, a tmpfs
//! mount (root), `systemd-analyze`, `ldd`, and a browser (`ZULIP_LISTENERS_TEST_BROWSER`).
//!
//! Such a test passes without running when its need is missing (libtest has no "skipped" a
//! test can decide at run time, and `cargo test` hides what passing tests print), so
//! `tests/skipped.rs`, a test target of its own without libtest's harness (cargo shows what it
//! prints), includes this file by path and reports every suite as run or skipped, with the
//! reason, at the end of `cargo test`. The tests use the same checks, so the report says what
//! they did. Only `std` and `tempfile` here.

#![allow(dead_code)] // Each includer uses its part.

use std::path::{Path, PathBuf};

/// The environment variable naming the PostgreSQL server the tests may use.
pub const PG_ENV: &str = "ZULIP_LISTENERS_TEST_PG_URL";
/// The environment variable that turns on the dashboard's browser test.
pub const BROWSER_ENV: &str = "ZULIP_LISTENERS_TEST_BROWSER";

/// The PostgreSQL server's URL, when the tests may use one.
pub fn postgres_url() -> Option<String> {
    std::env::var(PG_ENV).ok().filter(|v| !v.is_empty())
}

/// The directory holding `initdb` and `pg_ctl`: on `PATH`, else the newest
/// `/usr/lib/postgresql/<version>/bin`.
pub fn postgres_bin_dir() -> Option<PathBuf> {
    let has_tools = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    if let Some(dir) = on_path.into_iter().find(|d| has_tools(d)) {
        return Some(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            Some((version, e.path().join("bin")))
        })
        .filter(|(_, bin)| has_tools(bin))
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// Mounts a tmpfs of `size` bytes on `dir`; the reason when that is impossible (not root).
pub fn mount_tmpfs(dir: &Path, size: u64) -> Result<(), String> {
    let out = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .output()
        .map_err(|e| format!("cannot run mount: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "mount -t tmpfs failed (needs root): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// Whether a tmpfs can be mounted here: mounts a small one and unmounts it again.
pub fn tmpfs_mountable() -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    mount_tmpfs(dir.path(), 1 << 20)?;
    let _ = std::process::Command::new("umount")
        .arg("-l")
        .arg(dir.path())
        .status();
    Ok(())
}

/// Whether a program runs (`PROGRAM ARG` starts at all).
pub fn runs(program: &str, arg: &str) -> bool {
    std::process::Command::new(program)
        .arg(arg)
        .output()
        .is_ok()
}

/// A group of tests that needs something outside the build.
pub struct Suite {
    /// Which tests (`cargo test --test it <filter>` names).
    pub tests: &'static str,
    /// Why they did not run; `None` when they ran.
    pub skipped: Option<String>,
}

/// Every such group, as the tests decide it (in the same order as docs/testing.md).
pub fn suites() -> Vec<Suite> {
    let pg = postgres_url().is_some();
    let no_pg = || Some(format!("{PG_ENV} is not set"));
    vec![
        Suite {
            tests: "PostgreSQL variants (every `<name>::postgres`, split::)",
            skipped: if pg { None } else { no_pg() },
        },
        Suite {
            tests: "fault_pg_outage:: (a private PostgreSQL stopped under load)",
            skipped: if !pg {
                no_pg()
            } else if postgres_bin_dir().is_none() {
                Some("initdb/pg_ctl not on PATH nor in /usr/lib/postgresql/*/bin".into())
            } else {
                None
            },
        },
        Suite {
            tests: "fault_disk_full:: (a full tmpfs)",
            skipped: tmpfs_mountable().err(),
        },
        Suite {
            tests: "fault_restart::the_systemd_units_pass_systemd_analyze_verify",
            skipped: (!runs("systemd-analyze", "--version"))
                .then(|| "systemd-analyze is not installed (Debian package systemd)".into()),
        },
        Suite {
            tests: "operator::binary_needs_no_libpq_or_openssl_from_the_system",
            skipped: (!runs("ldd", "--version")).then(|| "ldd is not installed".into()),
        },
        Suite {
            tests: "dashboard::in_a_real_browser (chromium through chromedriver)",
            skipped: std::env::var(BROWSER_ENV)
                .is_err()
                .then(|| format!("{BROWSER_ENV} is not set")),
        },
    ]
}
