//! The main listening socket: handed over by systemd (socket activation), or bound here from
//! `server.bind`.
//!
//! With `deploy/systemd/zulip-listeners.socket`, systemd owns the listening socket and passes
//! it to each process it starts (`LISTEN_PID`, `LISTEN_FDS`, the socket as descriptor 3, as
//! `sd_listen_fds` reads them). The socket outlives the process: while the service restarts,
//! Zulip's connections wait in the kernel's accept queue and the new process answers them, so
//! a restart never refuses a connection (Zulip would post a public "Failure!" after 4 attempts
//! within 64 ms). A process that is stopping stops accepting at once and finishes the requests
//! it has; it closes only its own copy of the socket.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
#[cfg(target_os = "linux")]
const LISTEN_FDS_START: i32 = 3;

/// The inherited socket is taken once per process (a second server started in the same
/// process, as tests do, binds its own).
static TAKEN: AtomicBool = AtomicBool::new(false);

/// Where the listening socket came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Passed by systemd (socket activation); `server.bind` is not used.
    Systemd,
    /// Bound here to `server.bind`.
    Bound,
}

/// The socket systemd passed to this process, or a new one bound to `bind`.
pub fn listener(bind: SocketAddr) -> anyhow::Result<(TcpListener, Origin)> {
    if let Some(socket) = inherited()? {
        return Ok((socket, Origin::Systemd));
    }
    let socket = bind_to(bind, "server.bind", "ZULIP_LISTENERS_SERVER__BIND")?;
    Ok((socket, Origin::Bound))
}

/// Binds `addr`, the value of the configuration key `key` (environment variable `env`); the
/// error names both and, when the address is taken or not allowed, the likely cause and fix.
pub fn bind_to(addr: SocketAddr, key: &str, env: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).map_err(|error| {
        let why = match error.kind() {
            std::io::ErrorKind::AddrInUse => format!(
                "the address is already in use, perhaps by another zulip-listeners instance \
                 (`ss -ltnp 'sport = :{}'` shows which process): stop it, or give this one \
                 another address in {key} ({env})",
                addr.port()
            ),
            std::io::ErrorKind::PermissionDenied => format!(
                "not allowed ({error}): ports below 1024 need privileges; choose a port of 1024 \
                 or more in {key} ({env})"
            ),
            std::io::ErrorKind::AddrNotAvailable => format!(
                "no interface of this machine has that address ({error}): correct {key} ({env})"
            ),
            _ => format!("{error}; check {key} ({env})"),
        };
        anyhow::anyhow!("cannot listen on {addr} ({key}): {why}")
    })
}

/// The listening TCP socket systemd passed, if it passed one to this process.
fn inherited() -> anyhow::Result<Option<TcpListener>> {
    let for_us = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|pid| pid.trim().parse::<u32>().ok())
        == Some(std::process::id());
    if !for_us {
        return Ok(None);
    }
    let count: usize = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    if count == 0 || TAKEN.swap(true, Ordering::AcqRel) {
        return Ok(None);
    }
    if count > 1 {
        tracing::warn!(
            count,
            "systemd passed several sockets; the first one is used for HTTP, the others are ignored"
        );
    }
    take_first().map(Some)
}

#[cfg(target_os = "linux")]
fn take_first() -> anyhow::Result<TcpListener> {
    use std::os::fd::FromRawFd;
    let fd = LISTEN_FDS_START;
    let listening_stream = |option: libc::c_int| -> Option<libc::c_int> {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `value`; a descriptor that is
        // not a socket makes it fail (ENOTSOCK), which is checked.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                option,
                (&mut value as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        (rc == 0).then_some(value)
    };
    if listening_stream(libc::SO_TYPE) != Some(libc::SOCK_STREAM)
        || listening_stream(libc::SO_ACCEPTCONN) != Some(1)
    {
        anyhow::bail!(
            "systemd passed descriptor {fd}, but it is not a listening TCP socket: check \
             ListenStream= in zulip-listeners.socket"
        );
    }
    // SAFETY: systemd hands descriptor 3 to this process to own (LISTEN_PID is ours), it is a
    // listening stream socket (checked above), and TAKEN makes sure it is wrapped only once.
    let socket = unsafe { TcpListener::from_raw_fd(fd) };
    // Not inherited by anything this process might start.
    // SAFETY: fcntl on a descriptor this process owns.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    socket.local_addr().context(
        "the socket systemd passed has no TCP address (ListenStream= must be an address and port)",
    )?;
    Ok(socket)
}

#[cfg(not(target_os = "linux"))]
fn take_first() -> anyhow::Result<TcpListener> {
    anyhow::bail!("socket activation (LISTEN_FDS) is supported on Linux only")
}
