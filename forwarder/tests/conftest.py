"""pytest setup: put the Zulip stand-in on sys.path, configure a minimal Django, share fixtures.

Django is set up once, here, the way Zulip does it: the stand-in ``zerver.actions.typing``
(which binds ``send_event_rollback_unsafe`` by name) is imported first, then ``django.setup()``
runs the app's ``ready()``, which must wrap the function and rebind that module.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

TESTS_DIR = Path(__file__).resolve().parent
FORWARDER_DIR = TESTS_DIR.parent
for path in (FORWARDER_DIR, TESTS_DIR, TESTS_DIR / "stub_zulip"):
    sys.path.insert(0, str(path))

import django  # noqa: E402
from django.conf import settings  # noqa: E402

QUEUE_ERROR_DIR = tempfile.mkdtemp(prefix="zlf-tests-queue-errors-")

settings.configure(
    SECRET_KEY="forwarder-tests",
    EXTERNAL_HOST="zulip.example.com",
    USING_RABBITMQ=True,
    INSTALLED_APPS=["zulip_listeners_forwarder"],
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
    ZULIP_LISTENERS_URL="http://127.0.0.1:9/zulip/events",
    QUEUE_ERROR_DIR=QUEUE_ERROR_DIR,
    ZULIP_LISTENERS_DEAD_LETTER_FILE=os.path.join(
        os.environ.get("TMPDIR", "/tmp"), f"zlf-tests-{os.getpid()}.deadletter.jsonl"
    ),
)

import zerver.actions.typing  # noqa: E402,F401  (imported before ready(), as in Zulip)

django.setup()

from local_receiver import LocalReceiver  # noqa: E402
from zerver.lib import queue as stub_queue  # noqa: E402
from zerver.models import users as stub_users  # noqa: E402
from zproject import config as stub_config  # noqa: E402

from zulip_listeners_forwarder.audience import FACTS  # noqa: E402
from zulip_listeners_forwarder.hook import ERRORS  # noqa: E402


def make_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """Stops a process a test started: politely, then by force after ten seconds."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(autouse=True)
def spool_dir(tmp_path: Path) -> Iterator[Path]:
    """Each test gets a spool directory of its own (the consumer's set-aside batches)."""
    from django.test import override_settings

    path = tmp_path / "spool"
    with override_settings(ZULIP_LISTENERS_SPOOL_DIR=str(path)):
        yield path


@pytest.fixture(autouse=True)
def clean_stub_zulip() -> Iterator[None]:
    """Each test gets RabbitMQ queues of its own, deleted afterwards, and no Zulip users (nor
    the hook's memo of them, nor its error log's rate limit) from another test."""
    stub_queue.isolate()
    ERRORS.reset()
    stub_config.SECRETS.clear()
    stub_users.reset()
    FACTS.clear()
    yield
    stub_queue.reset()
    stub_config.SECRETS.clear()
    stub_users.reset()
    FACTS.clear()


@pytest.fixture
def realm() -> SimpleNamespace:
    return SimpleNamespace(
        id=2,
        string_id="acme",
        uuid=uuid.UUID("8a3b2f7e-3c1d-4f5e-9a6b-0c1d2e3f4a5b"),
        host="acme.example.com",
    )


@pytest.fixture
def secret() -> str:
    return make_secret()


@pytest.fixture
def receiver() -> Iterator[LocalReceiver]:
    server = LocalReceiver()
    server.start()
    yield server
    server.stop()
