//! What a listener's scope (`config::Scope`: the realms, channels and users its events must
//! concern) admits. An empty list does not restrict; names are compared without regard to
//! case, as Zulip does.

use crate::config::{ChannelSelector, RealmSelector, Scope, UserSelector};
use crate::events::{Event, EventKind};

impl Scope {
    /// Whether `event` is within every non-empty part of the scope. An event that names no
    /// channel (a direct message, presence) is outside a scope that lists channels; one whose
    /// user is unknown is outside a scope that lists users. A deletion is within the scope of
    /// its realm whatever the channels and users: it carries no user and no channel name, and
    /// only erases (a message the listener never stored is not touched).
    pub fn admits(&self, event: &Event) -> bool {
        if matches!(event.kind, EventKind::DeleteMessage(_)) {
            return self.admits_realm(event);
        }
        self.admits_realm(event) && self.admits_channel(event) && self.admits_user(event)
    }

    pub fn is_unrestricted(&self) -> bool {
        self.realms.is_empty() && self.streams.is_empty() && self.users.is_empty()
    }

    fn admits_realm(&self, event: &Event) -> bool {
        self.realms.is_empty()
            || self.realms.iter().any(|wanted| match wanted {
                RealmSelector::Id(id) => event.realm.id == Some(*id),
                RealmSelector::Subdomain(name) => event
                    .realm
                    .string_id
                    .as_deref()
                    .is_some_and(|s| s.eq_ignore_ascii_case(name)),
            })
    }

    fn admits_channel(&self, event: &Event) -> bool {
        if self.streams.is_empty() {
            return true;
        }
        let channels = channels_of(event);
        self.streams.iter().any(|wanted| {
            channels.iter().any(|(id, name)| match wanted {
                ChannelSelector::Id(want) => *id == Some(*want),
                ChannelSelector::Name(want) => name
                    .as_deref()
                    .is_some_and(|n| n.to_lowercase() == want.to_lowercase()),
            })
        })
    }

    fn admits_user(&self, event: &Event) -> bool {
        if self.users.is_empty() {
            return true;
        }
        let email = email_of(event);
        self.users.iter().any(|wanted| match wanted {
            UserSelector::Id(id) => event.user_id == Some(*id),
            UserSelector::Email(want) => email.is_some_and(|e| e.eq_ignore_ascii_case(want)),
        })
    }
}

/// (id, name) of every channel an event concerns, as far as the event says.
fn channels_of(event: &Event) -> Vec<(Option<i64>, Option<String>)> {
    let from_objects = |list: &[serde_json::Value]| -> Vec<(Option<i64>, Option<String>)> {
        list.iter()
            .map(|v| {
                (
                    v.get("stream_id").and_then(serde_json::Value::as_i64),
                    v.get("name")
                        .and_then(serde_json::Value::as_str)
                        .map(str::to_string),
                )
            })
            .collect()
    };
    match &event.kind {
        EventKind::Message(m) if m.stream_id.is_some() || m.channel.is_some() => {
            vec![(m.stream_id, m.channel.clone())]
        }
        EventKind::UpdateMessage(u) => {
            let mut out = Vec::new();
            if u.stream_id.is_some() || u.stream_name.is_some() {
                out.push((u.stream_id, u.stream_name.clone()));
            }
            if let Some(id) = u.new_stream_id {
                out.push((Some(id), None));
            }
            out
        }
        EventKind::DeleteMessage(d) => d.stream_id.map(|id| (Some(id), None)).into_iter().collect(),
        EventKind::Typing(t) => t.stream_id.map(|id| (Some(id), None)).into_iter().collect(),
        EventKind::Subscription(s) => {
            let mut out = from_objects(&s.subscriptions);
            out.extend(s.stream_ids.iter().map(|id| (Some(*id), None)));
            out.extend(s.stream_id.map(|id| (Some(id), None)));
            out
        }
        EventKind::Stream(s) => {
            let mut out = from_objects(&s.streams);
            out.extend(s.stream_ids.iter().map(|id| (Some(*id), None)));
            if s.stream_id.is_some() || s.name.is_some() {
                out.push((s.stream_id, s.name.clone()));
            }
            out
        }
        _ => Vec::new(),
    }
}

/// The email of the user an event is about, when the event carries it.
fn email_of(event: &Event) -> Option<&str> {
    match &event.kind {
        EventKind::Message(m) => m.sender_email.as_deref(),
        EventKind::Reaction(r) => r.user.as_ref().and_then(|u| u.email.as_deref()),
        EventKind::Typing(t) => t.sender.as_ref().and_then(|u| u.email.as_deref()),
        EventKind::RealmUser(r) => r.person.as_ref().and_then(|p| p.email.as_deref()),
        _ => None,
    }
}
