//! The conventional process metrics (`process_resident_memory_bytes`,
//! `process_cpu_seconds_total`, `process_open_fds`, `process_max_fds`,
//! `process_start_time_seconds`), read from `/proc` on Linux when `/metrics` is scraped and by
//! the upkeep loop. Elsewhere, or when `/proc` cannot be read, the series are simply absent.

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

#[cfg(target_os = "linux")]
pub fn sample() -> Sample {
    linux::sample()
}

#[cfg(not(target_os = "linux"))]
pub fn sample() -> Sample {
    Sample::default()
}

#[cfg(target_os = "linux")]
mod linux {
    use std::sync::OnceLock;

    use super::Sample;

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

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::linux::*;

    #[test]
    fn parses_stat_with_a_hostile_command_name() {
        let text = "1234 (a) b (c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 4 0 \
                    98765 123456789 2048 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0";
        let stat = parse_stat(text).expect("parsed");
        assert_eq!(stat.utime_ticks, 250.0);
        assert_eq!(stat.stime_ticks, 50.0);
        assert_eq!(stat.start_ticks, 98765.0);
        assert_eq!(stat.rss_pages, 2048.0);
        assert_eq!(parse_stat("1234 (truncated"), None);
    }

    #[test]
    fn parses_boot_time_and_limits() {
        assert_eq!(
            boot_time("cpu 1 2 3\nbtime 1700000000\n"),
            Some(1_700_000_000.0)
        );
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(max_open_files(limits), Some(1024.0));
        assert_eq!(
            max_open_files(
                "Max open files            unlimited            unlimited            files\n"
            ),
            None
        );
    }

    #[test]
    fn samples_this_process() {
        let s = super::sample();
        assert!(s.resident_memory_bytes.is_some_and(|v| v > 1_048_576.0));
        assert!(s.open_fds.is_some_and(|v| v > 0.0));
        assert!(s.start_time_seconds.is_some_and(|v| v > 1_600_000_000.0));
    }
}
