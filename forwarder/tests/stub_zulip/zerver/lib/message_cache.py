"""Stand-in for zerver/lib/message_cache.py: finalize_payload with the current signature."""

from __future__ import annotations

import copy
import hashlib
from typing import Any


class MessageDict:
    @staticmethod
    def finalize_payload(
        obj: dict[str, Any],
        *,
        apply_markdown: bool,
        client_gravatar: bool,
        allow_empty_topic_name: bool,
        keep_rendered_content: bool = False,
        skip_copy: bool = False,
        can_access_sender: bool,
        realm_host: str,
        is_incoming_1_to_1: bool,
    ) -> dict[str, Any]:
        if not skip_copy:
            obj = copy.copy(obj)
        digest = hashlib.md5(obj["sender_delivery_email"].lower().encode()).hexdigest()
        obj["avatar_url"] = (
            f"https://secure.gravatar.com/avatar/{digest}?d=identicon&version={obj['sender_avatar_version']}"
        )
        if apply_markdown:
            obj["content_type"] = "text/html"
            obj["content"] = obj["rendered_content"]
        else:
            obj["content_type"] = "text/x-markdown"
        if not keep_rendered_content:
            del obj["rendered_content"]
        for key in (
            "sender_delivery_email",
            "sender_avatar_source",
            "sender_avatar_version",
            "sender_is_mirror_dummy",
            "sender_email_address_visibility",
            "sender_realm_id",
        ):
            del obj[key]
        obj.pop("sender_recipient_id")  # like Zulip: no default, the wide dict always has it
        obj.pop("can_access_sender", None)
        obj.pop("recipient_type", None)
        obj.pop("recipient_type_id", None)
        return obj
