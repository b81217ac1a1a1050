//! Checks that run while a value is read (serde `deserialize_with`), so that a value out of
//! range is refused by figment with its key, e.g. ``key `forwarder.workers`: must be between 1
//! and 256``. The fields keep their plain types (`Duration`, `usize`, `SocketAddr`).
//!
//! Rules that relate two keys are in [`super::validate`].

use std::fmt::Display;
use std::net::SocketAddr;
use std::time::Duration;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

/// A duration written like `"10s"`, from `MIN_MS` to `MAX_MS` milliseconds (`u64::MAX`: no
/// upper bound).
pub(super) fn duration<'de, const MIN_MS: u64, const MAX_MS: u64, D>(
    deserializer: D,
) -> Result<Duration, D::Error>
where
    D: Deserializer<'de>,
{
    let value: Duration = humantime_serde::deserialize(deserializer)?;
    let (min, max) = (Duration::from_millis(MIN_MS), Duration::from_millis(MAX_MS));
    if value < min || value > max {
        let show = |d: Duration| humantime::format_duration(d).to_string();
        return Err(D::Error::custom(if MAX_MS == u64::MAX {
            format!("must be at least {}", show(min))
        } else {
            format!("must be between {} and {}", show(min), show(max))
        }));
    }
    Ok(value)
}

/// A whole number from `MIN` to `MAX` (`u64::MAX`: no upper bound).
pub(super) fn count<'de, const MIN: u64, const MAX: u64, T, D>(
    deserializer: D,
) -> Result<T, D::Error>
where
    T: Deserialize<'de> + Copy + TryInto<u64>,
    D: Deserializer<'de>,
{
    let value = T::deserialize(deserializer)?;
    let in_range = value
        .try_into()
        .is_ok_and(|v: u64| (MIN..=MAX).contains(&v));
    if !in_range {
        return Err(D::Error::custom(if MAX == u64::MAX {
            format!("must be at least {MIN}")
        } else {
            format!("must be between {MIN} and {MAX}")
        }));
    }
    Ok(value)
}

/// An address to listen on, `IP:port`.
pub(super) fn address<'de, D>(deserializer: D) -> Result<SocketAddr, D::Error>
where
    D: Deserializer<'de>,
{
    let text = String::deserialize(deserializer)?;
    text.trim()
        .parse()
        .map_err(|_| D::Error::custom(format!("`{text}` is not an address like 127.0.0.1:8080")))
}

/// An optional outbound URL ([`crate::outbound::check_url`]: `https://`, or `http://` on
/// loopback), kept as written. The error does not repeat the URL, which may hold a secret.
pub(super) fn outbound_url<'de, D>(deserializer: D) -> Result<Option<String>, D::Error>
where
    D: Deserializer<'de>,
{
    let url = Option::<String>::deserialize(deserializer)?;
    if let Some(url) = &url {
        crate::outbound::check_url(url).map_err(D::Error::custom)?;
    }
    Ok(url)
}

/// Text that `parse` accepts, kept as written.
pub(super) fn text_where<'de, D, E: Display>(
    deserializer: D,
    parse: impl FnOnce(&str) -> Result<(), E>,
) -> Result<String, D::Error>
where
    D: Deserializer<'de>,
{
    let text = String::deserialize(deserializer)?;
    parse(&text).map_err(D::Error::custom)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::de::IntoDeserializer;
    use serde::de::value::{Error, StrDeserializer, U64Deserializer};

    fn secs(text: &str) -> Result<Duration, Error> {
        let d: StrDeserializer<'_, Error> = text.into_deserializer();
        duration::<1000, 600_000, _>(d)
    }

    #[test]
    fn durations_and_counts_outside_their_range_are_refused() {
        assert_eq!(secs("10s"), Ok(Duration::from_secs(10)));
        let err = secs("0s").unwrap_err().to_string();
        assert!(err.contains("between 1s and 10m"), "{err}");
        let n = |v: u64| {
            let d: U64Deserializer<Error> = v.into_deserializer();
            count::<1, 256, u64, _>(d)
        };
        assert_eq!(n(256), Ok(256));
        assert!(n(0).unwrap_err().to_string().contains("between 1 and 256"));
    }
}
