//! Import of bots from a Zulip `botserverrc` / `zuliprc` (INI: one `[section]` per bot with
//! `email`, `key`, `site`, `token`), the layer given with `--botserverrc`. The imported keys
//! are layered under `bots.<name>` and checked like those of a configuration file.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use super::{ConfigError, Secret, invalid};

/// The keys of one bot read from a `botserverrc` section.
#[derive(Debug, Clone, Serialize)]
pub struct ImportedBot {
    pub email: String,
    pub token: Secret,
    /// Empty unless the section gives both `key` and `site`.
    pub api_key: Secret,
    pub site: Option<String>,
}

/// Reads a `botserverrc` file into bots. Section names become bot names; `[api]`, the section
/// of a single bot's zuliprc, is named after the bot's email.
pub fn read_botserverrc(path: &Path) -> Result<BTreeMap<String, ImportedBot>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        what: "botserverrc",
        path: path.to_path_buf(),
        source,
    })?;
    parse_botserverrc(&text)
}

/// Reads `botserverrc` text (see [`read_botserverrc`]).
pub fn parse_botserverrc(text: &str) -> Result<BTreeMap<String, ImportedBot>, ConfigError> {
    let ini = ini::Ini::load_from_str(text)
        .map_err(|e| ConfigError::Parse(format!("botserverrc: {e}")))?;
    let mut bots = BTreeMap::new();
    // Bot name -> the section it came from, so that two sections never name one bot.
    let mut sections: BTreeMap<String, &str> = BTreeMap::new();
    for (section, props) in ini.iter() {
        let Some(section) = section else { continue };
        let get = |k: &str| props.get(k).map(str::trim).filter(|v| !v.is_empty());
        let email = get("email").ok_or_else(|| {
            invalid(
                format!("botserverrc [{section}].email"),
                "missing; copy the file from Zulip's bot settings",
            )
        })?;
        let token = get("token").ok_or_else(|| {
            invalid(
                format!("botserverrc [{section}].token"),
                "missing; only outgoing-webhook bots have a token (see Zulip's bot settings)",
            )
        })?;
        let name = if section.is_empty() || section == "api" {
            email.split('@').next().unwrap_or(email).to_string()
        } else {
            section.to_string()
        };
        let name: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        if let Some(previous) = sections.insert(name.clone(), section) {
            return Err(invalid(
                format!("botserverrc [{section}]"),
                format!(
                    "names the same bot `{name}` as section [{previous}]; give each bot its own section"
                ),
            ));
        }
        let api_key = get("key").map(Secret::new).unwrap_or_default();
        let site = get("site")
            .map(str::to_string)
            .filter(|_| !api_key.is_empty());
        bots.insert(
            name,
            ImportedBot {
                email: email.to_string(),
                token: Secret::new(token),
                api_key: if site.is_some() {
                    api_key
                } else {
                    Secret::default()
                },
                site,
            },
        );
    }
    if bots.is_empty() {
        return Err(ConfigError::Parse(
            "botserverrc: no [bot] sections found".into(),
        ));
    }
    Ok(bots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn botserverrc_sections_become_bots() {
        let bots = parse_botserverrc(
            "[helloworld]\nemail=hello-bot@zulip.com\nkey=abcdef\nsite=https://chat.example.com\ntoken=abcd1234\n\n\
             [api]\nemail=other-bot@zulip.com\nkey=\nsite=\ntoken=xyz\n",
        )
        .expect("parses");
        let hello = &bots["helloworld"];
        assert_eq!(hello.email, "hello-bot@zulip.com");
        assert_eq!(hello.token.expose(), "abcd1234");
        assert_eq!(hello.site.as_deref(), Some("https://chat.example.com"));
        let other = &bots["other-bot"];
        assert!(other.api_key.is_empty() && other.site.is_none());
    }

    #[test]
    fn botserverrc_without_token_names_the_section() {
        let err = parse_botserverrc("[b]\nemail=b@x.org\nkey=k\nsite=https://x.org\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("[b].token"), "{err}");
    }

    #[test]
    fn botserverrc_sections_naming_one_bot_are_refused() {
        // Found while writing the botserverrc fuzz target: `[a.b]` and `[a_b]` (or one section
        // written twice) became one bot, and the first was dropped without a word.
        for text in [
            "[a.b]\nemail=a@x.org\ntoken=t1\n[a_b]\nemail=b@x.org\ntoken=t2\n",
            "[a]\nemail=a@x.org\ntoken=t1\n[a]\nemail=b@x.org\ntoken=t2\n",
            "[api]\nemail=a@x.org\ntoken=t1\n[a]\nemail=b@x.org\ntoken=t2\n",
        ] {
            let err = parse_botserverrc(text).unwrap_err().to_string();
            assert!(err.contains("names the same bot"), "{text}: {err}");
        }
    }
}
