"""Stand-in for Zulip's top-level version.py."""

ZULIP_VERSION = "11.0-stub"
API_FEATURE_LEVEL = 400
