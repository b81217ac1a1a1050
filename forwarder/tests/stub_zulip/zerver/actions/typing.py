"""Stand-in for zerver/actions/typing.py: imports send_event_rollback_unsafe *by name*."""

from __future__ import annotations

from typing import Any

from zerver.tornado.django_api import send_event_rollback_unsafe


class TypingStartEvent:
    """A pydantic-style event object (only ``model_dump`` matters here)."""

    def __init__(self, sender_id: int, recipient_ids: list[int]) -> None:
        self.type = "typing"
        self.op = "start"
        self.sender_id = sender_id
        self.recipient_ids = recipient_ids

    def model_dump(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "op": self.op,
            "message_type": "direct",
            "sender": {"user_id": self.sender_id, "email": f"user{self.sender_id}@example.com"},
            "recipients": [
                {"user_id": uid, "email": f"user{uid}@example.com"} for uid in self.recipient_ids
            ],
        }


def do_send_typing_notification(realm: Any, sender_id: int, recipient_ids: list[int]) -> None:
    event = TypingStartEvent(sender_id, recipient_ids)
    send_event_rollback_unsafe(realm, event, recipient_ids)
