//! Guards applied to every verified event before it is processed: the realm allow-list and
//! the blocked users from `[filters]`. (The event-age limit is applied where the age is known,
//! on forwarded events.) A filtered event is recorded with its reason, never dropped silently.

use std::collections::HashSet;

use crate::config::{FiltersConfig, RealmSelector};
use crate::events::Realm;

pub struct Filters {
    realm_ids: HashSet<i64>,
    realm_subdomains: HashSet<String>,
    blocked_users: HashSet<i64>,
}

impl Filters {
    pub fn new(config: &FiltersConfig) -> Filters {
        let mut realm_ids = HashSet::new();
        let mut realm_subdomains = HashSet::new();
        for realm in &config.allowed_realms {
            match realm {
                RealmSelector::Id(id) => {
                    realm_ids.insert(*id);
                }
                RealmSelector::Subdomain(name) => {
                    realm_subdomains.insert(name.to_ascii_lowercase());
                }
            }
        }
        Filters {
            realm_ids,
            realm_subdomains,
            blocked_users: config.blocked_users.iter().copied().collect(),
        }
    }

    /// Why an event of `realm` about `user` is not to be processed, if it is not.
    pub fn reject(&self, realm: &Realm, user: Option<i64>) -> Option<String> {
        let restricted = !self.realm_ids.is_empty() || !self.realm_subdomains.is_empty();
        if restricted {
            let by_id = realm.id.is_some_and(|id| self.realm_ids.contains(&id));
            let by_name = realm
                .string_id
                .as_deref()
                .is_some_and(|s| self.realm_subdomains.contains(&s.to_ascii_lowercase()));
            if !by_id && !by_name {
                return Some(format!(
                    "realm {} is not in filters.allowed_realms",
                    describe(realm)
                ));
            }
        }
        match user {
            Some(user) if self.blocked_users.contains(&user) => {
                Some(format!("user {user} is in filters.blocked_users"))
            }
            _ => None,
        }
    }
}

fn describe(realm: &Realm) -> String {
    match (&realm.string_id, realm.id) {
        (Some(s), Some(id)) => format!("`{s}` (id {id})"),
        (Some(s), None) => format!("`{s}`"),
        (None, Some(id)) => format!("id {id}"),
        (None, None) => "(unknown)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn realm(id: Option<i64>, s: Option<&str>) -> Realm {
        Realm {
            id,
            string_id: s.map(str::to_string),
        }
    }

    fn filters(toml: &str) -> Filters {
        let config: FiltersConfig =
            toml::from_str(&format!("max_event_age = \"1h\"\n{toml}")).expect("valid");
        Filters::new(&config)
    }

    #[test]
    fn everything_passes_by_default() {
        assert_eq!(
            filters("").reject(&realm(Some(2), Some("acme")), Some(10)),
            None
        );
    }

    #[test]
    fn realms_are_matched_by_id_or_subdomain() {
        let f = filters("allowed_realms = [2, \"Zulip\"]");
        assert_eq!(f.reject(&realm(Some(2), Some("acme")), None), None);
        assert_eq!(f.reject(&realm(None, Some("zulip")), None), None);
        let why = f
            .reject(&realm(Some(3), Some("other")), None)
            .expect("refused");
        assert!(why.contains("`other` (id 3)"), "{why}");
        assert!(f.reject(&realm(None, None), None).is_some());
    }

    #[test]
    fn blocked_users_are_refused() {
        let f = filters("blocked_users = [13]");
        assert!(
            f.reject(&realm(Some(2), None), Some(13))
                .expect("refused")
                .contains("user 13")
        );
        assert_eq!(f.reject(&realm(Some(2), None), Some(14)), None);
        assert_eq!(f.reject(&realm(Some(2), None), None), None);
    }
}
