"""Stand-in for zerver.tornado."""
