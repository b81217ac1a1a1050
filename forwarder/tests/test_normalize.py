"""Normalisation: internal Zulip events become client-facing events without secrets."""

from __future__ import annotations

import copy
import datetime
import json
from typing import Any

import pydantic
import pytest
from samples import (
    API_MESSAGE_KEYS,
    message_event,
    message_users,
    realm_bot_add_event,
    realm_user_add_event,
    update_message_event,
    update_message_users,
)
from zerver.lib.message_cache import MessageDict
from zulip_shapes import VERSIONS, copy_sample, samples_for

from zulip_listeners_forwarder.hook import zulip_finalizer
from zulip_listeners_forwarder.normalize import normalize_event, to_jsonable


def test_message_event_becomes_api_shape(realm: Any) -> None:
    event = message_event()
    original = copy.deepcopy(event)

    result = normalize_event(event, message_users(), finalize=zulip_finalizer(realm))

    assert set(result) == {"type", "message", "flags"}
    assert result["type"] == "message"
    assert result["flags"] == ["read"]  # the sender's flags
    message = result["message"]
    assert set(message) == API_MESSAGE_KEYS
    assert message["content"] == "hi **all**"
    assert message["content_type"] == "text/x-markdown"
    assert message["rendered_content"] == "<p>hi <strong>all</strong></p>"
    assert message["avatar_url"].startswith("https://secure.gravatar.com/avatar/")
    assert "iago@example.com" not in repr(result)
    assert event == original, "the caller's event must not be mutated"


def test_message_without_zulip_finalizer_has_the_same_keys() -> None:
    result = normalize_event(message_event(), message_users(), finalize=None)

    assert set(result["message"]) == API_MESSAGE_KEYS
    assert result["message"]["avatar_url"] is None
    assert result["message"]["content_type"] == "text/x-markdown"


def test_broken_finalizer_falls_back_to_builtin_rewrite() -> None:
    def finalize(message: dict[str, Any]) -> dict[str, Any]:
        raise TypeError("finalize_payload() got an unexpected keyword argument")

    result = normalize_event(message_event(), message_users(), finalize=finalize)

    assert set(result["message"]) == API_MESSAGE_KEYS


def test_finalizer_adapts_to_the_installed_signature(realm: Any, monkeypatch: Any) -> None:
    calls: list[dict[str, Any]] = []

    def older_finalize_payload(
        obj: dict[str, Any],
        apply_markdown: bool,
        client_gravatar: bool,
        keep_rendered_content: bool = False,
        skip_copy: bool = False,
        can_access_sender: bool = True,
        realm_host: str = "",
    ) -> dict[str, Any]:
        calls.append(
            dict(
                apply_markdown=apply_markdown,
                client_gravatar=client_gravatar,
                keep_rendered_content=keep_rendered_content,
                realm_host=realm_host,
            )
        )
        return dict(obj, avatar_url="https://example.com/a.png")

    monkeypatch.setattr(MessageDict, "finalize_payload", staticmethod(older_finalize_payload))

    result = normalize_event(message_event(), message_users(), finalize=zulip_finalizer(realm))

    assert calls == [
        dict(
            apply_markdown=False,
            client_gravatar=False,
            keep_rendered_content=True,
            realm_host="acme.example.com",
        )
    ]
    assert result["message"]["avatar_url"] == "https://example.com/a.png"
    assert set(result["message"]) == API_MESSAGE_KEYS


def test_message_flags_fall_back_to_first_user_then_empty() -> None:
    users = [{"id": 11, "flags": ["mentioned"]}, {"id": 12, "flags": []}]
    assert normalize_event(message_event(), users)["flags"] == ["mentioned"]
    assert normalize_event(message_event(), [11, 12])["flags"] == []


def test_sender_flags_are_found_in_a_big_audience_and_odd_shapes() -> None:
    users: list[Any] = [{"id": uid, "flags": []} for uid in range(100, 10_100)]
    users.append({"id": 10, "flags": ["read", "starred"]})  # the sender, last
    assert normalize_event(message_event(), users)["flags"] == ["read", "starred"]

    mixed: list[Any] = [7, {"id": 11, "flags": ["mentioned"]}, {"id": 10, "flags": ["read"]}]
    assert normalize_event(message_event(), mixed)["flags"] == ["read"]
    assert normalize_event(message_event(), [7, {"id": 11, "flags": ["x"]}])["flags"] == ["x"]
    no_ids: list[Any] = [{"flags": ["a"]}, {"id": 10, "flags": ["read"]}]
    assert normalize_event(message_event(), no_ids)["flags"] == ["read"]
    sender_unknown = copy.deepcopy(message_event())
    sender_unknown["message_dict"]["sender_id"] = None
    assert normalize_event(sender_unknown, message_users())["flags"] == []
    assert normalize_event(message_event(), iter(message_users()))["flags"] == ["read"]


def test_notification_lists_are_not_copied_for_messages_and_edits() -> None:
    class Unreadable(list):  # type: ignore[type-arg]
        def __iter__(self) -> Any:
            raise AssertionError("the notification lists were read")

    message = message_event()
    message["push_device_registered_user_ids"] = Unreadable([1, 2])
    assert normalize_event(message, message_users())["message"]["id"] == 123
    edit = update_message_event()
    edit["presence_idle_user_ids"] = Unreadable([1, 2])
    assert "presence_idle_user_ids" not in normalize_event(edit, update_message_users())


def test_delivery_email_can_be_enabled() -> None:
    result = normalize_event(message_event(), message_users(), include_delivery_emails=True)
    assert result["message"]["sender_delivery_email"] == "iago@example.com"

    person = normalize_event(realm_user_add_event(), [1], include_delivery_emails=True)["person"]
    assert person["delivery_email"] == "new.person@example.com"


def test_realm_user_delivery_email_is_removed_by_default() -> None:
    person = normalize_event(realm_user_add_event(), [1, 2])["person"]
    assert "delivery_email" not in person
    assert person["email"] == "user14@acme.example.com"
    assert person["full_name"] == "New Person"


def test_update_message_internals_dropped_and_flags_added() -> None:
    event = update_message_event()
    original = copy.deepcopy(event)

    result = normalize_event(event, update_message_users())

    assert result == {
        "type": "update_message",
        "user_id": 10,
        "edit_timestamp": 1700000100,
        "message_id": 123,
        "rendering_only": False,
        "stream_name": "Denmark",
        "stream_id": 5,
        "message_ids": [123],
        "orig_content": "hi **all**",
        "orig_rendered_content": "<p>hi <strong>all</strong></p>",
        "content": "hi **everyone**",
        "rendered_content": "<p>hi <strong>everyone</strong></p>",
        "is_me_message": False,
        "flags": ["read", "starred"],  # the editor's flags
    }
    assert event == original


def test_realm_bot_secrets_are_redacted() -> None:
    result = normalize_event(realm_bot_add_event(), [10], include_delivery_emails=True)

    bot = result["bot"]
    assert "api_key" not in bot
    assert bot["services"] == [
        {"base_url": "https://listeners.example.com/zulip/outgoing", "interface": 1}
    ]
    assert bot["full_name"] == "Hook bot"
    assert "s3cr3t" not in repr(result)


class TypingStartEvent(pydantic.BaseModel):
    type: str = "typing"
    op: str = "start"
    message_type: str
    sender: dict[str, Any]
    recipients: list[dict[str, Any]]


def test_pydantic_event_becomes_dict() -> None:
    event = TypingStartEvent(
        message_type="direct",
        sender={"user_id": 10, "email": "user10@acme.example.com"},
        recipients=[{"user_id": 11, "email": "user11@acme.example.com"}],
    )

    assert normalize_event(event, [10, 11]) == {
        "type": "typing",
        "op": "start",
        "message_type": "direct",
        "sender": {"user_id": 10, "email": "user10@acme.example.com"},
        "recipients": [{"user_id": 11, "email": "user11@acme.example.com"}],
    }


class HasZoomToken:
    """Anything with model_dump() counts as a pydantic-style event."""

    def model_dump(self) -> dict[str, Any]:
        return {
            "type": "has_zoom_token",
            "value": True,
            "when": datetime.datetime(2025, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
            "ids": (1, 2),
        }


def test_model_dump_object_becomes_json_ready_dict() -> None:
    assert normalize_event(HasZoomToken(), [10]) == {
        "type": "has_zoom_token",
        "value": True,
        "when": "2025-01-02T03:04:05+00:00",
        "ids": [1, 2],
    }


def test_non_mapping_event_is_an_error() -> None:
    with pytest.raises(TypeError):
        normalize_event(["not", "an", "event"], [])


def test_to_jsonable_copies() -> None:
    source = {"a": [{"b": 1}]}
    copied = to_jsonable(source)
    copied["a"][0]["b"] = 2
    assert source == {"a": [{"b": 1}]}


def test_to_jsonable_fast_path_still_converts_what_is_not_plain() -> None:
    import enum
    import uuid

    class Colour(enum.Enum):
        RED = "red"

    class Name(str):
        pass

    when = datetime.datetime(2025, 1, 1, tzinfo=datetime.timezone.utc)
    source = {
        1: (1, 2),
        "set": {3},
        "when": when,
        "nested": [{"colour": Colour.RED}, uuid.UUID(int=1)],
        "name": Name("x"),
    }

    assert to_jsonable(source) == {
        "1": [1, 2],
        "set": [3],
        "when": "2025-01-01T00:00:00+00:00",
        "nested": [{"colour": "red"}, "00000000-0000-0000-0000-000000000001"],
        "name": "x",
    }
    json.dumps(to_jsonable(source))


# ---------------------------------------------------------------------------
# Zulip 9 / 10 / 11 / main shapes (issue 11)
# ---------------------------------------------------------------------------


def test_broken_finalizer_fallback_drops_every_internal_key() -> None:
    event = message_event()
    event["message_dict"]["can_access_sender"] = True

    def finalize(message: dict[str, Any]) -> dict[str, Any]:
        raise KeyError("sender_recipient_id")

    message = normalize_event(event, message_users(), finalize=finalize)["message"]

    assert "sender_recipient_id" not in message and "can_access_sender" not in message
    assert set(message) == API_MESSAGE_KEYS


def test_presence_in_the_zulip_12_shape_gets_both_api_forms() -> None:
    event = {
        "type": "presence",
        "email": "user11@acme.example.com",
        "user_id": 11,
        "server_timestamp": 1700000000.5,
        "legacy_presence": {
            "website": {"client": "website", "status": "idle", "timestamp": 1700000000}
        },
        "modern_presence": {"active_timestamp": 1699990000, "idle_timestamp": 1700000000},
    }

    result = normalize_event(event, [10, 11])

    assert result == {
        "type": "presence",
        "email": "user11@acme.example.com",
        "user_id": 11,
        "server_timestamp": 1700000000.5,
        "presence": {"website": {"client": "website", "status": "idle", "timestamp": 1700000000}},
        "presences": {"11": {"active_timestamp": 1699990000, "idle_timestamp": 1700000000}},
    }


def test_pydantic_optional_fields_left_out_not_null() -> None:
    from zerver.actions.typing import TypingStartEvent, person

    channel = TypingStartEvent(message_type="stream", sender=person(12), stream_id=5, topic="t")
    direct = TypingStartEvent(message_type="direct", sender=person(12), recipients=[person(13)])

    assert normalize_event(channel, [10]) == {
        "type": "typing",
        "op": "start",
        "message_type": "stream",
        "sender": {"user_id": 12, "email": "user12@example.com"},
        "stream_id": 5,
        "topic": "t",
    }
    assert "stream_id" not in normalize_event(direct, [13])
    assert "topic" not in normalize_event(direct, [13])


def test_channel_email_tokens_and_embedded_bot_config_are_redacted() -> None:
    subscription = {
        "type": "subscription",
        "op": "add",
        "subscriptions": [
            {
                "stream_id": 5,
                "name": "Denmark",
                "email_address": "denmark.0123456789abcdef0123456789abcdef@streams.example.com",
            }
        ],
    }
    stream = {
        "type": "stream",
        "op": "create",
        "streams": [{"stream_id": 5, "name": "Denmark", "email_token": "0123456789abcdef"}],
    }
    embedded = realm_bot_add_event()
    embedded["bot"]["bot_type"] = 4
    embedded["bot"]["services"] = [
        {"service_name": "giphy", "config_data": {"key": "giphy-api-key-12345"}}
    ]

    for event in (subscription, stream, embedded):
        text = repr(normalize_event(event, [10]))
        for secret in ("0123456789abcdef", "giphy-api-key", "abcdefABCDEF"):
            assert secret not in text, text
    assert normalize_event(embedded, [10])["bot"]["services"] == [{"service_name": "giphy"}]
    assert normalize_event(subscription, [10])["subscriptions"][0]["name"] == "Denmark"


@pytest.mark.parametrize("version", VERSIONS)
def test_every_event_type_of_every_release_normalises(version: str) -> None:
    results = {}
    for sample in samples_for(version):
        result = normalize_event(copy_sample(sample).event, sample.users)
        json.dumps(result, allow_nan=False)
        results[sample.name] = result

    presence = results["presence"]
    assert presence["presence"]["website"]["status"] == "active"
    assert "legacy_presence" not in presence and "modern_presence" not in presence
    for name in ("typing (direct)", "typing (channel)"):
        assert None not in results[name].values(), results[name]
    assert results["typing (direct)"]["recipients"][1]["user_id"] == 13
    assert results["typing (channel)"]["topic"] == "greetings"
    message = results["message"]["message"]
    assert "sender_recipient_id" not in message and "sender_delivery_email" not in message
    assert "delivery_email" not in results["realm_user add"]["person"]
