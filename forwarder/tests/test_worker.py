"""The consumer glue: worker configuration, hook → queue → worker → HTTP, the command."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.test import override_settings
from local_receiver import LocalReceiver, Reply
from samples import message_event, message_users, reaction_event
from standardwebhooks.webhooks import Webhook
from zerver.lib import queue as stub_queue
from zerver.tornado import django_api
from zproject import config as stub_config

from zulip_listeners_forwarder.settings import (
    QUEUE_NAME,
    SECRET_NAME,
    ForwarderConfigError,
    load_settings,
)
from zulip_listeners_forwarder.worker import ForwarderWorker


@pytest.fixture
def configured(receiver: LocalReceiver, secret: str, tmp_path: Path) -> Iterator[Path]:
    """Point the forwarder at the local receiver; yields the dead-letter path."""
    dead_letters = tmp_path / "dead.jsonl"
    stub_config.SECRETS[SECRET_NAME] = secret
    with override_settings(
        ZULIP_LISTENERS_URL=receiver.url,
        ZULIP_LISTENERS_DEAD_LETTER_FILE=str(dead_letters),
        ZULIP_LISTENERS_BATCH_SIZE=2,
        ZULIP_LISTENERS_BATCH_SECONDS=0.5,
    ):
        yield dead_letters


@pytest.fixture
def saved_signal_handlers() -> Iterator[None]:
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_worker_takes_its_settings(configured: Path) -> None:
    worker = ForwarderWorker()

    assert worker.queue_name == QUEUE_NAME == "zulip_listeners_forwarder"
    assert worker.MAX_CONSUME_SECONDS is None
    assert (worker.batch_size, worker.sleep_delay) == (2, 0.5)
    assert worker.sender.dead_letter_path == str(configured)


def test_hook_to_queue_to_worker_to_http(
    configured: Path, receiver: LocalReceiver, secret: str, realm: Any
) -> None:
    django_api.send_event_rollback_unsafe(realm, message_event(), message_users())
    django_api.send_event_rollback_unsafe(realm, reaction_event(), [10, 11])
    django_api.send_event_rollback_unsafe(realm, {"type": "drafts", "op": "add"}, [10])
    django_api.send_event_rollback_unsafe(realm, reaction_event(124), [10])

    worker = ForwarderWorker()
    worker.setup()
    worker.start()

    assert worker.consume_errors == []
    assert stub_queue.queued(QUEUE_NAME) == []
    bodies = [Webhook(secret).verify(r.body, r.headers) for r in receiver.requests]
    assert [[e["type"] for e in body["events"]] for body in bodies] == [
        ["message", "reaction"],
        ["reaction"],
    ]
    message = bodies[0]["events"][0]["event"]["message"]
    assert message["content"] == "hi **all**" and "sender_delivery_email" not in message


def test_worker_dead_letters_rejected_batch(
    configured: Path, receiver: LocalReceiver, realm: Any
) -> None:
    receiver.reply(Reply(400, {"error": "bad_request", "message": "no"}))
    for message_id in (1, 2, 3):
        django_api.send_event_rollback_unsafe(realm, reaction_event(message_id), [10])

    worker = ForwarderWorker()
    worker.setup()
    worker.start()

    [line] = configured.read_text().splitlines()
    assert [e["event"]["message_id"] for e in json.loads(line)["events"]] == [1, 2]
    assert [e["event"]["message_id"] for e in receiver.requests[1].json()["events"]] == [3]


def test_worker_requires_url_and_secret(secret: str) -> None:
    stub_config.SECRETS[SECRET_NAME] = secret
    with override_settings(ZULIP_LISTENERS_URL=""), pytest.raises(ForwarderConfigError):
        ForwarderWorker()
    stub_config.SECRETS.clear()
    with pytest.raises(ForwarderConfigError, match=SECRET_NAME):
        ForwarderWorker()


def test_several_secrets_are_read_space_separated(
    configured: Path, receiver: LocalReceiver, secret: str
) -> None:
    from conftest import make_secret

    newer = make_secret()
    stub_config.SECRETS[SECRET_NAME] = f"{secret}  {newer}"

    ForwarderWorker().sender.send_all([{"v": 1, "event_id": "x"}])

    [request] = receiver.requests
    Webhook(secret).verify(request.body, request.headers)
    Webhook(newer).verify(request.body, request.headers)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ZULIP_LISTENERS_BATCH_SIZE", 0),
        ("ZULIP_LISTENERS_TIMEOUT_SECONDS", "soon"),
        ("ZULIP_LISTENERS_REALMS", "acme"),
        ("ZULIP_LISTENERS_EVENT_TYPES", "message"),
    ],
)
def test_bad_settings_are_named(name: str, value: Any) -> None:
    with override_settings(**{name: value}), pytest.raises(ForwarderConfigError, match=name):
        load_settings()


def test_default_settings() -> None:
    with override_settings(ZULIP_LISTENERS_DEAD_LETTER_FILE=None):
        conf = load_settings()
    assert conf.batch_size == 100 and conf.batch_seconds == 1.0
    assert conf.timeout_seconds == 15 and conf.max_backoff_seconds == 60
    assert conf.include_delivery_emails is False and conf.include_audience_ids is True
    assert conf.realms == frozenset()
    assert conf.dead_letter_file == "/var/log/zulip/zulip_listeners_forwarder.deadletter.jsonl"
    assert "message" in conf.event_types and "realm_bot" not in conf.event_types


def test_command_consumes_the_queue(
    configured: Path, receiver: LocalReceiver, realm: Any, saved_signal_handlers: None
) -> None:
    django_api.send_event_rollback_unsafe(realm, reaction_event(), [10])

    call_command("run_zulip_listeners_forwarder")

    assert len(receiver.requests) == 1
    assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None)


def test_command_refuses_to_run_without_rabbitmq(configured: Path) -> None:
    with (
        override_settings(USING_RABBITMQ=False),
        pytest.raises(CommandError, match="USING_RABBITMQ"),
    ):
        call_command("run_zulip_listeners_forwarder")


def test_command_reports_missing_secret() -> None:
    with pytest.raises(CommandError, match=SECRET_NAME):
        call_command("run_zulip_listeners_forwarder")


def test_command_resends_a_dead_letter_file(
    configured: Path, receiver: LocalReceiver, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    aside = tmp_path / "old.jsonl"
    events = [{"v": 1, "event_id": "a"}, {"v": 1, "event_id": "b"}]
    aside.write_text(json.dumps({"status": 400, "events": events}) + "\n")

    call_command("run_zulip_listeners_forwarder", "--resend", str(aside))

    assert [r.json()["events"] for r in receiver.requests] == [events]
    assert "resent 2 event(s) in 1 batch(es); 0 rejected again" in capsys.readouterr().out


def test_command_will_not_resend_the_live_file(configured: Path) -> None:
    configured.write_text("")
    with pytest.raises(CommandError, match="move it aside"):
        call_command("run_zulip_listeners_forwarder", "--resend", str(configured))
