"""Stand-in for zerver/worker/base.py: the queue worker classes (no statistics, Sentry or
SIGALRM), with Zulip's error handling in ``do_consume``."""

from __future__ import annotations

import logging
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import orjson
from django.conf import settings

from zerver.lib.queue import SimpleQueueClient


class WorkerDeclarationError(Exception):
    pass


class QueueProcessingWorker(ABC):
    queue_name: str
    MAX_CONSUME_SECONDS: int | None = 30
    PREFETCH = 100

    def __init__(
        self, threaded: bool = False, disable_timeout: bool = False, worker_num: int | None = None
    ) -> None:
        self.q: SimpleQueueClient | None = None
        self.threaded = threaded
        self.disable_timeout = disable_timeout
        self.worker_num = worker_num
        if not hasattr(self, "queue_name"):
            raise WorkerDeclarationError("Queue worker declared without queue_name")
        self.consume_errors: list[tuple[list[dict[str, Any]], Exception]] = []

    @abstractmethod
    def consume(self, data: dict[str, Any]) -> None:
        pass

    def do_consume(
        self, consume_func: Callable[[list[dict[str, Any]]], None], events: list[dict[str, Any]]
    ) -> None:
        # Like Zulip: an Exception is handled here and the call returns normally, so the queue
        # client acknowledges the batch; a BaseException (SystemExit...) propagates and the
        # queue client nacks it.
        try:
            consume_func(events)
        except Exception as e:
            self._handle_consume_exception(events, e)

    def _handle_consume_exception(self, events: list[dict[str, Any]], exception: Exception) -> None:
        # Zulip logs, appends the events to QUEUE_ERROR_DIR/<queue>.errors and may restart.
        logging.exception("Problem handling data on queue %s", self.queue_name, stack_info=True)
        os.makedirs(settings.QUEUE_ERROR_DIR, exist_ok=True)
        path = os.path.join(settings.QUEUE_ERROR_DIR, f"{self.queue_name}.errors")
        line = f"{time.asctime()}\t{orjson.dumps(events).decode()}\n"
        with open(path, "a") as f:
            f.write(line)
        self.consume_errors.append((events, exception))  # stand-in only, for assertions

    def setup(self) -> None:
        self.q = SimpleQueueClient(prefetch=self.PREFETCH)

    def start(self) -> None:
        assert self.q is not None
        self.q.start_json_consumer(
            self.queue_name, lambda events: self.do_consume(lambda e: self.consume(e[0]), events)
        )

    def stop(self) -> None:
        assert self.q is not None
        self.q.stop_consuming()


class LoopQueueProcessingWorker(QueueProcessingWorker):
    sleep_delay = 1
    batch_size = 100

    def setup(self) -> None:
        self.q = SimpleQueueClient(prefetch=max(self.PREFETCH, self.batch_size))

    def start(self) -> None:
        assert self.q is not None
        self.q.start_json_consumer(
            self.queue_name,
            lambda events: self.do_consume(self.consume_batch, events),
            batch_size=self.batch_size,
            timeout=self.sleep_delay,
        )

    @abstractmethod
    def consume_batch(self, events: list[dict[str, Any]]) -> None:
        pass

    def consume(self, event: dict[str, Any]) -> None:
        self.consume_batch([event])
