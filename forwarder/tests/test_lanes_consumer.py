"""Per-realm lanes through the real consumer: hook → RabbitMQ → ``ForwarderWorker`` → HTTP,
with one realm refused (429, ``Retry-After: 30``): the other realm's typing event goes at once,
the queue is acknowledged, and the refused realm's events survive a killed consumer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import TESTS_DIR, stop_process
from django.core.management import call_command
from django.test import override_settings
from local_receiver import LocalReceiver, Recorded
from samples import reaction_event
from test_lanes import FakeClock, RefuseRealms
from zerver.lib import queue as stub_queue
from zerver.tornado import django_api
from zproject import config as stub_config

from zulip_listeners_forwarder import worker as worker_module
from zulip_listeners_forwarder.lanes import Lanes
from zulip_listeners_forwarder.settings import (
    QUEUE_NAME,
    SECRET_NAME,
    ForwarderConfigError,
    load_secrets,
    load_settings,
)
from zulip_listeners_forwarder.worker import BatchRequeued, ForwarderWorker, build_sender

REALM_A = SimpleNamespace(id=2, string_id="acme", uuid="8a3b2f7e-0000-4000-8000-000000000002")
REALM_B = SimpleNamespace(id=3, string_id="beta", uuid="8a3b2f7e-0000-4000-8000-000000000003")


def typing_event() -> dict[str, Any]:
    sender = {"user_id": 12, "email": "user12@example.com"}
    return {
        "type": "typing",
        "op": "start",
        "message_type": "direct",
        "sender": sender,
        "recipients": [sender, {"user_id": 13, "email": "user13@example.com"}],
    }


@pytest.fixture
def configured(receiver: LocalReceiver, secret: str, tmp_path: Path) -> Iterator[Path]:
    dead_letters = tmp_path / "dead.jsonl"
    stub_config.SECRETS[SECRET_NAME] = secret
    with override_settings(
        ZULIP_LISTENERS_URL=receiver.url,
        ZULIP_LISTENERS_DEAD_LETTER_FILE=str(dead_letters),
        ZULIP_LISTENERS_BATCH_SIZE=2,
        ZULIP_LISTENERS_BATCH_SECONDS=0.2,
    ):
        yield dead_letters


def worker_with_clock(clock: FakeClock) -> ForwarderWorker:
    conf = load_settings()
    sender = build_sender(conf, load_secrets())
    return ForwarderWorker(
        lanes=Lanes(sender, conf.spool_dir, conf.max_spooled_per_realm, clock=clock)
    )


def realm_of(request: Recorded) -> int:
    return int(request.headers["x-zulip-listeners-realm"])


def accepted_message_ids(receiver: LocalReceiver, realm: int) -> list[int]:
    return [
        event["event"]["message_id"]
        for request in receiver.requests
        if request.status == 200 and realm_of(request) == realm
        for event in request.json()["events"]
    ]


def spooled(spool: Path, realm: int) -> list[Path]:
    return sorted((spool / f"realm-{realm}").glob("0*.json"))


def publish_mixed() -> None:
    """A1 A2 | A3 B(typing) | A4: in batches of two, B shares a batch with refused A."""
    for message_id in (1, 2, 3):
        django_api.send_event_rollback_unsafe(REALM_A, reaction_event(message_id), [10])
    django_api.send_event_rollback_unsafe(REALM_B, typing_event(), [12, 13])
    django_api.send_event_rollback_unsafe(REALM_A, reaction_event(4), [10])


def test_consumer_sends_another_realms_typing_at_once_while_one_realm_is_refused(
    configured: Path, receiver: LocalReceiver, spool_dir: Path
) -> None:
    publish_mixed()
    receiver.answer = RefuseRealms(REALM_A.id)
    clock = FakeClock()
    worker = worker_with_clock(clock)
    worker.setup()

    started = time.monotonic()
    worker.start()

    assert worker.consume_errors == []
    [typing] = [r for r in receiver.requests if realm_of(r) == REALM_B.id]
    assert typing.status == 200 and typing.json()["events"][0]["type"] == "typing"
    assert typing.at - started < 1.0, "realm B's typing event waited behind realm A"
    assert stub_queue.queued(QUEUE_NAME) == [], "acknowledged: A's events are in the spool"
    assert [len(json.loads(p.read_text())["events"]) for p in spooled(spool_dir, 2)] == [2, 1, 1]
    refused = [r for r in receiver.requests if realm_of(r) == REALM_A.id]
    assert [r.status for r in refused] == [429], "A was tried once, then set aside"

    receiver.answer = None
    clock.advance(30)
    assert worker.lanes.drain_due() is None

    assert accepted_message_ids(receiver, REALM_A.id) == [1, 2, 3, 4]
    resent = [r for r in receiver.requests if realm_of(r) == REALM_A.id and r.status == 200]
    assert resent[0].headers["webhook-id"] == refused[0].headers["webhook-id"]
    assert spooled(spool_dir, 2) == []


def test_batch_goes_back_to_rabbitmq_when_the_spool_cannot_be_written(
    configured: Path,
    receiver: LocalReceiver,
    spool_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(worker_module, "REQUEUE_PAUSE_SECONDS", 0.0)
    django_api.send_event_rollback_unsafe(REALM_A, reaction_event(7), [10])
    receiver.answer = RefuseRealms(REALM_A.id)
    worker = ForwarderWorker()
    (spool_dir / "realm-2").write_text("in the way")
    worker.setup()

    with pytest.raises(BatchRequeued):
        worker.start()

    stub_queue.reset_clients()  # the consumer's connection closes as the process exits
    [event] = stub_queue.queued(QUEUE_NAME)
    assert event["event"]["message_id"] == 7
    assert not configured.exists(), "not dead-lettered: that would put realm 2 out of order"


def test_spool_status_command(
    configured: Path,
    receiver: LocalReceiver,
    spool_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    call_command("run_zulip_listeners_forwarder", "--spool-status")
    assert "nothing set aside" in capsys.readouterr().out

    publish_mixed()
    receiver.answer = RefuseRealms(REALM_A.id)
    with override_settings(ZULIP_LISTENERS_MAX_SPOOLED_PER_REALM=3):
        worker = ForwarderWorker()
        worker.setup()
        worker.start()
        call_command("run_zulip_listeners_forwarder", "--spool-status")

    out = capsys.readouterr().out
    assert out.strip() == (
        "realm 2: 3 event(s) set aside in 2 batch(es); 1 shed, 1 of them not yet reported"
        " to the receiver"
    )


def test_unwritable_spool_directory_stops_the_consumer_at_start(
    configured: Path, tmp_path: Path
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with (
        override_settings(ZULIP_LISTENERS_SPOOL_DIR=str(blocker / "spool")),
        pytest.raises(ForwarderConfigError, match="ZULIP_LISTENERS_SPOOL_DIR"),
    ):
        ForwarderWorker()


# ---------------------------------------------------------------------------
# A consumer killed with set-aside batches: the next one sends them
# ---------------------------------------------------------------------------

CONSUMER_SCRIPT = """
import os, sys
sys.path.insert(0, os.environ["ZLF_TESTS_DIR"])
import conftest  # Django configured as for the tests
from django.test import override_settings
from zerver.lib import queue as stub_queue
from zproject import config as stub_config
from zulip_listeners_forwarder.settings import SECRET_NAME
from zulip_listeners_forwarder.worker import ForwarderWorker

stub_queue._prefix = os.environ["ZLF_QUEUE_PREFIX"]
stub_queue.STOP_WHEN_IDLE = False  # block like Zulip's consumer, until killed
stub_config.SECRETS[SECRET_NAME] = os.environ["ZLF_SECRET"]
with override_settings(
    ZULIP_LISTENERS_URL=os.environ["ZLF_URL"],
    ZULIP_LISTENERS_SPOOL_DIR=os.environ["ZLF_SPOOL"],
    ZULIP_LISTENERS_DEAD_LETTER_FILE=os.environ["ZLF_DEAD"],
    ZULIP_LISTENERS_BATCH_SIZE=2,
    ZULIP_LISTENERS_BATCH_SECONDS=0.2,
):
    worker = ForwarderWorker()
    worker.setup()
    print("consuming", flush=True)
    worker.start()
"""


def wait_for(check: Any, what: str, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_set_aside_events_survive_a_killed_consumer(
    configured: Path, receiver: LocalReceiver, secret: str, spool_dir: Path, tmp_path: Path
) -> None:
    publish_mixed()
    receiver.answer = RefuseRealms(REALM_A.id)
    log = tmp_path / "consumer.log"
    env = {
        **os.environ,
        "ZLF_TESTS_DIR": str(TESTS_DIR),
        "ZLF_QUEUE_PREFIX": stub_queue._prefix,
        "ZLF_SECRET": secret,
        "ZLF_URL": receiver.url,
        "ZLF_SPOOL": str(spool_dir),
        "ZLF_DEAD": str(configured),
    }
    with open(log, "wb") as output:
        consumer = subprocess.Popen(
            [sys.executable, "-c", CONSUMER_SCRIPT], env=env, stdout=output, stderr=output
        )
    try:
        wait_for(
            lambda: (
                len(spooled(spool_dir, 2)) == 3
                and accepted_message_ids(receiver, REALM_A.id) == []
                and any(r.status == 200 for r in receiver.requests if realm_of(r) == REALM_B.id)
            ),
            f"the consumer to set A aside and send B; its log:\n{log.read_text()}",
        )
        time.sleep(0.5)  # the last acknowledgement leaves right after consume_batch returns
        consumer.send_signal(signal.SIGKILL)
        consumer.wait(timeout=10)
    finally:
        if consumer.poll() is None:
            stop_process(consumer)
    refused_id = receiver.requests[0].headers["webhook-id"]
    assert stub_queue.queued(QUEUE_NAME) == [], "everything was acknowledged before the kill"

    receiver.answer = None
    worker = ForwarderWorker()  # the next consumer, in this process
    worker.setup()
    worker.start()
    worker.lanes.drain_due()  # whatever the drainer thread has not yet sent

    assert accepted_message_ids(receiver, REALM_A.id) == [1, 2, 3, 4], "in order, once each"
    first_resend = next(
        r for r in receiver.requests if realm_of(r) == REALM_A.id and r.status == 200
    )
    assert first_resend.headers["webhook-id"] == refused_id
    assert spooled(spool_dir, 2) == []
