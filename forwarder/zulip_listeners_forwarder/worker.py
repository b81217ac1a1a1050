"""The consumer's Zulip glue: a ``LoopQueueProcessingWorker`` on the forwarder's queue.

Zulip's queue client hands ``consume_batch`` up to ``batch_size`` events, or whatever arrived
within ``sleep_delay`` seconds, and acknowledges them to RabbitMQ when ``consume_batch``
returns.  Zulip's ``do_consume`` also acknowledges a batch whose ``consume_batch`` raised an
``Exception`` (after logging it and appending it to the queue's error file), so an exception
escaping from here would drop the batch from the queue.  ``consume_batch`` therefore returns
only once every event is delivered or written to the dead-letter file; when neither is
possible it raises :class:`BatchRequeued`, a ``BaseException`` that ``do_consume`` does not
catch, so the queue client *nacks* the batch (RabbitMQ keeps it) and the process exits for
supervisor to restart it.

Delivery goes through per-realm lanes (:mod:`.lanes`): a realm the receiver refuses with 429
has its events set aside in the on-disk spool (fsynced before ``consume_batch`` returns) and
sent again by the lanes' drainer thread, which this worker starts and stops with itself, so
that one refused realm does not hold back the others.  A batch that cannot be set aside
(:class:`.lanes.SpoolError`) is given back to RabbitMQ the same way, rather than
dead-lettered, which would put the realm's events out of order.

Zulip's own per-batch timeout is turned off (``MAX_CONSUME_SECONDS = None``) because a
receiver outage legitimately keeps one call busy for as long as it lasts.  While it lasts,
the sender asks the receiver's ``/readyz`` about once a second (``ZULIP_LISTENERS_READY_URL``,
see :mod:`.delivery`), so the backlog goes out as soon as the receiver is back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from .delivery import BatchSender, ReadinessProbe, new_webhook_id, ready_url_for
from .lanes import Lanes, SpoolError
from .settings import (
    QUEUE_NAME,
    ForwarderConfigError,
    ForwarderSettings,
    load_secrets,
    load_settings,
)
from .versions import require_supported_zulip

require_supported_zulip()

from zerver.worker.base import LoopQueueProcessingWorker  # noqa: E402

logger = logging.getLogger(__name__)

#: Pause before giving a batch back to RabbitMQ, so that a persistent fault (a full disk)
#: does not turn into a tight redelivery loop.
REQUEUE_PAUSE_SECONDS = 10.0


class BatchRequeued(BaseException):
    """Raised out of ``consume_batch`` to make Zulip's queue client nack (re-queue) the batch.

    It derives from ``BaseException`` on purpose: Zulip's ``do_consume`` catches ``Exception``
    and would acknowledge the batch.
    """


def build_sender(conf: ForwarderSettings, secrets: list[str]) -> BatchSender:
    if not conf.url:
        raise ForwarderConfigError("ZULIP_LISTENERS_URL is not set in /etc/zulip/settings.py")
    ready_url = conf.ready_url if conf.ready_url is not None else ready_url_for(conf.url)
    return BatchSender(
        conf.url,
        secrets,
        timeout=conf.timeout_seconds,
        max_backoff=conf.max_backoff_seconds,
        batch_size=conf.batch_size,
        batch_max_bytes=conf.batch_max_bytes,
        dead_letter_path=conf.dead_letter_file,
        probe=ReadinessProbe(ready_url) if ready_url else None,
    )


def build_lanes(conf: ForwarderSettings, sender: BatchSender) -> Lanes:
    try:
        return Lanes(sender, conf.spool_dir, conf.max_spooled_per_realm)
    except SpoolError as exc:
        raise ForwarderConfigError(f"ZULIP_LISTENERS_SPOOL_DIR: {exc}") from exc


def consume_safely(
    sender: BatchSender | Lanes,
    events: list[dict[str, Any]],
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Deliver ``events``; on any unexpected error dead-letter them; if even that fails, or
    a refused realm's events cannot be set aside, raise :class:`BatchRequeued`.  Never lets
    an ``Exception`` escape."""
    try:
        sender.send_all(events)
        return
    except SpoolError:
        logger.exception(
            "cannot set a refused realm's events aside; giving the batch of %d events back to"
            " RabbitMQ in %.0f s and exiting (supervisor restarts the consumer)",
            len(events),
            REQUEUE_PAUSE_SECONDS,
        )
        sleep(REQUEUE_PAUSE_SECONDS)
        raise BatchRequeued(f"batch of {len(events)} events re-queued") from None
    except Exception as exc:
        failure = exc
        logger.exception(
            "unexpected error while delivering a batch of %d events; dead-lettering it",
            len(events),
        )
    try:
        sender.write_dead_letter(
            new_webhook_id(),
            list(events),
            status=None,
            detail=f"{type(failure).__name__}: {failure}",
            reason=f"the forwarder failed to deliver it: {failure!r}",
        )
        return
    except Exception:
        logger.exception(
            "cannot dead-letter a batch of %d events either; giving it back to RabbitMQ"
            " in %.0f s and exiting (supervisor restarts the consumer)",
            len(events),
            REQUEUE_PAUSE_SECONDS,
        )
    sleep(REQUEUE_PAUSE_SECONDS)
    raise BatchRequeued(f"batch of {len(events)} events re-queued")


class ForwarderWorker(LoopQueueProcessingWorker):
    """Consumes ``zulip_listeners_forwarder`` and POSTs the envelopes to the receiver."""

    queue_name = QUEUE_NAME
    MAX_CONSUME_SECONDS = None

    def __init__(
        self,
        sender: BatchSender | None = None,
        conf: ForwarderSettings | None = None,
        lanes: Lanes | None = None,
        **kwargs: Any,
    ) -> None:
        conf = conf if conf is not None else load_settings()
        self.batch_size = conf.batch_size
        # Zulip declares sleep_delay as an int, but it only becomes pika's (float-capable)
        # inactivity_timeout, so fractional seconds work.
        self.sleep_delay = conf.batch_seconds  # type: ignore[assignment]
        if lanes is None:
            sender = sender if sender is not None else build_sender(conf, load_secrets())
            lanes = build_lanes(conf, sender)
        self.lanes = lanes
        super().__init__(**kwargs)

    @property
    def sender(self) -> BatchSender:
        """The sender the consumer's own thread posts with (the lanes' drainer has a twin)."""
        return self.lanes.sender

    @sender.setter
    def sender(self, sender: BatchSender) -> None:
        self.lanes.sender = sender

    def start(self) -> None:
        self.lanes.start()
        try:
            super().start()
        finally:
            self.lanes.stop()

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            self.lanes.stop()

    def consume_batch(self, events: list[dict[str, Any]]) -> None:
        consume_safely(self.lanes, events)
