"""Events Zulip sends on behalf of bots (what a real Zulip server showed):

* a cross-realm system bot's reaction comes with the bot's realm (``zulipinternal``), and is
  attributed to the conversation's realm: in the envelope, by the realm filter and in the
  routing header;
* the read flag Zulip sets for a service bot on each delivery attempt is not forwarded (unless
  ``ZULIP_LISTENERS_FORWARD_BOT_READ_FLAGS``), while people's read flags and a bot's other
  flags are.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from django.test import override_settings
from local_receiver import LocalReceiver
from samples import (
    INTERNAL_REALM_ID,
    PONG_BOT_ID,
    WELCOME_BOT_ID,
    ZULIP_HUMANS,
    ZULIP_REALM_ID,
    bot_read_flag_event,
    reaction_event,
    system_bot_reaction_event,
    update_message_event,
)
from zerver.lib import queue as stub_queue
from zerver.models import users as stub_users
from zerver.models.users import UserProfile
from zerver.tornado import django_api

from zulip_listeners_forwarder.audience import (
    MAX_AUDIENCE_LOOKUPS,
    UserFacts,
    UserFactsMemo,
    is_service_bot_read_flag,
)
from zulip_listeners_forwarder.delivery import ROUTING_HEADER, BatchSender
from zulip_listeners_forwarder.settings import QUEUE_NAME


def forwarded() -> list[dict[str, Any]]:
    return stub_queue.queued(QUEUE_NAME)


def tornado() -> list[dict[str, Any]]:
    return stub_queue.queued(django_api.TORNADO_QUEUE)


def lookups() -> list[int]:
    """The user ids the forwarder looked up through Zulip's get_user_profile_by_id."""
    return list(stub_users.LOOKUPS)


def make_realm(realm_id: int, string_id: str) -> SimpleNamespace:
    return SimpleNamespace(
        id=realm_id,
        string_id=string_id,
        uuid=uuid.UUID(int=realm_id),
        host=f"{string_id}.example.com",
    )


@pytest.fixture
def internal() -> SimpleNamespace:
    return make_realm(INTERNAL_REALM_ID, "zulipinternal")


@pytest.fixture
def zulip(internal: SimpleNamespace) -> SimpleNamespace:
    """Realm ``zulip`` with two people, and the Welcome Bot in ``zulipinternal``."""
    realm = make_realm(ZULIP_REALM_ID, "zulip")
    stub_users.add_user(WELCOME_BOT_ID, internal, is_bot=True, bot_type=UserProfile.DEFAULT_BOT)
    for user_id in ZULIP_HUMANS:
        stub_users.add_user(user_id, realm)
    return realm


# ---------------------------------------------------------------------------
# 1. A system bot's action belongs to the conversation's realm
# ---------------------------------------------------------------------------


@override_settings(ZULIP_LISTENERS_REALMS=["zulip"])
def test_system_bot_reaction_is_forwarded_with_the_conversations_realm(
    internal: SimpleNamespace,
    zulip: SimpleNamespace,
    receiver: LocalReceiver,
    secret: str,
    tmp_path: Path,
) -> None:
    django_api.send_event_rollback_unsafe(internal, system_bot_reaction_event(), list(ZULIP_HUMANS))

    assert len(tornado()) == 1, "Zulip's own delivery is untouched"
    [envelope] = forwarded()  # the realm filter said "zulip", not "zulipinternal"
    assert envelope["realm"] == {
        "id": ZULIP_REALM_ID,
        "uuid": str(zulip.uuid),
        "string_id": "zulip",
    }
    assert envelope["actor_realm"] == {
        "id": INTERNAL_REALM_ID,
        "uuid": str(internal.uuid),
        "string_id": "zulipinternal",
    }
    assert envelope["event"]["user_id"] == WELCOME_BOT_ID, "the actor stays visible"
    assert envelope["audience"] == {"count": 2, "user_ids": list(ZULIP_HUMANS)}
    assert list(envelope)[:6] == [
        "v",
        "event_id",
        "emitted_at_ms",
        "server",
        "realm",
        "actor_realm",
    ]

    sender = BatchSender(receiver.url, [secret], dead_letter_path=str(tmp_path / "dead"))
    assert sender.send_all(forwarded()).delivered == 1
    [request] = receiver.requests
    assert request.headers[ROUTING_HEADER.lower()] == str(ZULIP_REALM_ID)


def test_system_bot_in_the_audience_is_skipped(
    internal: SimpleNamespace, zulip: SimpleNamespace
) -> None:
    """The bot may hold a UserMessage row for the message it reacts to: its own realm says
    nothing about the conversation's."""
    django_api.send_event_rollback_unsafe(
        internal, system_bot_reaction_event(), [WELCOME_BOT_ID, *ZULIP_HUMANS]
    )

    [envelope] = forwarded()
    assert envelope["realm"]["string_id"] == "zulip"
    assert lookups() == [WELCOME_BOT_ID, ZULIP_HUMANS[0]], "stops at the first match"


@override_settings(ZULIP_LISTENERS_REALMS=["zulipinternal"])
def test_the_system_bot_realm_filter_no_longer_takes_other_realms_events(
    internal: SimpleNamespace, zulip: SimpleNamespace
) -> None:
    django_api.send_event_rollback_unsafe(internal, system_bot_reaction_event(), list(ZULIP_HUMANS))

    assert forwarded() == []
    assert len(tornado()) == 1


def test_an_event_among_system_bots_keeps_their_realm(
    internal: SimpleNamespace, zulip: SimpleNamespace
) -> None:
    stub_users.add_user(6, internal, is_bot=True, bot_type=UserProfile.DEFAULT_BOT)

    django_api.send_event_rollback_unsafe(
        internal, system_bot_reaction_event(), [WELCOME_BOT_ID, 6]
    )

    [envelope] = forwarded()
    assert envelope["realm"]["string_id"] == "zulipinternal"
    assert "actor_realm" not in envelope


def test_audience_of_user_dicts_is_read_too(
    internal: SimpleNamespace, zulip: SimpleNamespace
) -> None:
    """``update_message`` passes ``[{"id": …, "flags": […]}, …]``."""
    event = update_message_event(40, "edited")
    event["user_id"] = WELCOME_BOT_ID
    users = [{"id": WELCOME_BOT_ID, "flags": []}, {"id": ZULIP_HUMANS[0], "flags": ["read"]}]

    django_api.send_event_rollback_unsafe(internal, event, users)

    [envelope] = forwarded()
    assert envelope["realm"]["id"] == ZULIP_REALM_ID
    assert envelope["actor_realm"]["id"] == INTERNAL_REALM_ID


def test_other_realms_cost_no_lookup(realm: Any, zulip: SimpleNamespace) -> None:
    """The rule applies only to events Zulip sends with its system-bot realm."""
    for _ in range(3):
        django_api.send_event_rollback_unsafe(zulip, system_bot_reaction_event(), [8, 9])
        django_api.send_event_rollback_unsafe(realm, reaction_event(), [10, 11])

    assert len(forwarded()) == 6
    assert lookups() == []
    assert all("actor_realm" not in envelope for envelope in forwarded())


def test_users_are_looked_up_once_per_process(
    internal: SimpleNamespace, zulip: SimpleNamespace
) -> None:
    for message_id in (40, 41, 42):
        django_api.send_event_rollback_unsafe(
            internal, system_bot_reaction_event(message_id), list(ZULIP_HUMANS)
        )

    assert [e["realm"]["string_id"] for e in forwarded()] == ["zulip"] * 3
    assert lookups() == [ZULIP_HUMANS[0]]


def test_lookups_per_event_are_bounded(internal: SimpleNamespace) -> None:
    audience = list(range(100, 200))  # unknown to Zulip: nothing to attribute to

    django_api.send_event_rollback_unsafe(internal, system_bot_reaction_event(), audience)

    assert len(lookups()) == MAX_AUDIENCE_LOOKUPS
    [envelope] = forwarded()
    assert envelope["realm"]["string_id"] == "zulipinternal"


@override_settings(SYSTEM_BOT_REALM="bots")
def test_zulips_system_bot_realm_setting_is_followed(zulip: SimpleNamespace) -> None:
    bots = make_realm(7, "bots")
    stub_users.add_user(70, bots, is_bot=True, bot_type=UserProfile.DEFAULT_BOT)

    django_api.send_event_rollback_unsafe(bots, system_bot_reaction_event(), list(ZULIP_HUMANS))

    [envelope] = forwarded()
    assert envelope["realm"]["string_id"] == "zulip"
    assert envelope["actor_realm"]["string_id"] == "bots"


def test_failed_lookup_forwards_with_zulips_realm(
    internal: SimpleNamespace,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def memcached_down(user_id: int) -> Any:
        raise ConnectionError("memcached is down")

    monkeypatch.setattr(stub_users, "get_user_profile_by_id", memcached_down)

    with caplog.at_level(logging.WARNING, logger="zulip_listeners_forwarder"):
        for _ in range(3):
            django_api.send_event_rollback_unsafe(
                internal, system_bot_reaction_event(), list(ZULIP_HUMANS)
            )

    assert len(tornado()) == 3
    assert [e["realm"]["string_id"] for e in forwarded()] == ["zulipinternal"] * 3
    warnings = [r.getMessage() for r in caplog.records if "cannot look up user" in r.getMessage()]
    assert len(warnings) == 1, "at most once a minute"


# ---------------------------------------------------------------------------
# 2. A service bot's read flag, once per delivery attempt
# ---------------------------------------------------------------------------


@pytest.fixture
def pong_bot(zulip: SimpleNamespace) -> int:
    stub_users.add_user(PONG_BOT_ID, zulip, is_bot=True, bot_type=UserProfile.OUTGOING_WEBHOOK_BOT)
    return PONG_BOT_ID


def test_service_bot_read_flags_are_not_forwarded(zulip: SimpleNamespace, pong_bot: int) -> None:
    """One per delivery attempt: four for a mention Zulip tried four times."""
    attempts = [bot_read_flag_event(41)] + [
        {**bot_read_flag_event(41), "messages": []} for _ in range(3)
    ]
    for event in attempts:
        django_api.send_event_rollback_unsafe(zulip, event, [pong_bot])

    assert len(tornado()) == 4, "Zulip's own delivery is untouched"
    assert forwarded() == []
    assert lookups() == [pong_bot], "looked up once, then remembered"


def test_embedded_bot_read_flags_are_not_forwarded(zulip: SimpleNamespace) -> None:
    stub_users.add_user(13, zulip, is_bot=True, bot_type=UserProfile.EMBEDDED_BOT)

    django_api.send_event_rollback_unsafe(zulip, bot_read_flag_event(), [13])

    assert forwarded() == []


def test_a_persons_read_flag_is_forwarded(zulip: SimpleNamespace, pong_bot: int) -> None:
    django_api.send_event_rollback_unsafe(zulip, bot_read_flag_event(), [ZULIP_HUMANS[0]])
    django_api.send_event_rollback_unsafe(zulip, bot_read_flag_event(42), [ZULIP_HUMANS[0]])

    assert [e["event"]["flag"] for e in forwarded()] == ["read", "read"]
    assert [e["audience"]["user_ids"] for e in forwarded()] == [[ZULIP_HUMANS[0]]] * 2
    assert lookups() == [ZULIP_HUMANS[0]]


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"flag": "starred"}, "another flag"),
        ({"op": "remove", "operation": "remove"}, "marked unread"),
    ],
)
def test_a_service_bots_other_flags_are_forwarded(
    zulip: SimpleNamespace, pong_bot: int, change: dict[str, Any], why: str
) -> None:
    django_api.send_event_rollback_unsafe(zulip, {**bot_read_flag_event(), **change}, [pong_bot])

    assert len(forwarded()) == 1, why


def test_a_generic_bots_read_flag_is_forwarded(zulip: SimpleNamespace) -> None:
    """A generic bot reads through the API on purpose; only service bots get the automatic
    read flag."""
    stub_users.add_user(14, zulip, is_bot=True, bot_type=UserProfile.DEFAULT_BOT)

    django_api.send_event_rollback_unsafe(zulip, bot_read_flag_event(), [14])

    assert len(forwarded()) == 1


def test_read_flag_of_an_unknown_user_is_forwarded(zulip: SimpleNamespace) -> None:
    django_api.send_event_rollback_unsafe(zulip, bot_read_flag_event(), [999])

    assert len(forwarded()) == 1


@override_settings(ZULIP_LISTENERS_FORWARD_BOT_READ_FLAGS=True)
def test_bot_read_flags_can_be_kept(zulip: SimpleNamespace, pong_bot: int) -> None:
    django_api.send_event_rollback_unsafe(zulip, bot_read_flag_event(), [pong_bot])

    [envelope] = forwarded()
    assert envelope["event"] == bot_read_flag_event()
    assert lookups() == [], "nothing to decide, nothing looked up"


@override_settings(ZULIP_LISTENERS_EVENT_TYPES=["message"])
def test_flags_not_forwarded_at_all_cost_no_lookup(zulip: SimpleNamespace, pong_bot: int) -> None:
    django_api.send_event_rollback_unsafe(zulip, bot_read_flag_event(), [pong_bot])

    assert forwarded() == [] and lookups() == []


def test_only_single_user_read_additions_are_looked_up(zulip: SimpleNamespace) -> None:
    def no_lookups(user_id: int) -> UserFacts | None:
        raise AssertionError(f"looked up {user_id}")

    memo = UserFactsMemo(no_lookups)
    assert not is_service_bot_read_flag(bot_read_flag_event(), [8, 9], memo)
    assert not is_service_bot_read_flag({**bot_read_flag_event(), "flag": "starred"}, [8], memo)
    assert not is_service_bot_read_flag(reaction_event(), [8], memo)


def test_memo_forgets_after_its_time_and_is_bounded(zulip: SimpleNamespace) -> None:
    now = [0.0]
    loads: list[int] = []

    def load(user_id: int) -> UserFacts:
        loads.append(user_id)
        return UserFacts(realm=zulip, is_service_bot=False)

    memo = UserFactsMemo(load, ttl=60, max_entries=2, clock=lambda: now[0])
    memo.get(1)
    memo.get(1)
    now[0] = 61
    memo.get(1)
    memo.get(2)
    memo.get(3)  # pushes out 1, the least recently used
    memo.get(2)
    memo.get(1)

    assert loads == [1, 1, 2, 3, 1]
