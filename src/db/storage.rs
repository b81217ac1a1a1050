//! Room for the database on its disk. On SQLite a full disk is worse than a refusal: the
//! write-ahead log grows until nothing is left, and the checkpoint that would empty it then
//! fails too, because it needs room to grow the database file. So the server stops taking
//! new work *before* that, and keeps the checkpoint first in line:
//!
//! * below `database.min_free_space` free on the database's filesystem, forwarder intake is
//!   refused (503 `storage_full` with `Retry-After`; the forwarder sends the batch again),
//!   the inbox workers wait, and the writer commits nothing new;
//! * while the log is over `database.max_wal_size`, or a checkpoint failed for lack of room,
//!   the same holds, and the checkpointer ([`super::checkpoint`]) copies and truncates the
//!   log (`TRUNCATE`), which it can because the writer is idle;
//! * once there is room again the next measurement (every writer transaction, and every
//!   250 ms on the checkpointer's thread) lifts the refusal: nothing to restart.
//!
//! Outgoing webhooks are still answered meanwhile (their replies need no storage); their
//! results wait in the writer's memory until the refusal is lifted. [`Storage`] holds the
//! measurements and the reason, read with one atomic load on the request path; `/health` and
//! the `zulip_listeners_database_*_bytes` gauges (set every second by the server's upkeep)
//! show them. On PostgreSQL the database server
//! owns its disk: only a write that fails for lack of room refuses intake, for a short while.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::config::DatabaseTarget;

/// The limits, from `database.min_free_space` and `database.max_wal_size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorageLimits {
    /// Free bytes on the database's filesystem below which new work is refused (0: no floor).
    pub min_free_bytes: u64,
    /// Size of SQLite's write-ahead log above which new writes wait for a checkpoint.
    pub max_wal_bytes: u64,
}

/// How long a write that failed for lack of room keeps intake refused when nothing measured
/// says so (PostgreSQL, or a floor of 0): then intake is tried again.
const WRITE_FULL_HOLD: Duration = Duration::from_secs(2);

/// Not measured (PostgreSQL, or the filesystem did not answer).
const UNKNOWN: u64 = u64::MAX;

/// The storage state shared by the writer, the checkpointer, intake and `/health`.
pub struct Storage {
    /// The folder and the log of a SQLite database; `None` on PostgreSQL.
    files: Option<Files>,
    limits: StorageLimits,
    refusing: AtomicBool,
    write_failed: AtomicBool,
    free_bytes: AtomicU64,
    wal_bytes: AtomicU64,
    faults: Mutex<Faults>,
}

struct Files {
    dir: PathBuf,
    wal: PathBuf,
}

#[derive(Default)]
struct Faults {
    /// The last checkpoint's error, while checkpoints fail.
    checkpoint: Option<String>,
    /// A write failed for lack of room: when, and the error.
    write: Option<(Instant, String)>,
    /// Why new work is refused, while it is.
    reason: Option<String>,
}

/// What `/health` shows of the storage.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StorageReport {
    pub free_bytes: Option<u64>,
    pub min_free_bytes: u64,
    pub wal_bytes: Option<u64>,
    pub max_wal_bytes: u64,
    pub refusing: Option<String>,
}

impl StorageLimits {
    pub fn from_config(config: &crate::config::DatabaseConfig) -> StorageLimits {
        StorageLimits {
            min_free_bytes: config.min_free_space,
            max_wal_bytes: config.max_wal_size,
        }
    }
}

impl Storage {
    pub fn new(target: &DatabaseTarget, limits: StorageLimits) -> Storage {
        let files = match target {
            DatabaseTarget::Sqlite(path) => Some(Files {
                dir: match path.parent() {
                    Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
                    _ => PathBuf::from("."),
                },
                wal: wal_path(path),
            }),
            DatabaseTarget::Postgres(_) => None,
        };
        Storage {
            files,
            limits,
            refusing: AtomicBool::new(false),
            write_failed: AtomicBool::new(false),
            free_bytes: AtomicU64::new(UNKNOWN),
            wal_bytes: AtomicU64::new(UNKNOWN),
            faults: Mutex::default(),
        }
    }

    pub fn limits(&self) -> StorageLimits {
        self.limits
    }

    /// Why new work is refused now, as last measured (one atomic load when it is not).
    pub fn refusal(&self) -> Option<String> {
        if !self.refusing.load(Ordering::Acquire) {
            return None;
        }
        self.lock().reason.clone()
    }

    pub fn is_refusing(&self) -> bool {
        self.refusing.load(Ordering::Acquire)
    }

    /// Measures free space and the log, and decides again whether new work is refused;
    /// returns the reason when it is. A change is logged once.
    pub fn measure(&self) -> Option<String> {
        let (free, wal) = match &self.files {
            Some(files) => (
                free_bytes(&files.dir).unwrap_or(UNKNOWN),
                std::fs::metadata(&files.wal).map_or(0, |m| m.len()),
            ),
            None => (UNKNOWN, UNKNOWN),
        };
        self.free_bytes.store(free, Ordering::Relaxed);
        self.wal_bytes.store(wal, Ordering::Relaxed);
        let mut faults = self.lock();
        if faults
            .write
            .as_ref()
            .is_some_and(|(at, _)| at.elapsed() >= WRITE_FULL_HOLD)
        {
            faults.write = None;
            self.write_failed.store(false, Ordering::Relaxed);
        }
        let reason = self.reason(free, wal, &faults);
        if reason != faults.reason {
            match (&faults.reason, &reason) {
                (None, Some(why)) => tracing::error!(
                    reason = %why,
                    "storage: new work refused (forwarder batches get 503) until there is room"
                ),
                (Some(_), Some(why)) => tracing::warn!(reason = %why, "storage: still refusing"),
                (Some(_), None) => tracing::info!(
                    free_bytes = free,
                    "storage: room again; accepting forwarder batches"
                ),
                (None, None) => {}
            }
            faults.reason = reason.clone();
            self.refusing.store(reason.is_some(), Ordering::Release);
        }
        reason
    }

    fn reason(&self, free: u64, wal: u64, faults: &Faults) -> Option<String> {
        let dir = self
            .files
            .as_ref()
            .map_or_else(String::new, |f| f.dir.display().to_string());
        if free != UNKNOWN && free < self.limits.min_free_bytes {
            return Some(format!(
                "only {} free on the database's filesystem ({dir}), below database.min_free_space \
                 ({}): free some space there or raise the limit of the filesystem",
                mib(free),
                mib(self.limits.min_free_bytes)
            ));
        }
        if let Some(error) = &faults.checkpoint {
            return Some(format!(
                "the WAL checkpoint fails ({error}): new writes wait until it succeeds"
            ));
        }
        if wal != UNKNOWN && wal > self.limits.max_wal_bytes {
            return Some(format!(
                "the write-ahead log holds {}, over database.max_wal_size ({}): new writes wait \
                 for a checkpoint",
                mib(wal),
                mib(self.limits.max_wal_bytes)
            ));
        }
        faults
            .write
            .as_ref()
            .map(|(_, error)| format!("a database write failed for lack of room ({error})"))
    }

    /// Whether the checkpointer should empty the log (`TRUNCATE`) rather than only copy it.
    pub fn wants_truncate(&self) -> bool {
        let wal = self.wal_bytes.load(Ordering::Relaxed);
        self.is_refusing() || (wal != UNKNOWN && wal > self.limits.max_wal_bytes)
    }

    /// Records a checkpoint's outcome (`Err` with its error).
    pub fn checkpoint_done(&self, result: Result<(), String>) {
        let mut faults = self.lock();
        match result {
            Ok(()) => faults.checkpoint = None,
            Err(error) if is_full_text(&error) => faults.checkpoint = Some(error),
            // Busy or another passing problem: the next one will tell.
            Err(_) => {}
        }
    }

    /// A write failed for lack of room: refused until a measurement says otherwise, at
    /// least [`WRITE_FULL_HOLD`] from now.
    pub fn write_failed_full(&self, error: &str) {
        self.lock().write = Some((Instant::now(), error.to_string()));
        self.write_failed.store(true, Ordering::Relaxed);
        self.measure();
    }

    /// A write succeeded: an earlier one's lack of room is over.
    pub fn write_succeeded(&self) {
        if self.write_failed.swap(false, Ordering::Relaxed) {
            self.lock().write = None;
            self.measure();
        }
    }

    pub fn report(&self) -> StorageReport {
        let known = |v: u64| (v != UNKNOWN).then_some(v);
        StorageReport {
            free_bytes: known(self.free_bytes.load(Ordering::Relaxed)),
            min_free_bytes: self.limits.min_free_bytes,
            wal_bytes: known(self.wal_bytes.load(Ordering::Relaxed)),
            max_wal_bytes: self.limits.max_wal_bytes,
            refusing: self.refusal(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Faults> {
        self.faults.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// SQLite's log beside the database file: `<file>-wal`.
fn wal_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

/// Whether a database error means the disk (or the database server's) is full.
pub fn is_disk_full(error: &super::DbError) -> bool {
    is_full_text(&error.to_string())
}

fn is_full_text(text: &str) -> bool {
    let text = text.to_ascii_lowercase();
    text.contains("database or disk is full") || text.contains("no space left on device")
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1_048_576.0)
}

/// Bytes an unprivileged process may still write on the filesystem holding `dir`.
#[cfg(target_os = "linux")]
fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs only writes the struct it is given; an all-zero statvfs is valid.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a NUL-terminated string that outlives the call.
    let rc = unsafe { libc::statvfs(path.as_ptr(), &mut stat) };
    #[allow(clippy::unnecessary_cast)] // the field types differ between targets
    (rc == 0).then(|| (stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
}

#[cfg(not(target_os = "linux"))]
fn free_bytes(_dir: &Path) -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqlite(dir: &Path, limits: StorageLimits) -> Storage {
        Storage::new(&DatabaseTarget::Sqlite(dir.join("s.db")), limits)
    }

    #[test]
    fn refuses_below_the_floor_and_accepts_again_above_it() {
        let dir = tempfile::tempdir().expect("dir");
        let free = free_bytes(dir.path()).expect("statvfs");
        let below = sqlite(
            dir.path(),
            StorageLimits {
                min_free_bytes: free.saturating_mul(2),
                max_wal_bytes: 1 << 30,
            },
        );
        let why = below.measure().expect("refused");
        assert!(why.contains("database.min_free_space"), "{why}");
        assert_eq!(below.refusal(), Some(why));
        assert!(below.wants_truncate());

        let above = sqlite(
            dir.path(),
            StorageLimits {
                min_free_bytes: 1,
                max_wal_bytes: 1 << 30,
            },
        );
        assert_eq!(above.measure(), None);
        assert_eq!(above.refusal(), None);
        assert!(above.report().free_bytes.is_some());
    }

    #[test]
    fn a_large_log_or_a_failing_checkpoint_holds_new_writes() {
        let dir = tempfile::tempdir().expect("dir");
        let storage = sqlite(
            dir.path(),
            StorageLimits {
                min_free_bytes: 0,
                max_wal_bytes: 1000,
            },
        );
        std::fs::write(dir.path().join("s.db-wal"), vec![0u8; 2000]).expect("log");
        let why = storage.measure().expect("log too large");
        assert!(why.contains("database.max_wal_size"), "{why}");
        std::fs::write(dir.path().join("s.db-wal"), b"").expect("truncated");
        assert_eq!(storage.measure(), None);

        storage.checkpoint_done(Err("database or disk is full".into()));
        let why = storage.measure().expect("checkpoint failing");
        assert!(why.contains("checkpoint"), "{why}");
        storage.checkpoint_done(Err("database is locked".into()));
        assert!(
            storage.measure().is_some(),
            "a busy checkpoint proves nothing"
        );
        storage.checkpoint_done(Ok(()));
        assert_eq!(storage.measure(), None);
    }

    #[test]
    fn a_write_that_found_no_room_refuses_until_a_write_succeeds() {
        let storage = Storage::new(
            &DatabaseTarget::Postgres("postgres://x".into()),
            StorageLimits {
                min_free_bytes: 1 << 30,
                max_wal_bytes: 1,
            },
        );
        assert_eq!(
            storage.measure(),
            None,
            "PostgreSQL's disk is not measured here"
        );
        storage.write_failed_full("could not extend file: No space left on device");
        assert!(
            storage
                .refusal()
                .is_some_and(|r| r.contains("lack of room"))
        );
        storage.write_succeeded();
        assert_eq!(storage.refusal(), None);
    }

    #[test]
    fn full_disk_errors_are_recognised() {
        assert!(is_full_text("database or disk is full"));
        assert!(is_full_text(
            "could not extend file \"base/1/2\": No space left on device"
        ));
        assert!(!is_full_text("database is locked"));
    }
}
