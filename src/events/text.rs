//! Text rules shared by everything that posts to Zulip: Zulip's message-length limit, how a
//! reply is normalised before it is posted, and character-safe truncation for logs and previews.

/// Zulip's limit on message length.
pub const MAX_MESSAGE_LENGTH: usize = 10_000;
const TRUNCATION_NOTE: &str = "\n[message truncated]";

/// Prepares a reply the way Zulip would treat it: trailing whitespace and leading newlines
/// removed, NUL bytes (which Zulip rejects) dropped, and anything beyond 10,000 characters cut
/// with Zulip's own note. `None` when nothing is left to post.
pub fn normalize_reply(reply: &str) -> Option<String> {
    let cleaned: String;
    let text = if reply.contains('\0') {
        cleaned = reply.replace('\0', "");
        cleaned.as_str()
    } else {
        reply
    };
    let text = text.trim_end().trim_start_matches('\n');
    if text.is_empty() {
        return None;
    }
    let chars = text.chars().count();
    if chars <= MAX_MESSAGE_LENGTH {
        return Some(text.to_string());
    }
    let keep = MAX_MESSAGE_LENGTH - TRUNCATION_NOTE.chars().count();
    let mut cut: String = text.chars().take(keep).collect();
    cut.push_str(TRUNCATION_NOTE);
    Some(cut)
}

/// Cuts `text` to `max` characters, marking the cut with "…"; says whether it cut.
pub fn truncate_chars(text: &str, max: usize) -> (String, bool) {
    match text.char_indices().nth(max) {
        None => (text.to_string(), false),
        Some((byte, _)) => {
            let mut cut = text[..byte].to_string();
            cut.push('…');
            (cut, true)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_normalisation_matches_zulip() {
        assert_eq!(normalize_reply("\n\nhi  \n"), Some("hi".into()));
        assert_eq!(normalize_reply("  \n"), None);
        assert_eq!(normalize_reply("a\0b"), Some("ab".into()));
        let long = "é".repeat(10_050);
        let cut = normalize_reply(&long).expect("non-empty");
        assert_eq!(cut.chars().count(), MAX_MESSAGE_LENGTH);
        assert!(cut.ends_with("\n[message truncated]"));
        let exact = "x".repeat(MAX_MESSAGE_LENGTH);
        assert_eq!(normalize_reply(&exact), Some(exact.clone()));
    }

    #[test]
    fn truncation_counts_characters() {
        assert_eq!(truncate_chars("héllo", 10), ("héllo".into(), false));
        assert_eq!(truncate_chars("héllo", 2), ("hé…".into(), true));
    }
}
