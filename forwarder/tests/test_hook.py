"""The producer hook: wrapping, rebinding, never raising, filtering, queueing."""

from __future__ import annotations

import json
import logging
import sys
import types
from collections.abc import Iterator
from typing import Any

import pytest
from django.test import override_settings
from samples import message_event, message_users, reaction_event, realm_bot_add_event
from zerver.actions import typing as stub_typing
from zerver.lib import queue as stub_queue
from zerver.tornado import django_api

from zulip_listeners_forwarder import hook
from zulip_listeners_forwarder.settings import QUEUE_NAME


def forwarded() -> list[dict[str, Any]]:
    return stub_queue.queued(QUEUE_NAME)


def tornado() -> list[dict[str, Any]]:
    return stub_queue.queued(django_api.TORNADO_QUEUE)


# ---------------------------------------------------------------------------
# Installation (done by AppConfig.ready() in conftest's django.setup())
# ---------------------------------------------------------------------------


def test_ready_installed_the_wrapper() -> None:
    assert hook.is_wrapper(django_api.send_event_rollback_unsafe)
    assert not hook.is_wrapper(django_api.send_event_rollback_unsafe.__wrapped__)


def test_ready_rebound_modules_that_imported_the_function_by_name(realm: Any) -> None:
    assert stub_typing.send_event_rollback_unsafe is django_api.send_event_rollback_unsafe

    stub_typing.do_send_typing_notification(realm, 10, [10, 11])

    assert len(tornado()) == 1, "Zulip's own delivery still happens"
    [envelope] = forwarded()
    assert envelope["type"] == "typing" and envelope["op"] == "start"
    assert envelope["event"]["sender"] == {"user_id": 10, "email": "user10@example.com"}
    assert envelope["audience"] == {"count": 2, "user_ids": [10, 11]}


def test_install_is_idempotent(realm: Any) -> None:
    wrapper = django_api.send_event_rollback_unsafe

    assert hook.install() == []
    hook.install()

    assert django_api.send_event_rollback_unsafe is wrapper
    assert not hook.is_wrapper(wrapper.__wrapped__)
    django_api.send_event_rollback_unsafe(realm, reaction_event(), [10])
    assert len(forwarded()) == 1


def test_send_event_on_commit_goes_through_the_wrapper(realm: Any) -> None:
    django_api.send_event_on_commit(realm, reaction_event(), [10, 11])

    assert len(tornado()) == 1
    assert [envelope["type"] for envelope in forwarded()] == ["reaction"]


@pytest.fixture
def fake_django_api() -> Iterator[types.ModuleType]:
    """A throwaway module pair: an 'api' module and an early importer with an alias."""

    def send_event(realm: Any, event: Any, users: Any) -> None:
        pass

    api = types.ModuleType("fake_zulip_django_api")
    api.send_event = send_event  # type: ignore[attr-defined]  # older Zulip name only
    importer = types.ModuleType("fake_zulip_importer")
    importer.send_event = send_event  # type: ignore[attr-defined]
    importer.notify = send_event  # type: ignore[attr-defined]  # `import ... as notify`
    sys.modules[api.__name__] = api
    sys.modules[importer.__name__] = importer
    yield api
    del sys.modules[api.__name__]
    del sys.modules[importer.__name__]


def test_install_wraps_older_name_and_rebinds_by_name_and_alias(
    fake_django_api: types.ModuleType,
) -> None:
    original = fake_django_api.send_event

    rebound = hook.install(fake_django_api, forward=lambda *args: None)

    importer = sys.modules["fake_zulip_importer"]
    assert hook.hook_name(fake_django_api) == "send_event"
    assert hook.is_wrapper(fake_django_api.send_event)
    assert fake_django_api.send_event.__wrapped__ is original
    assert importer.send_event is fake_django_api.send_event
    assert importer.notify is fake_django_api.send_event
    assert "fake_zulip_importer.notify" in rebound
    assert "fake_zulip_importer.send_event" in rebound
    assert hook.install(fake_django_api) == []


def test_hook_name_prefers_the_newer_name() -> None:
    assert hook.hook_name(django_api) == "send_event_rollback_unsafe"
    with pytest.raises(LookupError):
        hook.hook_name(types.ModuleType("empty"))


# ---------------------------------------------------------------------------
# The wrapper's guarantees
# ---------------------------------------------------------------------------


def test_wrapper_calls_original_first_with_same_arguments() -> None:
    calls: list[tuple[str, tuple[Any, ...]]] = []
    realm, event, users = object(), {"type": "reaction"}, [1, 2]

    def original(*args: Any) -> str:
        assert calls == []
        calls.append(("original", args))
        return "zulip-result"

    wrapper = hook.make_wrapper(original, lambda *args: calls.append(("forward", args)))

    assert wrapper(realm, event, users) == "zulip-result"
    assert [name for name, _ in calls] == ["original", "forward"]
    assert all(args[0] is realm and args[1] is event and args[2] is users for _, args in calls)


def test_wrapper_keeps_one_shot_iterators_usable() -> None:
    seen: list[list[int]] = []
    wrapper = hook.make_wrapper(
        lambda realm, event, users: seen.append(list(users)),
        lambda realm, event, users: seen.append(list(users)),
    )

    wrapper(None, {"type": "reaction"}, (uid for uid in [1, 2, 3]))

    assert seen == [[1, 2, 3], [1, 2, 3]]


def test_wrapper_never_raises_when_forwarding_fails(caplog: pytest.LogCaptureFixture) -> None:
    def boom(*args: Any) -> None:
        raise RuntimeError("normalisation exploded")

    wrapper = hook.make_wrapper(lambda *args: None, boom)

    with caplog.at_level(logging.ERROR, logger="zulip_listeners_forwarder"):
        wrapper(None, {"type": "message"}, [])

    assert "could not queue an event" in caplog.text
    assert "normalisation exploded" in caplog.text


def test_wrapper_propagates_zulips_own_errors_without_forwarding() -> None:
    forwarded_calls: list[Any] = []

    def original(*args: Any) -> None:
        raise ValueError("zulip's problem")

    wrapper = hook.make_wrapper(original, lambda *args: forwarded_calls.append(args))

    with pytest.raises(ValueError, match="zulip's problem"):
        wrapper(None, {}, [])
    assert forwarded_calls == []


def test_installed_wrapper_survives_normalisation_failure(
    realm: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise KeyError("message_dict")

    monkeypatch.setattr(hook, "normalize_event", broken)

    with caplog.at_level(logging.ERROR):
        django_api.send_event_rollback_unsafe(realm, message_event(), message_users())

    assert len(tornado()) == 1
    assert forwarded() == []
    assert "could not queue an event" in caplog.text


def test_installed_wrapper_survives_publish_failure(
    realm: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unreachable(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("RabbitMQ is down")

    monkeypatch.setattr(stub_queue, "queue_json_publish_rollback_unsafe", unreachable)

    django_api.send_event_rollback_unsafe(realm, reaction_event(), [10])

    assert len(tornado()) == 1


def test_installed_wrapper_survives_unreadable_realm() -> None:
    django_api.send_event_rollback_unsafe(object(), reaction_event(), [10])
    assert len(tornado()) == 1


# ---------------------------------------------------------------------------
# Filtering and the envelope that gets queued
# ---------------------------------------------------------------------------


def test_message_event_is_queued_as_envelope_v1(realm: Any) -> None:
    django_api.send_event_rollback_unsafe(realm, message_event(), message_users())

    [envelope] = forwarded()
    assert set(envelope) == {
        "v",
        "event_id",
        "emitted_at_ms",
        "server",
        "realm",
        "type",
        "op",
        "audience",
        "event",
    }
    assert envelope["v"] == 1
    assert envelope["server"] == {
        "host": "zulip.example.com",
        "zulip_version": "11.0-stub",
        "feature_level": 400,
    }
    assert envelope["realm"] == {
        "id": 2,
        "uuid": "8a3b2f7e-3c1d-4f5e-9a6b-0c1d2e3f4a5b",
        "string_id": "acme",
    }
    assert envelope["type"] == "message" and envelope["op"] is None
    assert envelope["audience"] == {"count": 2, "user_ids": [11, 10]}
    assert envelope["event"]["flags"] == ["read"]
    assert envelope["event"]["message"]["content"] == "hi **all**"
    assert "sender_delivery_email" not in envelope["event"]["message"]


@override_settings(ZULIP_LISTENERS_INCLUDE_AUDIENCE_IDS=False)
def test_audience_ids_can_be_omitted(realm: Any) -> None:
    django_api.send_event_rollback_unsafe(realm, reaction_event(), [10, 11, 12])
    assert forwarded()[0]["audience"] == {"count": 3}


def test_a_big_audience_is_sent_as_a_count_only(realm: Any) -> None:
    """Security review 2, F3: a message to 10,000 users carried 10,000 ids (61 KiB)."""
    big = [{"id": uid, "flags": []} for uid in range(100, 10_100)]
    django_api.send_event_rollback_unsafe(realm, message_event(), [*big, *message_users()])
    django_api.send_event_rollback_unsafe(realm, reaction_event(), list(range(1, 1001)))
    django_api.send_event_rollback_unsafe(realm, reaction_event(), list(range(1, 1002)))

    large, at_limit, over_limit = forwarded()
    assert large["audience"] == {"count": 10_002}
    assert large["event"]["flags"] == ["read"], "the sender's flags are still found"
    assert len(json.dumps(large)) < 20_000
    assert at_limit["audience"] == {"count": 1000, "user_ids": list(range(1, 1001))}
    assert over_limit["audience"] == {"count": 1001}


@override_settings(ZULIP_LISTENERS_AUDIENCE_MAX_IDS=2)
def test_the_audience_id_limit_is_a_setting(realm: Any) -> None:
    for audience in ([10], [10, 11], [10, 11, 12]):
        django_api.send_event_rollback_unsafe(realm, reaction_event(), audience)

    assert [e["audience"] for e in forwarded()] == [
        {"count": 1, "user_ids": [10]},
        {"count": 2, "user_ids": [10, 11]},
        {"count": 3},
    ]


def test_default_allow_list_skips_other_types(realm: Any) -> None:
    django_api.send_event_rollback_unsafe(realm, realm_bot_add_event(), [10])
    django_api.send_event_rollback_unsafe(realm, {"type": "drafts", "op": "add"}, [10])

    assert forwarded() == []
    assert len(tornado()) == 2


@override_settings(ZULIP_LISTENERS_EVENT_TYPES=["realm_bot"])
def test_custom_type_allow_list(realm: Any) -> None:
    django_api.send_event_rollback_unsafe(realm, realm_bot_add_event(), [10])
    django_api.send_event_rollback_unsafe(realm, reaction_event(), [10])

    [envelope] = forwarded()
    assert envelope["type"] == "realm_bot"
    assert "api_key" not in envelope["event"]["bot"]


@pytest.mark.parametrize(
    ("allowed", "expected"),
    [
        (["acme"], 1),
        ([2], 1),
        (["2"], 1),
        (["other", 3], 0),
        ([], 1),
    ],
)
def test_realm_allow_list(realm: Any, allowed: list[Any], expected: int) -> None:
    with override_settings(ZULIP_LISTENERS_REALMS=allowed):
        django_api.send_event_rollback_unsafe(realm, reaction_event(), [10])

    assert len(forwarded()) == expected
    assert len(tornado()) == 1


@override_settings(ZULIP_LISTENERS_URL="")
def test_nothing_is_queued_without_a_receiver_url(realm: Any) -> None:
    django_api.send_event_rollback_unsafe(realm, reaction_event(), [10])
    assert forwarded() == []


def test_older_queue_function_name_is_used_when_needed(
    realm: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    published: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.delattr(stub_queue, "queue_json_publish_rollback_unsafe")
    monkeypatch.setattr(
        stub_queue,
        "queue_json_publish",
        lambda name, event, processor: published.append((name, event)),
        raising=False,
    )

    django_api.send_event_rollback_unsafe(realm, reaction_event(), [10])

    assert [name for name, _ in published] == [QUEUE_NAME]


def test_publish_passes_a_processor_for_servers_without_rabbitmq(
    realm: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_rabbitmq(name: str, event: dict[str, Any], processor: Any = None) -> None:
        processor(event)

    monkeypatch.setattr(stub_queue, "queue_json_publish_rollback_unsafe", no_rabbitmq)

    django_api.send_event_rollback_unsafe(realm, reaction_event(), [10])  # must not raise


# ---------------------------------------------------------------------------
# Bounded queue: shed, never block Zulip (issue 10)
# ---------------------------------------------------------------------------


@pytest.fixture
def fresh_guard(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from zulip_listeners_forwarder.shedding import QueueGuard

    guard = QueueGuard()
    monkeypatch.setattr(hook, "GUARD", guard)
    yield guard


def test_full_queue_sheds_with_a_count_a_log_line_and_a_report(
    realm: Any, fresh_guard: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # The depth is measured once (the queue is empty) and then counted locally: a broker
    # re-measured after every publish reports its count late under load, which would let a
    # varying number of events through (the measuring itself is tested below).
    with (
        override_settings(ZULIP_LISTENERS_MAX_QUEUED=3, ZULIP_LISTENERS_QUEUE_CHECK_SECONDS=60),
        caplog.at_level(logging.WARNING, logger="zulip_listeners_forwarder"),
    ):
        for message_id in range(1, 7):
            django_api.send_event_rollback_unsafe(realm, reaction_event(message_id), [10])

    assert len(tornado()) == 6, "Zulip's own delivery is never affected"
    kept = [e["event"]["message_id"] for e in forwarded()]
    assert kept == [1, 2, 3]
    assert fresh_guard.shed_total == 6 - len(kept)
    [warning] = [r.getMessage() for r in caplog.records if "shed" in r.getMessage()]
    assert "events (ZULIP_LISTENERS_MAX_QUEUED=3)" in warning
    assert "shed 1 event(s) since the last warning, 1 in total" in warning

    stub_queue.reset()  # the consumer caught up
    with override_settings(ZULIP_LISTENERS_MAX_QUEUED=3, ZULIP_LISTENERS_QUEUE_CHECK_SECONDS=0.001):
        django_api.send_event_rollback_unsafe(realm, reaction_event(7), [10])
        django_api.send_event_rollback_unsafe(realm, reaction_event(8), [10])

    [first, second] = forwarded()
    assert first["shed_before"] == 6 - len(kept), "the receiver learns how many were shed"
    assert "shed_before" not in second


def test_shedding_is_counted_and_reported_per_realm(
    realm: Any, fresh_guard: Any, caplog: pytest.LogCaptureFixture
) -> None:
    other = types.SimpleNamespace(id=3, string_id="beta", uuid=realm.uuid, host="b.example.com")
    with (
        override_settings(ZULIP_LISTENERS_MAX_QUEUED=1, ZULIP_LISTENERS_QUEUE_CHECK_SECONDS=60),
        caplog.at_level(logging.WARNING, logger="zulip_listeners_forwarder"),
    ):
        for sender in (realm, realm, other, realm, other):
            django_api.send_event_rollback_unsafe(sender, reaction_event(), [10])

    assert fresh_guard.shed_by_realm == {2: 2, 3: 2}
    [warning] = [r.getMessage() for r in caplog.records if "MAX_QUEUED" in r.getMessage()]
    assert "by realm: realm 2: 1)" in warning, "the first warning names the realm shed"

    stub_queue.reset()  # the consumer caught up
    with override_settings(
        ZULIP_LISTENERS_MAX_QUEUED=10, ZULIP_LISTENERS_QUEUE_CHECK_SECONDS=0.001
    ):
        for sender in (other, realm, realm):
            django_api.send_event_rollback_unsafe(sender, reaction_event(), [10])

    reports = [(e["realm"]["id"], e.get("shed_before")) for e in forwarded()]
    assert reports == [(3, 2), (2, 2), (2, None)], "each realm is told of its own losses"


def test_depth_is_checked_at_most_every_interval(realm: Any, fresh_guard: Any) -> None:
    calls: list[int] = []
    with override_settings(ZULIP_LISTENERS_MAX_QUEUED=2, ZULIP_LISTENERS_QUEUE_CHECK_SECONDS=60):
        for message_id in range(1, 5):
            assert hook.GUARD is fresh_guard
            measured = fresh_guard.admit(2, 60, lambda: calls.append(1) or 0)
            assert (measured is None) == (message_id > 2)
    assert len(calls) == 1, "one RabbitMQ round trip per interval, not per event"


def test_unmeasurable_queue_still_forwards(realm: Any, fresh_guard: Any) -> None:
    def broken() -> int:
        raise ConnectionError("RabbitMQ went away")

    assert fresh_guard.admit(5, 0, broken) == 0


def test_queued_bytes_are_bounded_too(
    realm: Any, fresh_guard: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Security review 2, F3: the bound counted events only (100,000 of 61 KiB: 6 GiB)."""
    content = "x" * 10_000
    with (
        override_settings(
            ZULIP_LISTENERS_MAX_QUEUED=1000,
            ZULIP_LISTENERS_MAX_QUEUED_BYTES=25_000,
            ZULIP_LISTENERS_QUEUE_CHECK_SECONDS=60,
        ),
        caplog.at_level(logging.WARNING, logger="zulip_listeners_forwarder"),
    ):
        for message_id in range(1, 6):
            django_api.send_event_rollback_unsafe(
                realm, message_event(message_id, content), message_users()
            )

    kept = [e["event"]["message"]["id"] for e in forwarded()]
    assert kept == [1, 2], "two ~10 KB envelopes fit in 25,000 bytes, a third does not"
    assert fresh_guard.shed_total == 3
    [warning] = [r.getMessage() for r in caplog.records if "shed" in r.getMessage()]
    assert "ZULIP_LISTENERS_MAX_QUEUED_BYTES=25000" in warning


def test_the_bytes_estimate_follows_the_measured_depth(fresh_guard: Any) -> None:
    depth = [0]
    for _ in range(3):  # this process queues 3 envelopes of 100 bytes
        assert fresh_guard.admit(1000, 0, lambda: depth[0], size=100, byte_limit=2000) == 0
    assert fresh_guard.mean_bytes == 100
    depth[0] = 19  # the queue holds 19 events (of every process): about 1,900 bytes
    assert fresh_guard.admit(1000, 0, lambda: depth[0], size=100, byte_limit=2000) == 0
    assert fresh_guard.admit(1000, 0, lambda: depth[0], size=100, byte_limit=1950) is None
    depth[0] = 0  # the consumer caught up
    assert fresh_guard.admit(1000, 0, lambda: depth[0], size=100, byte_limit=1950) == 1


def test_queue_limit_settings_are_validated() -> None:
    from zulip_listeners_forwarder.settings import ForwarderConfigError, load_settings

    for name in (
        "ZULIP_LISTENERS_MAX_QUEUED",
        "ZULIP_LISTENERS_QUEUE_CHECK_SECONDS",
        "ZULIP_LISTENERS_MAX_QUEUED_BYTES",
        "ZULIP_LISTENERS_AUDIENCE_MAX_IDS",
    ):
        with override_settings(**{name: 0}), pytest.raises(ForwarderConfigError, match=name):
            load_settings()
