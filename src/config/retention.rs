//! `[retention]`: how long event logs, statistics and personal data are kept.

use std::time::Duration;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

use super::checked;

/// Longest retention period accepted, in days (a century).
pub const MAX_RETENTION_DAYS: u32 = 36_500;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Event-log rows, finished inbox rows and statistics older than this many days are
    /// deleted by a daily pass; 0 keeps everything.
    #[serde(deserialize_with = "days")]
    pub retention_days: u32,
    /// Length of one `listener_stats` interval, aggregated in the background.
    #[serde(deserialize_with = "checked::duration::<60_000, { u64::MAX }, _>")]
    pub aggregation_interval: Duration,
    /// Rows deleted per transaction.
    #[serde(deserialize_with = "checked::count::<1, { u64::MAX }, _, _>")]
    pub batch_size: i64,
    /// Stored messages have their content and personal columns erased this many days after
    /// they were stored; 0 keeps them.
    #[serde(deserialize_with = "days")]
    pub message_retention_days: u32,
    /// `user_activity` rows of users not seen for this many days are deleted; 0 keeps them.
    #[serde(deserialize_with = "days")]
    pub activity_retention_days: u32,
    /// Keyword-alert records older than this many days are deleted; 0 keeps them.
    #[serde(deserialize_with = "days")]
    pub alert_retention_days: u32,
    /// Dead letters (status `dead`) unchanged for this many days are discarded by the daily
    /// pass, with the reason "expired after N days" in the audit trail; 0 keeps them.
    #[serde(deserialize_with = "days")]
    pub dead_letter_days: u32,
}

/// A number of days, at most [`MAX_RETENTION_DAYS`]; 0 keeps everything.
fn days<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    let days = u32::deserialize(deserializer)?;
    if days > MAX_RETENTION_DAYS {
        return Err(D::Error::custom(format!(
            "{days} is more than {MAX_RETENTION_DAYS} days; 0 keeps everything"
        )));
    }
    Ok(days)
}
