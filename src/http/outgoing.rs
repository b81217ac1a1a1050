//! `POST /zulip/outgoing`, `POST /` and `POST /bots/{name}`: Zulip's outgoing webhooks.
//!
//! A valid request always gets a 2xx answer, because Zulip posts a public "Failure!" message
//! for anything else. A trigger this server does not know still runs the bot's listeners, but
//! gets no reply (see [`crate::events::Trigger::Other`]). Misconfiguration (wrong token 401, unknown bot 404) and broken requests
//! (400, 413) get a JSON error, which Zulip shows so that the administrator can fix it.

use actix_web::{HttpRequest, HttpResponse, http::header, web};
use tracing::Instrument;

use super::{ApiError, AppState, json_ok, read_body};
use crate::events::outgoing::Body;
use crate::processing::bots::BotId;
use crate::processing::outgoing::NO_REPLY;

/// `POST /zulip/outgoing` and `POST /`: the bot is named by the body.
pub async fn by_body(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    handle(req, payload, state, None).await
}

/// `POST /bots/{name}`: the bot is named by the path.
pub async fn by_path(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let bot = state
        .outgoing
        .bots
        .by_name(&name)
        .ok_or_else(|| ApiError::NotFound(format!("no bot named `{name}` is configured")))?;
    handle(req, payload, state, Some(bot)).await
}

async fn handle(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    path_bot: Option<BotId>,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(&req, payload, state.max_body_bytes, &state.body).await?;
    let slack = is_slack(&req, &body);
    let bots = &state.outgoing.bots;
    let payload = Body::parse(slack, &body)?;
    let bot_id = authenticate(&state, path_bot, payload.bot_email(), payload.token())?;
    let trigger = payload.trigger();
    let bot = bots.get(bot_id);
    let trigger_name = trigger.as_str().to_string();
    let span = tracing::info_span!(
        "outgoing",
        bot = %bot.name,
        message_id = tracing::field::Empty,
        trigger = trigger.as_str(),
    );
    let event = payload.into_event(
        bot.name.clone(),
        trigger,
        bot.full_name.as_deref(),
        body.clone(),
    );
    let message_id = event.message_id();
    span.record("message_id", message_id);
    let started = std::time::Instant::now();
    let answer = state.outgoing.handle(bot_id, event).instrument(span).await;
    tracing::info!(
        target: super::TRAFFIC_LOG,
        bot = %bot.name,
        message_id,
        trigger = %trigger_name,
        replied = answer.reply.is_some(),
        retry = answer.from_record,
        ms = started.elapsed().as_millis() as u64,
        "outgoing webhook answered"
    );
    if slack {
        let body = match &answer.reply {
            Some(text) => serde_json::json!({ "text": &**text }).to_string(),
            None => NO_REPLY.to_string(),
        };
        return Ok(json_ok(body));
    }
    Ok(json_ok(answer.body.to_string()))
}

/// Finds the bot and checks the token: by path, else by `bot_email`, else by the token alone.
fn authenticate(
    state: &AppState,
    path_bot: Option<BotId>,
    bot_email: Option<&str>,
    token: &str,
) -> Result<BotId, ApiError> {
    let bots = &state.outgoing.bots;
    if token.is_empty() {
        return Err(ApiError::Unauthorized(
            "the request carries no token; Zulip sends the bot's outgoing webhook token".into(),
        ));
    }
    let bot_id = match (path_bot, bot_email) {
        (Some(id), _) => id,
        (None, Some(email)) => bots.by_email(email).ok_or_else(|| {
            ApiError::NotFound(format!(
                "no configured bot has the email `{email}`; add it under [bots.<name>]"
            ))
        })?,
        (None, None) => bots
            .by_token(token)
            .ok_or_else(|| ApiError::Unauthorized("the token matches no configured bot".into()))?,
    };
    if !bots.token_ok(bot_id, token) {
        tracing::warn!(bot = %bots.get(bot_id).name, "outgoing webhook with a wrong token");
        return Err(ApiError::Unauthorized(format!(
            "the token does not match the one configured for bot `{}`",
            bots.get(bot_id).name
        )));
    }
    Ok(bot_id)
}

/// Slack-format bodies come form-encoded; a JSON object sent with a form Content-Type (as
/// `curl -d` does) is still read as Zulip's format.
fn is_slack(req: &HttpRequest, body: &[u8]) -> bool {
    let json_like = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    !json_like
        && req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.trim_start()
                    .to_ascii_lowercase()
                    .starts_with("application/x-www-form-urlencoded")
            })
}
