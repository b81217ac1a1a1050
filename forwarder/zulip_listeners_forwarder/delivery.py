"""The consumer's HTTP side: batch, sign (Standard Webhooks), POST, back off, dead-letter.

This module owns delivery to the receiver and knows nothing about Zulip or Django, so it can be
tested against a plain local HTTP server.

* Envelopes are cut into batches of at most ``batch_size`` events and ``batch_max_bytes``
  bytes; each batch's body is exactly ``{"events": [...]}`` as compact UTF-8 JSON.
* Each batch gets one ``webhook-id`` (``msg_<uuid hex>``), kept across resends so the receiver
  can deduplicate; every attempt is re-signed with a fresh ``webhook-timestamp``.
* Batches go one at a time, in order.  2xx means done.  5xx, 408, 429, timeouts, connection
  errors (and unexpected 1xx/3xx) are retried forever with exponential back-off (1 s doubling,
  capped, a numeric ``Retry-After`` honoured).  A 413 for a batch of several events splits it
  in two.  Any other 4xx appends the batch, status and response body as one JSON line to the
  dead-letter file, and delivery moves on.
* **Resuming after an outage.**  While it backs off because the receiver is *down* (no answer,
  or 502/503/504), the sender asks the receiver's readiness probe (``GET /readyz`` next to
  ``/zulip/events``, see :class:`ReadinessProbe`) about once a second, and sends the batch as
  soon as the probe answers 200, instead of sleeping out a back-off that may have reached a
  minute.  At most one request goes out per second: a probe, or the batch when its back-off
  is over.  If a batch sent because the probe said ready fails again, the probe evidently
  does not tell what is wrong (for example the server's disk is full), and that batch goes
  back to plain back-off until it is delivered.
* A caller that keeps per-realm lanes (:mod:`.lanes`) asks for ``refusable`` delivery: then a
  429 (the receiver refusing that batch's realm for now) is not retried here but handed back
  in :attr:`SendResult.refused`, with the ``Retry-After`` it came with, so that the caller can
  set the realm's events aside and go on with other realms.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests
from standardwebhooks.webhooks import EmptyWebhookSecretError, Webhook

from . import __version__
from .wire import encode_json

logger = logging.getLogger(__name__)

USER_AGENT = f"zulip-listeners-forwarder/{__version__}"

#: Statuses worth retrying besides 5xx.
RETRYABLE_4XX = frozenset({408, 429})

#: The receiver refuses one realm's batches for now (its backlog is over the server's
#: ``max_backlog``); with ``refusable`` delivery this status is handed back to the caller.
REFUSED_STATUS = 429

#: How much of a response body is kept in logs and dead-letter records.
MAX_RESPONSE_BODY_CHARS = 64 * 1024

#: Answers that mean the receiver is down rather than refusing this batch: while backing off
#: after one of these (or after no answer at all), the sender asks the readiness probe.
UNAVAILABLE_STATUSES = frozenset({502, 503, 504})

#: How often the readiness probe is asked while the sender backs off.
PROBE_INTERVAL_SECONDS = 1.0

#: Timeout of one probe (the server's ``/readyz`` waits up to 2 s for its database).
PROBE_TIMEOUT_SECONDS = 3.0

#: Probe answers meaning there is no probe for us at that URL (not the route, or a proxy that
#: keeps it from us): probing is then paused for :data:`PROBE_PAUSE_SECONDS`.
PROBE_ABSENT_STATUSES = frozenset({401, 403, 404, 405})
PROBE_PAUSE_SECONDS = 600.0

_EMPTY_BODY_BYTES = len(b'{"events":[]}')


class DeadLetterWriteError(OSError):
    """The dead-letter file could not be written: the batch is in neither place, so the
    caller must not acknowledge it."""


def new_webhook_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


def encode_body(envelopes: Sequence[dict[str, Any]]) -> bytes:
    """The request body, exactly: ``{"events": [envelope, ...]}`` as compact JSON bytes."""
    return encode_json({"events": list(envelopes)})


#: Names the realm of every event in a batch, so that a proxy in front of several receivers
#: can route each realm to one of them. The receiver checks it against the signed body.
ROUTING_HEADER = "X-Zulip-Listeners-Realm"


def realm_of(envelope: dict[str, Any]) -> Any:
    realm = envelope.get("realm")
    return realm.get("id") if isinstance(realm, dict) else None


def chunk(
    envelopes: Iterable[dict[str, Any]], max_events: int, max_bytes: int
) -> Iterator[list[dict[str, Any]]]:
    """Split envelopes, in order, into batches within both limits, each of one realm (a batch
    ends where the realm changes, so order is kept).

    A single envelope larger than ``max_bytes`` still goes out, alone.
    """
    current: list[dict[str, Any]] = []
    size = _EMPTY_BODY_BYTES
    for envelope in envelopes:
        added = len(encode_json(envelope)) + (1 if current else 0)
        realm_changes = bool(current) and realm_of(envelope) != realm_of(current[0])
        if current and (realm_changes or len(current) >= max_events or size + added > max_bytes):
            yield current
            current, size = [], _EMPTY_BODY_BYTES
            added -= 1
        current.append(envelope)
        size += added
    if current:
        yield current


# ---------------------------------------------------------------------------
# Signing
# ---------------------------------------------------------------------------


class Signer:
    """Standard Webhooks signatures with one or more ``whsec_`` secrets (key rotation)."""

    def __init__(self, secrets: Sequence[str]) -> None:
        if not secrets:
            raise ValueError("at least one signing secret is required")
        self._webhooks = [self._webhook(number, secret) for number, secret in enumerate(secrets)]

    @staticmethod
    def _webhook(number: int, secret: str) -> Webhook:
        try:
            return Webhook(secret)
        except (ValueError, RuntimeError, EmptyWebhookSecretError) as exc:
            # bad base64 or empty; never echo the secret itself
            raise ValueError(f"signing secret #{number + 1} is not a valid whsec_ secret") from exc

    def __repr__(self) -> str:
        return f"Signer(<{len(self._webhooks)} secret(s) redacted>)"

    def signature(self, msg_id: str, timestamp: int, body: bytes) -> str:
        """The ``webhook-signature`` value: one ``v1,<base64>`` token per secret."""
        when = datetime.fromtimestamp(timestamp, tz=timezone.utc)
        text = body.decode("utf-8")
        return " ".join(webhook.sign(msg_id, when, text) for webhook in self._webhooks)

    def headers(self, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
        return {
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": self.signature(msg_id, timestamp, body),
        }


# ---------------------------------------------------------------------------
# Attempts and back-off
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Batch:
    webhook_id: str
    events: list[dict[str, Any]]
    body: bytes


@dataclass(frozen=True)
class Attempt:
    """What one POST taught us: ``done``, ``retry`` or ``reject``."""

    kind: str
    status: int | None = None
    retry_after: float | None = None
    detail: str = ""

    @property
    def done(self) -> bool:
        return self.kind == "done"

    @property
    def rejected(self) -> bool:
        return self.kind == "reject"


@dataclass
class SendResult:
    """Event counts for one or more batches, and (refusable delivery only) what was refused.

    ``refused`` holds, in order, the batches the receiver refused with 429 and that were not
    sent after that: the refused batch itself (same ``webhook-id``) and, if it was a part of a
    split batch, the parts still to go.  ``refusal`` is the 429 answer (its ``retry_after``).
    """

    delivered: int = 0
    dead_lettered: int = 0
    batches: int = 0
    refused: list[Batch] = field(default_factory=list)
    refusal: Attempt | None = None

    def __iadd__(self, other: SendResult) -> SendResult:
        self.delivered += other.delivered
        self.dead_lettered += other.dead_lettered
        self.batches += other.batches
        self.refused.extend(other.refused)
        if other.refusal is not None:
            self.refusal = other.refusal
        return self

    @property
    def refused_events(self) -> int:
        return sum(len(batch.events) for batch in self.refused)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a numeric ``Retry-After``; the HTTP-date form is ignored."""
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


@dataclass
class Backoff:
    """1 s, 2 s, 4 s … capped at ``maximum``; a server's ``Retry-After`` replaces the step."""

    maximum: float
    initial: float = 1.0
    _next: float = field(init=False)

    def __post_init__(self) -> None:
        self._next = min(self.initial, self.maximum)

    def delay(self, retry_after: float | None = None) -> float:
        chosen = self._next if retry_after is None else retry_after
        self._next = min(self._next * 2, self.maximum)
        return min(chosen, self.maximum)


def receiver_down(attempt: Attempt) -> bool:
    """No answer at all, or 502/503/504: the receiver (or its proxy) is not taking batches.
    A 429, a 500 or a 408 come from a server that is up; the probe would not help there."""
    return attempt.status is None or attempt.status in UNAVAILABLE_STATUSES


# ---------------------------------------------------------------------------
# Readiness probe
# ---------------------------------------------------------------------------


def ready_url_for(url: str) -> str:
    """The receiver's ``/readyz`` next to its events URL: ``https://h/zulip/events`` →
    ``https://h/readyz``; a path prefix in front of ``/zulip/events`` is kept
    (``https://h/listeners/zulip/events`` → ``https://h/listeners/readyz``)."""
    parts = urlsplit(url)
    suffix = "/zulip/events"
    path = parts.path.rstrip("/")
    prefix = path[: -len(suffix)] if path.endswith(suffix) else ""
    return urlunsplit((parts.scheme, parts.netloc, f"{prefix}/readyz", "", ""))


class ReadinessProbe:
    """``GET <url>`` answers 200 once the receiver takes traffic again.

    One small request, never redirected, with a short timeout; any other answer, or none,
    means not ready.  A sender and its twin in another thread share one probe, which asks at
    most once per ``interval`` (a caller within that time gets the last answer), so two
    threads backing off at once still send about one probe a second.  An answer saying there
    is no probe for us (401, 403, 404, 405) pauses probing for ``pause`` seconds, with a
    warning, and the senders back off as if there were no probe.
    """

    def __init__(
        self,
        url: str,
        *,
        interval: float = PROBE_INTERVAL_SECONDS,
        timeout: float = PROBE_TIMEOUT_SECONDS,
        pause: float = PROBE_PAUSE_SECONDS,
        session: requests.Session | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"readiness URL must start with http:// or https://, got {url!r}")
        self.url = url
        self.interval = interval
        self.timeout = timeout
        self.pause = pause
        self.session = session if session is not None else requests.Session()
        self.clock = clock
        self.probes = 0
        self._lock = threading.Lock()
        self._asked_at: float | None = None
        self._ready = False
        self._paused_until: float | None = None

    def __repr__(self) -> str:
        return f"ReadinessProbe({self.url!r})"

    @property
    def paused(self) -> bool:
        return self._paused_until is not None and self.clock() < self._paused_until

    def ready(self) -> bool:
        """Whether the receiver says it is ready (200); asks it unless asked very recently."""
        with self._lock:
            if self.paused:
                return False
            now = self.clock()
            # A little under the interval: a thread that slept one interval since its last
            # probe always asks again, another thread within that time gets this answer.
            if self._asked_at is not None and now - self._asked_at < self.interval * 0.9:
                return self._ready
            self._ready = self._ask()
            self._asked_at = self.clock()
            return self._ready

    def _ask(self) -> bool:
        self.probes += 1
        try:
            response = self.session.get(
                self.url,
                headers={"User-Agent": USER_AGENT},
                timeout=self.timeout,
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            logger.debug("readiness probe %s: %s", self.url, exc)
            return False
        with response:
            status = response.status_code
        if status in PROBE_ABSENT_STATUSES:
            self._paused_until = self.clock() + self.pause
            logger.warning(
                "readiness probe GET %s answered HTTP %d: no probe there for the forwarder;"
                " backing off without it for %.0f s (point ZULIP_LISTENERS_READY_URL at the"
                ' receiver\'s /readyz, or set it to "" to turn probing off)',
                self.url,
                status,
                self.pause,
            )
            return False
        logger.debug("readiness probe %s: HTTP %d", self.url, status)
        return status == 200


def classify(response: requests.Response) -> Attempt:
    status = response.status_code
    if 200 <= status < 300:
        return Attempt("done", status)
    detail = response.text[:MAX_RESPONSE_BODY_CHARS]
    if 400 <= status < 500 and status not in RETRYABLE_4XX:
        return Attempt("reject", status, detail=detail)
    retry_after = parse_retry_after(response.headers.get("Retry-After"))
    return Attempt("retry", status, retry_after=retry_after, detail=detail)


# ---------------------------------------------------------------------------
# The sender
# ---------------------------------------------------------------------------


class BatchSender:
    """Deliver envelopes to the receiver, one batch at a time, in order."""

    def __init__(
        self,
        url: str,
        secrets: Sequence[str],
        session: requests.Session | None = None,
        *,
        timeout: float = 15.0,
        max_backoff: float = 60.0,
        batch_size: int = 100,
        batch_max_bytes: int = 1_000_000,
        dead_letter_path: str = "/var/log/zulip/zulip_listeners_forwarder.deadletter.jsonl",
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
        id_factory: Callable[[], str] = new_webhook_id,
        probe: ReadinessProbe | None = None,
    ) -> None:
        """``probe`` is asked while backing off from a receiver that is down (see the module
        docstring); without one, the sender sleeps out each back-off."""
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"receiver URL must start with http:// or https://, got {url!r}")
        self.url = url
        self.signer = Signer(secrets)
        self.session = session if session is not None else requests.Session()
        self.timeout = timeout
        self.max_backoff = max_backoff
        self.batch_size = batch_size
        self.batch_max_bytes = batch_max_bytes
        self.dead_letter_path = dead_letter_path
        self.sleep = sleep
        self.clock = clock
        self.id_factory = id_factory
        self.probe = probe

    def send_all(self, envelopes: Iterable[dict[str, Any]]) -> SendResult:
        """Cut ``envelopes`` into batches and deliver each before starting the next."""
        result = SendResult()
        for events in chunk(envelopes, self.batch_size, self.batch_max_bytes):
            result += self.send_batch(events)
        return result

    def new_batch(self, events: list[dict[str, Any]]) -> Batch:
        return Batch(self.id_factory(), list(events), encode_body(events))

    def send_batch(self, events: list[dict[str, Any]], *, refusable: bool = False) -> SendResult:
        return self.deliver(self.new_batch(events), refusable=refusable)

    def deliver(self, batch: Batch, *, refusable: bool = False) -> SendResult:
        """Send ``batch`` until it is accepted or rejected; retries keep its ``webhook-id``.

        With ``refusable``, a 429 ends the call instead: the batch comes back in
        :attr:`SendResult.refused` (see :mod:`.lanes`).
        """
        backoff = Backoff(self.max_backoff)
        attempts = 0
        probing = self.probe is not None
        sent_on_probe = False
        while True:
            attempts += 1
            attempt = self.attempt(batch)
            if attempt.done:
                logger.debug("batch %s delivered (%d events)", batch.webhook_id, len(batch.events))
                return SendResult(delivered=len(batch.events), batches=1)
            if attempt.rejected:
                return self.reject(batch, attempt, refusable=refusable)
            if refusable and attempt.status == REFUSED_STATUS:
                return SendResult(refused=[batch], refusal=attempt)
            if sent_on_probe:
                probing = False
                logger.warning(
                    "batch %s: the receiver said it was ready (GET %s) but did not take the"
                    " batch; backing off without the probe until it does",
                    batch.webhook_id,
                    self.probe.url if self.probe is not None else "?",
                )
            delay = backoff.delay(attempt.retry_after)
            logger.warning(
                "batch %s (%d events) not delivered, attempt %d: %s; retrying in %.1f s",
                batch.webhook_id,
                len(batch.events),
                attempts,
                describe(attempt),
                delay,
            )
            sent_on_probe = self.wait(delay, probing and receiver_down(attempt))
            if sent_on_probe:
                logger.info(
                    "the receiver is ready again (GET %s answered 200); sending batch %s now",
                    self.probe.url if self.probe is not None else "?",
                    batch.webhook_id,
                )

    def wait(self, delay: float, probe: bool) -> bool:
        """Sleep ``delay`` seconds; with ``probe``, ask the readiness probe about once per its
        interval meanwhile and return True as soon as it answers 200 (False: slept it out).

        The probe is not asked when less than an interval would be left, so the probes and
        the batch itself are never closer than an interval apart.
        """
        if not probe or self.probe is None:
            self.sleep(delay)
            return False
        remaining, interval = delay, self.probe.interval
        while remaining > interval:
            self.sleep(interval)
            started = self.probe.clock()
            ready = self.probe.ready()
            remaining -= interval + (self.probe.clock() - started)
            if ready:
                return True
        if remaining > 0:
            self.sleep(remaining)
        return False

    def for_another_thread(self) -> BatchSender:
        """The same sender with a connection pool of its own (``requests.Session`` is not
        meant to be shared between threads); a session given by the caller is kept."""
        twin = copy.copy(self)
        if type(self.session) is requests.Session:
            twin.session = requests.Session()
        return twin

    def attempt(self, batch: Batch) -> Attempt:
        """One signed POST, with a fresh timestamp and signature."""
        timestamp = int(self.clock())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            **self.signer.headers(batch.webhook_id, timestamp, batch.body),
        }
        realms = {realm_of(event) for event in batch.events}
        if len(realms) == 1 and isinstance(next(iter(realms)), int):
            headers[ROUTING_HEADER] = str(next(iter(realms)))
        try:
            response = self.session.post(
                self.url,
                data=batch.body,
                headers=headers,
                timeout=self.timeout,
                allow_redirects=False,
            )
        except requests.Timeout as exc:
            return Attempt("retry", detail=f"timed out: {exc}")
        except requests.ConnectionError as exc:
            return Attempt("retry", detail=f"connection error: {exc}")
        except requests.RequestException as exc:
            return Attempt("retry", detail=f"request failed: {exc!r}")
        with response:
            return classify(response)

    def reject(self, batch: Batch, attempt: Attempt, *, refusable: bool = False) -> SendResult:
        """A 413 splits a multi-event batch; any other rejection is dead-lettered.

        With ``refusable``, once a part is refused the parts after it are not sent but
        returned as refused too, so that the caller keeps them in order.
        """
        if attempt.status == 413 and len(batch.events) > 1:
            middle = len(batch.events) // 2
            logger.warning(
                "batch %s too large for the receiver (%d events); splitting it",
                batch.webhook_id,
                len(batch.events),
            )
            result = self.send_batch(batch.events[:middle], refusable=refusable)
            if result.refused:
                result.refused.append(self.new_batch(batch.events[middle:]))
                return result
            result += self.send_batch(batch.events[middle:], refusable=refusable)
            return result
        self.dead_letter(batch, attempt)
        return SendResult(dead_lettered=len(batch.events), batches=1)

    def dead_letter(self, batch: Batch, attempt: Attempt) -> None:
        """Append one JSON line (batch + status + response body) and log an error.

        Raises :class:`DeadLetterWriteError` when the line cannot be written, so that the
        batch is not acknowledged (the consumer re-queues it instead).
        """
        self.write_dead_letter(
            batch.webhook_id,
            batch.events,
            status=attempt.status,
            detail=attempt.detail,
            reason=f"receiver rejected it with HTTP {attempt.status}: {attempt.detail[:500]}",
        )

    def write_dead_letter(
        self,
        webhook_id: str,
        events: list[dict[str, Any]],
        *,
        status: int | None,
        detail: str,
        reason: str,
    ) -> None:
        record = {
            "dead_lettered_at": datetime.now(timezone.utc).isoformat(),
            "webhook_id": webhook_id,
            "url": self.url,
            "status": status,
            "response_body": detail,
            "events": events,
        }
        line = encode_json(record).decode("utf-8") + "\n"
        if not append_line(self.dead_letter_path, line):
            raise DeadLetterWriteError(
                f"cannot write batch {webhook_id} ({len(events)} events) to the dead-letter"
                f" file {self.dead_letter_path}"
            )
        logger.error(
            "batch %s (%d events) dead-lettered to %s: %s",
            webhook_id,
            len(events),
            self.dead_letter_path,
            reason,
        )


def describe(attempt: Attempt) -> str:
    if attempt.status is None:
        return attempt.detail
    return f"HTTP {attempt.status} {attempt.detail[:200]}".rstrip()


#: The dead-letter file holds event content (messages, names): readable by its owner only.
DEAD_LETTER_MODE = 0o600


def append_line(path: str, line: str) -> bool:
    """Append ``line`` durably to a file only its owner can read (created 0600, and tightened
    to 0600 if it already existed with wider permissions); return False (after logging) if
    the file cannot be written."""
    try:
        directory = os.path.dirname(path)
        if directory:
            os.makedirs(directory, mode=0o700, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, DEAD_LETTER_MODE)
        with open(descriptor, "a", encoding="utf-8") as handle:
            if os.fstat(descriptor).st_mode & 0o077:
                os.fchmod(descriptor, DEAD_LETTER_MODE)
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError:
        logger.exception("cannot append to dead-letter file %s", path)
        return False
    return True


# ---------------------------------------------------------------------------
# Dead-letter replay
# ---------------------------------------------------------------------------


def read_dead_letters(path: str) -> Iterator[list[dict[str, Any]]]:
    """Yield the ``events`` of each dead-letter line; blank lines are skipped."""
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as exc:
                raise ValueError(f"{path}:{number}: not a JSON line: {exc}") from exc
            events = record.get("events") if isinstance(record, dict) else None
            if not isinstance(events, list):
                raise ValueError(f'{path}:{number}: no "events" list')
            yield events


def resend_dead_letters(path: str, sender: BatchSender) -> SendResult:
    """Send every dead-lettered batch again, in file order, with new ``webhook-id``s."""
    result = SendResult()
    for events in read_dead_letters(path):
        result += sender.send_all(events)
    return result
