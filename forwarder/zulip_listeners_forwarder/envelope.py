"""Envelope v1: the unit the forwarder queues and the receiver stores.

This module owns the envelope's exact shape::

    {"v": 1, "event_id": "<uuid7>", "emitted_at_ms": 1700000000123,
     "server": {"host": "...", "zulip_version": "...", "feature_level": 0},
     "realm": {"id": 2, "uuid": "...", "string_id": "acme"},
     "type": "message", "op": null,
     "audience": {"count": 2, "user_ids": [10, 11]},
     "event": {...client-facing event...}}

``audience.count`` is always present; ``audience.user_ids`` is left out when the operator turns
it off, and by the hook for an audience bigger than ``ZULIP_LISTENERS_AUDIENCE_MAX_IDS``
(the receiver only uses the ids of a one-user audience, and listeners want the count).
``realm`` is the conversation's realm.  When Zulip sent the event with another realm (a
cross-realm system bot's action, such as the Welcome Bot's reaction in a new organisation,
comes with the bot's realm), the envelope also carries that realm as ``"actor_realm": {"id",
"uuid", "string_id"}``; otherwise the key is absent.  Pure Python, no Zulip imports.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

ENVELOPE_VERSION = 1


@dataclass(frozen=True)
class ServerInfo:
    """Identifies the Zulip server that emitted the event."""

    host: str
    zulip_version: str
    feature_level: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "zulip_version": self.zulip_version,
            "feature_level": self.feature_level,
        }


def realm_info(realm: Any) -> dict[str, Any]:
    """``realm`` is Zulip's ``Realm`` model (or anything with ``id``, ``uuid``, ``string_id``)."""
    return {
        "id": int(realm.id),
        "uuid": str(realm.uuid),
        "string_id": str(realm.string_id),
    }


def audience_of(user_ids: list[int], include_ids: bool) -> dict[str, Any]:
    block: dict[str, Any] = {"count": len(user_ids)}
    if include_ids:
        block["user_ids"] = list(user_ids)
    return block


def now_ms() -> int:
    return int(time.time() * 1000)


_last_uuid7 = [0, 0]  # (milliseconds, 12-bit sequence) of the last id made
_uuid7_lock = threading.Lock()


def new_event_id() -> str:
    """A UUIDv7 (RFC 9562): the Unix time in milliseconds, then random bits.

    Ids made later sort later, so the server's unique index on them grows at its end instead of
    being written all over (random UUID4 ids halve its insert rate). Within one millisecond a
    12-bit sequence keeps them increasing (RFC 9562 §6.2, method 1). Python has ``uuid.uuid7``
    only from 3.14.
    """
    random = int.from_bytes(os.urandom(10), "big")  # 11 bits for a new sequence, 62 for rand_b
    with _uuid7_lock:
        ms = now_ms()
        last_ms, seq = _last_uuid7
        if ms <= last_ms:
            ms, seq = last_ms, seq + 1
            if seq > 0xFFF:  # 4096 ids in one millisecond: borrow the next one
                ms, seq = ms + 1, 0
        else:
            seq = random >> 69  # leave room to count up within the millisecond
        _last_uuid7[0], _last_uuid7[1] = ms, seq
    value = (ms & 0xFFFF_FFFF_FFFF) << 80
    value |= 0x7 << 76  # version 7
    value |= seq << 64  # rand_a: the sequence
    value |= 0b10 << 62  # variant
    value |= random & 0x3FFF_FFFF_FFFF_FFFF  # rand_b
    text = f"{value:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def build_envelope(
    *,
    server: ServerInfo,
    realm: Mapping[str, Any],
    event: Mapping[str, Any],
    user_ids: list[int],
    include_audience_ids: bool = True,
    clock_ms: Callable[[], int] = now_ms,
    event_id_factory: Callable[[], str] = new_event_id,
    actor_realm: Mapping[str, Any] | None = None,
    audience: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Wrap one normalised event; ``type`` and ``op`` are copied from the event itself.

    ``audience``, when given, is the audience block as it is (the hook builds it); otherwise
    it is made from ``user_ids`` and ``include_audience_ids``.
    """
    op = event.get("op")
    envelope: dict[str, Any] = {
        "v": ENVELOPE_VERSION,
        "event_id": event_id_factory(),
        "emitted_at_ms": clock_ms(),
        "server": server.as_dict(),
        "realm": dict(realm),
    }
    if actor_realm is not None:
        envelope["actor_realm"] = dict(actor_realm)
    envelope.update(
        {
            "type": str(event.get("type")),
            "op": op if isinstance(op, str) else None,
            "audience": (
                dict(audience)
                if audience is not None
                else audience_of(user_ids, include_audience_ids)
            ),
            "event": dict(event),
        }
    )
    return envelope
