"""The daemon under attack and misuse: one daemon per database, private files, bounded memory."""

from __future__ import annotations

import concurrent.futures
import gzip
import http.client
import json
import os
import socket
import stat
import time
import urllib.request
import zlib
from pathlib import Path

import pytest

from flowforged import webhooks
from flowforged.store import DatabaseInUse, Store, queries
from tests.conftest import base_config, github_headers, github_run
from tests.daemon import DaemonProcess

pytestmark = pytest.mark.reliability


@pytest.fixture
def make_daemon(tmp_path):
    started = []

    def make(name: str = "daemon", config=None, **options) -> DaemonProcess:
        home = tmp_path / name
        home.mkdir()
        process = DaemonProcess(home, config or base_config(tmp_path / "flowforge.db"), **options)
        started.append(process)
        return process

    yield make
    for process in started:
        process.close()


# --- one daemon per database --------------------------------------------------------------------


def test_a_second_daemon_on_the_same_database_refuses_to_start_and_names_the_first(make_daemon, tmp_path):
    first = make_daemon("first")
    first.start()
    second = make_daemon("second")
    with pytest.raises(RuntimeError, match="exited with 1") as caught:
        second.start()
    message = str(caught.value)
    assert str(tmp_path / "flowforge.db") in message
    assert f"pid {first.proc.pid}" in message
    assert "Traceback" not in message
    assert first.proc.poll() is None  # the first one goes on
    assert first.kill(15) == 0
    second.start()  # and once it is gone, the database is free


def test_the_lock_is_released_when_the_store_closes(tmp_path):
    store = Store(tmp_path / "flowforge.db").open()
    with pytest.raises(DatabaseInUse, match=f"pid {os.getpid()}"):
        Store(tmp_path / "flowforge.db").open()
    store.close()
    Store(tmp_path / "flowforge.db").open().close()


# --- file permissions ----------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o000])
async def test_the_database_and_its_directory_are_private_whatever_the_umask(tmp_path, umask):
    data = tmp_path / "data"
    previous = os.umask(umask)
    try:
        store = Store(data / "flowforge.db").open()
        await store.write(queries.heartbeat)  # the WAL and shared-memory files exist once written to
        await store.read(lambda conn: conn.execute("SELECT 1").fetchone())
        files = [data / name for name in ("flowforge.db", "flowforge.db-wal", "flowforge.db-shm")]
        modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in files}
        store.close()
    finally:
        os.umask(previous)
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert modes == dict.fromkeys(modes, 0o600)
    assert not [path for path in data.iterdir() if stat.S_IMODE(path.stat().st_mode) & 0o077]


# --- compressed bodies ---------------------------------------------------------------------------

BOMB_SIZE = 256 * 1024 * 1024  # inflated; about 250 KiB on the wire


def bomb(encoding: str) -> bytes:
    zeros = b"\0" * BOMB_SIZE
    return gzip.compress(zeros, 9) if encoding == "gzip" else zlib.compress(zeros, 9)


def inflate_cost(body: bytes) -> float:
    """CPU seconds this process takes to inflate `body`: what the daemon must not spend."""
    started = time.process_time()
    assert len(zlib.decompress(body, 47)) == BOMB_SIZE  # 47: gzip or zlib header, detected
    return time.process_time() - started


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br"])
def test_a_compressed_body_is_refused_before_it_is_inflated(make_daemon, encoding):
    # GitHub, GitLab, Buildkite and Jenkins send webhook bodies uncompressed; a compressed one is
    # refused unread, so that 1 MB on the wire cannot cost seconds of CPU before authentication.
    body = bomb("gzip" if encoding == "br" else encoding)
    cost = inflate_cost(body)
    daemon = make_daemon()
    daemon.start()
    before = daemon.cpu_seconds()
    answers = [
        post(daemon, "/hooks/github", body, {"Content-Encoding": encoding, "X-Hub-Signature-256": "sha256=00"})
        for _ in range(4)
    ]
    spent = daemon.cpu_seconds() - before
    assert [status for status, _, _ in answers] == [415] * 4
    status, headers, document = answers[0]
    assert document["error"]["code"] == "unsupported_encoding" and encoding in document["error"]["message"]
    assert headers["Accept-Encoding"] == "identity"
    assert spent < cost / 4, f"the daemon spent {spent:.2f}s of CPU on 4 bombs; inflating one costs {cost:.2f}s"


def post(daemon: DaemonProcess, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict, dict]:
    """One request on its own connection; the answer's status, headers and JSON (or {})."""
    connection = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=30)
    try:
        try:
            connection.request("POST", path, body=body, headers={"Content-Type": "application/json", **headers})
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered before the whole body was sent: the answer is still there to read
        response = connection.getresponse()
        text = response.read()
        return response.status, dict(response.headers), json.loads(text) if text else {}
    finally:
        connection.close()


# --- memory held by unauthenticated bodies -------------------------------------------------------

MiB = 1024 * 1024


def attempt(daemon: DaemonProcess, body: bytes, headers: dict[str, str]) -> int | str:
    """The status, or "reset" when the daemon answered early and closed before the client could read it."""
    try:
        return post(daemon, "/hooks/github", body, headers)[0]
    except (ConnectionError, http.client.HTTPException):
        return "reset"


def test_forty_unauthenticated_25_mib_bodies_at_once_hold_little_memory(make_daemon, tmp_path):
    # A user who raised the body limit to GitHub's own cap: the budget for unauthenticated bodies
    # (32 MiB by default) still bounds what 40 senders without the secret can make the daemon hold.
    config = base_config(tmp_path / "flowforge.db", server={"max_body_bytes": 25 * MiB})
    daemon = make_daemon(config=config)
    daemon.start()
    before = daemon.status("VmHWM")
    body = b"{" + b" " * (25 * MiB - 2) + b"}"
    headers = {"X-GitHub-Event": "workflow_run", "X-Hub-Signature-256": "sha256=" + "0" * 64}
    with concurrent.futures.ThreadPoolExecutor(40) as pool:
        outcomes = list(pool.map(lambda _: attempt(daemon, body, headers), range(40)))
    grown = (daemon.status("VmHWM") - before) / 1024
    assert set(outcomes) <= {401, 503, "reset"}, outcomes
    assert 401 in outcomes  # some were read and refused, as many as the budget allows at once
    assert grown < 200, f"peak RSS grew by {grown:.0f} MiB for 40 unauthenticated bodies of 25 MiB"
    # Every reservation was given back: a real delivery is accepted after the burst.
    real = json.dumps(github_run("failure")).encode()
    assert post(daemon, "/hooks/github", real, github_headers(real))[0] == 202


def test_a_body_over_the_default_limit_is_refused_before_it_is_read(make_daemon):
    daemon = make_daemon()
    daemon.start()
    big = json.dumps({"padding": "x" * (2 * MiB)}).encode()
    status, _, document = post(daemon, "/hooks/github", big, github_headers(big))
    assert status == 413 and "server.max_body_bytes" in document["error"]["message"]
    real = json.dumps(github_run("failure")).encode()  # a real workflow_run (22 KB) is far below it
    assert post(daemon, "/hooks/github", real, github_headers(real))[0] == 202


# --- slow readers -------------------------------------------------------------------------------


def daemon_side(port: int) -> dict[str, int]:
    """The daemon's end of each connection to `port`, by TCP state, and the bytes in its send queues:
    what the kernel holds for clients that do not read, even after the daemon closed the socket."""
    found = {"connections": 0, "queued": 0}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local_port, state, queues = int(fields[1].rsplit(":", 1)[1], 16), fields[3], fields[4]
            # Not the listening socket (0A), nor TIME_WAIT (06): a closed connection, nothing held.
            if local_port == port and state not in ("0A", "06"):
                found["connections"] += 1
                found["queued"] += int(queues.split(":")[0], 16)
    return found


def feed_pipelines(daemon: DaemonProcess, count: int) -> None:
    """`count` pipelines with long names that finished a run just now: a /metrics answer of about 1 MB."""
    now = time.time()
    for n in range(count):
        payload = github_run("failure", run_id=70_000 + n, created_at=stamp(now - 120), updated_at=stamp(now - 60))
        payload["workflow_run"]["path"] = f".github/workflows/{'long-workflow-name-' * 8}{n}.yml"
        body = json.dumps(payload).encode()
        assert post(daemon, "/hooks/github", body, github_headers(body))[0] == 202


def stamp(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def slow_reader(port: int, path: str) -> socket.socket:
    """A client that asks for `path` and never reads the answer."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: flowforge\r\n\r\n".encode())
    return sock


def test_clients_that_never_read_their_answer_are_disconnected(make_daemon, tmp_path):
    config = base_config(tmp_path / "flowforge.db", server={"send_timeout": "2s"})
    config["metrics"] = {"detail": ["*"]}  # every pipeline's histograms: an answer far larger than the buffers
    daemon = make_daemon(config=config)
    daemon.start()
    feed_pipelines(daemon, 100)
    size = len(urllib.request.urlopen(f"{daemon.url}/metrics", timeout=10).read())  # noqa: S310 - 127.0.0.1
    assert size > 500_000  # far more than the kernel's socket buffers hold: the rest waits in the daemon
    readers = [slow_reader(daemon.port, "/metrics") for _ in range(30)]
    try:
        deadline = time.monotonic() + 30  # send_timeout is 2 s; idle_timeout (15 s) must not matter
        while daemon_side(daemon.port)["connections"] and time.monotonic() < deadline:
            time.sleep(0.2)
        held = daemon_side(daemon.port)
        assert held["connections"] == 0, f"still held for clients that never read: {held}"
        assert urllib.request.urlopen(f"{daemon.url}/healthz", timeout=10).status == 200  # noqa: S310
    finally:
        for sock in readers:
            sock.close()


# --- out of file descriptors --------------------------------------------------------------------


def accept_errors(daemon: DaemonProcess) -> list[dict]:
    found = []
    for line in daemon.output().splitlines():
        if "accept" in line and line.startswith("{"):
            entry = json.loads(line)
            if "socket.accept()" in entry["event"] or entry["event"].startswith("cannot accept connections"):
                found.append(entry)
    return found


def test_accept_errors_past_the_open_files_limit_are_logged_once_per_interval(make_daemon):
    daemon = make_daemon(open_files=64)
    daemon.start()
    clients = []
    try:
        for _ in range(120):  # more than the daemon can hold open: accept() fails with EMFILE
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", daemon.port))  # the kernel completes it from the backlog
            clients.append(sock)
        # Under that pressure, asyncio retries accept() and fails again, many times a second. Wait for
        # the second line about it: the one that says how many were left out since the first.
        deadline = time.monotonic() + 30
        while len(accept_errors(daemon)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        lines = accept_errors(daemon)
    finally:
        for sock in clients:
            sock.close()
    assert len(lines) == 2, f"{len(lines)} lines about accept() failing, e.g. {lines[:1]}"
    first, second = lines
    assert first["level"] == "error" and first["open_files_limit"] == 64 and "Too many open files" in first["error"]
    assert second["suppressed"] > 0
    assert urllib.request.urlopen(f"{daemon.url}/healthz", timeout=10).status == 200  # noqa: S310


async def test_every_byte_an_unauthenticated_body_held_is_given_back(daemon):
    client = await daemon(
        server={"listen": "127.0.0.1:0", "max_body_bytes": 64 * 1024, "max_unauthenticated_bytes": 128 * 1024}
    )
    budget = client.app[webhooks.BUDGET]

    async def chunked(size: int):  # no Content-Length: the limit is found while reading
        for _ in range(size // 8192):
            yield b" " * 8192

    real = json.dumps(github_run("failure")).encode()
    answers = [
        await client.post("/hooks/github", data=real, headers=github_headers(real, secret="wrong")),
        await client.post("/hooks/github", data=chunked(256 * 1024), headers=github_headers(b"")),
        await client.post("/hooks/github", data=b"{}", headers={"X-Hub-Signature-256": "sha256=00"}),
        await client.post("/hooks/github", data=real, headers=github_headers(real)),
    ]
    assert [answer.status for answer in answers] == [401, 413, 401, 202]
    assert budget.held == 0
