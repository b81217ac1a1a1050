"""End to end: internal Zulip events → the real hook → RabbitMQ → the real consumer → HTTP →
the real ``zulip-listeners`` server binary → its database.

The binary comes from ``$ZULIP_LISTENERS_BIN`` or ``../target/debug/zulip-listeners`` (relative
to ``forwarder/``); when it is missing these tests fail, because CI builds it first.  The SQLite
run always happens; a PostgreSQL run happens when ``$ZULIP_LISTENERS_TEST_PG_URL`` names a
server where a fresh database may be created (and is dropped afterwards).
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import make_secret, stop_process
from cost_samples import (
    LARGE_RECIPIENTS,
    ORDINARY_RECIPIENTS,
    big_message_event,
    big_message_users,
)
from django.test import override_settings
from local_receiver import LocalReceiver, Recorded, Reply
from samples import (
    INTERNAL_REALM_ID,
    WELCOME_BOT_ID,
    ZULIP_HUMANS,
    ZULIP_REALM_ID,
    message_event,
    message_users,
    reaction_event,
    system_bot_reaction_event,
    update_message_event,
    update_message_users,
)
from zerver.lib import queue as stub_queue
from zerver.models import users as stub_users
from zerver.tornado import django_api
from zproject import config as stub_config
from zulip_shapes import PRESENCE_USER, TYPING_USER, VERSIONS, samples_for

from zulip_listeners_forwarder.delivery import ReadinessProbe, SendResult
from zulip_listeners_forwarder.lanes import Lanes
from zulip_listeners_forwarder.settings import QUEUE_NAME, SECRET_NAME, load_secrets, load_settings
from zulip_listeners_forwarder.worker import ForwarderWorker, build_sender

pytestmark = pytest.mark.e2e

FORWARDER_DIR = Path(__file__).resolve().parent.parent
DEFAULT_BIN = FORWARDER_DIR.parent / "target" / "debug" / "zulip-listeners"
PG_URL_ENV = "ZULIP_LISTENERS_TEST_PG_URL"
STARTUP_SECONDS = 30.0
POLL_SECONDS = 30.0
MAX_RETRY_SECONDS = 30.0
MESSAGE_ID = 9001


def server_binary() -> Path:
    configured = os.environ.get("ZULIP_LISTENERS_BIN")
    path = Path(configured).resolve() if configured else DEFAULT_BIN
    if not path.is_file() or not os.access(path, os.X_OK):
        pytest.fail(
            f"zulip-listeners server binary not found at {path}: run `cargo build` in the "
            "repository root first, or point ZULIP_LISTENERS_BIN at the binary",
            pytrace=False,
        )
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# ---------------------------------------------------------------------------
# Databases
# ---------------------------------------------------------------------------


@dataclass
class Database:
    url: str
    query: Callable[[str], list[tuple[Any, ...]]]


def sqlite_database(tmp_path: Path) -> Iterator[Database]:
    path = tmp_path / "listeners.db"

    def query(sql: str) -> list[tuple[Any, ...]]:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as connection:
            return list(connection.execute(sql).fetchall())

    yield Database(f"sqlite://{path}", query)


def postgres_database() -> Iterator[Database]:
    admin_url = os.environ.get(PG_URL_ENV)
    if not admin_url:
        pytest.skip(f"set {PG_URL_ENV} (e.g. postgres://postgres@127.0.0.1:5432/postgres)")
    import psycopg

    name = f"zl_forwarder_e2e_{uuid.uuid4().hex[:12]}"
    url = urllib.parse.urlparse(admin_url)._replace(path=f"/{name}").geturl()
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')

    def query(sql: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(url, autocommit=True) as connection:
            return list(connection.execute(sql).fetchall())

    try:
        yield Database(url, query)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "sqlite":
        yield from sqlite_database(tmp_path)
    else:
        yield from postgres_database()


# ---------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------


@dataclass
class Server:
    base_url: str
    secret: str
    log_path: Path

    @property
    def events_url(self) -> str:
        return f"{self.base_url}/zulip/events"

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return "(no server log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def write_config(path: Path, port: int, database_url: str, secret: str) -> None:
    path.write_text(
        "[server]\n"
        f'bind = "127.0.0.1:{port}"\n'
        "[metrics]\n"
        "enabled = false\n"
        "[database]\n"
        f"url = {json.dumps(database_url)}\n"
        # A nearly full disk on a test machine must not refuse the batches (the default
        # floor is 256 MiB; the server's own tests check the floor itself).
        'min_free_space = "16MiB"\n'
        'max_wal_size = "16MiB"\n'
        "[forwarder]\n"
        f"secrets = [{json.dumps(secret)}]\n"
    )


def healthy(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/healthz", timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def wait_until_healthy(process: subprocess.Popen[bytes], server: Server) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(
                f"zulip-listeners exited with status {process.returncode} during start-up:\n"
                f"{server.log_tail()}",
                pytrace=False,
            )
        if healthy(server.base_url):
            return
        time.sleep(0.1)
    pytest.fail(f"zulip-listeners not healthy after {STARTUP_SECONDS} s:\n{server.log_tail()}")


@pytest.fixture
def server(database: Database, tmp_path: Path) -> Iterator[Server]:
    binary = server_binary()
    port, secret = free_port(), make_secret()
    config = tmp_path / "listeners.toml"
    write_config(config, port, database.url, secret)
    log_path = tmp_path / "server.log"
    handle = Server(f"http://127.0.0.1:{port}", secret, log_path)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [str(binary), "serve", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    try:
        wait_until_healthy(process, handle)
        yield handle
    finally:
        stop_process(process)


# ---------------------------------------------------------------------------
# The forwarder side
# ---------------------------------------------------------------------------


class BoundedSleep:
    """Real sleeping, but a test that keeps being told to retry fails instead of hanging."""

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.total = 0.0

    def __call__(self, seconds: float) -> None:
        self.total += seconds
        if self.total > self.limit:
            raise AssertionError(f"receiver kept asking for retries for {self.total:.0f} s")
        time.sleep(seconds)


@pytest.fixture
def forwarder(server: Server, tmp_path: Path) -> Iterator[Path]:
    """Configure the forwarder for this server; yields the dead-letter file path."""
    dead_letters = tmp_path / "dead.jsonl"
    stub_config.SECRETS[SECRET_NAME] = server.secret
    with override_settings(
        ZULIP_LISTENERS_URL=server.events_url,
        ZULIP_LISTENERS_DEAD_LETTER_FILE=str(dead_letters),
        ZULIP_LISTENERS_TIMEOUT_SECONDS=10,
    ):
        yield dead_letters


def run_worker() -> None:
    """Drain the stub queue through the real consumer, as the management command would."""
    sender = build_sender(load_settings(), load_secrets())
    sender.sleep = BoundedSleep(MAX_RETRY_SECONDS)
    worker = ForwarderWorker(sender=sender)
    worker.setup()
    worker.start()
    assert worker.consume_errors == [], f"consumer failed: {worker.consume_errors!r}"


def queued_event_ids() -> list[str]:
    return [envelope["event_id"] for envelope in stub_queue.queued(QUEUE_NAME)]


def dead_letter_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def poll(describe: str, check: Callable[[], bool], server: Server, dead_letters: Path) -> None:
    deadline = time.monotonic() + POLL_SECONDS
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as exc:  # tables may not exist yet; keep polling
            last_error = exc
        time.sleep(0.2)
    pytest.fail(
        f"timed out waiting for {describe} (last error: {last_error!r});\n"
        f"dead letters: {dead_letter_lines(dead_letters)!r}\nserver log:\n{server.log_tail()}",
        pytrace=False,
    )


def stored_event_id(key: bytes | memoryview) -> str:
    """The event id the server stored as `key` (its src/db/event_key.rs): a canonical UUID as
    the byte 0x00 and its 16 bytes, any other id as the byte 0x01 and its UTF-8 text."""
    key = bytes(key)
    if key[:1] == b"\x00" and len(key) == 17:
        return str(uuid.UUID(bytes=key[1:]))
    if key[:1] == b"\x01":
        return key[1:].decode("utf-8")
    raise AssertionError(f"not a stored event id: {key!r}")


def inbox_status(database: Database) -> dict[str, str]:
    return {
        stored_event_id(event_id): str(status)
        for event_id, status in database.query("SELECT event_id, status FROM inbox")
    }


def message_ids(database: Database) -> set[int]:
    return {int(row[0]) for row in database.query("SELECT message_id FROM messages")}


# ---------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------


def test_events_reach_the_server_and_are_handled(
    realm: Any, server: Server, database: Database, forwarder: Path
) -> None:
    django_api.send_event_rollback_unsafe(
        realm, message_event(MESSAGE_ID, "hello from the forwarder"), message_users()
    )
    django_api.send_event_rollback_unsafe(
        realm, update_message_event(MESSAGE_ID, "edited by the forwarder"), update_message_users()
    )
    django_api.send_event_rollback_unsafe(realm, reaction_event(MESSAGE_ID), [10, 11])
    event_ids = queued_event_ids()
    assert len(event_ids) == 3

    run_worker()

    rejected = [(r["status"], r["response_body"]) for r in dead_letter_lines(forwarder)]
    assert rejected == [], f"the server rejected batches: {rejected}"
    poll(
        "inbox rows to be 'done'",
        lambda: all(inbox_status(database).get(eid) == "done" for eid in event_ids),
        server,
        forwarder,
    )
    poll("the messages row", lambda: MESSAGE_ID in message_ids(database), server, forwarder)


def test_full_size_messages_and_a_huge_audience_are_taken_by_the_server(
    realm: Any, server: Server, database: Database, forwarder: Path
) -> None:
    """The realistic events of the cost benchmark, encoded by orjson on the way in (Zulip's
    queue client) and out (the consumer's batches): the server takes them, and the message
    to 10,000 recipients arrives with its audience as a count."""
    sent = {}
    for message_id, recipients in (
        (MESSAGE_ID + 1, ORDINARY_RECIPIENTS),
        (MESSAGE_ID + 2, LARGE_RECIPIENTS),
    ):
        event = big_message_event(recipients)
        event["message"] = event["message_dict"]["id"] = message_id
        django_api.send_event_rollback_unsafe(realm, event, big_message_users(recipients))
        sent[message_id] = recipients
    queued = stub_queue.queued(QUEUE_NAME)
    assert [e["audience"].get("user_ids") is None for e in queued] == [False, True]
    assert queued[1]["audience"] == {"count": LARGE_RECIPIENTS + 1}
    event_ids = [e["event_id"] for e in queued]

    run_worker()

    rejected = [(r["status"], r["response_body"]) for r in dead_letter_lines(forwarder)]
    assert rejected == [], f"the server rejected batches: {rejected}"
    poll(
        "inbox rows to be 'done'",
        lambda: all(inbox_status(database).get(eid) == "done" for eid in event_ids),
        server,
        forwarder,
    )
    poll("the messages rows", lambda: set(sent) <= message_ids(database), server, forwarder)


def test_rejected_batch_is_dead_lettered_and_delivery_continues(
    realm: Any, server: Server, database: Database, forwarder: Path
) -> None:
    django_api.send_event_rollback_unsafe(realm, reaction_event(MESSAGE_ID), [10])
    [broken] = stub_queue.queued(QUEUE_NAME)
    stub_queue.reset()
    del broken["event_id"]
    stub_queue.queue_json_publish_rollback_unsafe(QUEUE_NAME, broken)

    run_worker()

    [record] = dead_letter_lines(forwarder)
    assert record["status"] == 400, record
    assert record["events"] == [broken]
    assert "error" in json.loads(record["response_body"])

    django_api.send_event_rollback_unsafe(realm, reaction_event(MESSAGE_ID + 1), [10])
    [good_id] = queued_event_ids()
    run_worker()

    assert len(dead_letter_lines(forwarder)) == 1
    poll(
        "the next event to be stored",
        lambda: inbox_status(database).get(good_id) in {"pending", "done"},
        server,
        forwarder,
    )


@pytest.mark.parametrize("version", VERSIONS)
def test_every_event_type_of_every_release_is_handled(
    version: str, realm: Any, server: Server, database: Database, forwarder: Path
) -> None:
    """Zulip 9 / 10 / 11 / main shapes → hook → RabbitMQ → consumer → server: every event is
    stored and typed; presence keeps its status and typing its time (issue 11, items 1-2)."""
    for sample in samples_for(version):
        django_api.send_event_rollback_unsafe(realm, sample.event, sample.users)
    event_ids = queued_event_ids()
    assert len(event_ids) == len(samples_for(version))

    run_worker()

    assert dead_letter_lines(forwarder) == []
    poll(
        "every inbox row to be 'done'",
        lambda: all(inbox_status(database).get(eid) == "done" for eid in event_ids),
        server,
        forwarder,
    )

    def activity() -> dict[int, tuple[Any, Any]]:
        rows = database.query("SELECT user_id, last_presence, last_typing_at_ms FROM user_activity")
        return {int(user): (presence, typing) for user, presence, typing in rows}

    poll(
        "presence status and typing time in user_activity",
        lambda: (
            activity().get(PRESENCE_USER, (None, None))[0] == "active"
            and activity().get(TYPING_USER, (None, None))[1] is not None
        ),
        server,
        forwarder,
    )
    assert "unexpected shape" not in server.log_tail(400)


def test_a_system_bots_reaction_is_stored_under_the_conversations_realm(
    server: Server, database: Database, forwarder: Path
) -> None:
    """The Welcome Bot's reaction comes from Zulip with realm ``zulipinternal``; the server
    stores (and routes, and counts) it under ``zulip``, the realm of the conversation."""
    internal = SimpleNamespace(
        id=INTERNAL_REALM_ID, string_id="zulipinternal", uuid=uuid.UUID(int=1), host="i.example"
    )
    zulip = SimpleNamespace(
        id=ZULIP_REALM_ID, string_id="zulip", uuid=uuid.UUID(int=2), host="zulip.example"
    )
    stub_users.add_user(WELCOME_BOT_ID, internal, is_bot=True, bot_type=1)
    for user_id in ZULIP_HUMANS:
        stub_users.add_user(user_id, zulip)
    with override_settings(ZULIP_LISTENERS_REALMS=["zulip"]):
        django_api.send_event_rollback_unsafe(
            internal, system_bot_reaction_event(), list(ZULIP_HUMANS)
        )
    [event_id] = queued_event_ids()

    run_worker()

    assert dead_letter_lines(forwarder) == []
    poll(
        "the reaction to be stored",
        lambda: inbox_status(database).get(event_id) in {"pending", "done"},
        server,
        forwarder,
    )
    assert database.query("SELECT realm_id, realm FROM inbox") == [(ZULIP_REALM_ID, "zulip")]
    assert ReadinessProbe(f"{server.base_url}/readyz").ready(), "the probe the consumer uses"


def test_the_backlog_reaches_a_server_within_2_s_of_it_being_ready(
    realm: Any, tmp_path: Path
) -> None:
    """The server is down while the consumer backs off (1, 2, 4, then 8 s); it starts; the
    batch arrives within 2 s of its /readyz first answering 200, not at the next back-off."""
    database = next(sqlite_database(tmp_path))
    port, secret = free_port(), make_secret()
    config = tmp_path / "listeners.toml"
    write_config(config, port, database.url, secret)
    handle = Server(f"http://127.0.0.1:{port}", secret, tmp_path / "server.log")
    stub_config.SECRETS[SECRET_NAME] = secret
    with override_settings(
        ZULIP_LISTENERS_URL=handle.events_url,
        ZULIP_LISTENERS_DEAD_LETTER_FILE=str(tmp_path / "dead.jsonl"),
        ZULIP_LISTENERS_TIMEOUT_SECONDS=5,
    ):
        django_api.send_event_rollback_unsafe(realm, reaction_event(MESSAGE_ID), [10, 11])
        sender = build_sender(load_settings(), load_secrets())
    envelopes = stub_queue.queued(QUEUE_NAME)
    results: list[tuple[SendResult, float]] = []
    consumer = threading.Thread(
        target=lambda: results.append((sender.send_all(envelopes), time.monotonic()))
    )
    consumer.start()
    process: subprocess.Popen[bytes] | None = None
    try:
        time.sleep(7.5)  # attempts at 0, 1, 3 and 7 s; the next one would be at 15 s
        with open(handle.log_path, "wb") as log:
            process = subprocess.Popen(
                [str(server_binary()), "serve", "--config", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=tmp_path,
            )
        ready_at = None
        deadline = time.monotonic() + STARTUP_SECONDS
        while ready_at is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{handle.base_url}/readyz", timeout=1) as answer:
                    if answer.status == 200:
                        ready_at = time.monotonic()
            except (urllib.error.URLError, OSError):
                time.sleep(0.05)
        assert ready_at is not None, f"the server never got ready:\n{handle.log_tail()}"
        consumer.join(timeout=15)
    finally:
        if process is not None:
            stop_process(process)
        consumer.join(timeout=30)

    [(result, delivered_at)] = results
    assert result.delivered == 1
    assert delivered_at - ready_at < 2.0, f"delivered {delivered_at - ready_at:.1f} s after ready"


# ---------------------------------------------------------------------------
# One realm over the server's forwarder.max_backlog: only that realm waits
# ---------------------------------------------------------------------------


@dataclass
class Alerts:
    """keyword_alerts' webhook target: fails (503) until released, so realm 2's messages stay
    pending on the server (its backlog) and the server refuses the realm's next batch."""

    receiver: LocalReceiver
    released: bool = False

    def answer(self, request: Recorded) -> Reply | None:
        return None if self.released else Reply(503, {"error": "down"})


@pytest.fixture
def alerts() -> Iterator[Alerts]:
    target = Alerts(LocalReceiver())
    target.receiver.answer = target.answer
    target.receiver.start()
    yield target
    target.receiver.stop()


@pytest.fixture
def backlogged_server(database: Database, tmp_path: Path, alerts: Alerts) -> Iterator[Server]:
    """The real server with forwarder.max_backlog = 1 and a listener (keyword_alerts on
    messages containing "deploy") that cannot keep up until ``alerts`` is released."""
    binary = server_binary()
    port, secret = free_port(), make_secret()
    config = tmp_path / "listeners.toml"
    write_config(config, port, database.url, secret)
    alert_url = alerts.receiver.url.replace("/zulip/events", "/alert")
    with open(config, "a") as handle:
        handle.write(
            'listeners = ["message_logger", "user_activity_tracker", "keyword_alerts"]\n'
            'workers = 1\nretry_delay = "1s"\nmax_retries = 50\nmax_backlog = 1\n'
            "[error_handling]\nbreaker_failures = 1000\nmax_failures_per_hour = 1000\n"
            "[handlers.keyword_alerts]\n"
            f'rules = [{{ name = "deploys", pattern = "(?i)deploy", webhook = "{alert_url}" }}]\n'
        )
    log_path = tmp_path / "server.log"
    handle_ = Server(f"http://127.0.0.1:{port}", secret, log_path)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [str(binary), "serve", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    try:
        wait_until_healthy(process, handle_)
        yield handle_
    finally:
        stop_process(process)


class FrozenClock:
    """The lanes' monotonic clock, moved by the test (Retry-After: 30 without waiting 30 s)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_realm_over_max_backlog_waits_alone_and_is_sent_again_in_order(
    realm: Any,
    backlogged_server: Server,
    database: Database,
    alerts: Alerts,
    tmp_path: Path,
) -> None:
    server = backlogged_server
    other = SimpleNamespace(id=3, string_id="beta", uuid=uuid.uuid4(), host="beta.example.com")
    dead_letters = tmp_path / "dead.jsonl"
    stub_config.SECRETS[SECRET_NAME] = server.secret
    clock = FrozenClock()
    attempts: list[tuple[int, str, int | None, float]] = []
    with override_settings(
        ZULIP_LISTENERS_URL=server.events_url,
        ZULIP_LISTENERS_DEAD_LETTER_FILE=str(dead_letters),
        ZULIP_LISTENERS_TIMEOUT_SECONDS=10,
        ZULIP_LISTENERS_BATCH_SIZE=2,
        ZULIP_LISTENERS_BATCH_SECONDS=0.2,
    ):
        conf = load_settings()
        sender = build_sender(conf, load_secrets())
        sender.sleep = BoundedSleep(MAX_RETRY_SECONDS)
        lanes = Lanes(sender, conf.spool_dir, conf.max_spooled_per_realm, clock=clock)
        for twin in (lanes.sender, lanes.drain_sender):
            record_attempts(twin, attempts)

        def consume() -> None:
            worker = ForwarderWorker(lanes=lanes)
            worker.setup()
            worker.start()
            assert worker.consume_errors == []

        # Realm 2: two messages the slow listener must handle; accepted, now its backlog.
        for message_id in (MESSAGE_ID, MESSAGE_ID + 1):
            django_api.send_event_rollback_unsafe(
                realm, message_event(message_id, f"deploy {message_id}"), message_users()
            )
        first_ids = queued_event_ids()
        consume()
        assert [a[2] for a in attempts] == [200]
        poll(
            "the alert target to be called",
            lambda: bool(alerts.receiver.requests),
            server,
            dead_letters,
        )

        # Realm 2 again (over max_backlog now) and a typing event of realm 3.
        django_api.send_event_rollback_unsafe(
            realm, message_event(MESSAGE_ID + 2, "deploy 3"), message_users()
        )
        django_api.send_event_rollback_unsafe(other, typing_sample(), [12, 13])
        [late_id, typing_id] = queued_event_ids()
        started = time.monotonic()
        consume()

        refused = [a for a in attempts[1:] if a[0] == realm.id]
        typing = [a for a in attempts if a[0] == other.id]
        assert [a[2] for a in refused] == [429], "the real server refused realm 2"
        assert [a[2] for a in typing] == [200]
        assert typing[0][3] - started < 1.0, "realm 3's typing did not wait behind realm 2"
        assert stub_queue.queued(QUEUE_NAME) == [], "acknowledged; realm 2's event is spooled"
        poll(
            "realm 3's typing event to be stored",
            lambda: typing_id in inbox_status(database),
            server,
            dead_letters,
        )
        assert late_id not in inbox_status(database)

        # The listener catches up; 30 s later (Retry-After) realm 2's event goes, once.
        alerts.released = True
        poll(
            "realm 2's backlog to be handled",
            lambda: all(inbox_status(database).get(eid) == "done" for eid in first_ids),
            server,
            dead_letters,
        )
        clock.now += 30
        assert lanes.drain_due() is None
        resent = [a for a in attempts if a[0] == realm.id][2:]
        assert [a[2] for a in resent] == [200]
        assert resent[0][1] == refused[0][1], "sent again with its webhook-id"
        poll(
            "realm 2's set-aside event to be handled",
            lambda: inbox_status(database).get(late_id) == "done",
            server,
            dead_letters,
        )
    assert dead_letter_lines(dead_letters) == []
    stored = [row[0] for row in database.query("SELECT event_id FROM inbox")]
    assert len(stored) == len(set(stored)) == 4, "every event stored exactly once"


def record_attempts(sender: Any, attempts: list[tuple[int, str, int | None, float]]) -> None:
    """Wrap ``sender.attempt`` to note (realm, webhook-id, status, when) of each POST."""
    original = sender.attempt

    def attempt(batch: Any) -> Any:
        outcome = original(batch)
        realm_id = batch.events[0]["realm"]["id"]
        attempts.append((realm_id, batch.webhook_id, outcome.status, time.monotonic()))
        return outcome

    sender.attempt = attempt


def typing_sample() -> dict[str, Any]:
    sender = {"user_id": TYPING_USER, "email": f"user{TYPING_USER}@example.com"}
    return {
        "type": "typing",
        "op": "start",
        "message_type": "direct",
        "sender": sender,
        "recipients": [sender, {"user_id": 13, "email": "user13@example.com"}],
    }
