//! The floor for the outgoing-webhook benchmark: a bare actix-web handler that does only what
//! any receiver of Zulip's outgoing webhooks must do — read the JSON body into a typed struct,
//! check the bot's token in constant time and answer `{"content": "pong"}` — with no database,
//! rate limits, metrics or handlers. docs/benchmarks.md (`bench/run bare`) runs it side by side with the
//! real server under the same `wrk` load.
//!
//! ```sh
//! cargo run --release --example bare_outgoing -- 127.0.0.1:18081 xvOzfurIutdRRVLzpXrIIHXJvNfaJLJ0
//! ```

use actix_web::{App, HttpResponse, HttpServer, web};
use serde::Deserialize;

/// The parts of Zulip's outgoing-webhook body this bot reads (the rest is parsed and skipped).
#[derive(Deserialize)]
struct OutgoingBody {
    token: String,
    message: Message,
}

#[derive(Deserialize)]
struct Message {
    content: String,
}

/// Compares without stopping at the first difference.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn outgoing(token: web::Data<String>, body: web::Json<OutgoingBody>) -> HttpResponse {
    if !same(body.token.as_bytes(), token.as_bytes()) {
        return HttpResponse::Unauthorized().json(serde_json::json!({"error": "bad token"}));
    }
    let answer = if body.message.content.ends_with("ping") {
        "pong"
    } else {
        "?"
    };
    HttpResponse::Ok().json(serde_json::json!({ "content": answer }))
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let bind = args.next().unwrap_or_else(|| "127.0.0.1:18081".into());
    let token = args
        .next()
        .unwrap_or_else(|| "xvOzfurIutdRRVLzpXrIIHXJvNfaJLJ0".into());
    actix_web::rt::System::new().block_on(async move {
        let token = web::Data::new(token);
        HttpServer::new(move || {
            App::new()
                .app_data(token.clone())
                .route("/zulip/outgoing", web::post().to(outgoing))
        })
        .bind(bind)?
        .run()
        .await
    })
}
