"""Resuming after an outage: while backing off from a receiver that is down, the sender asks
``GET /readyz`` about once a second and sends as soon as it answers 200, without sending
more than about one request a second meanwhile."""

from __future__ import annotations

import logging
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from django.test import override_settings
from local_receiver import LocalReceiver, Recorded, Reply
from zproject import config as stub_config

from zulip_listeners_forwarder.delivery import (
    BatchSender,
    ReadinessProbe,
    SendResult,
    ready_url_for,
)
from zulip_listeners_forwarder.settings import SECRET_NAME, ForwarderConfigError, load_settings
from zulip_listeners_forwarder.worker import build_sender


def envelopes(count: int) -> list[dict[str, Any]]:
    return [
        {"v": 1, "event_id": str(uuid.uuid4()), "type": "reaction", "seq": n, "event": {}}
        for n in range(count)
    ]


class FakeTime:
    """``sleep`` advances a clock instead of waiting; the probe reads that clock."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 1))
        self.now += seconds

    def clock(self) -> float:
        return self.now


def make_sender(
    receiver: LocalReceiver, secret: str, tmp_path: Path, fake: FakeTime, **kwargs: Any
) -> BatchSender:
    probe = ReadinessProbe(ready_url_for(receiver.url), clock=fake.clock)
    return BatchSender(
        receiver.url,
        [secret],
        dead_letter_path=str(tmp_path / "dead.jsonl"),
        sleep=fake.sleep,
        probe=probe,
        **kwargs,
    )


# ---------------------------------------------------------------------------
# The probe's URL and settings
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("events_url", "ready_url"),
    [
        ("https://listeners.example.com/zulip/events", "https://listeners.example.com/readyz"),
        ("http://127.0.0.1:8080/zulip/events/", "http://127.0.0.1:8080/readyz"),
        ("https://example.com/listeners/zulip/events", "https://example.com/listeners/readyz"),
        ("https://example.com/hooks/in?x=1", "https://example.com/readyz"),
    ],
)
def test_ready_url_is_next_to_the_events_url(events_url: str, ready_url: str) -> None:
    assert ready_url_for(events_url) == ready_url


def test_the_consumer_probes_readyz_by_default(secret: str) -> None:
    stub_config.SECRETS[SECRET_NAME] = secret
    with override_settings(ZULIP_LISTENERS_URL="https://l.example.com/zulip/events"):
        probe = build_sender(load_settings(), [secret]).probe
    assert probe is not None and probe.url == "https://l.example.com/readyz"

    with override_settings(ZULIP_LISTENERS_READY_URL="http://10.0.0.5:8080/readyz"):
        probe = build_sender(load_settings(), [secret]).probe
    assert probe is not None and probe.url == "http://10.0.0.5:8080/readyz"

    with override_settings(ZULIP_LISTENERS_READY_URL=""):
        assert build_sender(load_settings(), [secret]).probe is None

    with (
        override_settings(ZULIP_LISTENERS_READY_URL="/readyz"),
        pytest.raises(ForwarderConfigError, match="ZULIP_LISTENERS_READY_URL"),
    ):
        load_settings()


def test_a_twin_sender_shares_the_probe(secret: str, tmp_path: Path) -> None:
    probe = ReadinessProbe("http://127.0.0.1:9/readyz")
    sender = BatchSender(
        "http://127.0.0.1:9/zulip/events", [secret], dead_letter_path="x", probe=probe
    )
    assert sender.for_another_thread().probe is probe


def test_probes_from_two_threads_are_shared(receiver: LocalReceiver) -> None:
    fake = FakeTime()
    probe = ReadinessProbe(ready_url_for(receiver.url), clock=fake.clock)

    assert probe.ready() and probe.ready()
    fake.sleep(1.0)
    assert probe.ready()
    assert len(receiver.probes) == 2, "a second caller within the interval gets the answer"
    assert receiver.probes[0].path == "/readyz"


# ---------------------------------------------------------------------------
# The back-off with a probe (fake time, real HTTP)
# ---------------------------------------------------------------------------


def test_a_ready_probe_ends_the_back_off(
    receiver: LocalReceiver, secret: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.reply(*[Reply(503, {"error": "unavailable"}) for _ in range(4)])
    answers = iter([503] * 8 + [200])
    receiver.readyz_answer = lambda request: next(answers)
    fake = FakeTime()
    sender = make_sender(receiver, secret, tmp_path, fake)

    with caplog.at_level(logging.INFO, logger="zulip_listeners_forwarder"):
        result = sender.send_all(envelopes(2))

    assert result.delivered == 2
    # attempts at 0, 1, 3, 7 s (back-off 1, 2, 4), then the 8 s wait is cut short by the
    # ninth probe: probes at 2, 4, 5, 6, 8, 9, 10, 11 (503) and 12 (200)
    assert fake.sleeps == [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]
    assert [r.status for r in receiver.requests] == [503, 503, 503, 503, 200]
    assert len(receiver.probes) == 9
    assert len({r.headers["webhook-id"] for r in receiver.requests}) == 1
    assert "the receiver is ready again" in caplog.text


def test_refused_connections_are_probed_too(secret: str, tmp_path: Path) -> None:
    with socket.socket() as spare:
        spare.bind(("127.0.0.1", 0))
        port = spare.getsockname()[1]
    url = f"http://127.0.0.1:{port}/zulip/events"
    fake = FakeTime()
    started: list[LocalReceiver] = []

    def sleep(seconds: float) -> None:
        fake.sleep(seconds)
        if fake.now >= 1004.0 and not started:  # the server comes back during the 4 s wait
            started.append(LocalReceiver(port))
            started[0].start()

    sender = BatchSender(
        url,
        [secret],
        dead_letter_path=str(tmp_path / "dead.jsonl"),
        sleep=sleep,
        probe=ReadinessProbe(ready_url_for(url), clock=fake.clock),
    )
    try:
        assert sender.send_all(envelopes(1)).delivered == 1
    finally:
        for server in started:
            server.stop()

    # attempts at 0, 1, 3 (refused); probes at 2 (refused) and 4 (200): sent at 4, not 7
    assert fake.sleeps == [1, 1, 1, 1]
    assert len(started[0].probes) == 1 and len(started[0].requests) == 1


@pytest.mark.parametrize(
    ("reply", "sleeps"),
    [
        (Reply(500, {"error": "internal"}), [1, 2]),
        (Reply(429, {"error": "over_capacity"}, headers={"Retry-After": "3"}), [3, 3]),
        (Reply(408, {"error": "timeout"}), [1, 2]),
    ],
)
def test_a_receiver_that_is_up_is_not_probed(
    receiver: LocalReceiver, secret: str, tmp_path: Path, reply: Reply, sleeps: list[float]
) -> None:
    receiver.reply(reply, reply)
    fake = FakeTime()

    assert make_sender(receiver, secret, tmp_path, fake).send_all(envelopes(1)).delivered == 1

    assert fake.sleeps == sleeps
    assert receiver.probes == []


def test_ready_probe_but_failing_batch_falls_back_to_plain_back_off(
    receiver: LocalReceiver, secret: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``/readyz`` says ready while the batch keeps getting 503 (a full disk on the server):
    one early resend, then the back-off alone, so no more than one request a second."""
    full = Reply(503, {"error": "storage_full"}, headers={"Retry-After": "5"})
    receiver.reply(*[full for _ in range(4)])
    fake = FakeTime()

    with caplog.at_level(logging.WARNING, logger="zulip_listeners_forwarder"):
        result = make_sender(receiver, secret, tmp_path, fake).send_all(envelopes(1))

    assert result.delivered == 1
    assert fake.sleeps == [1, 5, 5, 5]
    assert len(receiver.probes) == 1
    assert "said it was ready" in caplog.text


def test_no_probe_there_pauses_probing(
    receiver: LocalReceiver, secret: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.reply(*[Reply(502) for _ in range(3)])
    receiver.readyz_status = 404
    fake = FakeTime()

    with caplog.at_level(logging.WARNING, logger="zulip_listeners_forwarder"):
        result = make_sender(receiver, secret, tmp_path, fake).send_all(envelopes(1))

    assert result.delivered == 1
    assert len(receiver.probes) == 1
    assert sum(fake.sleeps) == 1 + 2 + 4
    assert "answered HTTP 404" in caplog.text and "ZULIP_LISTENERS_READY_URL" in caplog.text


# ---------------------------------------------------------------------------
# Real time: down (refused, then 503) for a while, then up
# ---------------------------------------------------------------------------


def test_backlog_goes_out_within_2_s_of_the_receiver_answering(secret: str, tmp_path: Path) -> None:
    with socket.socket() as spare:
        spare.bind(("127.0.0.1", 0))
        port = spare.getsockname()[1]
    url = f"http://127.0.0.1:{port}/zulip/events"
    sender = BatchSender(
        url,
        [secret],
        dead_letter_path=str(tmp_path / "dead.jsonl"),
        probe=ReadinessProbe(ready_url_for(url)),
        timeout=2,
    )
    results: list[SendResult] = []
    worker = threading.Thread(target=lambda: results.append(sender.send_all(envelopes(5))))
    receivers: list[LocalReceiver] = []
    down = True

    def answer(request: Recorded) -> Reply | None:
        return Reply(503, {"error": "unavailable"}) if down else None

    started = time.monotonic()
    worker.start()
    try:
        time.sleep(3.2)  # nothing listens: connection refused (attempts at 0 s, 1 s; probe 2 s)
        receiver = LocalReceiver(port)  # the server is up but not ready: 503 to everything
        receivers.append(receiver)
        receiver.answer = answer
        receiver.readyz_answer = lambda request: 503 if down else 200
        receiver.start()
        up_since = time.monotonic()
        time.sleep(6.3)  # the back-off has grown to 8 s: without the probe, next try at ~15 s
        seen_while_down = len(receiver.requests) + len(receiver.probes)
        not_ready_for = time.monotonic() - up_since
        down = False
        ready_at = time.monotonic()
        worker.join(timeout=10)
    finally:
        down = False
        worker.join(timeout=20)
        for server in receivers:
            server.stop()

    assert results and results[0].delivered == 5
    delivered = [r for r in receiver.requests if r.status == 200]
    assert len(delivered) == 1
    assert delivered[0].at - ready_at < 2.0, "delivered within 2 s of the receiver being ready"
    assert delivered[0].at - started < 12.0
    assert seen_while_down <= not_ready_for + 1, (
        f"{seen_while_down} requests in {not_ready_for:.1f} s while the receiver was down"
    )
    posts_while_down = [r for r in receiver.requests if r.status == 503]
    assert len(posts_while_down) <= 2, "the batch itself only follows the back-off"
