//! What `verify` reads before it starts (the bot to mention, the person's zuliprc and API
//! key) and the fix it prints under each failed step: one text per cause, in the terms of the
//! place to look (Zulip's bot settings, `/etc/zulip/zulip.conf`, supervisor, this
//! configuration).

use std::path::Path;

use super::read_secret;
use super::watch::{AdminError, Webhook};
use crate::cli::doctor::Check;
use crate::config::{Config, Secret};
use crate::zulip_api::ZulipApiError;

/// The fix when this configuration has no admin token.
pub(super) const NO_ADMIN_TOKEN: &str = "verify reads the event log through the admin API: give it the running server's configuration (--config), with [admin] token or token_file set (and the server restarted after setting it)";

/// The fix when the forwarded event did not arrive.
pub(super) const FORWARDER_MISSING: &str = "the forwarder is not running or cannot reach this server: on the Zulip server, `supervisorctl status zulip-listeners-forwarder` and its log (/var/log/zulip/zulip_listeners_forwarder.log: a 401 there means the signing secrets differ); ZULIP_LISTENERS_URL must name this server's /zulip/events, ZULIP_LISTENERS_REALMS (if set) the organisation, and \"message\" must be among ZULIP_LISTENERS_EVENT_TYPES (forwarder/README.md)";

/// The `[api]` section of a zuliprc.
pub(super) struct Zuliprc {
    pub email: String,
    pub key: Option<Secret>,
    pub site: Option<String>,
}

pub(super) fn read_zuliprc(path: &Path) -> Result<Zuliprc, Check> {
    let fix = "give the zuliprc downloaded from Zulip (Personal settings → Account & privacy → API key → Download zuliprc)";
    let ini = ini::Ini::load_from_file(path).map_err(|e| {
        Check::fail(
            format!("--zuliprc {} cannot be read: {e}", path.display()),
            fix,
        )
    })?;
    let section = ini.section(Some("api"));
    let get = |key: &str| {
        section
            .and_then(|s| s.get(key))
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    let email = get("email").ok_or_else(|| {
        Check::fail(
            format!("--zuliprc {} has no [api] email", path.display()),
            fix,
        )
    })?;
    Ok(Zuliprc {
        email: email.to_string(),
        key: get("key").map(Secret::new),
        site: get("site").map(str::to_string),
    })
}

/// The person's API key: `--api-key-file`, the zuliprc's `key`, or the environment.
pub(super) fn api_key(file: Option<&Path>, rc: Option<&Zuliprc>) -> Result<Secret, Check> {
    if let Some(path) = file {
        return read_secret(path, "--api-key-file");
    }
    if let Some(key) = rc.and_then(|rc| rc.key.clone()) {
        return Ok(key);
    }
    match std::env::var(super::API_KEY_VAR) {
        Ok(key) if !key.trim().is_empty() => Ok(Secret::new(key.trim())),
        _ => Err(Check::fail(
            "no API key for the user who posts the test mention",
            format!(
                "give --api-key-file FILE (or --zuliprc FILE, or the variable {}) with that user's key from Personal settings → Account & privacy → API key",
                super::API_KEY_VAR
            ),
        )),
    }
}

/// The bot to mention: its `[bots.<name>]` (when configured here) and its email.
pub(super) fn pick_bot(
    config: &Config,
    wanted: Option<&str>,
) -> Result<(Option<String>, String), Check> {
    let names = || config.bots.keys().cloned().collect::<Vec<_>>().join(", ");
    match wanted {
        Some(wanted) => {
            let found = config.bots.iter().find(|(name, bot)| {
                name.as_str() == wanted || bot.email.eq_ignore_ascii_case(wanted)
            });
            match found {
                Some((name, bot)) => Ok((Some(name.clone()), bot.email.clone())),
                None if wanted.contains('@') => Ok((None, wanted.to_string())),
                None => Err(Check::fail(
                    format!("no bot named `{wanted}` in this configuration"),
                    format!("give --bot with one of: {} (or the bot's email)", names()),
                )),
            }
        }
        None => {
            let mut bots = config.bots.iter();
            match (bots.next(), bots.next()) {
                (Some((name, bot)), None) => Ok((Some(name.clone()), bot.email.clone())),
                (None, _) => Err(Check::fail(
                    "no bot is configured here",
                    "give --bot with the outgoing bot's email, or the configuration (--config) that defines [bots.<name>]",
                )),
                (Some(_), Some(_)) => Err(Check::fail(
                    "several bots are configured",
                    format!("say which to mention: --bot with one of {}", names()),
                )),
            }
        }
    }
}

pub(super) fn sign_in(error: &ZulipApiError, site: &str) -> String {
    match error {
        ZulipApiError::Rejected { status: 401, .. } => "the API key is not that user's: copy it from Personal settings → Account & privacy → API key into the --api-key-file (or zuliprc), with --email the same user's".into(),
        ZulipApiError::Rejected { .. } | ZulipApiError::Unexpected(_) => format!(
            "{site} did not answer as Zulip's API: --site must be Zulip's base URL (e.g. https://chat.example.com, no path)"
        ),
        ZulipApiError::Http(_) => format!(
            "check --site (scheme, host name, port), DNS, any proxy and the TLS certificate; try `curl {site}/api/v1/server_settings` from this machine"
        ),
    }
}

pub(super) fn not_outgoing(active: bool) -> &'static str {
    if active {
        "mention an Outgoing webhook bot (Personal settings → Bots → Add a new bot → Outgoing webhook, Endpoint URL …/zulip/outgoing), and give its email to --bot / bots.<name>.email"
    } else {
        "reactivate the bot (Organization settings → Bots), or create a new outgoing-webhook bot"
    }
}

pub(super) fn bot_unknown(name: Option<&str>) -> String {
    let key = name.map_or_else(|| "--bot".to_string(), |n| format!("bots.{n}.email"));
    format!(
        "{key} must be the bot's email exactly as Zulip shows it (Personal settings → Bots), in the organisation of --site"
    )
}

pub(super) fn send(error: &ZulipApiError, channel: bool) -> String {
    match error {
        ZulipApiError::Rejected { .. } if channel => "--channel must name a channel this user may post in (or leave --channel out to send the bot a direct message)".into(),
        ZulipApiError::Rejected { .. } => "this user may not send the bot a direct message (the organisation restricts direct messages): give a --channel the user may post in".into(),
        ZulipApiError::Unexpected(_) | ZulipApiError::Http(_) => "Zulip did not take the message; retry, and see Zulip's server log".into(),
    }
}

pub(super) fn admin(error: &AdminError) -> String {
    match error {
        AdminError::Unauthorized => "wrong admin token: [admin] token (or token_file) of this configuration must be the running server's (a changed token takes effect when the server restarts)".into(),
        AdminError::Off => "the running server has no [admin] token: set [admin] token_file in its configuration and restart it (`systemctl restart zulip-listeners`)".into(),
        AdminError::NoRoute(_) => "the running server does not have this admin route: upgrade it to this version".into(),
        AdminError::Unreachable(_) => "is the server running (`systemctl status zulip-listeners`)? --admin-url must reach it (default: http://<server.bind> of this configuration)".into(),
        AdminError::Other(..) => "see the server's log (`journalctl -u zulip-listeners`)".into(),
    }
}

/// Why Zulip's webhook did not arrive, from what Zulip posted instead of the reply.
pub(super) fn webhook_missing(failure: Option<&str>, bot: Option<&str>) -> String {
    let token_key = bot.map_or_else(
        || "bots.<name>.token".to_string(),
        |n| format!("bots.{n}.token"),
    );
    let status = failure
        .and_then(|f| f.split("responded with ").nth(1))
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|code| code.parse::<u16>().ok());
    match (status, failure) {
        (Some(401), _) => format!(
            "this server refused Zulip's token: {token_key} (or token_file) must be the bot's outgoing webhook token from Zulip (the bot's botserverrc: Personal settings → Bots → download), then restart the server"
        ),
        (Some(404), _) => "the bot's Endpoint URL reaches this server but names no bot configured here: use …/zulip/outgoing with bots.<name>.email the bot's email, or …/bots/<name>".into(),
        (Some(407), _) => smokescreen("Zulip's outgoing proxy (Smokescreen) refused the Endpoint URL's address"),
        (Some(502..=504), _) => "the reverse proxy in front of this server could not reach it: is the server running (`systemctl status zulip-listeners`), and does the proxy's upstream match server.bind?".into(),
        (Some(code), _) => format!(
            "the bot's Endpoint URL in Zulip's bot settings reaches something that answered {code}, not this server's webhook route (…/zulip/outgoing or …/bots/<name>): check the URL and the reverse proxy"
        ),
        (None, Some(f)) if f.contains("unavailable") => smokescreen("Zulip could not connect to the bot's Endpoint URL"),
        (None, Some(_)) => "the bot's Endpoint URL in Zulip's bot settings reaches something that is not this server's webhook route: check the URL and the reverse proxy".into(),
        (None, None) => smokescreen("Zulip did not reach this server"),
    }
}

fn smokescreen(what: &str) -> String {
    format!(
        "{what}: check the bot's endpoint URL in Zulip's bot settings (Personal settings → Bots: …/zulip/outgoing through your reverse proxy) and that it answers from the Zulip server (`curl -X POST <URL>`); Smokescreen refuses private addresses: allow this server's with [http_proxy] allow_addresses (or allow_ranges) in /etc/zulip/zulip.conf, then run scripts/zulip-puppet-apply; and that Zulip's queue workers run (`supervisorctl status` on the Zulip server)"
    )
}

/// Why no reply came although (or because) the webhook did.
pub(super) fn no_reply(webhook: Option<&Webhook>, content: &str, bot: Option<&str>) -> String {
    let key = bot.map_or_else(
        || "bots.<name>.listeners".to_string(),
        |n| format!("bots.{n}.listeners"),
    );
    match webhook {
        Some(Webhook {
            failure: Some(failure),
            ..
        }) => format!(
            "a listener failed ({failure}): see the server's log and `zulip-listeners listeners show <name>`"
        ),
        Some(_) => format!(
            "the bot's listeners gave no answer to `{content}`: {key} must include one that replies (command_bot answers `ping`), or give --content something they answer; a reply that missed the reply deadline is posted through the REST API only with the bot's api_key and site"
        ),
        None => "no webhook arrived, so no reply could come: fix the webhook step first".into(),
    }
}
