"""Per-realm lanes against a real local HTTP server: one realm refused with 429 delays only
itself; its events are set aside durably, sent again in order with their webhook-ids, and
bounded per realm (issue: one realm's refusal held every realm back)."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from local_receiver import LocalReceiver, Recorded, Reply

from zulip_listeners_forwarder.delivery import BatchSender
from zulip_listeners_forwarder.lanes import Lanes, SpoolError, spool_status

REALM_A, REALM_B = 2, 3
OVER_CAPACITY = {
    "error": "over_capacity",
    "message": "over capacity, send the batch again later: 12 events of realm 2 are waiting",
}


class Sleeps(list[float]):
    """A fake ``sleep`` that records the delays instead of waiting."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


class FakeClock:
    """Monotonic seconds that only move when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class RefuseRealms:
    """The receiver's answer: 429 + Retry-After for the realms in ``refused``."""

    def __init__(self, *realms: int, retry_after: str | None = "30") -> None:
        self.refused = set(realms)
        self.retry_after = retry_after

    def __call__(self, request: Recorded) -> Reply | None:
        if int(request.headers.get("x-zulip-listeners-realm", "0")) not in self.refused:
            return None
        headers = {"Retry-After": self.retry_after} if self.retry_after is not None else {}
        return Reply(429, OVER_CAPACITY, headers=headers)


def envelope(realm: int, seq: int, kind: str = "message") -> dict[str, Any]:
    return {
        "v": 1,
        "event_id": str(uuid.uuid4()),
        "realm": {"id": realm, "uuid": f"uuid-{realm}", "string_id": f"r{realm}"},
        "type": kind,
        "op": None,
        "seq": seq,
        "event": {"type": kind},
    }


def seqs(request: Recorded) -> list[int]:
    return [event["seq"] for event in request.json()["events"]]


def realm_of_request(request: Recorded) -> int:
    return int(request.headers["x-zulip-listeners-realm"])


def accepted_seqs(receiver: LocalReceiver, realm: int) -> list[int]:
    return [
        seq
        for request in receiver.requests
        if request.status == 200 and realm_of_request(request) == realm
        for seq in seqs(request)
    ]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


def make_lanes(
    receiver: LocalReceiver,
    secret: str,
    spool: Path,
    clock: FakeClock,
    sleeps: Sleeps,
    *,
    max_events: int = 1000,
    batch_size: int = 100,
) -> Lanes:
    sender = BatchSender(
        receiver.url,
        [secret],
        batch_size=batch_size,
        dead_letter_path=str(spool.parent / "dead.jsonl"),
        sleep=sleeps,
    )
    return Lanes(sender, str(spool), max_events, clock=clock)


@pytest.fixture
def lanes(
    receiver: LocalReceiver, secret: str, spool_dir: Path, clock: FakeClock, sleeps: Sleeps
) -> Iterator[Lanes]:
    lanes = make_lanes(receiver, secret, spool_dir, clock, sleeps)
    yield lanes
    lanes.stop()


def spooled_files(spool: Path, realm: int) -> list[str]:
    directory = spool / f"realm-{realm}"
    return sorted(p.name for p in directory.glob("*.json") if p.name != "shed.json")


# ---------------------------------------------------------------------------
# One realm refused, the others go on
# ---------------------------------------------------------------------------


def test_refused_realm_waits_while_another_realms_typing_goes_at_once(
    lanes: Lanes,
    receiver: LocalReceiver,
    spool_dir: Path,
    clock: FakeClock,
    sleeps: Sleeps,
    caplog: pytest.LogCaptureFixture,
) -> None:
    receiver.answer = RefuseRealms(REALM_A)
    items = [
        envelope(REALM_A, 1),
        envelope(REALM_A, 2),
        envelope(REALM_B, 3, "typing"),
        envelope(REALM_A, 4),
        envelope(REALM_B, 5),
    ]

    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="zulip_listeners_forwarder"):
        result = lanes.send_all(items)
    elapsed = time.monotonic() - started

    assert elapsed < 1.0, f"realm B waited {elapsed:.1f} s behind realm A"
    assert sleeps == [], "nobody slept: the refusal does not hold the consumer"
    assert result.delivered == 2
    assert [(realm_of_request(r), r.status, seqs(r)) for r in receiver.requests] == [
        (REALM_A, 429, [1, 2]),
        (REALM_B, 200, [3]),
        (REALM_B, 200, [5]),
    ], "A's later batch is set aside behind its refused one, not tried"
    assert receiver.requests[1].json()["events"][0]["type"] == "typing"
    assert len(spooled_files(spool_dir, REALM_A)) == 2
    [status_a] = [s for s in lanes.status() if s.realm == REALM_A]
    assert (status_a.batches, status_a.events, status_a.retry_in) == (2, 3, 30.0)
    [refusal] = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert "realm 2 refused by the receiver (HTTP 429" in refusal
    assert "over_capacity" in refusal and "tried again in 30 s" in refusal
    assert "other realms go on" in refusal

    # Retry-After is honoured: nothing goes before 30 s have passed.
    clock.advance(29)
    assert lanes.drain_due() == pytest.approx(1.0)
    assert len(receiver.requests) == 3

    receiver.answer = None  # realm A's backlog on the server has cleared
    clock.advance(1)
    with caplog.at_level(logging.WARNING, logger="zulip_listeners_forwarder"):
        assert lanes.drain_due() is None

    resent = receiver.requests[3:]
    assert [(realm_of_request(r), r.status, seqs(r)) for r in resent] == [
        (REALM_A, 200, [1, 2]),
        (REALM_A, 200, [4]),
    ]
    assert resent[0].headers["webhook-id"] == receiver.requests[0].headers["webhook-id"]
    assert resent[0].body == receiver.requests[0].body
    assert resent[0].headers["webhook-timestamp"], "re-signed for its own attempt"
    assert accepted_seqs(receiver, REALM_A) == [1, 2, 4], "in order, each exactly once"
    assert spooled_files(spool_dir, REALM_A) == []
    assert any(
        "realm 2 accepted again: 3 set-aside event(s)" in r.getMessage() for r in caplog.records
    )

    # The lane is open again: A's next event goes straight out.
    lanes.send_all([envelope(REALM_A, 6)])
    assert seqs(receiver.requests[-1]) == [6] and receiver.requests[-1].status == 200


def test_refused_realm_is_tried_once_per_retry_after_never_hammered(
    lanes: Lanes, receiver: LocalReceiver, clock: FakeClock
) -> None:
    receiver.answer = RefuseRealms(REALM_A)
    lanes.send_all([envelope(REALM_A, 1)])

    for _ in range(3):
        clock.advance(10)
        lanes.drain_due()
    assert len(receiver.requests) == 2, "one try at 30 s, none before"
    for _ in range(3):
        clock.advance(10)
        lanes.drain_due()
    assert len(receiver.requests) == 3, "and the next one 30 s later"

    # a new event of A meanwhile is not tried: it waits behind the refused one
    lanes.send_all([envelope(REALM_A, 2)])
    assert len(receiver.requests) == 3


def test_refusal_without_retry_after_backs_off(
    lanes: Lanes, receiver: LocalReceiver, clock: FakeClock
) -> None:
    receiver.answer = RefuseRealms(REALM_A, retry_after=None)
    lanes.send_all([envelope(REALM_A, 1)])
    waits = []
    for _ in range(4):
        wait = lanes.drain_due()
        assert wait is not None
        waits.append(wait)
        clock.advance(wait)
    assert waits == [1, 2, 4, 8]
    assert len(receiver.requests) == 4, "the first refusal, then one try per wait"


def test_server_errors_still_hold_everything_back_in_place(
    lanes: Lanes, receiver: LocalReceiver, spool_dir: Path, sleeps: Sleeps
) -> None:
    """5xx and timeouts are the whole receiver, not one realm: retried in place, as before."""
    receiver.reply(Reply(503, {"error": "unavailable", "message": "x"}, {"Retry-After": "5"}))

    lanes.send_all([envelope(REALM_A, 1), envelope(REALM_B, 2)])

    assert sleeps == [5]
    assert [(realm_of_request(r), r.status) for r in receiver.requests] == [
        (REALM_A, 503),
        (REALM_A, 200),
        (REALM_B, 200),
    ]
    assert not (spool_dir / f"realm-{REALM_A}").exists()


def test_other_rejections_are_still_dead_lettered_from_the_spool(
    lanes: Lanes, receiver: LocalReceiver, spool_dir: Path, clock: FakeClock
) -> None:
    receiver.answer = RefuseRealms(REALM_A)
    lanes.send_all([envelope(REALM_A, 1)])
    receiver.answer = None
    receiver.reply(Reply(400, {"error": "bad_request", "message": "no"}))
    clock.advance(30)

    assert lanes.drain_due() is None

    [record] = [json.loads(line) for line in (spool_dir.parent / "dead.jsonl").open()]
    assert record["status"] == 400 and [e["seq"] for e in record["events"]] == [1]
    assert record["webhook_id"] == receiver.requests[0].headers["webhook-id"]
    assert spooled_files(spool_dir, REALM_A) == []


def test_a_set_aside_batch_split_by_413_keeps_its_order_when_refused_again(
    lanes: Lanes, receiver: LocalReceiver, spool_dir: Path, clock: FakeClock
) -> None:
    receiver.answer = RefuseRealms(REALM_A)
    lanes.send_all([envelope(REALM_A, n) for n in (1, 2, 3, 4)])
    lanes.send_all([envelope(REALM_A, 5)])
    clock.advance(30)
    receiver.answer = None
    too_large = Reply(413, {"error": "payload_too_large", "message": "x"})
    refused = Reply(429, OVER_CAPACITY, {"Retry-After": "30"})
    receiver.reply(too_large, Reply(200), refused)  # [1..4] → [1,2] ok, [3,4] refused

    lanes.drain_due()

    assert spooled_files(spool_dir, REALM_A) == [
        "000000000000-0001-2.json",
        "000000000001-0000-1.json",
    ]
    clock.advance(30)
    lanes.drain_due()
    assert accepted_seqs(receiver, REALM_A) == [1, 2, 3, 4, 5]
    assert spooled_files(spool_dir, REALM_A) == []


# ---------------------------------------------------------------------------
# Durability: set-aside batches survive a restart
# ---------------------------------------------------------------------------


def test_set_aside_batches_are_sent_after_a_restart_with_their_webhook_ids(
    receiver: LocalReceiver,
    secret: str,
    spool_dir: Path,
    clock: FakeClock,
    sleeps: Sleeps,
    caplog: pytest.LogCaptureFixture,
) -> None:
    receiver.answer = RefuseRealms(REALM_A)
    first = make_lanes(receiver, secret, spool_dir, clock, sleeps, batch_size=2)
    first.send_all([envelope(REALM_A, n) for n in (1, 2, 3)])
    refused_id = receiver.requests[0].headers["webhook-id"]
    (spool_dir / f"realm-{REALM_A}" / ".000000000009-0000-1.json.tmp").write_text("{")
    del first  # the process dies: nothing but the spool is left

    receiver.answer = None
    with caplog.at_level(logging.WARNING, logger="zulip_listeners_forwarder"):
        second = make_lanes(receiver, secret, spool_dir, FakeClock(), sleeps, batch_size=2)
    assert "found 2 set-aside batch(es) (3 events) of 1 realm(s)" in caplog.text
    assert second.drain_due() is None, "tried at once after a restart"

    resent = receiver.requests[1:]
    assert [seqs(r) for r in resent] == [[1, 2], [3]]
    assert resent[0].headers["webhook-id"] == refused_id
    assert accepted_seqs(receiver, REALM_A) == [1, 2, 3]
    assert list((spool_dir / f"realm-{REALM_A}").iterdir()) == [], "temporary file removed"


def test_spool_files_are_private_and_readable_by_the_operator(
    lanes: Lanes, receiver: LocalReceiver, spool_dir: Path
) -> None:
    receiver.answer = RefuseRealms(REALM_A)
    lanes.send_all([envelope(REALM_A, 1)])

    [name] = spooled_files(spool_dir, REALM_A)
    path = spool_dir / f"realm-{REALM_A}" / name
    assert path.stat().st_mode & 0o777 == 0o600
    assert (spool_dir / f"realm-{REALM_A}").stat().st_mode & 0o777 == 0o700
    record = json.loads(path.read_text())
    assert record["webhook_id"] == receiver.requests[0].headers["webhook-id"]
    assert record["realm"] == REALM_A and [e["seq"] for e in record["events"]] == [1]


def test_unwritable_spool_raises_so_the_batch_is_not_acknowledged(
    lanes: Lanes, receiver: LocalReceiver, spool_dir: Path
) -> None:
    (spool_dir / f"realm-{REALM_A}").write_text("not a directory")
    receiver.answer = RefuseRealms(REALM_A)

    with pytest.raises(SpoolError, match="cannot set aside batch"):
        lanes.send_all([envelope(REALM_A, 1)])


def test_unreadable_spool_file_is_renamed_and_skipped(
    lanes: Lanes, receiver: LocalReceiver, spool_dir: Path, clock: FakeClock
) -> None:
    receiver.answer = RefuseRealms(REALM_A)
    lanes.send_all([envelope(REALM_A, 1)])
    lanes.send_all([envelope(REALM_A, 2)])
    first = spool_dir / f"realm-{REALM_A}" / spooled_files(spool_dir, REALM_A)[0]
    first.write_text("garbage")
    receiver.answer = None
    clock.advance(30)

    lanes.drain_due()

    assert accepted_seqs(receiver, REALM_A) == [2]
    assert Path(f"{first}.unreadable").read_text() == "garbage"


# ---------------------------------------------------------------------------
# Bounded per realm: shed only the refused realm, count it, tell the receiver
# ---------------------------------------------------------------------------


def test_set_aside_limit_sheds_only_that_realm_and_counts_it(
    receiver: LocalReceiver,
    secret: str,
    spool_dir: Path,
    clock: FakeClock,
    sleeps: Sleeps,
    caplog: pytest.LogCaptureFixture,
) -> None:
    lanes = make_lanes(receiver, secret, spool_dir, clock, sleeps, max_events=3, batch_size=2)
    receiver.answer = RefuseRealms(REALM_A)

    with caplog.at_level(logging.WARNING, logger="zulip_listeners_forwarder"):
        for start in range(1, 40, 4):  # A: 20 events, B: 20 events, interleaved
            lanes.send_all(
                [
                    envelope(REALM_A, start),
                    envelope(REALM_A, start + 1),
                    envelope(REALM_B, start + 2, "typing"),
                    envelope(REALM_B, start + 3),
                ]
            )

    b_seqs = [n + off for n in range(1, 40, 4) for off in (2, 3)]
    assert accepted_seqs(receiver, REALM_B) == b_seqs, "B is never shed nor delayed"
    assert lanes.shed_counts() == {REALM_A: 17}, "20 events of A, 3 fit: 17 shed, all A's"
    [status_a] = [s for s in lanes.status() if s.realm == REALM_A]
    assert (status_a.events, status_a.shed_total, status_a.shed_unreported) == (3, 17, 17)
    warnings = [r.getMessage() for r in caplog.records if "MAX_SPOOLED" in r.getMessage()]
    assert len(warnings) == 1, "at most one warning a minute per realm"
    assert warnings[0].startswith("realm 2: 3 events set aside")
    assert "ZULIP_LISTENERS_MAX_SPOOLED_PER_REALM=3" in warnings[0]
    assert "shed 1 event(s) of this realm since the last warning, 1 in total" in warnings[0]
    shed_file = json.loads((spool_dir / f"realm-{REALM_A}" / "shed.json").read_text())
    assert shed_file == {"shed_total": 17, "shed_unreported": 17}

    # A recovers: its kept events go in order; its next event tells the receiver what was lost.
    receiver.answer = None
    clock.advance(30)
    lanes.drain_due()
    assert accepted_seqs(receiver, REALM_A) == [1, 2, 5]
    lanes.send_all([envelope(REALM_A, 100), envelope(REALM_A, 101)])
    last = receiver.requests[-1].json()["events"]
    assert [e["seq"] for e in last] == [100, 101]
    assert last[0]["shed_before"] == 17 and "shed_before" not in last[1]
    assert [s.shed_unreported for s in lanes.status() if s.realm == REALM_A] == [0]
    assert json.loads((spool_dir / f"realm-{REALM_A}" / "shed.json").read_text()) == {
        "shed_total": 17,
        "shed_unreported": 0,
    }
    assert all(
        "shed_before" not in e
        for r in receiver.requests
        if realm_of_request(r) == REALM_B
        for e in r.json()["events"]
    ), "B is told of nothing: nothing of B was shed"


def test_shed_report_survives_a_restart_and_adds_to_the_producers(
    receiver: LocalReceiver, secret: str, spool_dir: Path, clock: FakeClock, sleeps: Sleeps
) -> None:
    lanes = make_lanes(receiver, secret, spool_dir, clock, sleeps, max_events=1)
    receiver.answer = RefuseRealms(REALM_A)
    lanes.send_all([envelope(REALM_A, 1), envelope(REALM_A, 2), envelope(REALM_A, 3)])
    assert lanes.shed_counts() == {REALM_A: 2}

    receiver.answer = None
    restarted = make_lanes(receiver, secret, spool_dir, clock, sleeps, max_events=1)
    restarted.drain_due()
    produced = envelope(REALM_A, 4)
    produced["shed_before"] = 5  # the producer shed 5 of this realm as well
    restarted.send_all([produced])

    assert receiver.requests[-1].json()["events"][0]["shed_before"] == 7
    assert accepted_seqs(receiver, REALM_A) == [1, 4]
    [status] = spool_status(str(spool_dir))
    assert (status.realm, status.events, status.shed_total, status.shed_unreported) == (
        REALM_A,
        0,
        2,
        0,
    )


# ---------------------------------------------------------------------------
# The drainer thread
# ---------------------------------------------------------------------------


def wait_for(check: Any, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.01)
    raise AssertionError("timed out")


def test_drainer_thread_sends_set_aside_batches_when_due(
    lanes: Lanes, receiver: LocalReceiver, clock: FakeClock, spool_dir: Path
) -> None:
    receiver.answer = RefuseRealms(REALM_A)
    lanes.start()
    lanes.send_all([envelope(REALM_A, 1), envelope(REALM_B, 2)])
    time.sleep(0.1)
    assert len(receiver.requests) == 2, "the drainer waits for Retry-After"

    receiver.answer = None
    clock.advance(30)
    lanes.poke()  # what the passing of real time does for a real clock
    wait_for(lambda: accepted_seqs(receiver, REALM_A) == [1])

    lanes.stop()
    assert spooled_files(spool_dir, REALM_A) == []


def test_drainer_thread_starts_with_what_a_previous_run_left(
    receiver: LocalReceiver, secret: str, spool_dir: Path, clock: FakeClock, sleeps: Sleeps
) -> None:
    receiver.answer = RefuseRealms(REALM_A)
    make_lanes(receiver, secret, spool_dir, clock, sleeps).send_all([envelope(REALM_A, 1)])
    receiver.answer = None

    restarted = make_lanes(receiver, secret, spool_dir, clock, sleeps)
    restarted.start()
    try:
        wait_for(lambda: accepted_seqs(receiver, REALM_A) == [1])
    finally:
        restarted.stop()
