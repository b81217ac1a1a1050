//! [`EventKey`]: how a forwarded event's id is stored (`inbox.event_id`,
//! `inbox_work.event_id`). The forwarder's ids are UUIDs, 36 characters of text; stored as
//! 16 bytes (behind a one-byte tag), the unique index over them is less than half the size.
//! With random (UUID4) ids nearly every commit changes a different leaf of that index for each
//! event, so its size is what each commit writes to the log (docs/benchmarks.md).
//!
//! Any other id is still accepted and kept as its own text. The encoding is one-to-one, so two
//! ids are the same stored key exactly when they are the same text:
//!
//! - a UUID in its canonical form (lowercase hexadecimal, hyphens at 8, 13, 18 and 23, as
//!   Python's `str(uuid)` writes it) is the byte `0x00` followed by its 16 bytes;
//! - any other id (an uppercase UUID, a UUID without hyphens, any text) is the byte `0x01`
//!   followed by its UTF-8 bytes.

use std::fmt;

use diesel::backend::Backend;
use diesel::deserialize::{self, FromSql};
use diesel::serialize::{self, Output, ToSql};
use diesel::sql_types::Binary;

/// The tag of a UUID in canonical form, followed by its 16 bytes.
const UUID_TAG: u8 = 0x00;
/// The tag of any other id, followed by its UTF-8 text.
const TEXT_TAG: u8 = 0x01;

/// An event id in its stored form. Built from an id with [`EventKey::of`]; read back from the
/// database only when it decodes, so that turning it into the id ([`String::from`]) cannot fail.
#[derive(Clone, PartialEq, Eq, Hash, diesel::AsExpression, diesel::FromSqlRow)]
#[diesel(sql_type = Binary)]
pub struct EventKey(Vec<u8>);

impl EventKey {
    /// The stored form of `id`.
    pub fn of(id: &str) -> EventKey {
        let mut key = Vec::with_capacity(17);
        match canonical_uuid(id.as_bytes()) {
            Some(bytes) => {
                key.push(UUID_TAG);
                key.extend_from_slice(&bytes);
            }
            None => {
                key.reserve(id.len());
                key.push(TEXT_TAG);
                key.extend_from_slice(id.as_bytes());
            }
        }
        EventKey(key)
    }

    /// The stored forms of `ids`, for `IN (…)` look-ups.
    pub fn all<'a>(ids: impl IntoIterator<Item = &'a str>) -> Vec<EventKey> {
        ids.into_iter().map(EventKey::of).collect()
    }

    /// The id this key stores.
    pub fn id(&self) -> String {
        decode(&self.0).unwrap_or_default()
    }
}

impl From<String> for EventKey {
    fn from(id: String) -> EventKey {
        EventKey::of(&id)
    }
}

impl From<EventKey> for String {
    fn from(key: EventKey) -> String {
        key.id()
    }
}

impl fmt::Debug for EventKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventKey({:?})", self.id())
    }
}

/// The 16 bytes of `id` when it is a UUID in canonical form (the `uuid` crate also reads
/// other spellings, which stay text so that the encoding remains one-to-one).
fn canonical_uuid(id: &[u8]) -> Option<[u8; 16]> {
    let uuid = uuid::Uuid::try_parse_ascii(id).ok()?;
    let mut canonical = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let written = uuid.hyphenated().encode_lower(&mut canonical);
    (written.as_bytes() == id).then(|| uuid.into_bytes())
}

/// The id stored as `key`; `None` when `key` is not an encoding [`EventKey::of`] makes.
fn decode(key: &[u8]) -> Option<String> {
    match key.split_first()? {
        (&UUID_TAG, bytes) => {
            let bytes: [u8; 16] = bytes.try_into().ok()?;
            Some(uuid::Uuid::from_bytes(bytes).hyphenated().to_string())
        }
        (&TEXT_TAG, text) => String::from_utf8(text.to_vec()).ok(),
        _ => None,
    }
}

impl<DB> ToSql<Binary, DB> for EventKey
where
    DB: Backend,
    [u8]: ToSql<Binary, DB>,
{
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, DB>) -> serialize::Result {
        <[u8] as ToSql<Binary, DB>>::to_sql(&self.0, out)
    }
}

impl<DB> FromSql<Binary, DB> for EventKey
where
    DB: Backend,
    Vec<u8>: FromSql<Binary, DB>,
{
    fn from_sql(bytes: DB::RawValue<'_>) -> deserialize::Result<Self> {
        let key = <Vec<u8> as FromSql<Binary, DB>>::from_sql(bytes)?;
        match decode(&key) {
            Some(_) => Ok(EventKey(key)),
            None => Err(format!("a stored event id that does not decode: {key:02x?}").into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_uuids_are_sixteen_bytes_behind_a_tag() {
        let id = "0192f0c4-5b6e-7a1b-8c2d-3e4f5a6b7c8d";
        let key = EventKey::of(id);
        assert_eq!(key.0.len(), 17);
        assert_eq!(key.0[0], UUID_TAG);
        assert_eq!(key.0[1..3], [0x01, 0x92]);
        assert_eq!(key.0[16], 0x8d);
        assert_eq!(key.id(), id);
    }

    #[test]
    fn other_ids_keep_their_text() {
        for id in [
            "0192F0C4-5B6E-7A1B-8C2D-3E4F5A6B7C8D",
            "0192f0c45b6e7a1b8c2d3e4f5a6b7c8d",
            "0192f0c4-5b6e-7a1b-8c2d-3e4f5a6b7c8g",
            "0192f0c4_5b6e-7a1b-8c2d-3e4f5a6b7c8d",
            "evt-1",
            "",
            "ünïcødé ✓",
            "0192f0c4-5b6e-7a1b-8c2d-3e4f5a6b7c8d ",
        ] {
            let key = EventKey::of(id);
            assert_eq!(key.0[0], TEXT_TAG, "{id}");
            assert_eq!(&key.0[1..], id.as_bytes());
            assert_eq!(key.id(), id);
        }
    }

    #[test]
    fn the_encoding_is_one_to_one() {
        let lower = "0192f0c4-5b6e-7a1b-8c2d-3e4f5a6b7c8d";
        let upper = lower.to_uppercase();
        assert_ne!(EventKey::of(lower), EventKey::of(&upper));
        // A 16-byte text makes a key as long as a UUID's, but with the other tag.
        let sixteen = "abcdefghijklmnop";
        assert_eq!(EventKey::of(sixteen).0.len(), 17);
        assert_eq!(EventKey::of(sixteen).0[0], TEXT_TAG);
        assert_eq!(EventKey::of(sixteen).id(), sixteen);
    }

    #[test]
    fn random_ids_come_back_as_they_were_sent() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(14);
        let alphabet: Vec<char> = "0123456789abcdefABCDEF-_ xyzé✓".chars().collect();
        let mut seen = std::collections::HashMap::new();
        for _ in 0..20_000 {
            let id: String = if rng.random_bool(0.3) {
                uuid::Uuid::from_u128(rng.random()).hyphenated().to_string()
            } else {
                let len = rng.random_range(0..40);
                (0..len)
                    .map(|_| alphabet[rng.random_range(0..alphabet.len())])
                    .collect()
            };
            let key = EventKey::of(&id);
            assert_eq!(key.id(), id);
            // One id per key: the encoding never merges two ids.
            if let Some(other) = seen.insert(key, id.clone()) {
                assert_eq!(other, id);
            }
        }
    }

    #[test]
    fn only_encodings_of_ids_decode() {
        assert_eq!(decode(&[]), None);
        assert_eq!(decode(&[UUID_TAG, 1, 2, 3]), None);
        assert_eq!(decode(&[TEXT_TAG, 0xff, 0xfe]), None);
        assert_eq!(decode(&[7, b'a']), None);
        assert_eq!(decode(&[TEXT_TAG, b'a']).as_deref(), Some("a"));
    }
}
