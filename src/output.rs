//! Standard output of the commands. A reader that goes away before the end (`check-config |
//! head`, a pager quit early) ends the output, not the command: what is left to print is
//! dropped quietly, the command finishes its work and exits as it would have (`println!`
//! panicked there, exit code 101). Any other failure to write (a full disk under `> file`)
//! stops the output too and is reported once the command is done, with exit code 1.

use std::fmt;
use std::io::Write as _;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

/// Nothing more is written once the reader has gone or a write failed.
static STOPPED: AtomicBool = AtomicBool::new(false);
/// The first write failure that was not a closed reader.
static FAILURE: OnceLock<String> = OnceLock::new();

/// Writes `args` to standard output (what `print!` does, without its panic).
pub fn write(args: fmt::Arguments<'_>) {
    write_with(args, false);
}

/// Writes `args` and a newline to standard output (what `println!` does, without its panic).
pub fn write_line(args: fmt::Arguments<'_>) {
    write_with(args, true);
}

fn write_with(args: fmt::Arguments<'_>, newline: bool) {
    if STOPPED.load(Ordering::Relaxed) {
        return;
    }
    let mut out = std::io::stdout().lock();
    let written = if newline {
        writeln!(out, "{args}")
    } else {
        out.write_fmt(args).and_then(|()| out.flush())
    };
    if let Err(error) = written {
        STOPPED.store(true, Ordering::Relaxed);
        if error.kind() != std::io::ErrorKind::BrokenPipe {
            let _ = FAILURE.set(error.to_string());
        }
    }
}

/// Why standard output could not be written, other than its reader going away.
pub fn failure() -> Option<&'static str> {
    FAILURE.get().map(String::as_str)
}

/// `println!` for the commands: see the module's documentation.
macro_rules! outln {
    () => {
        $crate::output::write_line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::output::write_line(format_args!($($arg)*))
    };
}

/// `print!` for the commands: see the module's documentation.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::write(format_args!($($arg)*))
    };
}

pub(crate) use {out, outln};
