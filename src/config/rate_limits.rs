//! `[rate_limits]`: the default quotas per user and per realm, and the overrides an intake
//! path, a bot (`bots.<name>.rate_limits`) or a listener may give.

use std::num::NonZeroU32;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use super::checked;

/// A sustained rate with bursts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaConfig {
    /// Events per minute, sustained.
    pub per_minute: NonZeroU32,
    /// Events allowed at once after a quiet period.
    pub burst: NonZeroU32,
}

/// Quotas that replace the defaults for one intake path, one bot or one listener.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaOverrides {
    #[serde(default)]
    pub per_user: Option<QuotaConfig>,
    #[serde(default)]
    pub per_realm: Option<QuotaConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitsConfig {
    pub enabled: bool,
    pub per_user: QuotaConfig,
    pub per_realm: QuotaConfig,
    /// Overrides for outgoing webhooks (a bot stands for its realm).
    #[serde(default)]
    pub outgoing: QuotaOverrides,
    /// Overrides for forwarded events.
    #[serde(default)]
    pub forwarder: QuotaOverrides,
    /// The reply a user gets when their outgoing webhook is over quota; empty = no reply.
    #[serde(deserialize_with = "zulip_message")]
    pub outgoing_notice: String,
    /// How often idle limiter keys are forgotten.
    #[serde(deserialize_with = "checked::duration::<1000, { u64::MAX }, _>")]
    pub housekeeping_interval: Duration,
}

impl RateLimitsConfig {
    /// (per realm, per user) quotas for a path, with a bot's own overrides on top.
    pub fn quotas(
        &self,
        path: &QuotaOverrides,
        bot: Option<&QuotaOverrides>,
    ) -> (QuotaConfig, QuotaConfig) {
        let pick = |f: fn(&QuotaOverrides) -> Option<QuotaConfig>, default: QuotaConfig| {
            bot.and_then(f).or_else(|| f(path)).unwrap_or(default)
        };
        (
            pick(|o| o.per_realm, self.per_realm),
            pick(|o| o.per_user, self.per_user),
        )
    }
}

/// Text that fits in one Zulip message.
fn zulip_message<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    checked::text_where(deserializer, |text| {
        if text.chars().count() > crate::events::text::MAX_MESSAGE_LENGTH {
            Err("longer than a Zulip message")
        } else {
            Ok(())
        }
    })
}
