//! The `zulip-listeners` binary: parses the command line and runs it.

use std::process::ExitCode;

use clap::Parser;

/// mimalloc instead of the system allocator: the forwarder path allocates on the HTTP
/// workers and frees on the database threads, where glibc's arenas measured slower
/// (README, Benchmarks).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    zulip_listeners::cli::run(zulip_listeners::cli::Cli::parse())
}
