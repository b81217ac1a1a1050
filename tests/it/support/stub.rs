//! Loopback HTTP stand-ins for external systems (Zulip's REST API, an existing bot service,
//! a webhook target): every request is recorded and answered alike.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};

/// A request received by a loopback stand-in.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub authorization: Option<String>,
    pub body: String,
    /// Every header, names in lower case.
    pub headers: Vec<(String, String)>,
}

impl Received {
    /// The value of header `name` (lower case), if it was sent.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A loopback HTTP server standing in for an external system. Every request is recorded and
/// answered with `answer` after `delay`.
pub struct Stub {
    pub url: String,
    pub received: Arc<Mutex<Vec<Received>>>,
    /// The status every answer gets (200 unless changed).
    pub status: Arc<AtomicU16>,
    handle: actix_web::dev::ServerHandle,
}

impl Stub {
    pub async fn start(answer: &'static str, delay: Duration) -> Stub {
        let received = Arc::new(Mutex::new(Vec::new()));
        let status = Arc::new(AtomicU16::new(200));
        let shared = received.clone();
        let shared_status = status.clone();
        let (url, handle) = serve_loopback(move |listener| {
            Ok(HttpServer::new(move || {
                let shared = shared.clone();
                let shared_status = shared_status.clone();
                App::new().default_service(web::to(move |req: HttpRequest, body: web::Bytes| {
                    let shared = shared.clone();
                    let status = shared_status.load(Ordering::SeqCst);
                    async move {
                        shared.lock().expect("stub lock").push(Received {
                            path: req.path().to_string(),
                            authorization: req
                                .headers()
                                .get("authorization")
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_string),
                            body: String::from_utf8_lossy(&body).into_owned(),
                            headers: req
                                .headers()
                                .iter()
                                .map(|(n, v)| {
                                    (
                                        n.as_str().to_string(),
                                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                                    )
                                })
                                .collect(),
                        });
                        tokio::time::sleep(delay).await;
                        let code = actix_web::http::StatusCode::from_u16(status)
                            .unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR);
                        HttpResponse::build(code)
                            .content_type("application/json")
                            .body(answer)
                    }
                }))
            })
            .workers(1)
            .listen(listener)?
            .run())
        });
        Stub {
            url,
            received,
            status,
            handle,
        }
    }

    /// A webhook target that answers 500 (until [`Stub::set_status`] says otherwise).
    pub async fn failing() -> Stub {
        let target = Stub::start(r#"{"ok": true}"#, Duration::ZERO).await;
        target.set_status(500);
        target
    }

    pub fn set_status(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    pub fn requests(&self) -> Vec<Received> {
        self.received.lock().expect("stub lock").clone()
    }

    /// Waits up to `within` for `n` requests.
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let requests = self.requests();
            if requests.len() >= n || tokio::time::Instant::now() > deadline {
                return requests;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn stop(self) {
        self.handle.stop(false).await;
    }
}

/// Runs the actix-web server that `build` makes on a free loopback port, on this runtime:
/// its URL and handle.
pub fn serve_loopback(
    build: impl FnOnce(TcpListener) -> std::io::Result<actix_web::dev::Server>,
) -> (String, actix_web::dev::ServerHandle) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let server = build(listener).expect("listen");
    let handle = server.handle();
    tokio::spawn(server);
    (url, handle)
}
