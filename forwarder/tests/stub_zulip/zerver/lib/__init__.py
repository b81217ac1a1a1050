"""Stand-in for zerver.lib."""
