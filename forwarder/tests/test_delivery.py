"""Delivery against a real local HTTP server: signing, batching, back-off, dead letters."""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import make_secret
from local_receiver import LocalReceiver, Reply
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from zulip_listeners_forwarder.delivery import (
    Backoff,
    Batch,
    BatchSender,
    DeadLetterWriteError,
    Signer,
    chunk,
    encode_body,
    parse_retry_after,
    resend_dead_letters,
)

SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_MSG_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TIMESTAMP = 1614265330
SPEC_PAYLOAD = b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def envelopes(count: int, start: int = 0) -> list[dict[str, Any]]:
    return [
        {
            "v": 1,
            "event_id": str(uuid.uuid4()),
            "type": "reaction",
            "seq": start + n,
            "event": {"type": "reaction", "text": "é ✓"},
        }
        for n in range(count)
    ]


class Sleeps(list[float]):
    """A fake ``sleep`` that records the delays instead of waiting."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


class Clock:
    """A fake clock near real time (so signatures verify), one second per call."""

    def __init__(self) -> None:
        self.now = float(int(time.time()))

    def __call__(self) -> float:
        self.now += 1
        return self.now


def make_sender(url: str, secrets: list[str], tmp_path: Path, **kwargs: Any) -> BatchSender:
    kwargs.setdefault("sleep", Sleeps())
    kwargs.setdefault("dead_letter_path", str(tmp_path / "dead.jsonl"))
    return BatchSender(url, secrets, **kwargs)


def verify(secret: str, request: Any) -> Any:
    return Webhook(secret).verify(request.body, request.headers)


# ---------------------------------------------------------------------------
# Signing
# ---------------------------------------------------------------------------


def test_spec_vector_through_signer() -> None:
    signer = Signer([SPEC_SECRET])
    assert signer.signature(SPEC_MSG_ID, SPEC_TIMESTAMP, SPEC_PAYLOAD) == SPEC_SIGNATURE


def test_spec_vector_through_the_http_path(receiver: LocalReceiver, tmp_path: Path) -> None:
    sender = make_sender(receiver.url, [SPEC_SECRET], tmp_path, clock=lambda: SPEC_TIMESTAMP)

    assert sender.attempt(Batch(SPEC_MSG_ID, [], SPEC_PAYLOAD)).done

    [request] = receiver.requests
    assert request.body == SPEC_PAYLOAD
    assert request.headers["webhook-id"] == SPEC_MSG_ID
    assert request.headers["webhook-timestamp"] == str(SPEC_TIMESTAMP)
    assert request.headers["webhook-signature"] == SPEC_SIGNATURE


def test_posted_batch_verifies_with_standardwebhooks(
    receiver: LocalReceiver, secret: str, tmp_path: Path
) -> None:
    batch = envelopes(3)
    sender = make_sender(receiver.url, [secret], tmp_path)

    result = sender.send_all(batch)

    assert (result.delivered, result.dead_lettered, result.batches) == (3, 0, 1)
    [request] = receiver.requests
    assert request.path == "/zulip/events"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["webhook-id"].startswith("msg_")
    assert (
        request.body
        == json.dumps({"events": batch}, separators=(",", ":"), ensure_ascii=False).encode()
    )
    assert verify(secret, request) == {"events": batch}
    with pytest.raises(WebhookVerificationError):
        Webhook(make_secret()).verify(request.body, request.headers)


def test_rotation_signs_with_every_secret(receiver: LocalReceiver, tmp_path: Path) -> None:
    old, new = make_secret(), make_secret()
    make_sender(receiver.url, [old, new], tmp_path).send_all(envelopes(1))

    [request] = receiver.requests
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    verify(old, request)
    verify(new, request)


def test_invalid_secret_is_reported_without_echoing_it(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="#2") as info:
        BatchSender("http://127.0.0.1:1/", [make_secret(), "whsec_a"], dead_letter_path="x")
    assert "whsec_a" not in str(info.value)
    with pytest.raises(ValueError, match="#1"):
        BatchSender("http://127.0.0.1:1/", ["whsec_"], dead_letter_path="x")
    with pytest.raises(ValueError):
        BatchSender("http://127.0.0.1:1/", [], dead_letter_path="x")
    with pytest.raises(ValueError):
        BatchSender("ftp://example.com/", [make_secret()])


# ---------------------------------------------------------------------------
# Batching
# ---------------------------------------------------------------------------


def test_batches_respect_the_event_limit_and_keep_order(
    receiver: LocalReceiver, secret: str, tmp_path: Path
) -> None:
    items = envelopes(250)
    result = make_sender(receiver.url, [secret], tmp_path, batch_size=100).send_all(items)

    assert result.delivered == 250 and result.batches == 3
    bodies = [request.json()["events"] for request in receiver.requests]
    assert [len(events) for events in bodies] == [100, 100, 50]
    assert [event["seq"] for events in bodies for event in events] == list(range(250))
    assert len({request.headers["webhook-id"] for request in receiver.requests}) == 3


def test_batches_respect_the_byte_limit() -> None:
    items = envelopes(10)
    limit = len(encode_body(items[:3]))

    batches = list(chunk(items, max_events=100, max_bytes=limit))

    assert [len(batch) for batch in batches] == [3, 3, 3, 1]
    assert all(len(encode_body(batch)) <= limit for batch in batches)
    assert [e for batch in batches for e in batch] == items


def test_batches_hold_one_realm_and_name_it_for_routing(
    receiver: LocalReceiver, secret: str, tmp_path: Path
) -> None:
    items = envelopes(6)
    for index, item in enumerate(items):
        item["realm"] = {"id": 2 if index in (0, 1, 4, 5) else 3, "uuid": "u", "string_id": "r"}

    result = make_sender(receiver.url, [secret], tmp_path, batch_size=100).send_all(items)

    assert result.delivered == 6 and result.batches == 3
    bodies = [request.json()["events"] for request in receiver.requests]
    assert [[event["seq"] for event in events] for events in bodies] == [[0, 1], [2, 3], [4, 5]]
    routed = [request.headers["x-zulip-listeners-realm"] for request in receiver.requests]
    assert routed == ["2", "3", "2"]


def test_oversized_single_event_still_goes_alone() -> None:
    items = envelopes(3)
    assert [len(b) for b in chunk(items, max_events=100, max_bytes=10)] == [1, 1, 1]


# ---------------------------------------------------------------------------
# Back-off and retries
# ---------------------------------------------------------------------------


def test_503_backs_off_then_resends_same_webhook_id(
    receiver: LocalReceiver, secret: str, tmp_path: Path
) -> None:
    receiver.reply(
        Reply(503, {"error": "unavailable", "message": "busy"}),
        Reply(503, {"error": "unavailable", "message": "busy"}),
        Reply(503, {"error": "unavailable", "message": "busy"}, headers={"Retry-After": "7"}),
        Reply(429, {"error": "rate_limited", "message": "slow down"}),
    )
    sleeps, clock = Sleeps(), Clock()
    sender = make_sender(receiver.url, [secret], tmp_path, sleep=sleeps, clock=clock)

    result = sender.send_all(envelopes(2))

    assert result.delivered == 2
    assert sleeps == [1, 2, 7, 8]
    assert len(receiver.requests) == 5
    assert len({r.headers["webhook-id"] for r in receiver.requests}) == 1
    assert len({r.headers["webhook-timestamp"] for r in receiver.requests}) == 5
    assert len({r.body for r in receiver.requests}) == 1
    for request in receiver.requests:
        verify(secret, request)  # each resend is re-signed for its own timestamp
    assert not (tmp_path / "dead.jsonl").exists()


def test_backoff_is_capped(receiver: LocalReceiver, secret: str, tmp_path: Path) -> None:
    receiver.reply(*[Reply(502) for _ in range(5)], Reply(500, headers={"Retry-After": "3600"}))
    sleeps = Sleeps()

    make_sender(receiver.url, [secret], tmp_path, sleep=sleeps, max_backoff=5).send_all(
        envelopes(1)
    )

    assert sleeps == [1, 2, 4, 5, 5, 5]


def test_dropped_connection_is_retried(
    receiver: LocalReceiver, secret: str, tmp_path: Path
) -> None:
    receiver.reply(Reply(drop_connection=True))
    sleeps = Sleeps()

    result = make_sender(receiver.url, [secret], tmp_path, sleep=sleeps).send_all(envelopes(1))

    assert result.delivered == 1 and sleeps == [1]
    assert len(receiver.requests) == 2
    assert receiver.requests[0].headers["webhook-id"] == receiver.requests[1].headers["webhook-id"]


def test_refused_connection_is_retried_until_the_receiver_starts(
    secret: str, tmp_path: Path
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started: list[LocalReceiver] = []

    def sleep(seconds: float) -> None:
        if not started:
            started.append(LocalReceiver(port))
            started[0].start()

    url = f"http://127.0.0.1:{port}/zulip/events"
    try:
        result = make_sender(url, [secret], tmp_path, sleep=sleep).send_all(envelopes(1))
    finally:
        for server in started:
            server.stop()

    assert result.delivered == 1
    assert len(started[0].requests) == 1


def test_timeout_is_retried(receiver: LocalReceiver, secret: str, tmp_path: Path) -> None:
    receiver.reply(Reply(stall_seconds=1.0))
    sleeps = Sleeps()

    result = make_sender(receiver.url, [secret], tmp_path, sleep=sleeps, timeout=0.2).send_all(
        envelopes(1)
    )

    assert result.delivered == 1 and sleeps == [1]


def test_redirect_is_not_followed_but_retried(
    receiver: LocalReceiver, secret: str, tmp_path: Path
) -> None:
    receiver.reply(Reply(301, headers={"Location": "http://127.0.0.1:1/elsewhere"}))
    sleeps = Sleeps()

    assert (
        make_sender(receiver.url, [secret], tmp_path, sleep=sleeps).send_all(envelopes(1)).delivered
        == 1
    )
    assert sleeps == [1] and all(r.path == "/zulip/events" for r in receiver.requests)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("7", 7.0),
        (" 2.5 ", 2.5),
        ("", None),
        (None, None),
        ("-1", None),
        ("nan", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value) == expected


def test_backoff_sequence() -> None:
    backoff = Backoff(maximum=60)
    assert [backoff.delay() for _ in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]


# ---------------------------------------------------------------------------
# Rejections and dead letters
# ---------------------------------------------------------------------------


def test_400_is_dead_lettered_and_next_batch_proceeds(
    receiver: LocalReceiver, secret: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    error = {"error": "bad_request", "message": "envelope 0 has no event_id"}
    receiver.reply(Reply(400, error))
    items = envelopes(2)
    sleeps = Sleeps()
    sender = make_sender(receiver.url, [secret], tmp_path, batch_size=1, sleep=sleeps)

    with caplog.at_level(logging.ERROR, logger="zulip_listeners_forwarder"):
        result = sender.send_all(items)

    assert (result.delivered, result.dead_lettered, result.batches) == (1, 1, 2)
    assert sleeps == []
    [line] = (tmp_path / "dead.jsonl").read_text().splitlines()
    record = json.loads(line)
    assert record["status"] == 400
    assert json.loads(record["response_body"]) == error
    assert record["events"] == items[:1]
    assert record["webhook_id"] == receiver.requests[0].headers["webhook-id"]
    assert record["url"] == receiver.url
    assert receiver.requests[1].json()["events"] == items[1:]
    assert "HTTP 400" in caplog.text and "dead.jsonl" in caplog.text


@pytest.mark.parametrize("status", [401, 404, 410, 422])
def test_other_4xx_are_dead_lettered(
    receiver: LocalReceiver, secret: str, tmp_path: Path, status: int
) -> None:
    receiver.reply(Reply(status, {"error": "nope", "message": "nope"}))

    result = make_sender(receiver.url, [secret], tmp_path).send_all(envelopes(1))

    assert result.dead_lettered == 1 and len(receiver.requests) == 1
    assert json.loads((tmp_path / "dead.jsonl").read_text())["status"] == status


def test_413_splits_the_batch_and_dead_letters_a_single_oversized_event(
    receiver: LocalReceiver, secret: str, tmp_path: Path
) -> None:
    too_large = Reply(413, {"error": "payload_too_large", "message": "too large"})
    receiver.reply(too_large, Reply(200), too_large, too_large)
    items = envelopes(3)

    result = make_sender(receiver.url, [secret], tmp_path).send_all(items)

    sizes = [len(r.json()["events"]) for r in receiver.requests]
    assert sizes == [3, 1, 2, 1, 1]
    assert (result.delivered, result.dead_lettered) == (2, 1)
    record = json.loads((tmp_path / "dead.jsonl").read_text())
    assert record["status"] == 413 and record["events"] == items[1:2]
    order = [e["seq"] for r in receiver.requests[3:] for e in r.json()["events"]]
    assert order == [1, 2]


def test_unwritable_dead_letter_file_raises_so_the_batch_is_not_acknowledged(
    receiver: LocalReceiver, secret: str, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    receiver.reply(Reply(400, {"error": "bad_request", "message": "x"}))
    sender = make_sender(
        receiver.url, [secret], tmp_path, dead_letter_path=str(blocker / "dead.jsonl")
    )

    with pytest.raises(DeadLetterWriteError, match="cannot write batch"):
        sender.send_all(envelopes(1))


def test_dead_letter_file_is_private(receiver: LocalReceiver, secret: str, tmp_path: Path) -> None:
    receiver.reply(*[Reply(400, {"error": "bad_request", "message": "x"})] * 2)
    fresh = tmp_path / "new" / "dead.jsonl"
    make_sender(receiver.url, [secret], tmp_path, dead_letter_path=str(fresh)).send_all(
        envelopes(1)
    )
    assert fresh.stat().st_mode & 0o777 == 0o600

    loose = tmp_path / "loose.jsonl"
    loose.write_text("")
    loose.chmod(0o644)
    make_sender(receiver.url, [secret], tmp_path, dead_letter_path=str(loose)).send_all(
        envelopes(1)
    )
    assert loose.stat().st_mode & 0o777 == 0o600
    assert len(loose.read_text().splitlines()) == 1


def test_resend_dead_letters(receiver: LocalReceiver, secret: str, tmp_path: Path) -> None:
    receiver.reply(Reply(400, {"error": "bad_request", "message": "x"}))
    items = envelopes(2)
    sender = make_sender(receiver.url, [secret], tmp_path)
    sender.send_all(items)
    aside = tmp_path / "dead.jsonl.1"
    os.rename(tmp_path / "dead.jsonl", aside)

    result = resend_dead_letters(str(aside), sender)

    assert result.delivered == 2
    assert receiver.requests[-1].json()["events"] == items
    assert receiver.requests[-1].headers["webhook-id"] != receiver.requests[0].headers["webhook-id"]


def test_resend_rejects_garbage(tmp_path: Path, secret: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"events": []}\n\nnot json\n')
    sender = make_sender("http://127.0.0.1:1/", [secret], tmp_path)
    with pytest.raises(ValueError, match=":3:"):
        resend_dead_letters(str(path), sender)


def test_plain_requests_session_is_used(tmp_path: Path, secret: str) -> None:
    sender = make_sender("https://listeners.example.com/zulip/events", [secret], tmp_path)
    assert type(sender.session) is requests.Session
