"""Stand-in for zerver/actions/typing.py on Zulip main (PR #39243, 2026-05): it imports
``send_event_rollback_unsafe`` *by name* and sends pydantic event models whose optional fields
are ``X | None = None``, as ``zerver/lib/event_types.py`` declares them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from zerver.tornado.django_api import send_event_rollback_unsafe


class TypingPerson(BaseModel):
    user_id: int
    email: str


class TypingStartEvent(BaseModel):
    type: Literal["typing"] = "typing"
    op: Literal["start"] = "start"
    message_type: Literal["direct", "stream"]
    sender: TypingPerson
    recipients: list[TypingPerson] | None = None
    stream_id: int | None = None
    topic: str | None = None


def person(user_id: int) -> TypingPerson:
    return TypingPerson(user_id=user_id, email=f"user{user_id}@example.com")


def do_send_typing_notification(realm: Any, sender_id: int, recipient_ids: list[int]) -> None:
    event = TypingStartEvent(
        message_type="direct",
        sender=person(sender_id),
        recipients=[person(uid) for uid in recipient_ids],
    )
    send_event_rollback_unsafe(realm, event, recipient_ids)


def do_send_stream_typing_notification(
    realm: Any, sender_id: int, stream_id: int, topic: str, user_ids: list[int]
) -> None:
    event = TypingStartEvent(
        message_type="stream", sender=person(sender_id), stream_id=stream_id, topic=topic
    )
    send_event_rollback_unsafe(realm, event, user_ids)
