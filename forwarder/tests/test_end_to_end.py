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
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import make_secret, stop_process
from django.test import override_settings
from samples import (
    message_event,
    message_users,
    reaction_event,
    update_message_event,
    update_message_users,
)
from zerver.lib import queue as stub_queue
from zerver.tornado import django_api
from zproject import config as stub_config
from zulip_shapes import PRESENCE_USER, TYPING_USER, VERSIONS, samples_for

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
