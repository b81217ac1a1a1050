//! Entry points for the fuzz targets in `fuzz/` (built only with `--cfg fuzzing`, which
//! cargo-fuzz sets). Everything else the targets call is already public.

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};

use crate::config::{Config, ConfigError, DEFAULT_TOML, parse_botserverrc};

/// Reads `botserverrc` text the way `Config::load` reads the file given by `--botserverrc`:
/// parsed, layered over the defaults and validated.
pub fn botserverrc_config(text: &str) -> Result<Config, ConfigError> {
    let bots = parse_botserverrc(text)?;
    Config::from_figment(
        Figment::from(Toml::string(DEFAULT_TOML)).merge(Serialized::default("bots", bots)),
    )
}
