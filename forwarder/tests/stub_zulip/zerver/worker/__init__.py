"""Stand-in for zerver.worker."""
