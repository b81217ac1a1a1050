"""Stand-in for zerver.actions."""
