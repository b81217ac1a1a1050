//! How listeners are configured: `[handlers.<name>]` (the settings of a handler's own
//! listener), `[listeners.<name>]` (more named listeners, with their scope), and the lists
//! of listeners a bot or the forwarder runs. Whether the handler names and settings exist
//! and suit their handlers is checked by the listener registry
//! (`Registry::build` in the listeners module), which owns the handlers.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{QuotaOverrides, RealmSelector};

/// Per-handler settings: `enabled`, plus whatever keys the handler itself reads. `Debug`
/// shows them through [`crate::redact::settings`] (no secrets, URLs cut to their origin).
#[derive(Clone, Default, Deserialize, Serialize)]
pub struct HandlerSettings {
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The listener these settings are for (set by the listener registry; handlers that
    /// record what they did use it to keep listeners of one handler apart).
    #[serde(skip)]
    pub listener: String,
    #[serde(flatten)]
    pub settings: serde_json::Map<String, serde_json::Value>,
    /// The files its `*_file` settings name, read when the configuration was loaded.
    #[serde(skip)]
    pub files: super::SettingFiles,
}

impl fmt::Debug for HandlerSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerSettings")
            .field("enabled", &self.enabled)
            .field(
                "settings",
                &crate::redact::settings(&serde_json::Value::Object(self.settings.clone())),
            )
            .finish()
    }
}

fn default_true() -> bool {
    true
}

/// One `[listeners.<name>]`: a named instance of a compiled-in handler.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// The compiled-in handler this listener runs.
    pub handler: String,
    #[serde(default)]
    pub description: String,
    /// Narrows the handler's event types; empty = all of them.
    #[serde(default)]
    pub events: Vec<String>,
    /// `realms`, `streams` and `users`, written beside the other keys.
    #[serde(flatten)]
    pub scope: Scope,
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The handler's own settings (see `[handlers.<handler>]` in config/default.toml).
    #[serde(default)]
    pub settings: serde_json::Map<String, serde_json::Value>,
    /// This listener's own quotas for its outward actions; none when absent.
    #[serde(default)]
    pub rate_limits: Option<QuotaOverrides>,
    /// The files its `*_file` settings name, read when the configuration was loaded.
    #[serde(skip)]
    pub files: super::SettingFiles,
}

/// The realms, channels and users a listener's events must concern, as configured (the
/// listeners module decides what it admits).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Scope {
    /// Realms (ids or subdomains); empty = every realm.
    #[serde(default)]
    pub realms: Vec<RealmSelector>,
    /// Channels (ids or names); empty = events anywhere, including those in no channel.
    #[serde(default)]
    pub streams: Vec<ChannelSelector>,
    /// The users events are about (sender, actor or person; ids or emails).
    #[serde(default)]
    pub users: Vec<UserSelector>,
}

/// A channel named in a listener's scope.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(
    untagged,
    expecting = "expected a channel id (number) or name (string) in `streams`"
)]
pub enum ChannelSelector {
    Id(i64),
    Name(String),
}

/// A user named in a listener's scope.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(
    untagged,
    expecting = "expected a user id (number) or email (string) in `users`"
)]
pub enum UserSelector {
    Id(i64),
    Email(String),
}

/// The name a list of listeners had before it was called `listeners`; still read, so that
/// existing configuration files keep working.
pub(super) const OLD_LIST_KEY: &str = "handlers";

/// A bot's or the forwarder's list of listeners, given as `listeners` or under the old name
/// `handlers` (giving both is refused at load).
pub(super) struct ListenerList<'a> {
    new: &'a Option<Vec<String>>,
    old: &'a Option<Vec<String>>,
}

impl<'a> ListenerList<'a> {
    pub(super) fn new(new: &'a Option<Vec<String>>, old: &'a Option<Vec<String>>) -> Self {
        ListenerList { new, old }
    }

    /// The names given, or `default` when the list is not given.
    pub(super) fn names(&self, default: &[&str]) -> Vec<String> {
        match self.new.as_ref().or(self.old.as_ref()) {
            Some(names) => names.clone(),
            None => default.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// The key the list was given under: the old one only when the user wrote it.
    pub(super) fn key(&self) -> &'static str {
        if self.new.is_none() && self.old.is_some() {
            OLD_LIST_KEY
        } else {
            "listeners"
        }
    }

    /// Both `listeners` and its old name were given.
    pub(super) fn given_twice(&self) -> bool {
        self.new.is_some() && self.old.is_some()
    }
}
