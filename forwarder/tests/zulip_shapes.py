"""One sample of every forwarded event type, in the internal shape each Zulip release hands to
``send_event*`` (9.x, 10.x, 11.x and main / 12.0-dev), with the ``users`` argument.

Sources: the realism check against Zulip's source (presence: ``send_presence_changed`` before
and after PR #35627; typing: dicts before PR #39243, pydantic models after; message: the wide
``message_dict`` of ``do_send_messages``) and the API changelog in Zulip's docs (general chat
``subject: ""`` since 10.0; ``stream_ids`` on channel deletion since 10.0; archiving as a
``stream`` ``update`` of ``is_archived`` since 11.0).  Ids: realm 2, users 10-14, channel 5.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from samples import (
    MESSAGE_DICT,
    message_event,
    message_users,
    realm_user_add_event,
    update_message_event,
)
from zerver.actions.typing import TypingStartEvent, person

VERSIONS = ("9", "10", "11", "main")

PRESENCE_USER = 11
TYPING_USER = 12


@dataclass(frozen=True)
class Sample:
    name: str
    event: Any
    users: list[Any]


def _message(version: str) -> Sample:
    event = message_event(9100, "hello **all**")
    event["message_dict"]["sender_recipient_id"] = 77  # added by bulk_hydrate_sender_info
    if version != "9":
        event["message_dict"]["subject"] = ""  # "general chat", Zulip 10+
    return Sample("message", event, message_users())


def _update_message(version: str) -> Sample:
    event = update_message_event(9100, "hello **everyone**")
    if version == "9":
        event.pop("rendering_only", None)
    return Sample("update_message", event, [{"id": 10, "flags": ["read"]}, {"id": 11, "flags": []}])


def _presence(version: str) -> Sample:
    client = {"client": "website", "status": "active", "timestamp": 1700000000, "pushable": False}
    base = {
        "type": "presence",
        "email": f"user{PRESENCE_USER}@acme.example.com",
        "user_id": PRESENCE_USER,
        "server_timestamp": 1700000000.25,
    }
    if version == "main":
        base["legacy_presence"] = {"website": client}
        base["modern_presence"] = {"active_timestamp": 1700000000, "idle_timestamp": 1699990000}
    else:
        base["presence"] = {"website": client}
    return Sample("presence", base, [10, 11, 12])


def _typing(version: str) -> list[Sample]:
    if version == "main":
        direct: Any = TypingStartEvent(
            message_type="direct",
            sender=person(TYPING_USER),
            recipients=[person(TYPING_USER), person(13)],
        )
        channel: Any = TypingStartEvent(
            message_type="stream", sender=person(TYPING_USER), stream_id=5, topic="greetings"
        )
    else:
        sender = {"user_id": TYPING_USER, "email": f"user{TYPING_USER}@example.com"}
        direct = {
            "type": "typing",
            "op": "start",
            "message_type": "direct",
            "sender": sender,
            "recipients": [sender, {"user_id": 13, "email": "user13@example.com"}],
        }
        channel = {
            "type": "typing",
            "op": "start",
            "message_type": "stream",
            "sender": sender,
            "stream_id": 5,
            "topic": "greetings",
        }
    return [
        Sample("typing (direct)", direct, [12, 13]),
        Sample("typing (channel)", channel, [10, 12]),
    ]


def _stream(version: str) -> list[Sample]:
    stream = {
        "stream_id": 5,
        "name": "Denmark",
        "description": "",
        "rendered_description": "",
        "invite_only": False,
        "is_web_public": False,
        "history_public_to_subscribers": True,
        "date_created": 1690000000,
        "first_message_id": 1,
        "stream_post_policy": 1,
        "message_retention_days": None,
    }
    delete: dict[str, Any] = {"type": "stream", "op": "delete", "streams": [stream]}
    if version != "9":
        delete["stream_ids"] = [5]
    samples = [Sample("stream delete", delete, [10, 11])]
    if version in ("11", "main"):
        archive = {
            "type": "stream",
            "op": "update",
            "property": "is_archived",
            "value": True,
            "stream_id": 5,
            "name": "Denmark",
        }
        samples.append(Sample("stream archive", archive, [10, 11]))
    return samples


def samples_for(version: str) -> list[Sample]:
    """Every forwarded event type, in this release's internal shape."""
    if version not in VERSIONS:
        raise ValueError(version)
    reaction: dict[str, Any] = {
        "type": "reaction",
        "op": "add",
        "user_id": 10,
        "message_id": 9100,
        "emoji_name": "tada",
        "emoji_code": "1f389",
        "reaction_type": "unicode_emoji",
    }
    if version == "9":
        reaction["user"] = {"user_id": 10, "email": "user10@acme.example.com", "full_name": "Iago"}
    flags: dict[str, Any] = {
        "type": "update_message_flags",
        "op": "add",
        "operation": "add",
        "flag": "starred",
        "messages": [9100],
        "all": False,
    }
    return [
        _message(version),
        _update_message(version),
        Sample(
            "delete_message",
            {
                "type": "delete_message",
                "message_ids": [9099],
                "message_type": "stream",
                "stream_id": 5,
                "topic": "greetings",
            },
            [10, 11],
        ),
        Sample("reaction", reaction, [10, 11]),
        Sample(
            "subscription peer_add",
            {"type": "subscription", "op": "peer_add", "stream_ids": [5], "user_ids": [13]},
            [10, 11, 13],
        ),
        Sample(
            "subscription add",
            {
                "type": "subscription",
                "op": "add",
                "subscriptions": [{"stream_id": 5, "name": "Denmark", "color": "#76ce90"}],
            },
            [13],
        ),
        *_stream(version),
        Sample("realm_user add", realm_user_add_event(), [10, 11, 14]),
        Sample(
            "realm_user deactivate",
            {"type": "realm_user", "op": "update", "person": {"user_id": 14, "is_active": False}},
            [10, 11],
        ),
        _presence(version),
        *_typing(version),
        Sample("update_message_flags", flags, [10]),
        Sample(
            "user_status",
            {
                "type": "user_status",
                "user_id": 10,
                "away": False,
                "status_text": "on vacation",
                "emoji_name": "palm_tree",
                "emoji_code": "1f334",
                "reaction_type": "unicode_emoji",
            },
            [10, 11],
        ),
        Sample(
            "realm_emoji",
            {
                "type": "realm_emoji",
                "op": "update",
                "realm_emoji": {
                    "1": {
                        "id": "1",
                        "name": "party",
                        "source_url": "/user_avatars/2/emoji/images/1.png",
                        "deactivated": False,
                        "author_id": 10,
                    }
                },
            },
            [10, 11],
        ),
        Sample(
            "custom_profile_fields",
            {
                "type": "custom_profile_fields",
                "fields": [{"id": 1, "name": "Phone", "type": 1, "hint": "", "field_data": ""}],
            },
            [10, 11],
        ),
    ]


def copy_sample(sample: Sample) -> Sample:
    event = sample.event if hasattr(sample.event, "model_dump") else copy.deepcopy(sample.event)
    return Sample(sample.name, event, copy.deepcopy(sample.users))


__all__ = ["MESSAGE_DICT", "VERSIONS", "Sample", "copy_sample", "samples_for"]
