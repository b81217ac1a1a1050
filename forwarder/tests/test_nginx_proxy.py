"""The shipped nginx config (deploy/nginx/zulip-listeners.conf) in front of an unreachable,
hung or answering server, called the way Zulip calls an outgoing webhook (``requests``).

Zulip retries an outgoing webhook only on a connection error or a timeout; any status code,
502 included, posts a public "Failure!" at once (issue 11, item 5).  So nginx must turn "no
server reachable" into a closed connection, and pass every answer of the server through
unchanged.  Runs a real nginx (skipped, saying so, only when none is installed; CI installs
``nginx-light``).  Only the TLS lines are swapped for a plain loopback listener.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import stop_process
import requests
from local_receiver import LocalReceiver, Reply

CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "nginx" / "zulip-listeners.conf"
OUTGOING_PATHS = ("/zulip/outgoing", "/bots/helper", "/")
ZULIP_TIMEOUT = 10  # OUTGOING_WEBHOOK_TIMEOUT_SECONDS

PAYLOAD = {
    "bot_email": "helper-bot@zulip.example.com",
    "bot_full_name": "Helper",
    "data": "@**Helper** status",
    "token": "aQVQmSd6j6IHphJ9m1jhgHdbnhl5ZcsY",
    "trigger": "mention",
    "message": {"id": 2301, "type": "stream", "content": "@**Helper** status"},
}


def nginx_binary() -> str:
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )
    if found is None:
        pytest.skip("nginx is not installed (apt-get install nginx-light); proxy test not run")
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def site_config(upstream_port: int, port: int, redirect_port: int, logs: Path) -> str:
    """The shipped site with plain loopback listeners instead of TLS and public ports."""
    text = CONFIG.read_text()
    text = text.replace("127.0.0.1:8080", f"127.0.0.1:{upstream_port}")
    text = text.replace("listen 443 ssl;", f"listen 127.0.0.1:{port};")
    text = text.replace("listen 80;", f"listen 127.0.0.1:{redirect_port};")
    text = re.sub(r"(?m)^\s*listen \[::\].*$", "", text)
    text = re.sub(r"(?m)^\s*ssl_.*$", "", text)
    text = re.sub(r"(?m)^\s*add_header Strict-Transport-Security.*$", "", text)
    text = text.replace("/var/log/nginx/", f"{logs}/")
    # a hung server is detected after 1 s instead of 30 s
    return text.replace("proxy_read_timeout 30s;", "proxy_read_timeout 1s;")


@dataclass
class Proxy:
    base_url: str
    error_log: Path

    def post(self, path: str) -> requests.Response:
        """What Zulip's outgoing-webhook worker does (``session.post(url, json=...)``)."""
        return requests.post(self.base_url + path, json=PAYLOAD, timeout=ZULIP_TIMEOUT)


def start_nginx(tmp_path: Path, upstream_port: int) -> Iterator[Proxy]:
    binary = nginx_binary()
    port, redirect_port = free_port(), free_port()
    (tmp_path / "site.conf").write_text(site_config(upstream_port, port, redirect_port, tmp_path))
    temp_paths = "\n".join(
        f"    {kind}_temp_path {tmp_path}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (tmp_path / "nginx.conf").write_text(
        ("user root;\n" if os.geteuid() == 0 else "")
        + f"worker_processes 1;\npid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\n"
        + "daemon off;\nevents {}\nhttp {\n"
        + temp_paths
        + f"\n    access_log {tmp_path}/access.log;\n    include {tmp_path}/site.conf;\n}}\n"
    )
    conf = str(tmp_path / "nginx.conf")
    check = subprocess.run(
        [binary, "-t", "-p", str(tmp_path), "-c", conf], capture_output=True, text=True
    )
    assert check.returncode == 0, f"nginx -t rejected the shipped config:\n{check.stderr}"
    process = subprocess.Popen(
        [binary, "-p", str(tmp_path), "-c", conf],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"nginx did not start: {process.stderr!r}") from None
                time.sleep(0.05)
        yield Proxy(f"http://127.0.0.1:{port}", tmp_path / "zulip-listeners.error.log")
    finally:
        stop_process(process)


@pytest.fixture
def stopped_server(tmp_path: Path) -> Iterator[Proxy]:
    """nginx whose upstream port has nothing listening (the server is stopped)."""
    yield from start_nginx(tmp_path, free_port())


@pytest.fixture
def running_server(tmp_path: Path, receiver: LocalReceiver) -> Iterator[Proxy]:
    port = int(receiver.url.split(":")[2].split("/")[0])
    yield from start_nginx(tmp_path, port)


@pytest.mark.parametrize("path", OUTGOING_PATHS)
def test_stopped_server_is_a_connection_error_that_zulip_retries(
    stopped_server: Proxy, path: str
) -> None:
    with pytest.raises(requests.ConnectionError):
        response = stopped_server.post(path)
        pytest.fail(
            f"Zulip would post 'Failure! Third party responded with {response.status_code}'"
        )


def test_hung_server_is_a_connection_error_too(tmp_path: Path) -> None:
    with socket.socket() as hung:  # accepts connections, never answers
        hung.bind(("127.0.0.1", 0))
        hung.listen(16)
        for proxy in start_nginx(tmp_path, hung.getsockname()[1]):
            with pytest.raises(requests.ConnectionError):
                proxy.post("/zulip/outgoing")


def test_forwarder_route_keeps_the_502_it_retries(stopped_server: Proxy) -> None:
    response = requests.post(stopped_server.base_url + "/zulip/events", data=b"{}", timeout=10)
    assert response.status_code == 502


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (200, {"content": "all green"}),
        (401, {"error": "unauthorized", "message": "the token does not match"}),
        (503, {"error": "unavailable", "message": "shutting down"}),
        (502, {"error": "bad_gateway", "message": "the server's own 502"}),
    ],
)
def test_server_answers_pass_through_unchanged(
    running_server: Proxy, receiver: LocalReceiver, status: int, body: dict[str, str]
) -> None:
    receiver.reply(Reply(status, body))

    response = running_server.post("/zulip/outgoing")

    assert (response.status_code, response.json()) == (status, body)
    assert receiver.requests[0].path == "/zulip/outgoing"
