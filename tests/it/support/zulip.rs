//! A loopback stand-in of Zulip's REST API that behaves as a real Zulip server was seen to
//! (`/work/shared/reference/zulip-realism-check-2.md`, `zulip-outgoing-webhooks.md`): people
//! sign in with Basic auth; `POST /api/v1/messages` stores the message and, when a person
//! mentions the outgoing bot `helper` in a channel or sends it a direct message, delivers the
//! outgoing webhook in Zulip's payload shape to the bot's Endpoint URL after answering; a JSON
//! `content` answer is posted as the bot in the same conversation, a non-2xx answer as
//! "Failure! Third party responded with N", and a connection error is tried 4 times, then
//! "Failure! Bot is unavailable". With the forwarder installed every stored message is also
//! posted to `/zulip/events` as a signed batch, as the forwarder would. `GET` and `DELETE` of
//! messages follow Zulip's API (deleting needs the permission, else 400).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use base64::Engine as _;
use serde_json::{Value, json};

use super::stub::serve_loopback;
use super::wire::{BOT_EMAIL, Envelope, TOKEN, batch, now_s, signed_events};

/// The person who posts (user 10).
pub const PERSON_EMAIL: &str = "alice@example.com";
/// Alice's API key.
pub const PERSON_KEY: &str = "alice-api-key-0123456789abcdef";
const PERSON_ID: i64 = 10;
/// The outgoing-webhook bot `helper` in Zulip ([`BOT_EMAIL`]).
pub const BOT_ID: i64 = 42;
const BOT_NAME: &str = "Helper";
/// Channels: (name, stream id).
const CHANNELS: &[(&str, i64)] = &[("general", 5), ("test", 7)];

/// How the Zulip server is set up.
#[derive(Clone)]
pub struct ZulipSetup {
    /// The bot's Endpoint URL.
    pub endpoint: String,
    /// The bot's outgoing-webhook token in Zulip.
    pub token: String,
    /// The forwarder, installed: this server's base URL and the signing secret.
    pub forwarder: Option<(String, String)>,
    /// Whether Alice may delete messages.
    pub may_delete: bool,
}

impl ZulipSetup {
    /// The bot `helper` pointing at `base`/zulip/outgoing with the right token; no forwarder;
    /// deleting allowed.
    pub fn new(base: &str) -> ZulipSetup {
        ZulipSetup {
            endpoint: format!("{base}/zulip/outgoing"),
            token: TOKEN.to_string(),
            forwarder: None,
            may_delete: true,
        }
    }
}

#[derive(Clone)]
enum Conversation {
    Channel {
        name: String,
        id: i64,
        topic: String,
    },
    Direct {
        user_ids: Vec<i64>,
    },
}

#[derive(Clone)]
struct Stored {
    id: i64,
    sender_id: i64,
    content: String,
    at: Conversation,
}

struct State {
    setup: ZulipSetup,
    messages: Vec<Stored>,
    next_id: i64,
    http: reqwest::Client,
    /// The status of every forwarded batch (0: not sent).
    forwarded: Vec<u16>,
}

type Shared = Arc<Mutex<State>>;

/// The stand-in, on a loopback port.
pub struct FakeZulip {
    pub url: String,
    state: Shared,
    handle: actix_web::dev::ServerHandle,
}

impl FakeZulip {
    pub async fn start(setup: ZulipSetup) -> FakeZulip {
        let state = Arc::new(Mutex::new(State {
            setup,
            messages: Vec::new(),
            next_id: 1000,
            forwarded: Vec::new(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .user_agent("ZulipOutgoingWebhook/11.0")
                .build()
                .expect("client"),
        }));
        let shared = state.clone();
        let (url, handle) = serve_loopback(move |listener| {
            Ok(HttpServer::new(move || {
                App::new()
                    .app_data(web::Data::new(shared.clone()))
                    .route("/api/v1/users/me", web::get().to(me))
                    .route("/api/v1/users/{email}", web::get().to(user))
                    .route("/api/v1/messages", web::post().to(send))
                    .route("/api/v1/messages", web::get().to(list))
                    .route("/api/v1/messages/{id}", web::delete().to(delete))
            })
            .workers(1)
            .listen(listener)?
            .run())
        });
        FakeZulip { url, state, handle }
    }

    /// The status of every batch forwarded to `/zulip/events` (0: not sent).
    pub fn forwarded(&self) -> Vec<u16> {
        self.state.lock().expect("lock").forwarded.clone()
    }

    /// The ids of the messages Zulip still holds.
    pub fn message_ids(&self) -> Vec<i64> {
        let state = self.state.lock().expect("lock");
        state.messages.iter().map(|m| m.id).collect()
    }

    pub async fn stop(self) {
        self.handle.stop(false).await;
    }
}

fn error(status: u16, msg: &str, code: &str) -> HttpResponse {
    let status = actix_web::http::StatusCode::from_u16(status).expect("status");
    HttpResponse::build(status).json(json!({"result": "error", "msg": msg, "code": code}))
}

/// Alice, when the request carries her email and key.
fn signed_in(req: &HttpRequest) -> Result<(), HttpResponse> {
    let given = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
        .map(|v| String::from_utf8_lossy(&v).into_owned())
        .unwrap_or_default();
    if given == format!("{PERSON_EMAIL}:{PERSON_KEY}") {
        Ok(())
    } else {
        Err(error(401, "Invalid API key", "INVALID_API_KEY"))
    }
}

fn person() -> Value {
    json!({"user_id": PERSON_ID, "email": PERSON_EMAIL, "full_name": "Alice", "is_bot": false,
           "is_active": true, "role": 400})
}

fn bot() -> Value {
    json!({"user_id": BOT_ID, "email": BOT_EMAIL, "full_name": BOT_NAME, "is_bot": true,
           "bot_type": 3, "bot_owner_id": PERSON_ID, "is_active": true, "role": 400})
}

async fn me(req: HttpRequest) -> HttpResponse {
    if let Err(refused) = signed_in(&req) {
        return refused;
    }
    let mut me = person();
    me["result"] = json!("success");
    me["msg"] = json!("");
    HttpResponse::Ok().json(me)
}

async fn user(req: HttpRequest, email: web::Path<String>) -> HttpResponse {
    if let Err(refused) = signed_in(&req) {
        return refused;
    }
    let found = [person(), bot()]
        .into_iter()
        .find(|u| u["email"].as_str() == Some(email.as_str()));
    match found {
        Some(user) => {
            HttpResponse::Ok().json(json!({"result": "success", "msg": "", "user": user}))
        }
        None => error(400, "No such user", "BAD_REQUEST"),
    }
}

async fn send(
    req: HttpRequest,
    state: web::Data<Shared>,
    form: web::Form<HashMap<String, String>>,
) -> HttpResponse {
    if let Err(refused) = signed_in(&req) {
        return refused;
    }
    let field = |k: &str| form.get(k).cloned().unwrap_or_default();
    let at = match field("type").as_str() {
        "stream" | "channel" => {
            let name = field("to");
            let Some(&(_, id)) = CHANNELS.iter().find(|(n, _)| *n == name) else {
                return error(
                    400,
                    &format!("Channel '{name}' does not exist"),
                    "STREAM_DOES_NOT_EXIST",
                );
            };
            Conversation::Channel {
                name,
                id,
                topic: field("topic"),
            }
        }
        "private" | "direct" => {
            let Ok(mut user_ids) = serde_json::from_str::<Vec<i64>>(&field("to")) else {
                return error(400, "Invalid user ID", "BAD_REQUEST");
            };
            user_ids.push(PERSON_ID);
            user_ids.sort_unstable();
            user_ids.dedup();
            Conversation::Direct { user_ids }
        }
        _ => return error(400, "Invalid message type", "BAD_REQUEST"),
    };
    let content = field("content");
    let mentioned = match &at {
        Conversation::Channel { .. } => {
            content.contains(&format!("@**{BOT_NAME}|{BOT_ID}**"))
                || content.contains(&format!("@**{BOT_NAME}**"))
        }
        Conversation::Direct { user_ids } => user_ids.contains(&BOT_ID),
    };
    let message = store(&state, PERSON_ID, content, at);
    // Zulip answers first; its queue workers deliver the webhook and the events afterwards.
    let (shared, stored) = (state.get_ref().clone(), message.clone());
    tokio::spawn(async move { forward(&shared, &stored).await });
    if mentioned {
        let (shared, stored) = (state.get_ref().clone(), message.clone());
        tokio::spawn(async move { deliver(&shared, &stored).await });
    }
    HttpResponse::Ok().json(json!({"result": "success", "msg": "", "id": message.id}))
}

fn store(state: &Shared, sender_id: i64, content: String, at: Conversation) -> Stored {
    let mut state = state.lock().expect("lock");
    state.next_id += 1;
    let message = Stored {
        id: state.next_id,
        sender_id,
        content,
        at,
    };
    state.messages.push(message.clone());
    message
}

/// A message in the shape of `GET /api/v1/messages` and of the webhook's `message`.
fn shape(message: &Stored) -> Value {
    let (email, name) = if message.sender_id == BOT_ID {
        (BOT_EMAIL, BOT_NAME)
    } else {
        (PERSON_EMAIL, "Alice")
    };
    let mut shaped = json!({
        "id": message.id, "sender_id": message.sender_id, "sender_email": email,
        "sender_full_name": name, "sender_realm_str": "acme", "avatar_url": null,
        "client": "website", "content": message.content, "content_type": "text/x-markdown",
        "rendered_content": format!("<p>{}</p>", message.content), "is_me_message": false,
        "reactions": [], "submessages": [], "topic_links": [], "timestamp": now_s(),
    });
    match &message.at {
        Conversation::Channel { name, id, topic } => {
            shaped["type"] = json!("stream");
            shaped["display_recipient"] = json!(name);
            shaped["stream_id"] = json!(id);
            shaped["subject"] = json!(topic);
            shaped["recipient_id"] = json!(20 + id);
        }
        Conversation::Direct { user_ids } => {
            let people: Vec<Value> = user_ids
                .iter()
                .map(|&id| {
                    let (email, full_name) = if id == BOT_ID {
                        (BOT_EMAIL, BOT_NAME)
                    } else {
                        (PERSON_EMAIL, "Alice")
                    };
                    json!({"id": id, "email": email, "full_name": full_name, "is_mirror_dummy": false})
                })
                .collect();
            shaped["type"] = json!("private");
            shaped["display_recipient"] = json!(people);
            shaped["subject"] = json!("");
            shaped["recipient_id"] = json!(99);
        }
    }
    shaped
}

/// The outgoing-webhook worker: up to 4 attempts on connection errors, then the failure or
/// the reply posted as the bot.
async fn deliver(state: &Shared, message: &Stored) {
    let (http, setup) = {
        let s = state.lock().expect("lock");
        (s.http.clone(), s.setup.clone())
    };
    let trigger = match message.at {
        Conversation::Channel { .. } => "mention",
        Conversation::Direct { .. } => "direct_message",
    };
    let payload = json!({
        "data": message.content, "message": shape(message), "bot_email": BOT_EMAIL,
        "bot_full_name": BOT_NAME, "token": setup.token, "trigger": trigger,
    });
    let mut answer = None;
    for _attempt in 0..4 {
        if let Ok(response) = http.post(&setup.endpoint).json(&payload).send().await {
            answer = Some(response);
            break;
        }
    }
    let reply = match answer {
        None => Some("Failure! Bot is unavailable".to_string()),
        Some(response) if !response.status().is_success() => Some(format!(
            "Failure! Third party responded with {}",
            response.status().as_u16()
        )),
        Some(response) => match response.json::<Value>().await {
            Ok(body) if body["response_not_required"] == true => None,
            Ok(body) => body["content"]
                .as_str()
                .filter(|c| !c.trim().is_empty())
                .map(str::to_string),
            Err(_) => Some("Failure! Invalid JSON in response".to_string()),
        },
    };
    if let Some(content) = reply {
        let posted = store(state, BOT_ID, content, message.at.clone());
        forward(state, &posted).await;
    }
}

/// The forwarder: the `message` event in a signed batch of its own, to its audience.
async fn forward(state: &Shared, message: &Stored) {
    let (http, forwarder) = {
        let s = state.lock().expect("lock");
        (s.http.clone(), s.setup.forwarder.clone())
    };
    let Some((base, secret)) = forwarder else {
        return;
    };
    let audience = match &message.at {
        Conversation::Channel { .. } => vec![PERSON_ID],
        Conversation::Direct { user_ids } => user_ids.clone(),
    };
    let event = json!({"type": "message", "flags": [], "message": shape(message)});
    let envelope = Envelope::new(&format!("zulip-event-{}", message.id), event)
        .audience(&audience)
        .json();
    let body = batch(vec![envelope]);
    let webhook_id = format!("msg_fake_zulip_{}", message.id);
    let status = signed_events(&http, &base, &webhook_id, now_s(), &body, &secret)
        .send()
        .await
        .map_or(0, |r| r.status().as_u16());
    state.lock().expect("lock").forwarded.push(status);
}

/// Whether a message is in the narrow (the operators `verify` uses: stream/channel, topic,
/// sender, dm/pm-with).
fn in_narrow(message: &Stored, narrow: &[Value]) -> bool {
    narrow.iter().all(|term| {
        let operand = &term["operand"];
        match term["operator"].as_str().unwrap_or_default() {
            "stream" | "channel" => matches!(&message.at,
                Conversation::Channel { name, .. } if operand.as_str() == Some(name)),
            "topic" => matches!(&message.at,
                Conversation::Channel { topic, .. } if operand.as_str() == Some(topic)),
            "sender" => operand.as_i64() == Some(message.sender_id),
            "dm" | "pm-with" => {
                let mut wanted: Vec<i64> = operand
                    .as_array()
                    .map(|ids| ids.iter().filter_map(Value::as_i64).collect())
                    .unwrap_or_default();
                wanted.push(PERSON_ID);
                wanted.sort_unstable();
                wanted.dedup();
                matches!(&message.at, Conversation::Direct { user_ids } if *user_ids == wanted)
            }
            _ => false,
        }
    })
}

async fn list(
    req: HttpRequest,
    state: web::Data<Shared>,
    query: web::Query<HashMap<String, String>>,
) -> HttpResponse {
    if let Err(refused) = signed_in(&req) {
        return refused;
    }
    let number = |k: &str| query.get(k).and_then(|v| v.parse::<i64>().ok());
    let (Some(anchor), Some(after)) = (number("anchor"), number("num_after")) else {
        return error(400, "Missing 'anchor' argument", "BAD_REQUEST");
    };
    let Ok(narrow) =
        serde_json::from_str::<Vec<Value>>(query.get("narrow").map_or("[]", String::as_str))
    else {
        return error(400, "Invalid narrow", "BAD_REQUEST");
    };
    let state = state.lock().expect("lock");
    let messages: Vec<Value> = state
        .messages
        .iter()
        .filter(|m| m.id > anchor && in_narrow(m, &narrow))
        .take(usize::try_from(after).unwrap_or(0))
        .map(shape)
        .collect();
    HttpResponse::Ok().json(json!({"result": "success", "msg": "", "messages": messages,
                                   "found_newest": true, "found_oldest": false}))
}

async fn delete(req: HttpRequest, state: web::Data<Shared>, id: web::Path<i64>) -> HttpResponse {
    if let Err(refused) = signed_in(&req) {
        return refused;
    }
    let mut state = state.lock().expect("lock");
    if !state.setup.may_delete {
        return error(
            400,
            "You don't have permission to delete this message",
            "BAD_REQUEST",
        );
    }
    let before = state.messages.len();
    state.messages.retain(|m| m.id != *id);
    if state.messages.len() == before {
        return error(400, "Invalid message(s)", "BAD_REQUEST");
    }
    HttpResponse::Ok().json(json!({"result": "success", "msg": ""}))
}
