//! How the HTTP server takes connections: actix-web's application served by actix-server and
//! actix-http directly, so that every connection can be wrapped in [`HeadDeadline`].
//!
//! actix-http times out only the *first* request head of a connection
//! (`client_request_timeout`); once a kept-alive connection has answered one request, the
//! head of the next may trickle in forever, a byte now and then (slow-loris). The wrapper
//! gives every request head the same deadline, `server.client_timeout`. It also counts the
//! connections that are busy ([`BusyConnections`]), so that a stopping server finishes a
//! request whose connection it has accepted before closing the idle ones.

use std::future::Future;
use std::io;
use std::net::TcpListener;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use actix_http::HttpService;
use actix_http::h1::H1Service;
use actix_service::{IntoServiceFactory, ServiceFactoryExt as _, fn_service, map_config};
use actix_web::App;
use actix_web::dev::{AppConfig, Server};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// How the server treats connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub workers: usize,
    /// Connections per worker.
    pub max_connections_per_worker: usize,
    /// Deadline for each request head (and, in the application, each body).
    pub client_timeout: Duration,
    pub keep_alive: Duration,
    pub disconnect_timeout: Duration,
    pub shutdown_timeout_secs: u64,
}

/// Connections that are busy: accepted and not yet answered, or with a request under way
/// (from the first byte of its head to the first byte of its answer). An idle kept-alive
/// connection is not busy.
#[derive(Clone, Default)]
pub struct BusyConnections(Arc<AtomicUsize>);

impl BusyConnections {
    pub fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// One connection's share of [`BusyConnections`].
struct Busy {
    counter: BusyConnections,
    busy: bool,
}

impl Busy {
    /// A new connection: busy until its first answer.
    fn new(counter: BusyConnections) -> Busy {
        counter.0.fetch_add(1, Ordering::SeqCst);
        Busy {
            counter,
            busy: true,
        }
    }

    fn set(&mut self, busy: bool) {
        if busy != self.busy {
            if busy {
                self.counter.0.fetch_add(1, Ordering::SeqCst);
            } else {
                self.counter.0.fetch_sub(1, Ordering::SeqCst);
            }
            self.busy = busy;
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.set(false);
    }
}

/// Serves the application built by `app` on `socket`, counting busy connections in `busy`.
pub fn serve<F, T, B>(
    socket: TcpListener,
    limits: ConnectionLimits,
    busy: BusyConnections,
    app: F,
) -> io::Result<Server>
where
    F: Fn() -> App<T> + Send + Clone + 'static,
    T: actix_web::dev::ServiceFactory<
            actix_web::dev::ServiceRequest,
            Config = (),
            Response = actix_web::dev::ServiceResponse<B>,
            Error = actix_web::Error,
            InitError = (),
        > + 'static,
    B: actix_web::body::MessageBody + 'static,
{
    let server = Server::build()
        .workers(limits.workers)
        .max_concurrent_connections(limits.max_connections_per_worker)
        .shutdown_timeout(limits.shutdown_timeout_secs)
        .disable_signals()
        .listen("zulip-listeners", socket, move || {
            let factory = app()
                .into_factory()
                .map_err(|err: actix_web::Error| err.as_response_error().error_response());
            let http: H1Service<HeadDeadline<TcpStream>, _, _> = HttpService::build()
                .keep_alive(limits.keep_alive)
                .client_request_timeout(limits.client_timeout)
                .client_disconnect_timeout(limits.disconnect_timeout)
                .h1(map_config(factory, |_| AppConfig::default()));
            let deadline = limits.client_timeout;
            let busy = busy.clone();
            fn_service(move |io: TcpStream| {
                let peer = io.peer_addr().ok();
                let _ = io.set_nodelay(true);
                std::future::ready(Ok::<_, actix_http::error::DispatchError>((
                    HeadDeadline::new(io, deadline).counted(busy.clone()),
                    peer,
                )))
            })
            .and_then(http)
        })?
        .run();
    Ok(server)
}

/// A connection on which every request head must arrive within a deadline.
///
/// It watches the bytes read: the first byte after an answer was written (or the very first
/// byte) starts the clock, the blank line that ends the head (`\r\n\r\n`) stops it. If the
/// clock runs out, reading fails with `TimedOut` and the connection is closed. Bodies and
/// the application's own time are not counted (the application gives bodies their own
/// deadline).
pub struct HeadDeadline<T> {
    io: T,
    limit: Duration,
    /// Waiting for the end of a head.
    in_head: bool,
    /// How much of `\r\n\r\n` the last bytes read matched.
    matched: u8,
    timer: Option<Pin<Box<Sleep>>>,
    busy: Option<Busy>,
}

impl<T> HeadDeadline<T> {
    pub fn new(io: T, limit: Duration) -> HeadDeadline<T> {
        HeadDeadline {
            io,
            limit,
            in_head: true,
            matched: 0,
            timer: None,
            busy: None,
        }
    }

    /// Counts this connection in `busy` while it is.
    fn counted(mut self, busy: BusyConnections) -> HeadDeadline<T> {
        self.busy = Some(Busy::new(busy));
        self
    }

    /// Follows the bytes read: the head ends at its blank line. The clock starts only when a
    /// read leaves a head unfinished, so a head that arrives in one read (nearly all of them)
    /// costs no timer.
    fn scan(&mut self, bytes: &[u8]) {
        if !self.in_head || bytes.is_empty() {
            return;
        }
        if let Some(busy) = &mut self.busy {
            busy.set(true);
        }
        if self.matched == 0 && memchr::memmem::find(bytes, b"\r\n\r\n").is_some() {
            return self.head_ended();
        }
        for &b in bytes {
            self.matched = match (self.matched, b) {
                (0 | 2, b'\r') => self.matched + 1,
                (1 | 3, b'\n') => self.matched + 1,
                (_, b'\r') => 1,
                _ => 0,
            };
            if self.matched == 4 {
                return self.head_ended();
            }
        }
        if self.timer.is_none() {
            self.timer = Some(Box::pin(tokio::time::sleep_until(
                Instant::now() + self.limit,
            )));
        }
    }

    /// An answer is going out: what is read next starts a new head, and the connection is no
    /// longer busy.
    fn answered(&mut self) {
        self.in_head = true;
        self.matched = 0;
        if let Some(busy) = &mut self.busy {
            busy.set(false);
        }
    }

    fn head_ended(&mut self) {
        self.in_head = false;
        self.matched = 0;
        self.timer = None;
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for HeadDeadline<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(timer) = &mut this.timer
            && timer.as_mut().poll(cx).is_ready()
        {
            tracing::debug!("request head not received within server.client_timeout; closing");
            crate::telemetry::metric::body_refused("head_timeout");
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "request head not received within server.client_timeout",
            )));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            this.scan(buf.filled().get(before..).unwrap_or_default());
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for HeadDeadline<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = polled
            && n > 0
        {
            this.answered();
        }
        polled
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = polled
            && n > 0
        {
            this.answered();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_head_end_stops_the_clock_and_an_answer_restarts_it() {
        let mut d = HeadDeadline::new((), Duration::from_secs(1));
        d.scan(b"GET / HTTP/1.1\r\nHost: x\r");
        assert!(d.in_head && d.timer.is_some());
        d.scan(b"\n\r\nbody\r\n\r\n");
        assert!(!d.in_head && d.timer.is_none(), "the head ended");
        d.scan(b"more body");
        assert!(d.timer.is_none(), "body bytes are not timed");
        d.in_head = true; // as after an answer is written
        d.scan(b"\r\r\n");
        assert_eq!(d.matched, 2, "a stray CR restarts the match");
    }

    #[tokio::test]
    async fn a_head_read_whole_starts_no_clock() {
        let mut d = HeadDeadline::new((), Duration::from_secs(1));
        d.scan(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}");
        assert!(!d.in_head && d.timer.is_none());
        // A head split right after its first CR LF pair still ends where it should.
        d.in_head = true;
        d.scan(b"GET / HTTP/1.1\r\n");
        assert!(
            d.in_head && d.timer.is_some(),
            "an unfinished head is timed"
        );
        d.scan(b"\r\n");
        assert!(!d.in_head && d.timer.is_none());
    }
}
