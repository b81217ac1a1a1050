"""The consumer's Zulip glue: a ``LoopQueueProcessingWorker`` on the forwarder's queue.

Zulip's queue client hands ``consume_batch`` up to ``batch_size`` events, or whatever arrived
within ``sleep_delay`` seconds, and acknowledges them to RabbitMQ only when ``consume_batch``
returns.  This module only adapts that to :class:`~.delivery.BatchSender`, which retries
inside ``consume_batch`` until every batch is delivered or dead-lettered.  Zulip's own
per-batch timeout is turned off (``MAX_CONSUME_SECONDS = None``) because a receiver outage
legitimately keeps one call busy for as long as it lasts.
"""

from __future__ import annotations

from typing import Any

from zerver.worker.base import LoopQueueProcessingWorker

from .delivery import BatchSender
from .settings import (
    QUEUE_NAME,
    ForwarderConfigError,
    ForwarderSettings,
    load_secrets,
    load_settings,
)


def build_sender(conf: ForwarderSettings, secrets: list[str]) -> BatchSender:
    if not conf.url:
        raise ForwarderConfigError("ZULIP_LISTENERS_URL is not set in /etc/zulip/settings.py")
    return BatchSender(
        conf.url,
        secrets,
        timeout=conf.timeout_seconds,
        max_backoff=conf.max_backoff_seconds,
        batch_size=conf.batch_size,
        batch_max_bytes=conf.batch_max_bytes,
        dead_letter_path=conf.dead_letter_file,
    )


class ForwarderWorker(LoopQueueProcessingWorker):
    """Consumes ``zulip_listeners_forwarder`` and POSTs the envelopes to the receiver."""

    queue_name = QUEUE_NAME
    MAX_CONSUME_SECONDS = None

    def __init__(
        self,
        sender: BatchSender | None = None,
        conf: ForwarderSettings | None = None,
        **kwargs: Any,
    ) -> None:
        conf = conf if conf is not None else load_settings()
        self.batch_size = conf.batch_size
        # Zulip declares sleep_delay as an int, but it only becomes pika's (float-capable)
        # inactivity_timeout, so fractional seconds work.
        self.sleep_delay = conf.batch_seconds  # type: ignore[assignment]
        self.sender = sender if sender is not None else build_sender(conf, load_secrets())
        super().__init__(**kwargs)

    def consume_batch(self, events: list[dict[str, Any]]) -> None:
        self.sender.send_all(events)
