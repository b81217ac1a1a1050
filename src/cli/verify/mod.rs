//! `zulip-listeners verify`: the end-to-end check an administrator runs against their own
//! Zulip once everything is installed. Through Zulip's REST API it mentions the outgoing bot
//! (in a channel, or in a direct message) as a person, then watches three things at once: the
//! bot's reply in Zulip, the webhook in this server's event log and, where the forwarder is
//! installed, the forwarded `message` event in the inbox (both through the admin API). Each
//! step is a checklist line with its latency (the look of `doctor`), each failure a fix; the
//! test messages are deleted where the key may. This file holds the options and the order of
//! the steps; [`watch`] the waiting, [`lines`] the lines of the watched steps, [`advice`] the
//! fixes.

mod advice;
mod lines;
mod watch;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::json;

use crate::cli::doctor::{Check, Status, summary};
use crate::clock::now_ms;
use crate::config::{Config, Secret};
use crate::output::out;
use crate::zulip_api::{BotApi, Destination, OUTGOING_WEBHOOK_BOT, ZulipApiError, ZulipClient};
use lines::{forwarder_line, ms, reply_line, webhook_line};
use watch::{Admin, Watch};

/// The variable holding the API key when neither `--api-key-file` nor `--zuliprc` gives it.
pub const API_KEY_VAR: &str = "ZULIP_LISTENERS_VERIFY_API_KEY";

/// How long one request to Zulip or to this server may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Options of `verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The Zulip user who sends the test mention: a person (Zulip does not call outgoing
    /// webhooks for messages sent by bots). Default: the zuliprc's email.
    #[arg(long, value_name = "EMAIL")]
    pub email: Option<String>,
    /// A file holding that user's API key (else the zuliprc's, else the environment variable
    /// ZULIP_LISTENERS_VERIFY_API_KEY). Never given on the command line.
    #[arg(long, value_name = "FILE")]
    pub api_key_file: Option<PathBuf>,
    /// A zuliprc of that user (Personal settings → Account & privacy → API key), for its
    /// `email`, `key` and `site`.
    #[arg(long, value_name = "FILE")]
    pub zuliprc: Option<PathBuf>,
    /// Zulip's base URL (default: the zuliprc's `site`, else the bot's `site`).
    #[arg(long, value_name = "URL")]
    pub site: Option<String>,
    /// The outgoing-webhook bot: the name of a [bots.<name>] or the bot's email (default: the
    /// only bot configured).
    #[arg(long, value_name = "NAME|EMAIL")]
    pub bot: Option<String>,
    /// Mention the bot in this channel (default: send the bot a direct message).
    #[arg(long, value_name = "NAME")]
    pub channel: Option<String>,
    /// The topic of the channel message.
    #[arg(long, value_name = "TOPIC", default_value = "zulip-listeners verify")]
    pub topic: String,
    /// What follows the mention; the bot's listeners must answer it (command_bot answers
    /// `ping` with `pong`).
    #[arg(long, value_name = "TEXT", default_value = "ping")]
    pub content: String,
    /// This server's base URL for the admin API (default: http://<server.bind>).
    #[arg(long, value_name = "URL")]
    pub admin_url: Option<String>,
    /// Check the forwarder even though this configuration has no [forwarder] secrets.
    #[arg(long)]
    pub forwarder: bool,
    /// How long to wait for the reply, the webhook and the forwarded event.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// What the steps need, resolved from the options and the configuration.
struct Plan {
    /// The person posting (their key in `api_key`).
    user: BotApi,
    bot_email: String,
    /// The `[bots.<name>]` of the bot, when configured here.
    bot_name: Option<String>,
    channel: Option<(String, String)>,
    content: String,
    admin: Result<Admin, Check>,
    forwarder: bool,
    timeout: Duration,
}

/// The checklist so far; each line is printed as it is added.
#[derive(Default)]
struct Report(Vec<Check>);

impl Report {
    fn push(&mut self, check: Check) {
        out!("{}", check.render());
        self.0.push(check);
    }

    fn extend(&mut self, checks: impl IntoIterator<Item = Check>) {
        for check in checks {
            self.push(check);
        }
    }
}

/// Runs the steps, printing each line as it is decided; returns 0 only when none failed.
pub fn run(config: &Config, args: &VerifyArgs) -> ExitCode {
    let mut report = Report::default();
    match plan(config, args) {
        Ok(plan) => match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => {
                runtime.block_on(verify(&plan, &mut report));
                runtime.shutdown_timeout(Duration::from_secs(1));
            }
            Err(error) => report.push(Check::fail(
                format!("cannot start the HTTP client: {error}"),
                "the system is out of resources (threads, file descriptors); retry",
            )),
        },
        Err(check) => report.push(check),
    }
    out!("{}", summary(&report.0));
    if report.0.iter().any(|c| c.status == Status::Fail) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn plan(config: &Config, args: &VerifyArgs) -> Result<Plan, Check> {
    let rc = match &args.zuliprc {
        Some(path) => Some(advice::read_zuliprc(path)?),
        None => None,
    };
    let (bot_name, bot) = advice::pick_bot(config, args.bot.as_deref())?;
    let site = args
        .site
        .clone()
        .or_else(|| rc.as_ref().and_then(|rc| rc.site.clone()))
        .or_else(|| {
            let bot = bot_name.as_ref().and_then(|n| config.bots.get(n));
            bot.and_then(|b| b.site.clone())
        })
        .ok_or_else(|| {
            Check::fail(
                "no Zulip site to talk to",
                "give --site https://chat.example.com (or a --zuliprc, or the bot's `site` in its [bots.<name>])",
            )
        })?;
    let site = crate::outbound::check_url(&site)
        .map_err(|problem| {
            Check::fail(
                format!("--site {problem}"),
                "give Zulip's base URL, e.g. https://chat.example.com",
            )
        })?
        .to_string();
    let email = args
        .email
        .clone()
        .or_else(|| rc.as_ref().map(|rc| rc.email.clone()))
        .ok_or_else(|| {
            Check::fail(
                "no Zulip user to post the test mention as",
                "give --email with the email of a person who may post in the channel (or a --zuliprc)",
            )
        })?;
    let api_key = advice::api_key(args.api_key_file.as_deref(), rc.as_ref())?;
    let user = BotApi {
        site: site.trim_end_matches('/').to_string(),
        email,
        api_key,
    };
    Ok(Plan {
        user,
        bot_email: bot,
        bot_name,
        channel: args
            .channel
            .as_ref()
            .map(|c| (c.clone(), args.topic.clone())),
        content: args.content.clone(),
        admin: if config.admin.named_tokens().is_empty() {
            Err(Check::fail(
                "this configuration has no [admin] token",
                advice::NO_ADMIN_TOKEN,
            ))
        } else {
            Admin::new(config, args.admin_url.as_deref(), REQUEST_TIMEOUT)
        },
        forwarder: args.forwarder || !config.forwarder.secrets.is_empty(),
        timeout: args.timeout,
    })
}

/// The steps in order; the first three stop the run when they fail (nothing after them can
/// work).
async fn verify(plan: &Plan, checks: &mut Report) {
    let http = match crate::outbound::client(REQUEST_TIMEOUT) {
        Ok(http) => http,
        Err(error) => {
            checks.push(Check::fail(
                format!("cannot build the HTTP client: {error}"),
                "the system's TLS roots or resources are missing; retry",
            ));
            return;
        }
    };
    let zulip = ZulipClient::with_client(http);
    let site = &plan.user.site;

    // 1. The person's key.
    let started = std::time::Instant::now();
    match zulip.me(&plan.user).await {
        Ok(me) if me.is_bot => {
            checks.push(Check::fail(
                format!("{} is a bot: Zulip calls no outgoing webhook for a bot's message", me.email),
                "use the email and API key of a person (Personal settings → Account & privacy → API key)",
            ));
            return;
        }
        Ok(_) => checks.push(Check::ok(format!(
            "Zulip at {site} accepts the API key of {} ({})",
            plan.user.email,
            ms(crate::clock::millis(started.elapsed()))
        ))),
        Err(error) => {
            checks.push(Check::fail(
                format!(
                    "Zulip at {site}: signing in as {} failed: {error}",
                    plan.user.email
                ),
                advice::sign_in(&error, site),
            ));
            return;
        }
    }

    // 2. The bot, as Zulip knows it.
    let bot = match zulip.user(&plan.user, &plan.bot_email).await {
        Ok(bot) if bot.bot_type != Some(OUTGOING_WEBHOOK_BOT) || !bot.is_active => {
            let what = if bot.is_active {
                format!("{} is not an outgoing-webhook bot in Zulip", plan.bot_email)
            } else {
                format!("the bot {} is deactivated in Zulip", plan.bot_email)
            };
            checks.push(Check::fail(what, advice::not_outgoing(bot.is_active)));
            return;
        }
        Ok(bot) => bot,
        Err(error) => {
            checks.push(Check::fail(
                format!("Zulip does not show the bot {}: {error}", plan.bot_email),
                advice::bot_unknown(plan.bot_name.as_deref()),
            ));
            return;
        }
    };
    checks.push(Check::ok(format!(
        "{} is an outgoing-webhook bot in Zulip (user {}, \"{}\")",
        plan.bot_email, bot.user_id, bot.full_name
    )));

    // 3. The mention.
    let text = format!("@**{}|{}** {}", bot.full_name, bot.user_id, plan.content);
    let (destination, narrow, place) = match &plan.channel {
        Some((channel, topic)) => (
            Destination::Channel {
                to: channel.clone(),
                topic: topic.clone(),
            },
            json!([
                {"operator": "stream", "operand": channel},
                {"operator": "topic", "operand": topic},
                {"operator": "sender", "operand": bot.user_id},
            ]),
            format!("#{channel} > {topic}"),
        ),
        None => (
            Destination::Direct {
                to: json!([bot.user_id]).to_string(),
            },
            json!([
                {"operator": "dm", "operand": [bot.user_id]},
                {"operator": "sender", "operand": bot.user_id},
            ]),
            "a direct message to the bot".to_string(),
        ),
    };
    let sent_at = now_ms();
    let mention = match zulip.send_message(&plan.user, &destination, &text).await {
        Ok(Some(id)) => id,
        Ok(None) => {
            checks.push(Check::fail(
                "Zulip accepted the mention but named no message id",
                "check --site: it must be Zulip's base URL",
            ));
            return;
        }
        Err(error) => {
            checks.push(Check::fail(
                format!("sending the mention in {place} failed: {error}"),
                advice::send(&error, plan.channel.is_some()),
            ));
            return;
        }
    };
    checks.push(Check::ok(format!(
        "mention sent in {place}: message {mention} ({})",
        ms(now_ms() - sent_at)
    )));

    // 4.–5. The webhook, the reply and the forwarded event, watched together.
    eprintln!(
        "waiting up to {} for the webhook, the bot's reply{} …",
        humantime::format_duration(plan.timeout),
        if plan.forwarder {
            " and the forwarded event"
        } else {
            ""
        }
    );
    let watch = Watch {
        zulip: &zulip,
        user: &plan.user,
        admin: plan.admin.as_ref().ok(),
        narrow: &narrow,
        mention,
        bot_id: bot.user_id,
        since_ms: sent_at,
        forwarder: plan.forwarder,
    };
    let seen = watch.run(plan.timeout).await;
    checks.push(webhook_line(plan, &seen, sent_at));
    checks.push(reply_line(plan, &seen, sent_at));
    checks.push(forwarder_line(plan, &seen, sent_at));

    // 6. Clean up.
    let mut ids = vec![mention];
    ids.extend(watch.bot_messages().await);
    checks.extend(delete(&zulip, &plan.user, &ids).await);
}

/// Deletes the test messages; lacking the permission is a note.
async fn delete(zulip: &ZulipClient, user: &BotApi, ids: &[i64]) -> Vec<Check> {
    let mut deleted = 0;
    let mut kept = Vec::new();
    let mut checks = Vec::new();
    for &id in ids {
        match zulip.delete_message(user, id).await {
            Ok(()) => deleted += 1,
            Err(ZulipApiError::Rejected { status, message }) if status == 400 || status == 403 => {
                kept.push((id, message));
            }
            Err(error) => checks.push(Check::fail(
                format!("deleting test message {id} failed: {error}"),
                "delete it by hand in Zulip",
            )),
        }
    }
    if deleted > 0 {
        checks.insert(0, Check::ok(format!("test messages deleted ({deleted})")));
    }
    if let Some((_, reason)) = kept.first() {
        let list: Vec<String> = kept.iter().map(|(id, _)| id.to_string()).collect();
        checks.push(Check::note(format!(
            "test message(s) {} left in Zulip: not permitted to delete them ({reason}); delete them by hand, or run verify as an administrator",
            list.join(", ")
        )));
    }
    checks
}

/// A secret read from a file, trimmed; the error names the file, never its content.
fn read_secret(path: &std::path::Path, what: &str) -> Result<Secret, Check> {
    match std::fs::read_to_string(path) {
        Ok(text) if !text.trim().is_empty() => Ok(Secret::new(text.trim())),
        Ok(_) => Err(Check::fail(
            format!("{what} {} is empty", path.display()),
            "write the API key into it (Personal settings → Account & privacy → API key)",
        )),
        Err(error) => Err(Check::fail(
            format!("{what} {} cannot be read: {error}", path.display()),
            "check the path and that this user may read it",
        )),
    }
}
