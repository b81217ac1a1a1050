"""Stand-in for zerver/lib/queue.py: an in-memory, JSON-encoding "RabbitMQ"."""

from __future__ import annotations

import json
from collections import defaultdict, deque
from collections.abc import Callable
from typing import Any

BROKER: defaultdict[str, deque[bytes]] = defaultdict(deque)


def reset() -> None:
    BROKER.clear()


def queued(queue_name: str) -> list[dict[str, Any]]:
    """Peek at a queue's events without consuming them."""
    return [json.loads(body) for body in BROKER[queue_name]]


def queue_json_publish_rollback_unsafe(
    queue_name: str,
    event: dict[str, Any],
    processor: Callable[[Any], None] | None = None,
) -> None:
    # Zulip serialises with orjson before publishing; json catches the same non-JSON values.
    BROKER[queue_name].append(json.dumps(event).encode())


class SimpleQueueClient:
    def __init__(self, rabbitmq_heartbeat: int | None = 0, prefetch: int = 0) -> None:
        self.prefetch = prefetch
        self.is_consuming = False

    def start_json_consumer(
        self,
        queue_name: str,
        callback: Callable[[list[dict[str, Any]]], None],
        batch_size: int = 1,
        timeout: float | None = None,
    ) -> None:
        """Hand the queue's events to ``callback`` in batches; return once it is empty."""
        self.is_consuming = True
        queue = BROKER[queue_name]
        while queue and self.is_consuming:
            events = [json.loads(queue.popleft()) for _ in range(min(batch_size, len(queue)))]
            callback(events)
        self.is_consuming = False

    def local_queue_size(self) -> int:
        return 0

    def stop_consuming(self) -> None:
        self.is_consuming = False
