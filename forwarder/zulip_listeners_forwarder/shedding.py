"""Bound what the producer queues, so that the forwarder can never block Zulip.

A receiver outage or a stopped consumer makes the ``zulip_listeners_forwarder`` queue grow;
unbounded, it would eventually trip RabbitMQ's memory or disk alarm, and RabbitMQ then blocks
*every* publisher, Zulip's own ``send_event`` included.  The producer therefore checks the
queue's depth (at most every ``ZULIP_LISTENERS_QUEUE_CHECK_SECONDS``, with the same
idempotent ``queue_declare(durable=True)`` Zulip itself issues, which answers the message
count) and, at ``ZULIP_LISTENERS_MAX_QUEUED`` events or ``ZULIP_LISTENERS_MAX_QUEUED_BYTES``
bytes, *sheds*: the event is not queued.
Shedding is counted per process and per realm, logged (a WARNING at most once a minute, with
the counts by realm) and reported to the receiver per realm: the next envelope of a realm
this process does queue carries ``"shed_before": N``, the number of that realm's events it
shed since its previous one, so the receiver (whose batches hold one realm each) can tell
which realm lost events.

The queue only fills when the consumer cannot send at all (the receiver down or answering
5xx, or the consumer stopped).  A realm the receiver *refuses* (429) does not fill it: the
consumer sets that realm's events aside in its own bounded per-realm spool and keeps
draining the queue for the other realms (see ``lanes.py``, which also sheds, per realm,
what does not fit there).

Nothing here waits: a failed depth check keeps the last known depth (and queues), and the
check never sleeps or retries.

**Bytes.**  RabbitMQ's answer counts messages, not bytes, so the bytes are estimated: the
depth times the mean size of the envelopes this process queued (a moving average over about
its last :data:`MEAN_WINDOW` envelopes, as encoded for the queue), plus what it queued since
the last check.  The estimate only has to stop a queue of unusually big envelopes long
before RabbitMQ's alarms; a RabbitMQ ``max-length-bytes`` policy can back it with an exact
limit (README, "Monitoring the queue").
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

#: At most one "shedding" warning per process per this many seconds.
LOG_INTERVAL_SECONDS = 60.0

#: The mean envelope size is a moving average over about this many envelopes.
MEAN_WINDOW = 1000


@dataclass
class QueueGuard:
    """Per-process state: the last known queue depth and what was shed, in all and by realm."""

    clock: Callable[[], float] = time.monotonic
    depth: int = 0
    checked_at: float | None = None
    queued_since_check: int = 0
    #: Mean size in bytes of the envelopes this process queued (moving average), and the
    #: bytes it queued since the last depth check.
    mean_bytes: float = 0.0
    bytes_since_check: int = 0
    shed_total: int = 0
    shed_unlogged: int = 0
    logged_at: float | None = None
    #: Per realm id: events shed in this process, and those not yet reported to the receiver.
    shed_by_realm: dict[Any, int] = field(default_factory=dict)
    unreported_by_realm: dict[Any, int] = field(default_factory=dict)
    unlogged_by_realm: dict[Any, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def shed_unreported(self) -> int:
        return sum(self.unreported_by_realm.values())

    @property
    def estimated_bytes(self) -> int:
        """What the queue holds, in bytes, as far as this process can tell."""
        return int(self.depth * self.mean_bytes) + self.bytes_since_check

    def admit(
        self,
        limit: int,
        check_seconds: float,
        measure: Callable[[], int | None],
        realm: Any = None,
        size: int = 0,
        byte_limit: int | None = None,
    ) -> int | None:
        """``None`` to shed the event (of ``realm``, its realm id, ``size`` bytes as queued);
        otherwise the number of events of that realm shed before it (for the envelope's
        ``shed_before``), which is then considered reported."""
        now = self.clock()
        with self._lock:
            stale = self.checked_at is None or now - self.checked_at >= check_seconds
        if stale:
            measured = _safely(measure)
            with self._lock:
                self.checked_at = now
                if measured is not None:
                    self.depth, self.queued_since_check = measured, 0
                    self.bytes_since_check = 0
        with self._lock:
            over_bytes = byte_limit is not None and self.estimated_bytes + size > byte_limit
            if self.depth + self.queued_since_check >= limit or over_bytes:
                self.shed_total += 1
                self.shed_unlogged += 1
                for counts in (
                    self.shed_by_realm,
                    self.unreported_by_realm,
                    self.unlogged_by_realm,
                ):
                    counts[realm] = counts.get(realm, 0) + 1
                self._log(now, limit, byte_limit)
                return None
            self.queued_since_check += 1
            self.bytes_since_check += size
            if size:
                weight = 1.0 / MEAN_WINDOW if self.mean_bytes else 1.0
                self.mean_bytes += (size - self.mean_bytes) * weight
            return self.unreported_by_realm.pop(realm, 0)

    def _log(self, now: float, limit: int, byte_limit: int | None) -> None:
        if self.logged_at is not None and now - self.logged_at < LOG_INTERVAL_SECONDS:
            return
        by_realm = ", ".join(
            f"realm {realm}: {count}"
            for realm, count in sorted(self.unlogged_by_realm.items(), key=lambda i: str(i[0]))
        )
        logger.warning(
            "zulip_listeners_forwarder: queue holds %d events (ZULIP_LISTENERS_MAX_QUEUED=%d),"
            " about %d bytes (ZULIP_LISTENERS_MAX_QUEUED_BYTES=%s); shed %d event(s) since the"
            " last warning, %d in total in this process (since the last warning, by realm: %s)."
            " Is the consumer running and the receiver reachable?",
            self.depth + self.queued_since_check,
            limit,
            self.estimated_bytes,
            byte_limit if byte_limit is not None else "none",
            self.shed_unlogged,
            self.shed_total,
            by_realm,
        )
        self.logged_at, self.shed_unlogged = now, 0
        self.unlogged_by_realm.clear()


def _safely(measure: Callable[[], int | None]) -> int | None:
    try:
        return measure()
    except Exception:
        logger.debug("could not measure the forwarder queue; keeping the last depth", exc_info=True)
        return None


def rabbitmq_depth(queue_module: Any, queue_name: str) -> int | None:
    """The queue's message count through Zulip's own (per-thread) queue client.

    Uses the exact declaration Zulip's ``ensure_queue`` makes (``durable=True``), so it never
    fails or alters the queue; ``None`` where the client is not a blocking one (Tornado).
    """
    get_client = getattr(queue_module, "get_queue_client", None)
    if get_client is None:
        return None
    counts: list[int] = []

    def declare(channel: Any) -> None:
        frame = channel.queue_declare(queue=queue_name, durable=True)
        count = getattr(getattr(frame, "method", None), "message_count", None)
        if isinstance(count, int):
            counts.append(count)

    get_client().ensure_queue(queue_name, declare)
    return counts[0] if counts else None


GUARD = QueueGuard()
