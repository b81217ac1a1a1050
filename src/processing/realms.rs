//! Which realm id goes with which subdomain. Zulip's outgoing-webhook payload names the
//! sender's realm only by its subdomain (`sender_realm_str`), while a forwarded envelope
//! carries both; a listener may be scoped by either. So that a scope by id works on both
//! paths, a bot may name its realm's id (`[bots.<name>] realm_id`), and the server learns
//! id and subdomain from every forwarded batch; an outgoing event gets its realm's id from the
//! first, else the second.

use dashmap::DashMap;

/// Most realms remembered (an installation has a handful; the forwarder is authenticated, so
/// this only bounds a mistake).
const MAX_REALMS: usize = 10_000;

/// Realm ids by subdomain (lower case), learned from forwarded events.
#[derive(Default)]
pub struct RealmDirectory(DashMap<Box<str>, i64>);

impl RealmDirectory {
    /// Remembers that realm `id` is `subdomain` (a change of subdomain replaces the entry).
    pub fn learn(&self, id: i64, subdomain: &str) {
        if subdomain.is_empty() {
            return;
        }
        let known = self.0.get(subdomain).map(|entry| *entry == id).or_else(|| {
            let lower = subdomain.to_ascii_lowercase();
            self.0.get(lower.as_str()).map(|entry| *entry == id)
        });
        if known == Some(true) {
            return;
        }
        if known.is_none() && self.0.len() >= MAX_REALMS {
            return;
        }
        // A realm renamed: its old subdomain no longer names it.
        self.0.retain(|_, known_id| *known_id != id);
        self.0.insert(subdomain.to_ascii_lowercase().into(), id);
    }

    /// The id of the realm with this subdomain, if a forwarded event has named it.
    pub fn id_of(&self, subdomain: &str) -> Option<i64> {
        self.0
            .get(subdomain.to_ascii_lowercase().as_str())
            .map(|entry| *entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subdomains_are_matched_without_case_and_renames_replace_the_old_name() {
        let realms = RealmDirectory::default();
        assert_eq!(realms.id_of("acme"), None);
        realms.learn(7, "Acme");
        assert_eq!(realms.id_of("acme"), Some(7));
        assert_eq!(realms.id_of("ACME"), Some(7));
        realms.learn(7, "acme-corp");
        assert_eq!(realms.id_of("acme"), None, "renamed");
        assert_eq!(realms.id_of("acme-corp"), Some(7));
        realms.learn(8, "");
        assert_eq!(realms.id_of(""), None);
    }
}
