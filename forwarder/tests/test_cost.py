"""What the forwarder costs Zulip per event (security review 2, F3): a benchmark.

The hook's own step, :func:`hook.forward_event` (filter, normalise, envelope, the queue
guard with its size estimate, and the JSON encoding Zulip's queue client does), is run many
times on realistic events from ``cost_samples.py``: an ordinary channel message (~1.4 KB of
Markdown and its ~2.4 KB rendering, 25 recipients) and the same message to 10,000
recipients.  Only the socket write to RabbitMQ is left out (Zulip's own events pay for the
same one); a second run with Zulip's queue client publishing to the real broker is printed
for comparison, not checked.

The numbers are printed (``-s`` not needed) as p50/p95 of wall time and of CPU time
(``time.thread_time``, which does not count the time this process waits while another one
has the CPU: this machine has two cores shared with other work).

**The timing check** is on the CPU-time p50 with twice the goal as headroom (ordinary
≤ 0.6 ms, 10,000 recipients ≤ 2 ms; the goals are 0.3 ms and 1 ms, met by a wide margin
when the machine is quiet, see the README), so that a loaded machine cannot fail it while a
return of the old costs (7-14 ms for 10,000 recipients) still does.  The envelope size
goal (< 20 KB for 10,000 recipients) is checked exactly.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from cost_samples import (
    LARGE_RECIPIENTS,
    ORDINARY_RECIPIENTS,
    big_message_event,
    big_message_users,
)
from zerver.lib import queue as stub_queue

from zulip_listeners_forwarder import hook
from zulip_listeners_forwarder.shedding import QueueGuard

GOAL_ORDINARY_MS = 0.3
GOAL_LARGE_MS = 1.0
HEADROOM = 2.0
GOAL_LARGE_BYTES = 20_000


@dataclass
class Timing:
    wall_ms: list[float]
    cpu_ms: list[float]

    @staticmethod
    def percentile(values: list[float], fraction: float) -> float:
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]

    def line(self, label: str, size: int | None = None) -> str:
        p = self.percentile
        return (
            f"{label:<34} wall p50 {p(self.wall_ms, 0.5):6.3f} ms  p95 {p(self.wall_ms, 0.95):6.3f}"
            f" ms | cpu p50 {p(self.cpu_ms, 0.5):6.3f} ms  p95 {p(self.cpu_ms, 0.95):6.3f} ms"
            + (f" | envelope {size:,} bytes" if size is not None else "")
        )


def run(step: Callable[[], None], iterations: int, warm_up: int = 50) -> Timing:
    for _ in range(warm_up):
        step()
    wall: list[float] = []
    cpu: list[float] = []
    gc.collect()
    for _ in range(iterations):
        started_wall, started_cpu = time.perf_counter_ns(), time.thread_time_ns()
        step()
        cpu.append((time.thread_time_ns() - started_cpu) / 1e6)
        wall.append((time.perf_counter_ns() - started_wall) / 1e6)
    return Timing(wall, cpu)


@pytest.fixture
def sizes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Zulip's queue client minus the socket: it encodes the envelope with orjson, as
    ``SimpleQueueClient.json_publish`` does.  The queue depth reads as 0 without asking
    RabbitMQ (that happens at most every 2 s per process, not per event)."""
    encoded: list[int] = []

    def encode_only(name: str, event: dict[str, Any], processor: Any = None) -> None:
        encoded.append(len(orjson.dumps(event)))

    monkeypatch.setattr(stub_queue, "queue_json_publish_rollback_unsafe", encode_only)
    monkeypatch.setattr(hook, "rabbitmq_depth", lambda queue, name: 0)
    monkeypatch.setattr(hook, "GUARD", QueueGuard())
    yield encoded


def report(capsys: pytest.CaptureFixture[str], line: str) -> None:
    with capsys.disabled():
        print(f"\n[forwarder cost] {line}")


def test_the_hooks_own_step_is_cheap_for_ordinary_and_huge_audiences(
    realm: Any, sizes: list[int], capsys: pytest.CaptureFixture[str]
) -> None:
    ordinary_event, ordinary_users = (
        big_message_event(ORDINARY_RECIPIENTS),
        big_message_users(ORDINARY_RECIPIENTS),
    )
    large_event, large_users = (
        big_message_event(LARGE_RECIPIENTS),
        big_message_users(LARGE_RECIPIENTS),
    )

    ordinary = run(lambda: hook.forward_event(realm, ordinary_event, ordinary_users), 2000)
    ordinary_size = sizes[-1]
    large = run(lambda: hook.forward_event(realm, large_event, large_users), 300)
    large_size = sizes[-1]

    report(capsys, ordinary.line(f"message, {ORDINARY_RECIPIENTS + 1} recipients", ordinary_size))
    report(capsys, large.line(f"message, {LARGE_RECIPIENTS + 1:,} recipients", large_size))

    assert large_size < GOAL_LARGE_BYTES
    ordinary_cpu = statistics.median(ordinary.cpu_ms)
    large_cpu = statistics.median(large.cpu_ms)
    assert ordinary_cpu <= GOAL_ORDINARY_MS * HEADROOM, ordinary.line("ordinary", ordinary_size)
    assert large_cpu <= GOAL_LARGE_MS * HEADROOM, large.line("10,000 recipients", large_size)


def test_with_zulips_queue_client_on_the_real_broker(
    realm: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Printed for comparison: the same step, publishing to RabbitMQ (not checked: the
    broker's answer time is not the forwarder's)."""
    monkeypatch.setattr(hook, "GUARD", QueueGuard())
    event, users = big_message_event(ORDINARY_RECIPIENTS), big_message_users(ORDINARY_RECIPIENTS)

    timing = run(lambda: hook.forward_event(realm, event, users), 1000)

    report(capsys, timing.line(f"message, {ORDINARY_RECIPIENTS + 1}, published to RabbitMQ"))
