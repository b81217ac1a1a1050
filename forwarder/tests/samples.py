"""Internal-shaped Zulip events for the tests, modelled on the reference's §1.5 examples."""

from __future__ import annotations

import copy
from typing import Any

MESSAGE_DICT: dict[str, Any] = {
    "id": 123,
    "sender_id": 10,
    "content": "hi **all**",
    "rendered_content": "<p>hi <strong>all</strong></p>",
    "recipient_type_id": 5,
    "recipient_type": 2,
    "recipient_id": 20,
    "sender_recipient_id": 77,
    "timestamp": 1700000000,
    "client": "website",
    "subject": "greetings",
    "topic_links": [],
    "sender_realm_id": 2,
    "is_me_message": False,
    "reactions": [],
    "submessages": [],
    "sender_full_name": "Iago",
    "sender_email": "user10@acme.example.com",
    "sender_delivery_email": "iago@example.com",
    "sender_realm_str": "acme",
    "sender_avatar_source": "G",
    "sender_avatar_version": 1,
    "sender_is_mirror_dummy": False,
    "sender_email_address_visibility": 1,
    "display_recipient": "Denmark",
    "type": "stream",
    "stream_id": 5,
}

#: The client-facing message keys (apply_markdown=False, keep_rendered_content=True).
API_MESSAGE_KEYS = {
    "id",
    "sender_id",
    "content",
    "rendered_content",
    "content_type",
    "recipient_id",
    "timestamp",
    "client",
    "subject",
    "topic_links",
    "is_me_message",
    "reactions",
    "submessages",
    "sender_full_name",
    "sender_email",
    "sender_realm_str",
    "display_recipient",
    "type",
    "stream_id",
    "avatar_url",
}


# The user-id lists Zulip attaches to message and edit events to decide on notifications;
# empty in these samples, so that nobody would be notified.
NOTIFICATION_LISTS = (
    "online_push_user_ids",
    "dm_mention_push_disabled_user_ids",
    "dm_mention_email_disabled_user_ids",
    "stream_push_user_ids",
    "stream_email_user_ids",
    "topic_wildcard_mention_user_ids",
    "stream_wildcard_mention_user_ids",
    "followed_topic_push_user_ids",
    "followed_topic_email_user_ids",
)


def no_notifications() -> dict[str, list[int]]:
    return {key: [] for key in NOTIFICATION_LISTS}


def message_event(message_id: int = 123, content: str = "hi **all**") -> dict[str, Any]:
    message_dict = copy.deepcopy(MESSAGE_DICT)
    message_dict["id"] = message_id
    message_dict["content"] = content
    return {
        "type": "message",
        "message": message_id,
        "message_dict": message_dict,
        "presence_idle_user_ids": [11],
        **no_notifications(),
        "muted_sender_user_ids": [],
        "all_bot_user_ids": [],
        "push_device_registered_user_ids": [],
        "disable_external_notifications": False,
        "realm_host": "acme.example.com",
        "realm_id": 2,
        "stream_name": "Denmark",
    }


def message_users() -> list[dict[str, Any]]:
    return [
        {"id": 11, "flags": [], "mentioned_user_group_id": None},
        {"id": 10, "flags": ["read"], "mentioned_user_group_id": None},
    ]


def update_message_event(message_id: int = 123, content: str = "hi **everyone**") -> dict[str, Any]:
    return {
        "type": "update_message",
        "user_id": 10,
        "edit_timestamp": 1700000100,
        "message_id": message_id,
        "rendering_only": False,
        "stream_name": "Denmark",
        "stream_id": 5,
        "message_ids": [message_id],
        "orig_content": "hi **all**",
        "orig_rendered_content": "<p>hi <strong>all</strong></p>",
        "content": content,
        "rendered_content": "<p>hi <strong>everyone</strong></p>",
        "is_me_message": False,
        "prior_mention_user_ids": [],
        "presence_idle_user_ids": [],
        **no_notifications(),
        "topic_wildcard_mention_in_followed_topic_user_ids": [],
        "stream_wildcard_mention_in_followed_topic_user_ids": [],
        "muted_sender_user_ids": [],
        "all_bot_user_ids": [],
        "disable_external_notifications": False,
    }


def update_message_users() -> list[dict[str, Any]]:
    return [{"id": 11, "flags": []}, {"id": 10, "flags": ["read", "starred"]}]


def realm_bot_add_event() -> dict[str, Any]:
    return {
        "type": "realm_bot",
        "op": "add",
        "bot": {
            "user_id": 30,
            "api_key": "abcdefABCDEF0123456789abcdefABCD",
            "avatar_url": "https://secure.gravatar.com/avatar/x",
            "bot_type": 3,
            "default_all_public_streams": False,
            "default_events_register_stream": None,
            "default_sending_stream": None,
            "email": "hook-bot@acme.example.com",
            "full_name": "Hook bot",
            "is_active": True,
            "owner_id": 10,
            "services": [
                {
                    "base_url": "https://listeners.example.com/zulip/outgoing",
                    "interface": 1,
                    "token": "s3cr3t-outgoing-token",
                }
            ],
        },
    }


def realm_user_add_event() -> dict[str, Any]:
    return {
        "type": "realm_user",
        "op": "add",
        "person": {
            "user_id": 14,
            "email": "user14@acme.example.com",
            "delivery_email": "new.person@example.com",
            "full_name": "New Person",
            "avatar_url": None,
            "avatar_version": 1,
            "is_admin": False,
            "is_owner": False,
            "is_guest": False,
            "role": 400,
            "is_bot": False,
            "is_active": True,
            "is_imported_stub": False,
            "timezone": "",
            "date_joined": "2025-01-01T00:00:00+00:00",
            "profile_data": {},
        },
    }


def reaction_event(message_id: int = 123) -> dict[str, Any]:
    return {
        "type": "reaction",
        "op": "add",
        "user_id": 10,
        "message_id": message_id,
        "emoji_name": "thumbs_up",
        "emoji_code": "1f44d",
        "reaction_type": "unicode_emoji",
    }


# ---------------------------------------------------------------------------
# What a real Zulip server showed (reference: zulip-realism-check-2.md, rows 1 and 7)
# ---------------------------------------------------------------------------

#: Realm ids and users of a fresh Zulip server: the system bots' realm is created first.
INTERNAL_REALM_ID = 1
ZULIP_REALM_ID = 2
WELCOME_BOT_ID = 5
ZULIP_HUMANS = (8, 9)
PONG_BOT_ID = 12


def system_bot_reaction_event(message_id: int = 40) -> dict[str, Any]:
    """The Welcome Bot's turtle on its own greeting in a new organisation, exactly as
    ``notify_reaction_update`` (``zerver/actions/reactions.py``) builds it; Zulip sends it
    with ``user_profile.realm``, the bot's realm ``zulipinternal``, and
    ``list(event_recipient_ids_for_action_on_messages([message]))`` (ints) as the audience."""
    return {
        "type": "reaction",
        "op": "add",
        "user_id": WELCOME_BOT_ID,
        "user": {
            "user_id": WELCOME_BOT_ID,
            "email": "welcome-bot@zulip.com",
            "full_name": "Welcome Bot",
        },
        "message_id": message_id,
        "emoji_name": "turtle",
        "emoji_code": "1f422",
        "reaction_type": "unicode_emoji",
    }


def bot_read_flag_event(message_id: int = 41) -> dict[str, Any]:
    """What ``do_flag_service_bots_messages_as_processed`` → ``do_update_message_flags(bot,
    "add", "read", [id])`` sends after each outgoing-webhook delivery attempt (Zulip ≥ 10),
    with ``[bot.id]`` as the audience.  A retry finds the message already read, so its
    ``messages`` list is empty."""
    return {
        "type": "update_message_flags",
        "op": "add",
        "operation": "add",
        "flag": "read",
        "messages": [message_id],
        "all": False,
    }
