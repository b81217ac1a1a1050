//! The `zulip-listeners` binary: parses the command line and runs it.

use std::process::ExitCode;

use clap::Parser;

/// mimalloc instead of the system allocator: the forwarder path allocates on the HTTP
/// workers and frees on the database threads, where glibc's arenas measured slower
/// (README, Benchmarks). Built with `no_thp`: with transparent huge pages mimalloc maps its
/// arenas in 2 MiB pages and returns freed memory only in 2 MiB pieces, which under steady
/// load kept some 35 MiB resident that nothing used (README, Benchmarks: Memory).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    zulip_listeners::cli::run(zulip_listeners::cli::Cli::parse())
}
