"""Which Zulip versions the forwarder supports, checked by the consumer at start and the installer.

The producer hook works wherever ``zerver.tornado.django_api`` has ``send_event`` or
``send_event_rollback_unsafe``; the consumer needs ``zerver/worker/base.py``, which exists
since Zulip 9.0 (PR #29754).  Supported: Zulip 9.x to 12.x (12.1 is the current release);
main (13.0-dev) is not verified.  This module imports nothing outside the standard library at
import time: the installer, which must not need Django, uses it too.
"""

from __future__ import annotations

import importlib.util
import re

#: The oldest Zulip release the consumer runs on.
MINIMUM_ZULIP = (9, 0)
#: The newest Zulip major release the forwarder is tested against (README "Supported Zulip
#: versions"); the installer refuses newer ones unless told ``--force``.
NEWEST_SUPPORTED_MAJOR = 12


def supported_range() -> str:
    """The supported versions as people write them: ``"9.0 to 12.x"``."""
    return f"{MINIMUM_ZULIP[0]}.{MINIMUM_ZULIP[1]} to {NEWEST_SUPPORTED_MAJOR}.x"


def is_supported(version: str) -> bool:
    """Whether a ``ZULIP_VERSION`` string names a supported release (unreadable: no)."""
    parsed = parse_major_minor(version)
    return parsed is not None and parsed >= MINIMUM_ZULIP and parsed[0] <= NEWEST_SUPPORTED_MAJOR


class UnsupportedZulipError(ImportError):
    """The installed Zulip is older than :data:`MINIMUM_ZULIP`."""


def installed_zulip_version() -> str | None:
    try:
        from version import ZULIP_VERSION
    except ImportError:
        return None
    return str(ZULIP_VERSION)


def parse_major_minor(version: str) -> tuple[int, int] | None:
    """``"9.4"`` → (9, 4); ``"12.0-dev+git"`` → (12, 0); anything unreadable → None."""
    match = re.match(r"\s*(\d+)(?:\.(\d+))?", version)
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2) or 0)


def require_supported_zulip() -> None:
    """Raise :class:`UnsupportedZulipError` with a clear message on Zulip older than 9.0."""
    version = installed_zulip_version()
    parsed = parse_major_minor(version) if version is not None else None
    minimum = ".".join(map(str, MINIMUM_ZULIP))
    if parsed is not None and parsed < MINIMUM_ZULIP:
        raise UnsupportedZulipError(
            f"zulip-listeners-forwarder needs Zulip {minimum} or newer; this server runs"
            f" Zulip {version}. The event hook alone works on older Zulip, but the consumer"
            " (run_zulip_listeners_forwarder) needs zerver/worker/base.py (Zulip 9.0)."
        )
    try:
        found = importlib.util.find_spec("zerver.worker.base") is not None
    except ImportError:
        found = False
    if not found:
        raise UnsupportedZulipError(
            f"zulip-listeners-forwarder needs Zulip {minimum} or newer: zerver/worker/base.py"
            f" is missing (this server reports Zulip {version or 'of unknown version'})."
        )
