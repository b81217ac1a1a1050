//! Secrets in the configuration: the redacting [`Secret`] wrapper, and reading a secret from a
//! `*_file` path (through [`super::files::read_bounded`]).

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid};

/// A secret value (token, API key, signing secret). `Debug` and `Display` never show it.
#[derive(Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The secret itself; call only where it is used, never to log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() {
            "Secret(<empty>)"
        } else {
            "Secret(<redacted>)"
        })
    }
}

/// The trimmed content of a secret file; an empty file is an error naming `key`.
pub(super) fn read_secret_file(path: &Path, key: &str) -> Result<Secret, ConfigError> {
    let text = super::files::read_bounded(path).map_err(|source| ConfigError::Io {
        what: "secret file",
        path: path.to_path_buf(),
        source,
    })?;
    let value = text.trim();
    if value.is_empty() {
        return Err(invalid(key, format!("`{}` is empty", path.display())));
    }
    Ok(Secret::new(value))
}
