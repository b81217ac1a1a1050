"""Stand-in for zproject/config.py: secrets come from SECRETS, not zulip-secrets.conf."""

from __future__ import annotations

SECRETS: dict[str, str] = {}


def get_secret(key: str, default: str | None = None, development_only: bool = False) -> str | None:
    return SECRETS.get(key, default)
