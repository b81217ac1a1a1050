"""The forwarder's configuration: Django settings with defaults, and the signing secret.

This module owns every setting name and default value.  Nothing else in the package reads
``django.conf.settings`` for ``ZULIP_LISTENERS_*`` keys (or Zulip's own ``SYSTEM_BOT_REALM``)
directly; callers take a :class:`ForwarderSettings` snapshot from :func:`load_settings`.

The signing secret lives in ``/etc/zulip/zulip-secrets.conf`` and is read through Zulip's own
``zproject.config.get_secret`` (see :func:`load_secrets`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.conf import settings as django_settings

#: Name of the durable RabbitMQ queue between the producer hook and the consumer command.
QUEUE_NAME = "zulip_listeners_forwarder"

#: Key in the ``[secrets]`` section of ``/etc/zulip/zulip-secrets.conf``.
SECRET_NAME = "zulip_listeners_forwarder_secret"

DEFAULT_EVENT_TYPES: frozenset[str] = frozenset(
    {
        "message",
        "update_message",
        "delete_message",
        "reaction",
        "subscription",
        "stream",
        "realm_user",
        "presence",
        "typing",
        "update_message_flags",
        "user_status",
        "realm_emoji",
        "custom_profile_fields",
    }
)

DEFAULT_BATCH_SIZE = 100
DEFAULT_BATCH_SECONDS = 1.0
DEFAULT_BATCH_MAX_BYTES = 1_000_000
DEFAULT_TIMEOUT_SECONDS = 15.0
DEFAULT_MAX_BACKOFF_SECONDS = 60.0
#: Events the queue may hold before the producer sheds new ones (see shedding.py).
DEFAULT_MAX_QUEUED = 100_000
DEFAULT_QUEUE_CHECK_SECONDS = 2.0
DEFAULT_DEAD_LETTER_FILE = "/var/log/zulip/zulip_listeners_forwarder.deadletter.jsonl"
#: Where the consumer sets aside the batches of a realm the receiver refuses for now (429),
#: one directory per realm (see lanes.py).  It must survive restarts: not under /tmp.
DEFAULT_SPOOL_DIR = "/home/zulip/zulip_listeners_forwarder.spool"
#: Events of one realm that may be set aside; beyond that the realm's new events are shed.
DEFAULT_MAX_SPOOLED_PER_REALM = 100_000
#: Zulip's own setting naming the realm of its cross-realm system bots, and its default.
SYSTEM_BOT_REALM_SETTING = "SYSTEM_BOT_REALM"
DEFAULT_SYSTEM_BOT_REALM = "zulipinternal"


class ForwarderConfigError(ValueError):
    """A ``ZULIP_LISTENERS_*`` setting or the signing secret is missing or invalid."""


@dataclass(frozen=True)
class ForwarderSettings:
    """A validated snapshot of the forwarder's settings."""

    url: str
    event_types: frozenset[str]
    realms: frozenset[str]
    include_delivery_emails: bool
    include_audience_ids: bool
    batch_size: int
    batch_seconds: float
    batch_max_bytes: int
    timeout_seconds: float
    max_backoff_seconds: float
    dead_letter_file: str
    max_queued: int = DEFAULT_MAX_QUEUED
    queue_check_seconds: float = DEFAULT_QUEUE_CHECK_SECONDS
    spool_dir: str = DEFAULT_SPOOL_DIR
    max_spooled_per_realm: int = DEFAULT_MAX_SPOOLED_PER_REALM
    #: The receiver's readiness probe; ``None``: ``/readyz`` next to ``url``; ``""``: none.
    ready_url: str | None = None
    #: Forward the read flags Zulip sets for a service bot on each delivery attempt.
    forward_bot_read_flags: bool = False
    #: Zulip's ``SYSTEM_BOT_REALM``: the realm whose bots act in other realms.
    system_bot_realm: str = DEFAULT_SYSTEM_BOT_REALM

    @property
    def enabled(self) -> bool:
        """The producer only queues events when a receiver URL is configured."""
        return bool(self.url)

    def wants_type(self, event_type: object) -> bool:
        return isinstance(event_type, str) and event_type in self.event_types

    def wants_realm(self, realm_id: object, string_id: object) -> bool:
        """An empty allow-list means every realm; entries match a string_id or an id."""
        if not self.realms:
            return True
        return str(string_id) in self.realms or str(realm_id) in self.realms


def _setting(name: str, default: Any) -> Any:
    return getattr(django_settings, name, default)


def _string_set(name: str, value: Any) -> frozenset[str]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ForwarderConfigError(f"{name} must be a list, got {value!r}")
    return frozenset(str(item) for item in value)


def _positive(name: str, value: Any, kind: type) -> Any:
    try:
        number = kind(value)
    except (TypeError, ValueError) as exc:
        raise ForwarderConfigError(f"{name} must be a number, got {value!r}") from exc
    if number <= 0:
        raise ForwarderConfigError(f"{name} must be greater than zero, got {value!r}")
    return number


def _ready_url(value: Any) -> str | None:
    if value is None:
        return None
    url = str(value)
    if url and not url.startswith(("http://", "https://")):
        raise ForwarderConfigError(
            f'ZULIP_LISTENERS_READY_URL must start with http:// or https://, or be "" (no'
            f" probe), got {value!r}"
        )
    return url


def load_settings() -> ForwarderSettings:
    """Read the ``ZULIP_LISTENERS_*`` Django settings, applying defaults and validating them."""
    event_types = _setting("ZULIP_LISTENERS_EVENT_TYPES", None)
    return ForwarderSettings(
        url=str(_setting("ZULIP_LISTENERS_URL", "") or ""),
        event_types=(
            DEFAULT_EVENT_TYPES
            if event_types is None
            else _string_set("ZULIP_LISTENERS_EVENT_TYPES", event_types)
        ),
        realms=_string_set("ZULIP_LISTENERS_REALMS", _setting("ZULIP_LISTENERS_REALMS", ())),
        include_delivery_emails=bool(_setting("ZULIP_LISTENERS_INCLUDE_DELIVERY_EMAILS", False)),
        include_audience_ids=bool(_setting("ZULIP_LISTENERS_INCLUDE_AUDIENCE_IDS", True)),
        batch_size=_positive(
            "ZULIP_LISTENERS_BATCH_SIZE",
            _setting("ZULIP_LISTENERS_BATCH_SIZE", DEFAULT_BATCH_SIZE),
            int,
        ),
        batch_seconds=_positive(
            "ZULIP_LISTENERS_BATCH_SECONDS",
            _setting("ZULIP_LISTENERS_BATCH_SECONDS", DEFAULT_BATCH_SECONDS),
            float,
        ),
        batch_max_bytes=_positive(
            "ZULIP_LISTENERS_BATCH_MAX_BYTES",
            _setting("ZULIP_LISTENERS_BATCH_MAX_BYTES", DEFAULT_BATCH_MAX_BYTES),
            int,
        ),
        timeout_seconds=_positive(
            "ZULIP_LISTENERS_TIMEOUT_SECONDS",
            _setting("ZULIP_LISTENERS_TIMEOUT_SECONDS", DEFAULT_TIMEOUT_SECONDS),
            float,
        ),
        max_backoff_seconds=_positive(
            "ZULIP_LISTENERS_MAX_BACKOFF_SECONDS",
            _setting("ZULIP_LISTENERS_MAX_BACKOFF_SECONDS", DEFAULT_MAX_BACKOFF_SECONDS),
            float,
        ),
        dead_letter_file=str(
            _setting("ZULIP_LISTENERS_DEAD_LETTER_FILE", DEFAULT_DEAD_LETTER_FILE)
            or DEFAULT_DEAD_LETTER_FILE
        ),
        max_queued=_positive(
            "ZULIP_LISTENERS_MAX_QUEUED",
            _setting("ZULIP_LISTENERS_MAX_QUEUED", DEFAULT_MAX_QUEUED),
            int,
        ),
        queue_check_seconds=_positive(
            "ZULIP_LISTENERS_QUEUE_CHECK_SECONDS",
            _setting("ZULIP_LISTENERS_QUEUE_CHECK_SECONDS", DEFAULT_QUEUE_CHECK_SECONDS),
            float,
        ),
        spool_dir=str(
            _setting("ZULIP_LISTENERS_SPOOL_DIR", DEFAULT_SPOOL_DIR) or DEFAULT_SPOOL_DIR
        ),
        max_spooled_per_realm=_positive(
            "ZULIP_LISTENERS_MAX_SPOOLED_PER_REALM",
            _setting("ZULIP_LISTENERS_MAX_SPOOLED_PER_REALM", DEFAULT_MAX_SPOOLED_PER_REALM),
            int,
        ),
        ready_url=_ready_url(_setting("ZULIP_LISTENERS_READY_URL", None)),
        forward_bot_read_flags=bool(_setting("ZULIP_LISTENERS_FORWARD_BOT_READ_FLAGS", False)),
        system_bot_realm=str(
            _setting(SYSTEM_BOT_REALM_SETTING, DEFAULT_SYSTEM_BOT_REALM) or DEFAULT_SYSTEM_BOT_REALM
        ),
    )


def parse_secrets(raw: str | None) -> list[str]:
    """Split the secret value into its space-separated ``whsec_…`` secrets (rotation)."""
    return [part for part in (raw or "").split() if part]


def load_secrets() -> list[str]:
    """Read the signing secret(s) from ``zulip-secrets.conf`` via Zulip's ``get_secret``."""
    from zproject.config import get_secret

    secrets = parse_secrets(get_secret(SECRET_NAME))
    if not secrets:
        raise ForwarderConfigError(
            f"{SECRET_NAME} is not set in the [secrets] section of /etc/zulip/zulip-secrets.conf;"
            " create one with `zulip-listeners gen-secret`"
        )
    return secrets
