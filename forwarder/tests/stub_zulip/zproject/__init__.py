"""Stand-in for Zulip's zproject package (tests only)."""
