"""Per-realm lanes: a realm the receiver refuses for now delays only itself.

This module owns what the consumer does with a batch whose realm the receiver refuses with
HTTP 429 (``over_capacity``: that realm's backlog on the server is over its
``forwarder.max_backlog``), and the on-disk spool that makes it safe:

* **Set aside, durably.**  The refused batch, and every later batch of the same realm, is
  written to that realm's spool directory, ``<spool>/realm-<id>/``, one file per batch,
  ``<seq>-<part>-<events>.json``, holding one JSON line ``{"spooled_at", "webhook_id",
  "realm", "events"}``.  Each file is written to a temporary name, fsynced, renamed, and the
  directory fsynced, before :meth:`Lanes.send_all` returns, so before ``consume_batch``
  returns and RabbitMQ forgets the events.  Batches of the other realms go out at once.
* **Sent again, in order, by one drainer thread**, once the realm's ``Retry-After`` has passed
  (or its back-off, 1 s doubling up to ``max_backoff``, when the 429 has none): oldest first,
  each with the ``webhook-id`` it was first sent with, so the receiver drops a batch it
  already has.  A file is deleted only once its batch is accepted or dead-lettered.  While a
  realm has batches set aside, its new batches go behind them and are not even tried; once
  its spool is empty, the realm is sent directly again.
* **Restarts.**  The spool is read back when the consumer starts, and each realm found in it
  is tried at once.  A temporary file left by a crash belongs to a batch RabbitMQ never saw
  acknowledged (it is delivered again), so it is deleted.
* **Bounded per realm.**  A realm holds at most ``max_events`` events set aside
  (``ZULIP_LISTENERS_MAX_SPOOLED_PER_REALM``); beyond that its newest events are *shed*:
  counted per realm (kept on disk in ``realm-<id>/shed.json``), logged (a WARNING naming the
  realm, at most once a minute per realm) and reported to the receiver as
  ``"shed_before": N`` on the first envelope of that realm's next batch that is sent or set
  aside.  Other realms are never shed because of it.
* Everything else is not one realm's problem: 5xx, 408, timeouts and connection errors are
  retried in place with back-off by :class:`.delivery.BatchSender` (holding back whichever
  thread met them), other 4xx are dead-lettered as before.

Pure Python: no Zulip or Django imports.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from .delivery import (
    Backoff,
    Batch,
    BatchSender,
    DeadLetterWriteError,
    SendResult,
    chunk,
    describe,
    encode_body,
    realm_of,
)
from .wire import encode_json

logger = logging.getLogger(__name__)

#: A lane's key: the realm id, or ``None`` for envelopes without one.
RealmKey = int | None

#: At most one "shed" warning per realm per this many seconds.
LOG_INTERVAL_SECONDS = 60.0

#: A refused realm is never tried again sooner than this, whatever its ``Retry-After`` says.
MIN_RETRY_SECONDS = 1.0

#: The drainer's pause after an error it did not expect, before it looks at the spool again.
ERROR_PAUSE_SECONDS = 10.0

#: Spool files hold event content (messages, names): readable by their owner only.
SPOOL_FILE_MODE = 0o600
SPOOL_DIR_MODE = 0o700

SHED_FILE = "shed.json"
_ENTRY_NAME = re.compile(r"^(\d+)-(\d+)-(\d+)\.json$")
_REALM_DIR = re.compile(r"^realm-(\d+|none)$")


class SpoolError(OSError):
    """The spool cannot be written: a refused batch is not safely set aside, so the caller
    must not acknowledge it."""


class DrainerStopped(Exception):
    """Raised out of the drainer's back-off sleep when the consumer is stopping."""


def lane_key(events: list[dict[str, Any]]) -> RealmKey:
    realm = realm_of(events[0]) if events else None
    return realm if isinstance(realm, int) and not isinstance(realm, bool) else None


def realm_label(realm: RealmKey) -> str:
    return "realm (none)" if realm is None else f"realm {realm}"


def with_shed_report(events: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """``events`` with ``count`` added to the first envelope's ``shed_before`` (a copy)."""
    first = dict(events[0])
    previous = first.get("shed_before")
    first["shed_before"] = (previous if isinstance(previous, int) else 0) + count
    return [first, *events[1:]]


# ---------------------------------------------------------------------------
# The spool on disk
# ---------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Entry:
    """One set-aside batch: its place in the realm's order and its event count."""

    seq: int
    part: int
    events: int = field(compare=False)

    @property
    def filename(self) -> str:
        return f"{self.seq:012d}-{self.part:04d}-{self.events}.json"


def _fsync_directory(path: str) -> None:
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_durably(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, rename, directory fsync)."""
    directory = os.path.dirname(path)
    temporary = os.path.join(directory, f".{os.path.basename(path)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, SPOOL_FILE_MODE)
    try:
        with open(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    _fsync_directory(directory)


class Spool:
    """The files: one directory per realm, one file per set-aside batch."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        try:
            os.makedirs(directory, mode=SPOOL_DIR_MODE, exist_ok=True)
        except OSError as exc:
            raise SpoolError(f"cannot create the spool directory {directory}: {exc}") from exc

    def realm_directory(self, realm: RealmKey) -> str:
        return os.path.join(self.directory, "realm-none" if realm is None else f"realm-{realm}")

    def load(self, clean: bool = False) -> dict[RealmKey, tuple[list[Entry], dict[str, int]]]:
        """Every realm's entries, oldest first, and its shed counters; with ``clean`` (only
        the consumer, as it starts) temporary files left by a crash are deleted."""
        found: dict[RealmKey, tuple[list[Entry], dict[str, int]]] = {}
        for name in sorted(os.listdir(self.directory)):
            match = _REALM_DIR.match(name)
            path = os.path.join(self.directory, name)
            if match is None or not os.path.isdir(path):
                continue
            realm: RealmKey = None if match.group(1) == "none" else int(match.group(1))
            entries: list[Entry] = []
            for file_name in os.listdir(path):
                if file_name.startswith(".") and file_name.endswith(".tmp"):
                    if clean:
                        os.unlink(os.path.join(path, file_name))  # never acknowledged
                    continue
                entry = _ENTRY_NAME.match(file_name)
                if entry is not None:
                    seq, part, count = (int(entry.group(n)) for n in (1, 2, 3))
                    entries.append(Entry(seq, part, count))
            found[realm] = (sorted(entries), self.read_shed(realm))
        return found

    def write(self, realm: RealmKey, entry: Entry, batch: Batch) -> None:
        record = {
            "spooled_at": datetime.now(timezone.utc).isoformat(),
            "webhook_id": batch.webhook_id,
            "realm": realm,
            "events": batch.events,
        }
        directory = self.realm_directory(realm)
        try:
            if not os.path.isdir(directory):
                os.makedirs(directory, mode=SPOOL_DIR_MODE, exist_ok=True)
                _fsync_directory(self.directory)
            write_durably(os.path.join(directory, entry.filename), encode_json(record) + b"\n")
        except OSError as exc:
            raise SpoolError(
                f"cannot set aside batch {batch.webhook_id} ({len(batch.events)} events) of"
                f" {realm_label(realm)} in {directory}: {exc}"
            ) from exc

    def path(self, realm: RealmKey, entry: Entry) -> str:
        return os.path.join(self.realm_directory(realm), entry.filename)

    def read(self, realm: RealmKey, entry: Entry) -> Batch:
        """The batch, with its original ``webhook-id``; ``ValueError`` if the file is not one
        of ours, ``OSError`` if it cannot be read."""
        with open(self.path(realm, entry), encoding="utf-8") as handle:
            record = json.loads(handle.read())
        events = record.get("events") if isinstance(record, dict) else None
        webhook_id = record.get("webhook_id") if isinstance(record, dict) else None
        if not isinstance(events, list) or not events or not isinstance(webhook_id, str):
            raise ValueError("not a spooled batch")
        return Batch(webhook_id, events, encode_body(events))

    def remove(self, realm: RealmKey, entry: Entry) -> None:
        # Not fsynced: a removal lost in a crash only makes the batch go again, with the
        # webhook-id the receiver already knows.
        os.unlink(self.path(realm, entry))

    def set_apart(self, realm: RealmKey, entry: Entry) -> str:
        """Rename an unreadable file out of the queue (kept for the operator); its new path."""
        source = self.path(realm, entry)
        target = f"{source}.unreadable"
        os.replace(source, target)
        return target

    def read_shed(self, realm: RealmKey) -> dict[str, int]:
        path = os.path.join(self.realm_directory(realm), SHED_FILE)
        try:
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            logger.exception("cannot read %s; the shed counts of this realm start again", path)
            return {}
        if not isinstance(data, dict):
            return {}
        return {key: value for key, value in data.items() if isinstance(value, int)}

    def write_shed(self, realm: RealmKey, counts: dict[str, int]) -> None:
        directory = self.realm_directory(realm)
        os.makedirs(directory, mode=SPOOL_DIR_MODE, exist_ok=True)
        write_durably(os.path.join(directory, SHED_FILE), encode_json(counts) + b"\n")


# ---------------------------------------------------------------------------
# Lanes
# ---------------------------------------------------------------------------


@dataclass
class Lane:
    """One realm's state: what is set aside, when to try again, what was shed."""

    realm: RealmKey
    backoff: Backoff
    entries: deque[Entry] = field(default_factory=deque)
    events: int = 0
    next_seq: int = 0
    due_at: float = 0.0
    refused_at: float | None = None
    drained: int = 0
    shed_total: int = 0
    shed_unreported: int = 0
    shed_unlogged: int = 0
    shed_logged_at: float | None = None


@dataclass(frozen=True)
class LaneStatus:
    """What :meth:`Lanes.status` reports for one realm."""

    realm: RealmKey
    batches: int
    events: int
    retry_in: float | None
    shed_total: int
    shed_unreported: int


class Lanes:
    """Deliver envelopes with one lane per realm (see the module docstring).

    :meth:`send_all` runs in the consumer's thread; :meth:`drain_due` runs in the drainer
    thread (:meth:`start`), or is called directly by tests.  ``clock`` is monotonic seconds.
    """

    def __init__(
        self,
        sender: BatchSender,
        spool_dir: str,
        max_events: int,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_events < 1:
            raise ValueError("max_events must be at least 1")
        self.sender = sender
        self.drain_sender = self._drainer_twin(sender)
        self.spool = Spool(spool_dir)
        self.max_events = max_events
        self.clock = clock
        self._lock = threading.Lock()
        self._drain_lock = threading.Lock()
        self._wake = threading.Condition()
        self._poked = False
        self._stopping = threading.Event()
        self._drainer: threading.Thread | None = None
        self._lanes: dict[RealmKey, Lane] = {}
        self._load()

    # -- set-up -------------------------------------------------------------------------

    def _drainer_twin(self, sender: BatchSender) -> BatchSender:
        twin = sender.for_another_thread()
        base_sleep = sender.sleep

        def sleep(seconds: float) -> None:
            if not self._in_drainer():
                base_sleep(seconds)
                return
            if base_sleep is time.sleep:
                self._stopping.wait(seconds)
            else:
                base_sleep(seconds)
            if self._stopping.is_set():
                raise DrainerStopped()

        twin.sleep = sleep
        return twin

    def _new_lane(self, realm: RealmKey) -> Lane:
        return Lane(realm, Backoff(self.sender.max_backoff))

    def _load(self) -> None:
        batches = events = 0
        for realm, (entries, shed) in self.spool.load(clean=True).items():
            lane = self._new_lane(realm)
            lane.entries.extend(entries)
            lane.events = sum(entry.events for entry in entries)
            lane.next_seq = max((entry.seq for entry in entries), default=-1) + 1
            lane.shed_total = shed.get("shed_total", 0)
            lane.shed_unreported = shed.get("shed_unreported", 0)
            self._lanes[realm] = lane
            batches, events = batches + len(entries), events + lane.events
        if batches:
            logger.warning(
                "found %d set-aside batch(es) (%d events) of %d realm(s) in %s;"
                " sending them again, oldest first",
                batches,
                events,
                sum(1 for lane in self._lanes.values() if lane.entries),
                self.spool.directory,
            )

    def _lane(self, realm: RealmKey) -> Lane:
        lane = self._lanes.get(realm)
        if lane is None:
            lane = self._lanes[realm] = self._new_lane(realm)
        return lane

    # -- the consumer's side ------------------------------------------------------------

    def send_all(self, envelopes: Iterable[dict[str, Any]]) -> SendResult:
        """Deliver ``envelopes``, one realm per batch, in order within each realm.

        Returns once every event is delivered, dead-lettered, set aside (durably) or shed.
        Raises :class:`SpoolError` when a batch cannot be set aside (do not acknowledge).
        """
        result = SendResult()
        for events in chunk(envelopes, self.sender.batch_size, self.sender.batch_max_bytes):
            with self._lock:
                lane = self._lane(lane_key(events))
                if lane.entries:
                    self._behind(lane, events)  # never overtake what is set aside
                    continue
                report = lane.shed_unreported
            if report:
                events = with_shed_report(events, report)
            sent = self.sender.send_batch(events, refusable=True)
            with self._lock:
                if sent.refused:
                    self._set_aside(lane, sent.refused)
                    self._refused(lane, sent)
                if report:
                    self._reported(lane, report)
            result += SendResult(sent.delivered, sent.dead_lettered, sent.batches)
        return result

    def write_dead_letter(
        self, webhook_id: str, events: list[dict[str, Any]], **kwargs: Any
    ) -> None:
        self.sender.write_dead_letter(webhook_id, events, **kwargs)

    def _behind(self, lane: Lane, events: list[dict[str, Any]]) -> None:
        """Set a new batch aside behind the realm's earlier ones (caller holds the lock)."""
        room = max(self.max_events - lane.events, 0)
        kept, dropped = events[:room], len(events) - min(room, len(events))
        if kept:
            report = lane.shed_unreported
            if report:
                kept = with_shed_report(kept, report)
            self._write(lane, self.sender.new_batch(kept))
            if report:
                self._reported(lane, report)
        if dropped:
            self._shed(lane, dropped)

    def _set_aside(self, lane: Lane, batches: list[Batch]) -> None:
        """Set refused batches aside, keeping their ``webhook-id`` (caller holds the lock)."""
        for batch in batches:
            room = max(self.max_events - lane.events, 0)
            if room >= len(batch.events):
                self._write(lane, batch)
                continue
            if room:
                self._write(lane, self.sender.new_batch(batch.events[:room]))
            self._shed(lane, len(batch.events) - room)

    def _write(self, lane: Lane, batch: Batch) -> None:
        entry = Entry(lane.next_seq, 0, len(batch.events))
        self.spool.write(lane.realm, entry, batch)
        lane.entries.append(entry)
        lane.events += entry.events
        lane.next_seq += 1

    def _refused(self, lane: Lane, result: SendResult) -> None:
        """Schedule the realm's next try after a 429 (caller holds the lock)."""
        refusal = result.refusal
        retry_after = refusal.retry_after if refusal is not None else None
        delay = max(lane.backoff.delay(retry_after), MIN_RETRY_SECONDS)
        now = self.clock()
        lane.due_at = now + delay
        if lane.refused_at is None:
            lane.refused_at, lane.drained = now, 0
        logger.warning(
            "%s refused by the receiver (%s): its events are set aside in %s (%d batch(es),"
            " %d events) and tried again in %.0f s; other realms go on",
            realm_label(lane.realm),
            describe(refusal) if refusal is not None else "HTTP 429",
            self.spool.realm_directory(lane.realm),
            len(lane.entries),
            lane.events,
            delay,
        )
        self.poke()

    def _shed(self, lane: Lane, count: int) -> None:
        """Count, persist and (at most once a minute per realm) log shed events."""
        lane.shed_total += count
        lane.shed_unreported += count
        lane.shed_unlogged += count
        self._save_shed(lane)
        now = self.clock()
        if lane.shed_logged_at is not None and now - lane.shed_logged_at < LOG_INTERVAL_SECONDS:
            return
        logger.warning(
            "%s: %d events set aside (ZULIP_LISTENERS_MAX_SPOOLED_PER_REALM=%d); shed %d"
            " event(s) of this realm since the last warning, %d in total. Other realms are"
            " not affected. Is the receiver behind for this realm?",
            realm_label(lane.realm),
            lane.events,
            self.max_events,
            lane.shed_unlogged,
            lane.shed_total,
        )
        lane.shed_logged_at, lane.shed_unlogged = now, 0

    def _reported(self, lane: Lane, count: int) -> None:
        lane.shed_unreported = max(lane.shed_unreported - count, 0)
        self._save_shed(lane)

    def _save_shed(self, lane: Lane) -> None:
        counts = {"shed_total": lane.shed_total, "shed_unreported": lane.shed_unreported}
        try:
            self.spool.write_shed(lane.realm, counts)
        except OSError:
            logger.exception(
                "cannot save the shed count of %s (%s)", realm_label(lane.realm), counts
            )

    # -- the drainer's side -------------------------------------------------------------

    def drain_due(self) -> float | None:
        """Send the set-aside batches of every realm whose time has come, one batch per realm
        in turn, until none is due.

        Returns the seconds until the next realm is due, or ``None`` when nothing is set aside.
        """
        with self._drain_lock:
            while not self._drainer_stopping():
                due = self._due_lanes()
                if not due:
                    break
                for lane in due:
                    if self._drainer_stopping():
                        break
                    self._drain_one(lane)
            with self._lock:
                waiting = [lane.due_at for lane in self._lanes.values() if lane.entries]
            return max(min(waiting) - self.clock(), 0.0) if waiting else None

    def _due_lanes(self) -> list[Lane]:
        now = self.clock()
        with self._lock:
            due = [lane for lane in self._lanes.values() if lane.entries and lane.due_at <= now]
        return sorted(due, key=lambda lane: lane.due_at)

    def _drain_one(self, lane: Lane) -> None:
        """Send the lane's oldest batch: remove it once accepted (or dead-lettered), or
        schedule the realm's next try if it is refused again."""
        with self._lock:
            if not lane.entries:
                return
            entry = lane.entries[0]
        try:
            batch = self.spool.read(lane.realm, entry)
        except ValueError:
            self._unreadable(lane, entry)
            return
        except OSError:
            logger.exception("cannot read %s", self.spool.path(lane.realm, entry))
            self._postpone(lane)
            return
        try:
            result = self.drain_sender.deliver(batch, refusable=True)
        except DeadLetterWriteError:
            logger.exception(
                "%s: a set-aside batch was rejected and cannot be dead-lettered; it stays in"
                " the spool",
                realm_label(lane.realm),
            )
            self._postpone(lane)
            return
        with self._lock:
            if result.refused:
                self._refused_again(lane, entry, batch, result)
                return
            self.spool.remove(lane.realm, entry)
            lane.entries.popleft()
            lane.events -= entry.events
            lane.drained += entry.events
            lane.backoff = Backoff(self.sender.max_backoff)
            if not lane.entries and lane.refused_at is not None:
                logger.warning(
                    "%s accepted again: %d set-aside event(s) sent, %.0f s after it was"
                    " refused; its events go straight to the receiver again",
                    realm_label(lane.realm),
                    lane.drained,
                    self.clock() - lane.refused_at,
                )
                lane.refused_at = None

    def _refused_again(self, lane: Lane, entry: Entry, batch: Batch, result: SendResult) -> None:
        """The head was refused again (caller holds the lock).  If it had been split (413),
        the refused parts replace it, in order, before the next batch."""
        if not (len(result.refused) == 1 and result.refused[0] is batch):
            parts = [
                Entry(entry.seq, entry.part + 1 + number, len(part.events))
                for number, part in enumerate(result.refused)
            ]
            for part_entry, part in zip(parts, result.refused, strict=True):
                self.spool.write(lane.realm, part_entry, part)
            self.spool.remove(lane.realm, entry)
            lane.entries.popleft()
            lane.entries.extendleft(reversed(parts))
            lane.events += sum(part.events for part in parts) - entry.events
        self._refused(lane, result)

    def _postpone(self, lane: Lane) -> None:
        with self._lock:
            delay = max(lane.backoff.delay(), MIN_RETRY_SECONDS)
            lane.due_at = self.clock() + delay

    def _unreadable(self, lane: Lane, entry: Entry) -> None:
        try:
            kept = self.spool.set_apart(lane.realm, entry)
        except OSError:
            logger.exception("cannot rename %s", self.spool.path(lane.realm, entry))
            self._postpone(lane)
            return
        logger.error(
            "%s: %s is not a set-aside batch (unreadable JSON or no events); renamed to %s"
            " and skipped",
            realm_label(lane.realm),
            entry.filename,
            kept,
        )
        with self._lock:
            lane.entries.popleft()
            lane.events -= entry.events

    # -- the drainer thread -------------------------------------------------------------

    def start(self) -> None:
        """Start the drainer thread (idempotent)."""
        if self._drainer is not None and self._drainer.is_alive():
            return
        self._stopping.clear()
        self._drainer = threading.Thread(
            target=self._run, name="zulip-listeners-forwarder-lanes", daemon=True
        )
        self._drainer.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the drainer; what is set aside stays in the spool for the next start."""
        self._stopping.set()
        self.poke()
        drainer = self._drainer
        if drainer is not None and drainer is not threading.current_thread():
            drainer.join(timeout)

    def poke(self) -> None:
        """Wake the drainer to look at the schedule again."""
        with self._wake:
            self._poked = True
            self._wake.notify_all()

    def _in_drainer(self) -> bool:
        return threading.current_thread() is self._drainer

    def _drainer_stopping(self) -> bool:
        return self._in_drainer() and self._stopping.is_set()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                wait = self.drain_due()
            except DrainerStopped:
                break
            except Exception:
                logger.exception(
                    "the set-aside drainer failed; looking again in %.0f s", ERROR_PAUSE_SECONDS
                )
                wait = ERROR_PAUSE_SECONDS
            with self._wake:
                if not self._poked and not self._stopping.is_set():
                    self._wake.wait(timeout=wait)
                self._poked = False

    # -- counters -----------------------------------------------------------------------

    def status(self) -> list[LaneStatus]:
        """Per realm: what is set aside, when it is tried next, what was shed."""
        now = self.clock()
        with self._lock:
            return [
                LaneStatus(
                    realm=lane.realm,
                    batches=len(lane.entries),
                    events=lane.events,
                    retry_in=max(lane.due_at - now, 0.0) if lane.entries else None,
                    shed_total=lane.shed_total,
                    shed_unreported=lane.shed_unreported,
                )
                for lane in sorted(self._lanes.values(), key=lambda lane: str(lane.realm))
            ]

    def shed_counts(self) -> dict[RealmKey, int]:
        with self._lock:
            return {
                realm: lane.shed_total for realm, lane in self._lanes.items() if lane.shed_total
            }


def spool_status(directory: str) -> list[LaneStatus]:
    """What is set aside and what was shed, per realm, as the spool on disk says (the
    command's ``--spool-status``; safe while the consumer runs, it only reads)."""
    if not os.path.isdir(directory):
        return []
    found = Spool(directory).load()
    return [
        LaneStatus(
            realm=realm,
            batches=len(entries),
            events=sum(entry.events for entry in entries),
            retry_in=None,
            shed_total=shed.get("shed_total", 0),
            shed_unreported=shed.get("shed_unreported", 0),
        )
        for realm, (entries, shed) in sorted(found.items(), key=lambda item: str(item[0]))
    ]
