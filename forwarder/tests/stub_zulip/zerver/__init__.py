"""Stand-in for Zulip's zerver package (tests only)."""
