"""Turn Zulip's internal events into the client-facing ``GET /events`` shape, minus secrets.

``send_event*`` receives events in Zulip's *internal* form (reference §1.3): a ``message`` event
carries the wide ``message_dict`` plus notification bookkeeping, ``update_message`` carries the
same bookkeeping, some newer callers pass pydantic objects, and ``realm_bot`` events carry bot
secrets.  This module owns the rewrite from that form to what an API client would see, and the
redaction of secrets and (by default) delivery emails.

It is pure Python with no Zulip imports: the only Zulip code it can use, ``finalize_payload``,
is passed in by the caller.  Every function returns new objects and never mutates its input.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import logging
import operator
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

logger = logging.getLogger(__name__)

_finalize_failure_logged = False

#: ``finalize(message_dict) -> api_message``: Zulip's ``MessageDict.finalize_payload`` adapter.
Finalizer = Callable[[dict[str, Any]], dict[str, Any]]

#: Keys of ``message_dict`` that ``finalize_payload`` removes from the client-facing message.
MESSAGE_INTERNAL_KEYS = frozenset(
    {
        "sender_delivery_email",
        "sender_realm_id",
        "recipient_type",
        "recipient_type_id",
        "sender_avatar_source",
        "sender_avatar_version",
        "sender_is_mirror_dummy",
        "sender_email_address_visibility",
        # added by bulk_hydrate_sender_info / the caller; finalize_payload pops both
        "sender_recipient_id",
        "can_access_sender",
    }
)

#: Notification bookkeeping on ``update_message`` that Tornado pops before delivery.
UPDATE_MESSAGE_INTERNAL_KEYS = frozenset(
    {
        "prior_mention_user_ids",
        "disable_external_notifications",
        "realm_host",
    }
)

#: Keys that are always secret, wherever they appear: bot API keys, and a channel's
#: email-gateway token (``email_token``, or the address that embeds it, ``email_address``, in
#: channel and subscription objects of older Zulip).
SECRET_KEYS = frozenset({"api_key", "email_token", "email_address"})

#: Secret keys inside a bot's ``services`` list: an outgoing-webhook bot's ``token`` and an
#: embedded bot's ``config_data`` (its third-party API keys).
SERVICE_SECRET_KEYS = frozenset({"token", "config_data"})

#: Keys that hold a user's real (delivery) email address.
DELIVERY_EMAIL_KEYS = frozenset({"delivery_email", "sender_delivery_email"})


# ---------------------------------------------------------------------------
# Plain JSON values
# ---------------------------------------------------------------------------


#: Types that are JSON values as they are (exact types; subclasses take the slow path).
_PLAIN_SCALARS = frozenset({str, int, float, bool, type(None)})


def to_jsonable(value: Any) -> Any:
    """Return a fresh JSON-compatible copy of ``value``.

    Pydantic models (anything with ``model_dump()``) and dataclasses become dicts, tuples and
    sets become lists, datetimes become ISO 8601 strings, UUIDs strings, enums their values.
    Plain dicts, lists and scalars (almost everything Zulip sends) take a fast path.
    """
    kind = type(value)
    if kind in _PLAIN_SCALARS:
        return value
    if kind is dict:
        return {
            key if type(key) is str else str(key): (
                item if type(item) in _PLAIN_SCALARS else to_jsonable(item)
            )
            for key, item in value.items()
        }
    if kind is list:
        return [item if type(item) in _PLAIN_SCALARS else to_jsonable(item) for item in value]
    return _to_jsonable_other(value)


def _to_jsonable_other(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(key): to_jsonable(item) for key, item in value.items()}
    if hasattr(value, "model_dump") and callable(value.model_dump):
        return to_jsonable(dump_model(value))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(dataclasses.asdict(value))
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_jsonable(item) for item in value]
    return _jsonable_scalar(value)


def dump_model(model: Any) -> Any:
    """A pydantic event as Zulip's API shows it: optional fields that are ``None`` are left
    out (Zulip main's typing events declare ``recipients`` / ``stream_id`` / ``topic`` as
    ``X | None = None``; the API omits them rather than sending ``null``)."""
    try:
        return model.model_dump(mode="json", exclude_none=True)
    except TypeError:  # a model_dump without pydantic's keyword arguments
        return model.model_dump()


def _jsonable_scalar(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return to_jsonable(value.value)
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def event_field(event: Any, name: str) -> Any:
    """Read a top-level field from a dict event or a pydantic-style event object."""
    if isinstance(event, Mapping):
        return event.get(name)
    return getattr(event, name, None)


# ---------------------------------------------------------------------------
# The users argument
# ---------------------------------------------------------------------------


def user_id_of(user: Any) -> int | None:
    """``users`` holds ints, or dicts with an ``id`` (message / update_message)."""
    if isinstance(user, bool):
        return None
    if isinstance(user, int):
        return user
    user_id = user.get("id") if isinstance(user, Mapping) else None
    return user_id if isinstance(user_id, int) and not isinstance(user_id, bool) else None


_user_id_key = operator.itemgetter("id")


def audience_ids(users: Iterable[Any]) -> list[int]:
    """The user ids of ``users`` (ints, or dicts with an ``id``); anything else is skipped."""
    user_list = users if isinstance(users, list) else list(users)
    if user_list:
        try:
            ids = user_list if type(user_list[0]) is int else list(map(_user_id_key, user_list))
        except (TypeError, KeyError):
            ids = None
        if ids is not None and all(type(uid) is int for uid in ids):
            return list(ids)
    return [uid for uid in (user_id_of(user) for user in user_list) if uid is not None]


def preferred_user(users: list[Any], preferred_user_id: object) -> Mapping[str, Any] | None:
    """The user dict whose ``id`` is ``preferred_user_id``, else the first user dict, else None.

    Zulip's ``users`` for a message to a big channel holds one dict per recipient (10,000 of
    them), so the common case (all dicts, every one with an ``id``) is searched in C.
    """
    if not users:
        return None
    try:
        if type(preferred_user_id) is int:
            found: Mapping[str, Any] = users[
                operator.indexOf(map(_user_id_key, users), preferred_user_id)
            ]
            return found
    except ValueError:  # not among them
        first = users[0]
        return first if type(first) is dict else _first_mapping(users)
    except (TypeError, KeyError, IndexError):  # ints, or dicts without ids: the slow path
        pass
    dicts = [user for user in users if isinstance(user, Mapping)]
    chosen = next((user for user in dicts if user.get("id") == preferred_user_id), None)
    if chosen is None and dicts:
        chosen = dicts[0]
    return chosen


def _first_mapping(users: Iterable[Any]) -> Mapping[str, Any] | None:
    return next((user for user in users if isinstance(user, Mapping)), None)


def flags_for(users: Iterable[Any], preferred_user_id: object) -> list[str]:
    """Per-user flags: the preferred user's (sender / editor), else the first user's, else []."""
    chosen = preferred_user(users if isinstance(users, list) else list(users), preferred_user_id)
    flags = chosen.get("flags") if chosen is not None else None
    return [str(flag) for flag in flags] if isinstance(flags, (list, tuple)) else []


# ---------------------------------------------------------------------------
# message
# ---------------------------------------------------------------------------


def strip_message_internals(message: Mapping[str, Any]) -> dict[str, Any]:
    """The part of ``finalize_payload`` that matters here (apply_markdown=False,
    client_gravatar=False, keep_rendered_content=True): drop internal keys, mark the content
    as Markdown, and make sure ``avatar_url`` exists."""
    api = {key: value for key, value in message.items() if key not in MESSAGE_INTERNAL_KEYS}
    api["content_type"] = "text/x-markdown"
    api.setdefault("avatar_url", None)
    return api


def api_message(
    message_dict: Mapping[str, Any], finalize: Finalizer | None = None
) -> dict[str, Any]:
    """Build the client-facing message from the internal ``message_dict``.

    ``finalize`` (Zulip's ``finalize_payload``, adapted by the caller) is tried first because it
    computes the real ``avatar_url``; the pure-Python pass always runs afterwards, so the
    result has the same keys whether or not ``finalize`` worked.
    """
    base = to_jsonable(message_dict)
    if finalize is not None:
        try:
            base = to_jsonable(finalize(dict(base)))
        except Exception:  # Zulip-version mismatch: fall back to the pure-Python rewrite
            _log_finalize_failure()
    return strip_message_internals(base)


def _log_finalize_failure() -> None:
    """Warn once per process; later failures are only logged at debug level."""
    global _finalize_failure_logged
    level = logging.DEBUG if _finalize_failure_logged else logging.WARNING
    _finalize_failure_logged = True
    logger.log(level, "finalize_payload failed; using the built-in rewrite", exc_info=True)


def normalize_message_event(
    event: Mapping[str, Any],
    users: list[Any],
    finalize: Finalizer | None = None,
    include_delivery_emails: bool = False,
) -> dict[str, Any]:
    """Internal ``{message: id, message_dict: {...}, *_user_ids...}`` → ``{type, message, flags}``.

    Everything outside ``message_dict`` is notification bookkeeping and is dropped.  With
    ``include_delivery_emails`` the sender's ``sender_delivery_email`` is put back.
    """
    source: Any = event.get("message_dict")
    if not isinstance(source, Mapping):
        fallback = event.get("message")
        source = fallback if isinstance(fallback, Mapping) else {}
    message = api_message(source, finalize)
    if include_delivery_emails and source.get("sender_delivery_email") is not None:
        message["sender_delivery_email"] = source["sender_delivery_email"]
    return {
        "type": "message",
        "message": message,
        "flags": flags_for(users, message.get("sender_id")),
    }


# ---------------------------------------------------------------------------
# update_message
# ---------------------------------------------------------------------------


def is_update_message_internal(key: str) -> bool:
    return (
        key in UPDATE_MESSAGE_INTERNAL_KEYS
        or key.endswith("_user_ids")
        or key.startswith("dm_mention_")
        or key.startswith("followed_topic_")
        or "wildcard" in key
    )


def normalize_update_message_event(event: Mapping[str, Any], users: list[Any]) -> dict[str, Any]:
    """Drop the notification bookkeeping and add the per-user ``flags`` Tornado would add."""
    clean: dict[str, Any] = to_jsonable(
        {key: value for key, value in event.items() if not is_update_message_internal(str(key))}
    )
    clean["flags"] = flags_for(users, event.get("user_id"))
    return clean


# ---------------------------------------------------------------------------
# presence
# ---------------------------------------------------------------------------


def normalize_presence_event(event: Mapping[str, Any]) -> dict[str, Any]:
    """Zulip ≥ 12 (PR #35627) sends ``legacy_presence`` (per client) and ``modern_presence``
    (this user's timestamps) and lets Tornado build each client's format.  Build both API
    forms, ``presence`` (legacy, per client) and ``presences`` (modern, by user id), as
    older Zulip and older receivers expect them.  Older shapes pass through unchanged.
    """
    if "legacy_presence" not in event and "modern_presence" not in event:
        return dict(event)
    clean = {
        key: value
        for key, value in event.items()
        if key not in ("legacy_presence", "modern_presence")
    }
    legacy = event.get("legacy_presence")
    if isinstance(legacy, Mapping) and "presence" not in clean:
        clean["presence"] = dict(legacy)
    modern = event.get("modern_presence")
    user_id = event.get("user_id")
    if isinstance(modern, Mapping) and user_id is not None and "presences" not in clean:
        clean["presences"] = {str(user_id): dict(modern)}
    return clean


# ---------------------------------------------------------------------------
# Redaction
# ---------------------------------------------------------------------------


_ALWAYS_HIDDEN = SECRET_KEYS | DELIVERY_EMAIL_KEYS


def redact(value: Any, *, include_delivery_emails: bool, parent_key: str | None = None) -> Any:
    """Remove secrets everywhere: ``api_key``, channel email tokens (``email_token``,
    ``email_address``), ``token`` and ``config_data`` inside bot ``services`` lists, and
    (unless enabled) ``delivery_email`` / ``sender_delivery_email`` keys."""
    if isinstance(value, list):
        return [
            item
            if type(item) in _PLAIN_SCALARS
            else redact(
                item, include_delivery_emails=include_delivery_emails, parent_key=parent_key
            )
            for item in value
        ]
    if not isinstance(value, dict):
        return value
    hidden = SECRET_KEYS if include_delivery_emails else _ALWAYS_HIDDEN
    if parent_key == "services":
        hidden = hidden | SERVICE_SECRET_KEYS
    return {
        key: item
        if type(item) in _PLAIN_SCALARS
        else redact(item, include_delivery_emails=include_delivery_emails, parent_key=key)
        for key, item in value.items()
        if key not in hidden
    }


# ---------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------


def normalize_event(
    event: Any,
    users: Iterable[Any],
    *,
    include_delivery_emails: bool = False,
    finalize: Finalizer | None = None,
) -> dict[str, Any]:
    """Return the client-facing, redacted form of an internal event (dict or pydantic object).

    A ``message`` or ``update_message`` event in a plain dict is not copied whole: only what
    the result keeps is (Zulip's notification lists, thousands of ids for a big channel, are
    dropped unread).
    """
    user_list = users if isinstance(users, list) else list(users)
    raw_type = event.get("type") if type(event) is dict else None
    if raw_type == "message":
        shaped = normalize_message_event(event, user_list, finalize, include_delivery_emails)
    elif raw_type == "update_message":
        shaped = normalize_update_message_event(event, user_list)
    else:
        plain = to_jsonable(event)
        if not isinstance(plain, dict):
            raise TypeError(f"event is not a mapping: {type(event).__name__}")
        event_type = plain.get("type")
        if event_type == "message":
            shaped = normalize_message_event(plain, user_list, finalize, include_delivery_emails)
        elif event_type == "update_message":
            shaped = normalize_update_message_event(plain, user_list)
        elif event_type == "presence":
            shaped = normalize_presence_event(plain)
        else:
            shaped = plain
    redacted: dict[str, Any] = redact(shaped, include_delivery_emails=include_delivery_emails)
    return redacted
