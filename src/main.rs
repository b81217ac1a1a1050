//! The `zulip-listeners` binary: parses the command line and runs it.

use std::process::ExitCode;

use clap::Parser;

/// mimalloc instead of the system allocator: the forwarder path allocates on the HTTP
/// workers and frees on the database threads, where glibc's arenas measured slower
/// (docs/benchmarks.md). Built with `no_thp`: with transparent huge pages mimalloc maps its
/// arenas in 2 MiB pages and returns freed memory only in 2 MiB pieces, which under steady
/// load kept some 35 MiB resident that nothing used (docs/benchmarks.md, memory soak).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (position 15 of `mi_option_e` in mimalloc.h; the Rust
/// binding has no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() -> ExitCode {
    // Freed memory goes back to the OS at once instead of after mimalloc's default 10 ms (which
    // under steady load, with memory freed on other threads than it was allocated on, kept it
    // resident): a 10-minute soak ended at 58 MiB instead of 72 (docs/benchmarks.md, memory soak).
    // `MIMALLOC_PURGE_DELAY` in the environment still wins.
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: mi_option_set only stores an option value, which mimalloc reads when it
        // next decides whether to purge.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    }
    // Before anything opens a database: SQLite's per-connection mutexes are not needed.
    zulip_listeners::db::use_sqlite_multithread_mode();
    zulip_listeners::cli::run(zulip_listeners::cli::Cli::parse())
}
