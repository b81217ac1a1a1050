"""Envelope v1: the unit the forwarder queues and the receiver stores.

This module owns the envelope's exact shape::

    {"v": 1, "event_id": "<uuid4>", "emitted_at_ms": 1700000000123,
     "server": {"host": "...", "zulip_version": "...", "feature_level": 0},
     "realm": {"id": 2, "uuid": "...", "string_id": "acme"},
     "type": "message", "op": null,
     "audience": {"count": 2, "user_ids": [10, 11]},
     "event": {...client-facing event...}}

``audience.user_ids`` is left out when the operator turns it off; ``count`` is always present.
Pure Python, no Zulip imports.
"""

from __future__ import annotations

import time
import uuid
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


def audience(user_ids: list[int], include_ids: bool) -> dict[str, Any]:
    block: dict[str, Any] = {"count": len(user_ids)}
    if include_ids:
        block["user_ids"] = list(user_ids)
    return block


def now_ms() -> int:
    return int(time.time() * 1000)


def new_event_id() -> str:
    return str(uuid.uuid4())


def build_envelope(
    *,
    server: ServerInfo,
    realm: Mapping[str, Any],
    event: Mapping[str, Any],
    user_ids: list[int],
    include_audience_ids: bool = True,
    clock_ms: Callable[[], int] = now_ms,
    event_id_factory: Callable[[], str] = new_event_id,
) -> dict[str, Any]:
    """Wrap one normalised event; ``type`` and ``op`` are copied from the event itself."""
    op = event.get("op")
    return {
        "v": ENVELOPE_VERSION,
        "event_id": event_id_factory(),
        "emitted_at_ms": clock_ms(),
        "server": server.as_dict(),
        "realm": dict(realm),
        "type": str(event.get("type")),
        "op": op if isinstance(op, str) else None,
        "audience": audience(user_ids, include_audience_ids),
        "event": dict(event),
    }
