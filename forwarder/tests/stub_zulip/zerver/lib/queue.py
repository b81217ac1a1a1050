"""Stand-in for zerver/lib/queue.py on a real RabbitMQ, through pika, as Zulip does it.

Publishing and consuming follow Zulip's ``SimpleQueueClient``:

* ``queue_json_publish_rollback_unsafe`` publishes with orjson and ``delivery_mode=2`` when
  ``settings.USING_RABBITMQ``; otherwise it calls ``processor`` with an orjson round trip.
* queues are declared ``durable=True`` on first use (``ensure_queue``);
* ``start_json_consumer`` iterates ``channel.consume(queue, inactivity_timeout=timeout)``,
  collects up to ``batch_size`` events (or whatever came within ``timeout``), calls the
  callback, and only then acks with ``basic_ack(max_tag, multiple=True)``; on any
  ``BaseException`` from the callback it nacks (re-queues) the batch and re-raises.

Differences, for the tests only:

* every queue name gets a per-test prefix (:func:`isolate`; callers of ``ensure_queue`` see a
  channel that maps the names), and :func:`reset` deletes the queues a test used, so tests
  never see each other's messages;
* with ``STOP_WHEN_IDLE`` (the default here), the consumer returns after an idle interval with
  nothing pending, instead of blocking forever as Zulip's does.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson
import pika
from django.conf import settings
from pika.adapters.blocking_connection import BlockingChannel

#: The broker the tests use.
AMQP_URL_ENV = "ZULIP_LISTENERS_TEST_AMQP_URL"
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"

#: Test-only: the consumer returns once idle (Zulip's blocks forever).
STOP_WHEN_IDLE = True
#: Test-only: the inactivity interval when Zulip would block without a timeout.
IDLE_SECONDS = 0.3

_clients: list[SimpleQueueClient] = []
_prefix = f"zlf-test-{uuid.uuid4().hex[:8]}-"
_used: set[str] = set()


def amqp_url() -> str:
    return os.environ.get(AMQP_URL_ENV) or DEFAULT_AMQP_URL


def physical(queue_name: str) -> str:
    """The broker-side name of a logical queue in the current test."""
    name = _prefix + queue_name
    _used.add(name)
    return name


def isolate() -> None:
    """Give the next test queue names of its own."""
    global _prefix
    _prefix = f"zlf-test-{uuid.uuid4().hex[:8]}-"


def connect() -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.URLParameters(amqp_url()))


def reset_clients() -> None:
    """Close every client connection (what a process exit does)."""
    global _client
    _client = None
    while _clients:
        _clients.pop().close()


def reset() -> None:
    """Delete every queue the current test declared, and drop cached clients."""
    reset_clients()
    if not _used:
        return
    connection = connect()
    try:
        channel = connection.channel()
        for name in sorted(_used):
            channel.queue_delete(queue=name)
    finally:
        connection.close()
    _used.clear()


def queued(queue_name: str) -> list[dict[str, Any]]:
    """Peek at a queue: fetch every message unacknowledged, then give them all back."""
    connection = connect()
    try:
        channel = connection.channel()
        channel.queue_declare(queue=physical(queue_name), durable=True)
        events = []
        while True:
            method, _properties, body = channel.basic_get(queue=physical(queue_name))
            if method is None:
                break
            events.append(orjson.loads(body))
        channel.close()  # unacknowledged messages go back to the queue, in order
        return events
    finally:
        connection.close()


def depth(queue_name: str) -> int:
    connection = connect()
    try:
        frame = connection.channel().queue_declare(queue=physical(queue_name), durable=True)
        return int(frame.method.message_count)
    finally:
        connection.close()


class _IsolatedChannel:
    """The pika channel as callers see it: logical queue names, mapped to this test's."""

    def __init__(self, channel: BlockingChannel) -> None:
        self._channel = channel

    def __getattr__(self, name: str) -> Any:
        return getattr(self._channel, name)

    def queue_declare(self, queue: str, **kwargs: Any) -> Any:
        return self._channel.queue_declare(queue=physical(queue), **kwargs)

    def basic_publish(self, exchange: str, routing_key: str, body: bytes, **kwargs: Any) -> None:
        self._channel.basic_publish(exchange, physical(routing_key), body, **kwargs)

    def consume(self, queue: str, **kwargs: Any) -> Any:
        return self._channel.consume(physical(queue), **kwargs)


class SimpleQueueClient:
    def __init__(self, rabbitmq_heartbeat: int | None = 0, prefetch: int = 0) -> None:
        self.rabbitmq_heartbeat = rabbitmq_heartbeat
        self.prefetch = prefetch
        self.is_consuming = False
        self.queues: set[str] = set()
        self.connection: pika.BlockingConnection | None = None
        self.channel: BlockingChannel | None = None
        self._connect()
        _clients.append(self)

    def _connect(self) -> None:
        self.connection = connect()
        self.channel = self.connection.channel()
        if self.prefetch:
            self.channel.basic_qos(prefetch_count=self.prefetch)
        self.queues = set()

    def close(self) -> None:
        if self.connection is not None and self.connection.is_open:
            self.connection.close()

    def ensure_queue(self, queue_name: str, callback: Callable[[BlockingChannel], object]) -> None:
        if self.connection is None or not self.connection.is_open:
            self._connect()
        assert self.channel is not None
        channel: Any = _IsolatedChannel(self.channel)
        if queue_name not in self.queues:
            channel.queue_declare(queue=queue_name, durable=True)
            self.queues.add(queue_name)
        callback(channel)

    def publish(self, queue_name: str, body: bytes) -> None:
        def do_publish(channel: BlockingChannel) -> None:
            channel.basic_publish(
                exchange="",
                routing_key=queue_name,
                properties=pika.BasicProperties(delivery_mode=2),
                body=body,
            )

        self.ensure_queue(queue_name, do_publish)

    def json_publish(self, queue_name: str, body: dict[str, Any]) -> None:
        data = orjson.dumps(body)
        try:
            self.publish(queue_name, data)
        except pika.exceptions.AMQPConnectionError:
            self._connect()  # Zulip reconnects once
            self.publish(queue_name, data)

    def local_queue_size(self) -> int:
        assert self.channel is not None
        return int(self.channel.get_waiting_message_count())

    def start_json_consumer(
        self,
        queue_name: str,
        callback: Callable[[list[dict[str, Any]]], None],
        batch_size: int = 1,
        timeout: float | None = None,
    ) -> None:
        if batch_size == 1:
            timeout = None

        def do_consume(channel: BlockingChannel) -> None:
            events: list[dict[str, Any]] = []
            last_process = time.time()
            max_processed: int | None = None
            self.is_consuming = True
            wait = timeout if timeout is not None else (IDLE_SECONDS if STOP_WHEN_IDLE else None)
            for method, _properties, body in channel.consume(queue_name, inactivity_timeout=wait):
                if body is not None:
                    assert method is not None
                    events.append(orjson.loads(body))
                    max_processed = method.delivery_tag
                now = time.time()
                if len(events) >= batch_size or (timeout and now >= last_process + timeout):
                    if events:
                        assert max_processed is not None
                        try:
                            callback(events)
                            channel.basic_ack(max_processed, multiple=True)
                        except BaseException:
                            if channel.is_open:
                                channel.basic_nack(max_processed, multiple=True)
                            raise
                        events = []
                    last_process = now
                if body is None and not events and STOP_WHEN_IDLE:
                    break
                if not self.is_consuming:
                    break
            channel.cancel()

        self.ensure_queue(queue_name, do_consume)

    def stop_consuming(self) -> None:
        self.is_consuming = False


_client: SimpleQueueClient | None = None
_client_lock = threading.Lock()


def get_queue_client() -> SimpleQueueClient:
    global _client
    with _client_lock:
        if _client is None or _client.connection is None or not _client.connection.is_open:
            _client = SimpleQueueClient()
        return _client


def queue_json_publish_rollback_unsafe(
    queue_name: str,
    event: dict[str, Any],
    processor: Callable[[Any], None] | None = None,
) -> None:
    if getattr(settings, "USING_RABBITMQ", True):
        get_queue_client().json_publish(queue_name, event)
    elif processor is not None:
        processor(orjson.loads(orjson.dumps(event)))
    else:
        raise RuntimeError(f"no worker for {queue_name} in the stand-in")
