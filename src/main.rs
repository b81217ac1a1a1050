//! The `zulip-listeners` binary: parses the command line and runs it.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    zulip_listeners::cli::run(zulip_listeners::cli::Cli::parse())
}
