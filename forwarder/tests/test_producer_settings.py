"""Settings on Zulip's request path (security review 2, F2): validated once per process, an
invalid one logged once with its fix and forwarding turned off, the wrapper's own failures
logged at most once a minute."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from django.test import override_settings
from samples import message_event, message_users, reaction_event
from zerver.lib import queue as stub_queue
from zerver.tornado import django_api

from zulip_listeners_forwarder import hook, settings
from zulip_listeners_forwarder.settings import QUEUE_NAME, ForwarderConfigError


def forwarded() -> list[dict[str, Any]]:
    return stub_queue.queued(QUEUE_NAME)


def tornado() -> list[dict[str, Any]]:
    return stub_queue.queued(django_api.TORNADO_QUEUE)


def forwarder_records(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [
        record
        for record in caplog.records
        if record.name.startswith("zulip_listeners_forwarder") and record.levelno >= level
    ]


def test_a_mistyped_setting_is_logged_once_with_its_fix_and_forwarding_is_off(
    realm: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        override_settings(ZULIP_LISTENERS_REALMS="acme"),
        caplog.at_level(logging.WARNING, logger="zulip_listeners_forwarder"),
    ):
        for message_id in range(1, 101):
            django_api.send_event_rollback_unsafe(realm, reaction_event(message_id), [10])

    assert len(tornado()) == 100, "Zulip's own delivery is never affected"
    assert forwarded() == []
    [error] = forwarder_records(caplog, logging.ERROR)
    assert error.exc_info is None, "a configuration mistake needs no traceback"
    text = error.getMessage()
    assert "ZULIP_LISTENERS_REALMS must be a list" in text
    assert "write ZULIP_LISTENERS_REALMS = ['acme']" in text
    assert "/etc/zulip/settings.py" in text
    assert "No events are forwarded until it is fixed and Zulip is restarted" in text


def test_settings_are_validated_at_start_up_not_per_event(
    realm: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    with (
        override_settings(ZULIP_LISTENERS_MAX_QUEUED="lots"),
        caplog.at_level(logging.WARNING, logger="zulip_listeners_forwarder"),
    ):
        hook.install_on_ready()  # what AppConfig.ready() does in every Zulip process
        [error] = forwarder_records(caplog, logging.ERROR)
        assert "ZULIP_LISTENERS_MAX_QUEUED must be a number, got 'lots'" in error.getMessage()

        reads: list[int] = []
        real_load = settings.load_settings
        monkeypatch.setattr(settings, "load_settings", lambda: reads.append(1) or real_load())
        for _ in range(20):
            django_api.send_event_rollback_unsafe(realm, reaction_event(), [10])

    assert reads == [], "the settings are not read again for each event"
    assert len(forwarder_records(caplog, logging.ERROR)) == 1
    assert forwarded() == []


def test_valid_settings_are_read_once_and_a_fix_takes_effect(
    realm: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[int] = []
    real_load = settings.load_settings
    monkeypatch.setattr(settings, "load_settings", lambda: reads.append(1) or real_load())

    with override_settings(ZULIP_LISTENERS_REALMS=["acme"]):
        for _ in range(5):
            django_api.send_event_rollback_unsafe(realm, reaction_event(), [10])
    assert len(reads) == 1
    assert len(forwarded()) == 5

    with override_settings(ZULIP_LISTENERS_REALMS="acme"):  # (Zulip restarts on a change)
        django_api.send_event_rollback_unsafe(realm, reaction_event(), [10])
    django_api.send_event_rollback_unsafe(realm, reaction_event(), [10])
    assert len(forwarded()) == 6, "valid settings again: forwarding again"


def test_the_consumer_still_refuses_to_start_on_invalid_settings() -> None:
    with (
        override_settings(ZULIP_LISTENERS_BATCH_SIZE=0),
        pytest.raises(ForwarderConfigError, match="ZULIP_LISTENERS_BATCH_SIZE"),
    ):
        settings.load_settings()


def test_errors_in_the_wrapper_are_logged_at_most_once_a_minute(
    realm: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    now = [1000.0]
    monkeypatch.setattr(hook.ERRORS, "clock", lambda: now[0])

    def broken(*args: Any, **kwargs: Any) -> None:
        raise KeyError("message_dict")

    monkeypatch.setattr(hook, "normalize_event", broken)

    with caplog.at_level(logging.ERROR, logger="zulip_listeners_forwarder"):
        for _ in range(30):
            django_api.send_event_rollback_unsafe(realm, message_event(), message_users())
        now[0] += 59
        django_api.send_event_rollback_unsafe(realm, message_event(), message_users())
        [first] = forwarder_records(caplog, logging.ERROR)
        now[0] += 2
        django_api.send_event_rollback_unsafe(realm, message_event(), message_users())

    assert len(tornado()) == 32
    first_text, second = first.getMessage(), forwarder_records(caplog, logging.ERROR)[1]
    assert "could not queue an event; Zulip unaffected" in first_text
    assert first.exc_info is not None, "the first one has its traceback"
    assert "(30 more failure(s) since the last one logged)" in second.getMessage()
    assert len(forwarder_records(caplog, logging.ERROR)) == 2
