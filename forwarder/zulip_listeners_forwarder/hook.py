"""The producer: wrap Zulip's ``send_event`` function and queue an envelope for every event.

This module owns the only code that runs on Zulip's request path:

* :func:`install` replaces ``zerver.tornado.django_api.send_event_rollback_unsafe`` (older
  Zulip: ``send_event``) with a wrapper, and rebinds every already-imported module that bound
  the original by name (``from zerver.tornado.django_api import send_event_rollback_unsafe``).
  ``send_event_on_commit`` looks the function up as a module global at call time, so it picks
  up the wrapper too.  Installing twice is harmless.
* The wrapper calls Zulip's original first, with the same arguments, and then
  :func:`forward_event`, whose failures are logged and never raised.
* :func:`forward_event` filters by event type, attributes the event to the conversation's
  realm (Zulip names the actor's realm for a cross-realm system bot's reaction, see
  :mod:`.audience`), filters by that realm, drops the read flags Zulip sets for a service bot
  on each delivery attempt (unless ``ZULIP_LISTENERS_FORWARD_BOT_READ_FLAGS``), normalises the
  event, builds the envelope and publishes it to the durable ``zulip_listeners_forwarder``
  RabbitMQ queue with Zulip's own ``queue_json_publish_rollback_unsafe`` (older:
  ``queue_json_publish``).  No HTTP happens here; the consumer command does that.  The only
  look-ups (Zulip's cached user profile, memoised) are for events Zulip sends with its
  system-bot realm and for single-user ``read`` flag additions.

What this costs Zulip per event is measured by ``tests/test_cost.py`` (numbers in the
README).  The settings are validated once per process (:func:`.settings.producer_settings`),
not per event; the event is copied only as far as the envelope keeps it; ``audience.user_ids``
is left out above ``ZULIP_LISTENERS_AUDIENCE_MAX_IDS`` users, so a message to a big channel
costs about what an ordinary one does; and failures are logged at most once a minute.
"""

from __future__ import annotations

import functools
import inspect
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from types import ModuleType
from typing import Any

from django.conf import settings as django_settings
from django.core.signals import setting_changed

from .audience import conversation_realm, is_service_bot_read_flag
from .envelope import ServerInfo, build_envelope, realm_info
from .normalize import Finalizer, audience_ids, event_field, normalize_event
from .settings import QUEUE_NAME, ForwarderSettings, producer_settings
from .shedding import GUARD, rabbitmq_depth
from .wire import encode_json

logger = logging.getLogger(__name__)

#: Zulip's event-sending function, newest name first.
HOOK_NAMES = ("send_event_rollback_unsafe", "send_event")

#: Zulip's immediate queue-publishing function, newest name first.
PUBLISH_NAMES = ("queue_json_publish_rollback_unsafe", "queue_json_publish")

#: Attribute set on the wrapper so a second install recognises it.
WRAPPER_MARKER = "_zulip_listeners_forwarder_wrapper"

#: Arguments for ``MessageDict.finalize_payload``; only those the installed Zulip accepts are
#: passed (the signature differs between versions).
FINALIZE_ARGUMENTS: dict[str, Any] = {
    "apply_markdown": False,
    "client_gravatar": False,
    "keep_rendered_content": True,
    "allow_empty_topic_name": True,
    "skip_copy": False,
    "can_access_sender": True,
    "is_incoming_1_to_1": False,
}

Forward = Callable[[Any, Any, Iterable[Any]], None]

#: At most one "could not queue an event" error (with its traceback) per this many seconds
#: per process; the others are counted and the count is given with the next one.
ERROR_LOG_INTERVAL_SECONDS = 60.0


class RateLimitedErrors:
    """Logs the wrapper's failures with their traceback, at most once per ``interval``."""

    def __init__(
        self,
        interval: float = ERROR_LOG_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval = interval
        self.clock = clock
        self.logged_at: float | None = None
        self.suppressed = 0
        self._lock = threading.Lock()

    def reset(self) -> None:
        with self._lock:
            self.logged_at, self.suppressed = None, 0

    def exception(self) -> None:
        """Call from an ``except`` block."""
        now = self.clock()
        with self._lock:
            if self.logged_at is not None and now - self.logged_at < self.interval:
                self.suppressed += 1
                return
            suppressed, self.suppressed, self.logged_at = self.suppressed, 0, now
        logger.exception(
            "zulip_listeners_forwarder: could not queue an event; Zulip unaffected%s",
            f" ({suppressed} more failure(s) since the last one logged)" if suppressed else "",
        )


#: The wrapper's error log, one per process.
ERRORS = RateLimitedErrors()


# ---------------------------------------------------------------------------
# Installing the wrapper
# ---------------------------------------------------------------------------


def hook_name(module: ModuleType) -> str:
    """The event-sending function's name in this Zulip version."""
    for name in HOOK_NAMES:
        if callable(getattr(module, name, None)):
            return name
    raise LookupError(f"{module.__name__} has none of {', '.join(HOOK_NAMES)}")


def is_wrapper(function: object) -> bool:
    return bool(getattr(function, WRAPPER_MARKER, False))


def _reiterable(users: Any) -> Any:
    """A one-shot iterator would be used up by Zulip's original; keep a list instead."""
    return list(users) if isinstance(users, Iterator) else users


def make_wrapper(
    original: Callable[..., Any], forward: Forward | None = None
) -> Callable[..., Any]:
    """Wrap ``original``: call it first, unchanged, then forward the event without raising.

    ``forward`` defaults to :func:`forward_event`, looked up at call time.
    """

    @functools.wraps(original)
    def send_event_wrapper(realm: Any, event: Any, users: Any, *args: Any, **kwargs: Any) -> Any:
        users = _reiterable(users)
        result = original(realm, event, users, *args, **kwargs)
        try:
            (forward if forward is not None else forward_event)(realm, event, users)
        except Exception:  # the never-raise boundary: Zulip must not notice the forwarder
            ERRORS.exception()
        return result

    setattr(send_event_wrapper, WRAPPER_MARKER, True)
    return send_event_wrapper


def _module_namespace(module: object) -> dict[str, Any] | None:
    try:
        namespace = vars(module)
    except TypeError:  # not every object in sys.modules has a __dict__
        return None
    return namespace if isinstance(namespace, dict) else None


def rebind(original: object, wrapper: object) -> list[str]:
    """Point every ``module.<attr> is original`` in ``sys.modules`` at ``wrapper``.

    Returns the ``module.attr`` names that were changed (aliases included).
    """
    rebound: list[str] = []
    for module_name, module in list(sys.modules.items()):
        namespace = _module_namespace(module) if module is not None else None
        if namespace is None:
            continue
        for attr in [attr for attr, value in list(namespace.items()) if value is original]:
            try:
                setattr(module, attr, wrapper)
            except (AttributeError, TypeError):
                logger.warning("could not rebind %s.%s", module_name, attr)
                continue
            rebound.append(f"{module_name}.{attr}")
    return sorted(rebound)


def install(module: ModuleType | None = None, forward: Forward | None = None) -> list[str]:
    """Install the wrapper on Zulip's ``django_api`` module (idempotent).

    Returns the ``module.attr`` names now pointing at the wrapper that did not before.
    """
    if module is None:
        module = zulip_django_api()
    name = hook_name(module)
    current = getattr(module, name)
    if is_wrapper(current):
        wrapper, original = current, current.__wrapped__
    else:
        wrapper, original = make_wrapper(current, forward), current
    rebound = rebind(original, wrapper)
    setattr(module, name, wrapper)
    logger.info(
        "zulip_listeners_forwarder: wrapping %s.%s; rebound %s",
        module.__name__,
        name,
        ", ".join(rebound) or "nothing new",
    )
    return rebound


def zulip_django_api() -> ModuleType:
    from zerver.tornado import django_api

    return django_api


def install_on_ready() -> None:
    """Called from ``AppConfig.ready()``: validate the settings (once; an invalid setting is
    logged here and turns forwarding off), install, but never stop Zulip from starting."""
    try:
        conf = producer_settings()
        install()
        if conf is not None and not conf.enabled:
            logger.warning("ZULIP_LISTENERS_URL is not set; no events will be forwarded")
    except Exception:  # a broken forwarder must not take Zulip down with it
        logger.exception("zulip_listeners_forwarder: hook not installed; events are not forwarded")


# ---------------------------------------------------------------------------
# Forwarding one event
# ---------------------------------------------------------------------------


def forward_event(realm: Any, event: Any, users: Iterable[Any]) -> None:
    """Filter, normalise, wrap and queue one event (may raise; the wrapper catches)."""
    conf = producer_settings()
    if conf is None or not conf.enabled or not conf.wants_type(event_field(event, "type")):
        return
    user_list = users if type(users) is list else list(users)
    actor_realm = None
    conversation = conversation_realm(realm, user_list, conf.system_bot_realm)
    if conversation is not None:
        actor_realm, realm = realm, conversation
    if not conf.wants_realm(realm.id, realm.string_id):
        return
    if not conf.forward_bot_read_flags and is_service_bot_read_flag(event, user_list):
        logger.debug("not forwarding a service bot's read flag (%r)", user_list)
        return
    publish(make_envelope(realm, event, user_list, conf, actor_realm=actor_realm), conf)


def audience_block(users: list[Any], conf: ForwarderSettings) -> dict[str, Any]:
    """``{"count": N, "user_ids": [...]}``; ``user_ids`` only when turned on and the audience
    has at most ``conf.audience_max_ids`` users.  A bigger audience (a message to a big
    channel) is not read user by user: its count is the length of Zulip's list."""
    if len(users) > conf.audience_max_ids:
        return {"count": len(users)}
    ids = audience_ids(users)
    if not conf.include_audience_ids:
        return {"count": len(ids)}
    return {"count": len(ids), "user_ids": ids}


def make_envelope(
    realm: Any,
    event: Any,
    users: Iterable[Any],
    conf: ForwarderSettings,
    *,
    actor_realm: Any | None = None,
) -> dict[str, Any]:
    """``realm`` is the conversation's realm; ``actor_realm`` the one Zulip named instead, if
    it named another (kept in the envelope as ``actor_realm``)."""
    user_list = users if type(users) is list else list(users)
    normalized = normalize_event(
        event,
        user_list,
        include_delivery_emails=conf.include_delivery_emails,
        finalize=zulip_finalizer(realm),
    )
    return build_envelope(
        server=server_info(),
        realm=realm_info(realm),
        event=normalized,
        user_ids=[],
        audience=audience_block(user_list, conf),
        actor_realm=realm_info(actor_realm) if actor_realm is not None else None,
    )


@functools.lru_cache(maxsize=1)
def server_info() -> ServerInfo:
    """Who emits the events: read once per process (see :func:`_on_setting_changed`)."""
    try:
        from version import API_FEATURE_LEVEL, ZULIP_VERSION
    except ImportError:
        ZULIP_VERSION, API_FEATURE_LEVEL = "unknown", 0
    return ServerInfo(
        host=str(getattr(django_settings, "EXTERNAL_HOST", "")),
        zulip_version=str(ZULIP_VERSION),
        feature_level=int(API_FEATURE_LEVEL),
    )


def _on_setting_changed(*, setting: str, **_: Any) -> None:
    if setting == "EXTERNAL_HOST":
        server_info.cache_clear()


setting_changed.connect(_on_setting_changed, dispatch_uid="zulip_listeners_forwarder.hook")


@functools.lru_cache(maxsize=8)
def finalize_parameters(finalize: Callable[..., Any]) -> frozenset[str]:
    return frozenset(inspect.signature(finalize).parameters)


def zulip_finalizer(realm: Any) -> Finalizer | None:
    """Adapt Zulip's ``MessageDict.finalize_payload`` to this Zulip version's signature."""
    try:
        from zerver.lib.message_cache import MessageDict
    except ImportError:
        return None
    finalize = MessageDict.finalize_payload
    arguments = dict(finalize_arguments(finalize))
    if "realm_host" in finalize_parameters(finalize):
        arguments["realm_host"] = getattr(realm, "host", "")

    def run(message: dict[str, Any]) -> dict[str, Any]:
        return finalize(message, **arguments)

    return run


@functools.lru_cache(maxsize=8)
def finalize_arguments(finalize: Callable[..., Any]) -> tuple[tuple[str, Any], ...]:
    """The :data:`FINALIZE_ARGUMENTS` this ``finalize_payload`` accepts."""
    accepted = finalize_parameters(finalize)
    return tuple((key, value) for key, value in FINALIZE_ARGUMENTS.items() if key in accepted)


def publisher(queue_module: ModuleType) -> Callable[..., None]:
    for name in PUBLISH_NAMES:
        function: Callable[..., None] | None = getattr(queue_module, name, None)
        if callable(function):
            return function
    raise LookupError(f"{queue_module.__name__} has none of {', '.join(PUBLISH_NAMES)}")


def publish(envelope: dict[str, Any], conf: ForwarderSettings | None = None) -> bool:
    """Put the envelope on the durable queue through Zulip's own queue client, unless the
    queue is full, in events or in bytes (then the event is shed and counted per realm, see
    :mod:`.shedding`)."""
    from zerver.lib import queue

    conf = conf if conf is not None else producer_settings()
    if conf is None:
        return False
    if getattr(django_settings, "USING_RABBITMQ", True):
        realm = envelope.get("realm")
        shed_before = GUARD.admit(
            conf.max_queued,
            conf.queue_check_seconds,
            lambda: rabbitmq_depth(queue, QUEUE_NAME),
            realm=realm.get("id") if isinstance(realm, dict) else None,
            size=len(encode_json(envelope)),
            byte_limit=conf.max_queued_bytes,
        )
        if shed_before is None:
            return False
        if shed_before:
            envelope["shed_before"] = shed_before
    publisher(queue)(QUEUE_NAME, envelope, processor=without_rabbitmq)
    return True


def without_rabbitmq(envelope: dict[str, Any]) -> None:
    """Zulip calls this instead of publishing when ``USING_RABBITMQ`` is off (dev, tests)."""
    logger.debug("RabbitMQ is off; not forwarding event %s", envelope.get("event_id"))
