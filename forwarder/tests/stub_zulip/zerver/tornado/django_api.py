"""Stand-in for zerver/tornado/django_api.py (current Zulip names and signatures)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from django.db import transaction

from zerver.lib.queue import queue_json_publish_rollback_unsafe

TORNADO_QUEUE = "notify_tornado"


def send_event_rollback_unsafe(
    realm: Any, event: Mapping[str, Any], users: Iterable[int] | Iterable[Mapping[str, Any]]
) -> None:
    """`users` is a list of user IDs, or in some special cases like message
    send/update or embeds, dictionaries containing extra data."""
    if hasattr(event, "model_dump"):  # how main serialises BaseEvents for Tornado is unread
        event = event.model_dump(mode="json")
    queue_json_publish_rollback_unsafe(TORNADO_QUEUE, dict(event=event, users=list(users)))


def send_event_on_commit(
    realm: Any, event: Mapping[str, Any], users: Iterable[int] | Iterable[Mapping[str, Any]]
) -> None:
    transaction.on_commit(lambda: send_event_rollback_unsafe(realm, event, users))
