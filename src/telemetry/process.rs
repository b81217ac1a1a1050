//! The conventional process metrics (`process_resident_memory_bytes`,
//! `process_cpu_seconds_total`, `process_open_fds`, `process_max_fds`,
//! `process_start_time_seconds`), set when `/metrics` is scraped and by the upkeep loop.
//!
//! The reading is the `metrics-process` crate's (`/proc` on Linux, and the native calls on
//! macOS, Windows, FreeBSD and OpenBSD); this module only chooses the series, so that their
//! names and types stay what the alert rules, the dashboard and the tests read: every value
//! a gauge (the crate would make the CPU time a counter of whole seconds), no series the
//! crate adds beyond these five, and `process_max_fds` absent, not 0, when there is no limit
//! (the alert divides by it). Where the crate cannot read a value, or on another system, the
//! series is simply absent.

use metrics::gauge;

/// One reading of the process's resources; a field is `None` when it could not be read.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Sample {
    pub resident_memory_bytes: Option<f64>,
    pub cpu_seconds: Option<f64>,
    pub open_fds: Option<f64>,
    pub max_fds: Option<f64>,
    pub start_time_seconds: Option<f64>,
}

/// Reads the process's resources and sets the gauges.
pub fn refresh() {
    let s = sample();
    let series = [
        ("process_resident_memory_bytes", s.resident_memory_bytes),
        // A counter by name; set as a gauge since the kernel keeps the running total.
        ("process_cpu_seconds_total", s.cpu_seconds),
        ("process_open_fds", s.open_fds),
        ("process_max_fds", s.max_fds),
        ("process_start_time_seconds", s.start_time_seconds),
    ];
    for (name, value) in series {
        if let Some(value) = value {
            gauge!(name).set(value);
        }
    }
}

#[cfg(any(
    target_os = "linux",
    target_os = "macos",
    target_os = "windows",
    target_os = "freebsd",
    target_os = "openbsd"
))]
pub fn sample() -> Sample {
    let m = metrics_process::collector::collect();
    let float = |v: Option<u64>| v.map(|v| v as f64);
    Sample {
        resident_memory_bytes: float(m.resident_memory_bytes),
        cpu_seconds: m.cpu_seconds_total,
        open_fds: float(m.open_fds),
        // The crate says 0 for "unlimited".
        max_fds: float(m.max_fds.filter(|&max| max > 0)),
        start_time_seconds: float(m.start_time_seconds),
    }
}

#[cfg(not(any(
    target_os = "linux",
    target_os = "macos",
    target_os = "windows",
    target_os = "freebsd",
    target_os = "openbsd"
)))]
pub fn sample() -> Sample {
    Sample::default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hand-written /proc reader this module had before it used `metrics-process`, kept
    /// to compare with.
    mod hand_written {
        use std::sync::OnceLock;

        use super::super::Sample;

        /// `sysconf` values and the boot time: they do not change while the process runs.
        struct Constants {
            ticks_per_second: f64,
            page_size: f64,
            boot_time_seconds: Option<f64>,
        }

        fn constants() -> &'static Constants {
            static CONSTANTS: OnceLock<Constants> = OnceLock::new();
            CONSTANTS.get_or_init(|| {
                // SAFETY: sysconf only reads a system constant; it has no memory-safety
                // preconditions.
                let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
                // SAFETY: as above.
                let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
                Constants {
                    // USER_HZ is 100 on every mainstream architecture, should sysconf fail.
                    ticks_per_second: if ticks > 0 { ticks as f64 } else { 100.0 },
                    page_size: if page > 0 { page as f64 } else { 4096.0 },
                    boot_time_seconds: std::fs::read_to_string("/proc/stat")
                        .ok()
                        .and_then(|text| boot_time(&text)),
                }
            })
        }

        pub fn sample() -> Sample {
            let c = constants();
            let stat = std::fs::read_to_string("/proc/self/stat")
                .ok()
                .and_then(|text| parse_stat(&text));
            Sample {
                resident_memory_bytes: stat.map(|s| s.rss_pages * c.page_size),
                cpu_seconds: stat.map(|s| (s.utime_ticks + s.stime_ticks) / c.ticks_per_second),
                open_fds: std::fs::read_dir("/proc/self/fd")
                    .ok()
                    .map(|dir| dir.count() as f64),
                max_fds: std::fs::read_to_string("/proc/self/limits")
                    .ok()
                    .and_then(|text| max_open_files(&text)),
                start_time_seconds: stat.and_then(|s| {
                    c.boot_time_seconds
                        .map(|boot| boot + s.start_ticks / c.ticks_per_second)
                }),
            }
        }

        #[derive(Debug, Clone, Copy, PartialEq)]
        pub(super) struct Stat {
            pub utime_ticks: f64,
            pub stime_ticks: f64,
            pub start_ticks: f64,
            pub rss_pages: f64,
        }

        /// Parses `/proc/self/stat`. The command name (field 2) is in parentheses and may itself
        /// contain spaces and parentheses, so the fields are counted after the last `)`.
        pub(super) fn parse_stat(text: &str) -> Option<Stat> {
            let (_, rest) = text.rsplit_once(')')?;
            // rest starts with field 3 (state): field n is at index n - 3.
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let field = |n: usize| -> Option<f64> { fields.get(n - 3)?.parse::<f64>().ok() };
            Some(Stat {
                utime_ticks: field(14)?,
                stime_ticks: field(15)?,
                start_ticks: field(22)?,
                rss_pages: field(24)?,
            })
        }

        /// The `btime` line of `/proc/stat`: boot time in seconds since the epoch.
        pub(super) fn boot_time(text: &str) -> Option<f64> {
            text.lines()
                .find_map(|line| line.strip_prefix("btime "))
                .and_then(|v| v.trim().parse().ok())
        }

        /// The soft limit of "Max open files" in `/proc/self/limits` (`None` when unlimited).
        pub(super) fn max_open_files(text: &str) -> Option<f64> {
            text.lines()
                .find_map(|line| line.strip_prefix("Max open files"))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|soft| soft.parse().ok())
        }
    }

    /// The crate reads what the hand-written reader read (memory and descriptors move a
    /// little between the two readings; the start time is whole seconds now).
    #[test]
    #[cfg(target_os = "linux")]
    fn the_crate_reads_what_the_hand_written_reader_read() {
        let old = hand_written::sample();
        let new = sample();
        let now = sample();
        let close = |a: Option<f64>, b: Option<f64>, by: f64| match (a, b) {
            (Some(a), Some(b)) => (a - b).abs() <= by,
            _ => false,
        };
        assert!(close(old.resident_memory_bytes, new.resident_memory_bytes, 4.0 * 1_048_576.0), "{old:?} {new:?}");
        assert!(close(old.open_fds, new.open_fds, 2.0), "{old:?} {new:?}");
        assert_eq!(old.max_fds, new.max_fds);
        assert!(close(old.cpu_seconds, now.cpu_seconds, 0.5), "{old:?} {now:?}");
        assert!(close(old.start_time_seconds, new.start_time_seconds, 1.0), "{old:?} {new:?}");
        let n = 20_000;
        let t = std::time::Instant::now();
        for _ in 0..n { std::hint::black_box(hand_written::sample()); }
        let hand = t.elapsed() / n;
        let t = std::time::Instant::now();
        for _ in 0..n { std::hint::black_box(sample()); }
        let krate = t.elapsed() / n;
        eprintln!("TIMING per sample: hand-written {hand:?}, metrics-process {krate:?}");
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn samples_this_process() {
        let s = sample();
        assert!(s.resident_memory_bytes.is_some_and(|v| v > 1_048_576.0));
        assert!(s.open_fds.is_some_and(|v| v > 0.0));
        assert!(s.max_fds.is_some_and(|v| v >= s.open_fds.unwrap_or(f64::MAX)));
        assert!(s.cpu_seconds.is_some_and(|v| v >= 0.0));
        assert!(s.start_time_seconds.is_some_and(|v| v > 1_600_000_000.0));
    }
}
