//! The greeting texts of `welcome_bot`: checking a configured template's placeholders, and
//! filling one in with a mention, a neutralised name and a channel link.

use crate::events::kinds::Person;
use crate::handlers::keyword_alerts::inline;

/// Longest a name may be to go into a mention as it is.
const MAX_MENTION_NAME_CHARS: usize = 100;
/// Longest template accepted.
const MAX_TEMPLATE_CHARS: usize = 8_000;

/// Checks that a template uses only `allowed` placeholders and leaves room, once filled in,
/// within Zulip's 10,000-character limit.
pub(super) fn check_template(template: &str, allowed: &[&str]) -> Result<(), String> {
    if template.chars().count() > MAX_TEMPLATE_CHARS {
        return Err(format!(
            "is longer than {MAX_TEMPLATE_CHARS} characters (Zulip accepts messages of up to \
             10,000)"
        ));
    }
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        let after = &rest[start + 1..];
        let Some(end) = after.find('}') else {
            break;
        };
        let word = &after[..end];
        let is_placeholder =
            !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if is_placeholder && !allowed.contains(&word) {
            let known: Vec<String> = allowed.iter().map(|a| format!("{{{a}}}")).collect();
            let why = if word == "name" {
                " (subscription events do not carry the user's name; use {mention})"
            } else {
                ""
            };
            return Err(format!(
                "unknown placeholder `{{{word}}}`{why}; known: {}",
                known.join(", ")
            ));
        }
        rest = &after[end + 1..];
    }
    Ok(())
}

/// A mention of the user: `@**Full Name|id**` when the name is plain, else `@**|id**`,
/// which Zulip shows with the user's current name.
pub(super) fn mention(user_id: i64, person: Option<&Person>) -> String {
    let name = person
        .and_then(|p| p.full_name.as_deref())
        .map(str::trim)
        .filter(|n| {
            !n.is_empty()
                && n.chars().count() <= MAX_MENTION_NAME_CHARS
                && !n.contains(['*', '|', '@', '`', '\\', '[', ']'])
                && !n.chars().any(char::is_control)
        })
        .unwrap_or_default();
    format!("@**{name}|{user_id}**")
}

/// Fills a template in. Only the configured text and channel name are used as they are; the
/// user's name is neutralised.
pub(super) fn render(
    template: &str,
    mention: &str,
    name: Option<&str>,
    channel: Option<&str>,
) -> String {
    let name = name.map_or_else(|| "there".to_string(), inline);
    let channel = channel.map_or_else(String::new, |c| {
        if c.chars().count() <= MAX_MENTION_NAME_CHARS
            && !c.contains(['*', '>', '`', '@', '\n', '\r', '[', ']'])
        {
            format!("#**{c}**")
        } else {
            inline(c)
        }
    });
    // One pass, so that a name containing "{mention}" is not filled in again.
    let mut out = String::with_capacity(template.len() + 64);
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        let (value, len) = if after.starts_with("{mention}") {
            (mention, "{mention}".len())
        } else if after.starts_with("{name}") {
            (name.as_str(), "{name}".len())
        } else if after.starts_with("{channel}") {
            (channel.as_str(), "{channel}".len())
        } else {
            ("{", 1)
        };
        out.push_str(value);
        rest = &after[len..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn person(name: &str) -> Person {
        Person {
            user_id: Some(14),
            full_name: Some(name.into()),
            email: None,
            is_active: Some(true),
            is_bot: Some(false),
            role: Some(400),
        }
    }

    #[test]
    fn mentions_use_the_name_only_when_it_cannot_break_the_syntax() {
        assert_eq!(mention(14, Some(&person("Ann Lee"))), "@**Ann Lee|14**");
        assert_eq!(mention(14, Some(&person("Eve** @**all"))), "@**|14**");
        assert_eq!(mention(14, Some(&person("a|1"))), "@**|14**");
        assert_eq!(mention(14, None), "@**|14**");
    }

    #[test]
    fn names_cannot_mention_or_break_out() {
        let text = render(
            "Hi {name}, {mention} {unknown}",
            "@**|14**",
            Some("Eve @**all** [x](https://evil.example)\n# big"),
            None,
        );
        assert!(!text.contains("@**all"), "{text}");
        assert!(!text.contains('\n'), "{text}");
        assert!(text.contains("\\[x\\]"), "{text}");
        assert!(text.ends_with("@**|14** {unknown}"), "{text}");
        // A name that looks like a placeholder stays text.
        let text = render("{name}!", "M", Some("{mention}"), None);
        assert_eq!(text, "{mention}!");
        assert_eq!(
            render("Welcome to {channel}", "M", None, Some("help")),
            "Welcome to #**help**"
        );
        assert_eq!(
            render("To {channel}", "M", None, Some("a**b")),
            "To a\\*\\*b"
        );
    }

    #[test]
    fn templates_name_unknown_placeholders() {
        assert!(check_template("Hi {mention} {name}", &["mention", "name"]).is_ok());
        assert!(check_template("JSON {\"a\": 1} and {}", &["mention"]).is_ok());
        let err = check_template("{name} joined {channel}", &["mention", "channel"])
            .expect_err("name is unknown for channels");
        assert!(
            err.contains("{name}") && err.contains("use {mention}"),
            "{err}"
        );
        assert!(check_template(&"x".repeat(8_001), &["mention"]).is_err());
        let err = check_template("{email}", &["mention", "name"]).expect_err("no emails");
        assert!(err.contains("`{email}`"), "{err}");
    }
}
