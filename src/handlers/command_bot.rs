//! `command_bot`: answers `help`, `ping`, `echo <text>` and `stats` when a bot is mentioned or
//! sent a direct message.

use super::{
    BuildContext, Context, Effects, Handler, HandlerResult, Interest, NoSettings, SettingsError,
};
use crate::db::tables;
use crate::events::{Event, Origin};

pub struct CommandBot;

const COMMANDS: &[(&str, &str)] = &[
    ("help", "list these commands"),
    ("ping", "answer `pong`"),
    ("echo <text>", "repeat the text"),
    ("stats", "events handled and failures per handler"),
];

impl CommandBot {
    fn help() -> String {
        let mut text = String::from("I understand these commands:\n");
        for (command, what) in COMMANDS {
            text.push_str(&format!("* `{command}`: {what}\n"));
        }
        text
    }

    async fn stats(cx: &Context) -> HandlerResult {
        let counts = cx.db.run(tables::event_log::listener_counts).await?;
        if counts.is_empty() {
            return Ok(Some("No events handled yet.".into()));
        }
        let mut text = String::from("| handler | events handled | failures |\n|---|---:|---:|\n");
        for c in counts {
            text.push_str(&format!(
                "| {} | {} | {} |\n",
                c.listener, c.runs, c.failures
            ));
        }
        Ok(Some(text))
    }
}

impl Handler for CommandBot {
    const NAME: &'static str = "command_bot";
    const INTEREST: Interest = Interest::Types(&["message"]);

    type Settings = NoSettings;

    fn build(_: NoSettings, _: &BuildContext<'_>) -> Result<Self, SettingsError> {
        Ok(CommandBot)
    }

    async fn handle(&self, cx: &Context, event: &Event, _effects: &mut Effects) -> HandlerResult {
        // Only messages addressed to a bot (a mention or a direct message) are commands;
        // forwarded traffic is not, nor a message Zulip sends for another trigger (e.g.
        // `all_received`: every message of a conversation the bot is in).
        if !matches!(&event.origin, Origin::Outgoing { trigger, .. } if trigger.is_addressed()) {
            return Ok(None);
        }
        let Some(message) = event.message() else {
            return Ok(None);
        };
        let text = message.command.trim();
        let (word, rest) = match text.split_once(char::is_whitespace) {
            Some((word, rest)) => (word, rest.trim()),
            None => (text, ""),
        };
        match word.to_lowercase().as_str() {
            "" | "help" => Ok(Some(Self::help())),
            "ping" => Ok(Some("pong".into())),
            "echo" if rest.is_empty() => Ok(Some("Usage: `echo <text>`".into())),
            "echo" => Ok(Some(rest.to_string())),
            "stats" => Self::stats(cx).await,
            _ => Ok(Some(format!(
                "I don't know the command `{}`. Say `help` to see what I can do.",
                truncate_word(word)
            ))),
        }
    }
}

fn truncate_word(word: &str) -> String {
    crate::events::text::truncate_chars(&word.replace('`', "'"), 40).0
}
