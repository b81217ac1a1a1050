//! The dashboard's browser test harness: chromedriver on a free port ([`start_driver`]) and a
//! small WebDriver client (W3C protocol over HTTP) for it ([`Browser`]).

use std::time::Duration;

use serde_json::{Value, json};

use super::poll::eventually;
use super::process::free_port;

/// A WebDriver session in headless Chromium.
pub struct Browser {
    http: reqwest::Client,
    session: String,
}

impl Browser {
    pub async fn start(driver: &str) -> Browser {
        let http = reqwest::Client::new();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,900",
                         "--hide-scrollbars", "--force-device-scale-factor=1"]
            }
        }}});
        let answer: Value = http
            .post(format!("{driver}/session"))
            .json(&caps)
            .send()
            .await
            .expect("new session")
            .json()
            .await
            .expect("session JSON");
        let session = answer["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {answer}"))
            .to_string();
        Browser {
            http,
            session: format!("{driver}/session/{session}"),
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        match self.try_call(method, path, body).await {
            Ok(value) => value,
            Err(error) => panic!("webdriver {path}: {error}"),
        }
    }

    /// A WebDriver command; `Err` with WebDriver's error (e.g. no such element while a
    /// page is still loading).
    async fn try_call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Value,
    ) -> Result<Value, Value> {
        let request = self.http.request(method, format!("{}{path}", self.session));
        let request = if body.is_null() {
            request
        } else {
            request.json(&body)
        };
        let answer: Value = request
            .send()
            .await
            .expect("webdriver call")
            .json()
            .await
            .expect("webdriver JSON");
        if answer["value"]["error"].is_string() {
            return Err(answer["value"].clone());
        }
        Ok(answer["value"].clone())
    }

    /// The text of an element, or `None` while there is none (the page is loading).
    pub async fn try_text(&self, css: &str) -> Option<String> {
        let element = self
            .try_call(
                reqwest::Method::POST,
                "/element",
                json!({"using": "css selector", "value": css}),
            )
            .await
            .ok()?;
        let id = element
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)?
            .to_string();
        self.try_call(
            reqwest::Method::GET,
            &format!("/element/{id}/text"),
            Value::Null,
        )
        .await
        .ok()
        .map(|v| v.as_str().unwrap_or_default().to_string())
    }

    pub async fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", json!({ "url": url }))
            .await;
    }

    pub async fn url(&self) -> String {
        self.call(reqwest::Method::GET, "/url", Value::Null)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    pub async fn find(&self, css: &str) -> String {
        let element = self
            .call(
                reqwest::Method::POST,
                "/element",
                json!({"using": "css selector", "value": css}),
            )
            .await;
        element
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element {css}"))
            .to_string()
    }

    pub async fn text(&self, css: &str) -> String {
        let element = self.find(css).await;
        self.call(
            reqwest::Method::GET,
            &format!("/element/{element}/text"),
            Value::Null,
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_string()
    }

    pub async fn click(&self, css: &str) {
        let element = self.find(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{element}/click"),
            json!({}),
        )
        .await;
    }

    pub async fn type_into(&self, css: &str, text: &str) {
        let element = self.find(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{element}/value"),
            json!({ "text": text }),
        )
        .await;
    }

    pub async fn resize(&self, width: u32, height: u32) {
        self.call(
            reqwest::Method::POST,
            "/window/rect",
            json!({"width": width, "height": height}),
        )
        .await;
    }

    /// Saves a PNG of the whole page (Chromium's full-page capture through the DevTools
    /// command chromedriver forwards; the viewport alone if that is unavailable).
    pub async fn screenshot(&self, path: &std::path::Path) {
        use base64::Engine as _;
        let full = self
            .http
            .post(format!("{}/goog/cdp/execute", self.session))
            .json(&json!({"cmd": "Page.captureScreenshot",
                          "params": {"captureBeyondViewport": true, "format": "png"}}))
            .send()
            .await
            .ok();
        let mut data = None;
        if let Some(answer) = full
            && let Ok(value) = answer.json::<Value>().await
        {
            data = value["value"]["data"].as_str().map(str::to_string);
        }
        let data = match data {
            Some(data) => data,
            None => self
                .call(reqwest::Method::GET, "/screenshot", Value::Null)
                .await
                .as_str()
                .unwrap_or_default()
                .to_string(),
        };
        let png = base64::engine::general_purpose::STANDARD
            .decode(data)
            .expect("base64 PNG");
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        std::fs::write(path, png).expect("screenshot written");
    }

    pub async fn quit(self) {
        let _ = self.http.delete(&self.session).send().await;
    }
}

/// chromedriver on a free port, stopped when dropped.
pub struct Driver {
    child: std::process::Child,
    pub url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn start_driver() -> Driver {
    let port = free_port();
    let child = std::process::Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("chromedriver starts (Debian package chromium-driver)");
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let ready = eventually(Duration::from_secs(20), async || {
        reqwest::get(format!("{}/status", driver.url))
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    assert!(ready, "chromedriver answers on {}", driver.url);
    driver
}

/// Waits until the text of `css` contains `wanted`.
pub async fn wait_text(browser: &Browser, css: &str, wanted: &str) -> String {
    let mut text = String::new();
    // A click that submits a form navigates: the element may be missing (or stale) until
    // the next page is there.
    for _ in 0..100 {
        if let Some(found) = browser.try_text(css).await {
            text = found;
            if text.contains(wanted) {
                return text;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{css} never showed {wanted:?}; last: {text:?}")
}
