"""The forwarder's configuration: Django settings with defaults, and the signing secret.

This module owns every setting name and default value.  Nothing else in the package reads
``django.conf.settings`` for ``ZULIP_LISTENERS_*`` keys (or Zulip's own ``SYSTEM_BOT_REALM``)
directly; callers take a :class:`ForwarderSettings` snapshot from :func:`load_settings`.

The producer, which runs on Zulip's request path, never reads them per event: it calls
:func:`producer_settings`, which validates them once (from ``AppConfig.ready()``, or on first
use) and keeps the result for the life of the process.  Invalid settings are logged once, as
one ERROR naming the setting and the fix, and turn forwarding off in that process; Zulip goes
on as if the app were not installed.  (Django's ``setting_changed`` signal, which
``override_settings`` sends in tests, drops the kept result.)

The signing secret lives in ``/etc/zulip/zulip-secrets.conf`` and is read through Zulip's own
``zproject.config.get_secret`` (see :func:`load_secrets`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.conf import settings as django_settings
from django.core.signals import setting_changed

logger = logging.getLogger(__name__)

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
#: Bytes (of envelopes, as the producer estimates them) the queue may hold before the producer
#: sheds new ones: 256 MiB.
DEFAULT_MAX_QUEUED_BYTES = 256 * 1024 * 1024
#: ``audience.user_ids`` is sent only for audiences of at most this many users; a bigger one
#: (a message to a big channel) carries only its ``count``.
DEFAULT_AUDIENCE_MAX_IDS = 1000
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
    #: Bytes the queue may hold (estimated by the producer) before new events are shed.
    max_queued_bytes: int = DEFAULT_MAX_QUEUED_BYTES
    #: Largest audience whose ``user_ids`` are sent; above it only ``count`` is.
    audience_max_ids: int = DEFAULT_AUDIENCE_MAX_IDS

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
    if isinstance(value, (str, bytes)):
        raise ForwarderConfigError(
            f"{name} must be a list, got the string {value!r}; write {name} = [{value!r}]"
        )
    if not isinstance(value, Iterable):
        raise ForwarderConfigError(
            f'{name} must be a list, got {value!r}; write for example {name} = ["acme"]'
        )
    return frozenset(str(item) for item in value)


def _positive(name: str, value: Any, kind: type) -> Any:
    example = f"for example {name} = {kind(1)!r}, or remove it for the default"
    if isinstance(value, bool):
        raise ForwarderConfigError(f"{name} must be a number, got {value!r}; {example}")
    try:
        number = kind(value)
    except (TypeError, ValueError) as exc:
        raise ForwarderConfigError(f"{name} must be a number, got {value!r}; {example}") from exc
    if number <= 0:
        raise ForwarderConfigError(f"{name} must be greater than zero, got {value!r}; {example}")
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
        max_queued_bytes=_positive(
            "ZULIP_LISTENERS_MAX_QUEUED_BYTES",
            _setting("ZULIP_LISTENERS_MAX_QUEUED_BYTES", DEFAULT_MAX_QUEUED_BYTES),
            int,
        ),
        audience_max_ids=_positive(
            "ZULIP_LISTENERS_AUDIENCE_MAX_IDS",
            _setting("ZULIP_LISTENERS_AUDIENCE_MAX_IDS", DEFAULT_AUDIENCE_MAX_IDS),
            int,
        ),
    )


# ---------------------------------------------------------------------------
# The producer's settings: validated once per process
# ---------------------------------------------------------------------------

_producer_lock = threading.Lock()
#: ``None``: not validated yet; else the settings, or the error that made them invalid.
_producer: ForwarderSettings | ForwarderConfigError | None = None


def producer_settings() -> ForwarderSettings | None:
    """The settings the producer runs with, validated once per process and then kept.

    ``None`` when they are invalid: forwarding is then off in this process, and the problem
    was logged once (one ERROR, no traceback) when they were first read.
    """
    checked = _producer
    if checked is None:
        checked = _check_producer_settings()
    return checked if isinstance(checked, ForwarderSettings) else None


def _check_producer_settings() -> ForwarderSettings | ForwarderConfigError:
    global _producer
    with _producer_lock:
        if _producer is not None:
            return _producer
        try:
            checked: ForwarderSettings | ForwarderConfigError = load_settings()
        except ForwarderConfigError as error:
            checked = error
            logger.error(
                "zulip_listeners_forwarder: invalid setting in /etc/zulip/settings.py: %s."
                " No events are forwarded until it is fixed and Zulip is restarted; Zulip"
                " itself is not affected.",
                error,
            )
        _producer = checked
        return checked


def forget_producer_settings(**_: Any) -> None:
    """Validate again on next use (after a settings change; tests)."""
    global _producer
    with _producer_lock:
        _producer = None


def _on_setting_changed(*, setting: str, **_: Any) -> None:
    if setting.startswith("ZULIP_LISTENERS_") or setting == SYSTEM_BOT_REALM_SETTING:
        forget_producer_settings()


setting_changed.connect(_on_setting_changed, dispatch_uid="zulip_listeners_forwarder.settings")


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
