"""The consumer glue: worker configuration, hook → queue → worker → HTTP, the command."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
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
        ("ZULIP_LISTENERS_MAX_SPOOLED_PER_REALM", 0),
    ],
)
def test_bad_settings_are_named(name: str, value: Any) -> None:
    with override_settings(**{name: value}), pytest.raises(ForwarderConfigError, match=name):
        load_settings()


def test_default_settings() -> None:
    with override_settings(ZULIP_LISTENERS_DEAD_LETTER_FILE=None, ZULIP_LISTENERS_SPOOL_DIR=None):
        conf = load_settings()
    assert conf.batch_size == 100 and conf.batch_seconds == 1.0
    assert conf.timeout_seconds == 15 and conf.max_backoff_seconds == 60
    assert conf.include_delivery_emails is False and conf.include_audience_ids is True
    assert conf.realms == frozenset()
    assert conf.dead_letter_file == "/var/log/zulip/zulip_listeners_forwarder.deadletter.jsonl"
    assert "message" in conf.event_types and "realm_bot" not in conf.event_types
    assert conf.spool_dir == "/home/zulip/zulip_listeners_forwarder.spool"
    assert conf.max_spooled_per_realm == 100_000


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


# ---------------------------------------------------------------------------
# Zulip's do_consume acknowledges a batch whose consume_batch raised (issue 11)
# ---------------------------------------------------------------------------


class ExplodingSender:
    """A sender with a bug: every delivery raises an unexpected exception."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.url = real.url

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def send_all(self, events: list[dict[str, Any]]) -> None:
        raise RuntimeError("unexpected bug in delivery")

    def send_batch(self, events: list[dict[str, Any]], **kwargs: Any) -> None:
        raise RuntimeError("unexpected bug in delivery")

    def write_dead_letter(self, *args: Any, **kwargs: Any) -> None:
        self.real.write_dead_letter(*args, **kwargs)


def test_unexpected_error_dead_letters_the_batch_instead_of_losing_it(
    configured: Path, realm: Any
) -> None:
    for message_id in (1, 2):
        django_api.send_event_rollback_unsafe(realm, reaction_event(message_id), [10])
    worker = ForwarderWorker()
    worker.sender = ExplodingSender(worker.sender)  # type: ignore[assignment]
    worker.setup()
    worker.start()

    assert worker.consume_errors == [], "Zulip's do_consume would have acked and dropped it"
    assert stub_queue.queued(QUEUE_NAME) == []
    [line] = configured.read_text().splitlines()
    record = json.loads(line)
    assert [e["event"]["message_id"] for e in record["events"]] == [1, 2]
    assert "RuntimeError: unexpected bug in delivery" in record["response_body"]


def test_batch_goes_back_to_rabbitmq_when_it_cannot_be_dead_lettered(
    configured: Path, realm: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from zulip_listeners_forwarder import worker as worker_module

    monkeypatch.setattr(worker_module, "REQUEUE_PAUSE_SECONDS", 0.0)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    django_api.send_event_rollback_unsafe(realm, reaction_event(7), [10])
    with override_settings(ZULIP_LISTENERS_DEAD_LETTER_FILE=str(blocker / "dead.jsonl")):
        worker = ForwarderWorker()
    worker.sender = ExplodingSender(worker.sender)  # type: ignore[assignment]
    worker.setup()

    with pytest.raises(worker_module.BatchRequeued):
        worker.start()

    stub_queue.reset_clients()  # the consumer's connection closes as the process exits
    [event] = stub_queue.queued(QUEUE_NAME)
    assert event["event"]["message_id"] == 7


def test_stand_in_reproduces_zulips_ack_after_an_exception(configured: Path, realm: Any) -> None:
    """What the fix guards against: Zulip acks a batch whose consume_batch raised."""
    from zerver.worker.base import LoopQueueProcessingWorker

    class Naive(LoopQueueProcessingWorker):
        queue_name = QUEUE_NAME

        def consume_batch(self, events: list[dict[str, Any]]) -> None:
            raise RuntimeError("boom")

    django_api.send_event_rollback_unsafe(realm, reaction_event(8), [10])
    naive = Naive()
    naive.setup()
    naive.start()

    assert len(naive.consume_errors) == 1
    assert stub_queue.queued(QUEUE_NAME) == [], "acknowledged: gone from RabbitMQ"
    errors = Path(settings.QUEUE_ERROR_DIR) / f"{QUEUE_NAME}.errors"
    assert '"message_id":8' in errors.read_text()


def test_consumer_refuses_zulip_older_than_9(
    configured: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import version

    monkeypatch.setattr(version, "ZULIP_VERSION", "8.4")
    with pytest.raises(
        CommandError, match=r"needs Zulip 9\.0 or newer; this server runs Zulip 8\.4"
    ):
        call_command("run_zulip_listeners_forwarder")


def test_consumer_refuses_zulip_without_worker_base(
    configured: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return None if name == "zerver.worker.base" else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(CommandError, match=r"zerver/worker/base\.py is missing"):
        call_command("run_zulip_listeners_forwarder")
