"""Hostile input against a running daemon: random and mutated requests, slow clients, huge bodies.

Every answer is a 4xx (or 2xx for what is authentic), never a 500 or a crash, and nothing
unauthenticated is ever stored.
"""

from __future__ import annotations

import http.client
import json
import socket
import sqlite3
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowforged import config as config_module
from flowforged.errors import ConfigError
from flowforged.secrets import SecretContext
from flowforged_plugins import github
from tests.conftest import GITHUB_SECRET, GITLAB_TOKEN, base_config, fixture
from tests.daemon import DaemonProcess

pytestmark = pytest.mark.reliability
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    data = base_config(tmp / "flowforge.db")
    data["server"] = {"max_body_bytes": 65536, "idle_timeout": "1s", "body_timeout": "1s"}
    process = DaemonProcess(tmp, data)
    process.start()
    yield process
    assert process.kill(15) == 0  # and it is still alive and drains cleanly after all of it
    process.close()


def post(daemon: DaemonProcess, path: str, body: bytes, headers: dict[str, str]) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
    try:
        connection.request("POST", path, body=body, headers=headers)
        return connection.getresponse().status
    finally:
        connection.close()


def stored(daemon: DaemonProcess) -> set[str]:
    with sqlite3.connect(daemon.tmp / "flowforge.db") as conn:
        return {row[0] for row in conn.execute("SELECT delivery_id FROM deliveries")}


header_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=80)


@SETTINGS
@given(
    body=st.binary(max_size=4096), signature=st.one_of(st.none(), header_text), event=header_text, delivery=st.uuids()
)
def test_random_github_requests_are_refused_and_stored_nowhere(daemon, body, signature, event, delivery):
    headers = {"X-GitHub-Event": event, "X-GitHub-Delivery": f"hostile-{delivery}"}
    if signature is not None:
        headers["X-Hub-Signature-256"] = signature
    assert post(daemon, "/hooks/github", body, headers) == 401
    assert f"hostile-{delivery}" not in stored(daemon)


@SETTINGS
@given(data=st.data())
def test_mutated_signed_deliveries_are_refused(daemon, data):
    body = json.dumps(fixture("github/webhooks/workflow_run.completed.success.json")).encode()
    signature = github.sign(GITHUB_SECRET, body)
    index = data.draw(st.integers(0, len(body) - 1))
    flip = data.draw(st.integers(1, 255))
    mutated = body[:index] + bytes([body[index] ^ flip]) + body[index + 1 :]
    delivery = f"mutated-{data.draw(st.uuids())}"
    headers = {"X-GitHub-Event": "workflow_run", "X-GitHub-Delivery": delivery, "X-Hub-Signature-256": signature}
    assert post(daemon, "/hooks/github", mutated, headers) == 401
    sig_index = data.draw(st.integers(7, len(signature) - 1))
    bad_sig = signature[:sig_index] + ("0" if signature[sig_index] != "0" else "1") + signature[sig_index + 1 :]
    assert post(daemon, "/hooks/github", body, headers | {"X-Hub-Signature-256": bad_sig}) == 401
    assert delivery not in stored(daemon)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)


@SETTINGS
@given(
    payload=json_values,
    event=st.sampled_from(["workflow_run", "workflow_job", "ping", "push", "x" * 70]),
    run=st.dictionaries(
        st.sampled_from(
            ["id", "path", "status", "conclusion", "updated_at", "run_attempt", "head_branch", "created_at"]
        ),
        json_values,
        max_size=8,
    ),
)
def test_authentic_odd_payloads_are_stored_raw_never_500(daemon, payload, event, run):
    for document in (payload, {"workflow_run": run, "workflow_job": run}):
        body = json.dumps(document).encode()
        status = post(
            daemon,
            "/hooks/github",
            body,
            {
                "X-GitHub-Event": event,
                "X-GitHub-Delivery": f"odd-{time.monotonic_ns()}",
                "X-Hub-Signature-256": github.sign(GITHUB_SECRET, body),
                "Content-Type": "application/json",
            },
        )
        assert status in (200, 202)


@SETTINGS
@given(token=header_text, body=st.binary(max_size=1024))
def test_random_gitlab_tokens_are_refused(daemon, token, body):
    if token == GITLAB_TOKEN:
        return
    assert post(daemon, "/hooks/gitlab", body, {"X-Gitlab-Token": token, "X-Gitlab-Event": "Pipeline Hook"}) == 401


def test_a_huge_body_is_cut_off_with_413(daemon):
    body = b"x" * (1024 * 1024)
    assert post(daemon, "/hooks/github", body, {"X-Hub-Signature-256": github.sign(GITHUB_SECRET, body)}) == 413


def test_slowloris_headers_are_cut_off(daemon):
    sock = socket.create_connection(("127.0.0.1", daemon.port), timeout=5)
    started = time.monotonic()
    try:
        sock.sendall(b"POST /hooks/github HTTP/1.1\r\nHost: x\r\n")
        closed = False
        while time.monotonic() - started < 4:
            try:
                sock.sendall(b"X-Slow: 1\r\n")  # a header a little at a time, never the end
                if sock.recv(1024, socket.MSG_DONTWAIT) == b"":
                    closed = True
                    break
            except BlockingIOError:
                pass
            except (ConnectionResetError, BrokenPipeError):
                closed = True
                break
            time.sleep(0.2)
        assert closed, "the server kept a connection that never finished its headers"
    finally:
        sock.close()
    assert time.monotonic() - started < 3  # idle_timeout is 1 s


def test_a_slow_body_gets_408(daemon):
    sock = socket.create_connection(("127.0.0.1", daemon.port), timeout=5)
    try:
        sock.sendall(b"POST /hooks/github HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
        started = time.monotonic()
        answer = b""
        while time.monotonic() - started < 4 and not answer:
            try:
                sock.sendall(b"{")
                answer = sock.recv(1024, socket.MSG_DONTWAIT)
            except BlockingIOError:
                time.sleep(0.1)
        assert answer.startswith(b"HTTP/1.1 408"), answer
    finally:
        sock.close()


@settings(max_examples=300, deadline=None)
@given(
    document=st.dictionaries(
        st.sampled_from(
            ["server", "storage", "api", "sources", "sinks", "rules", "metrics", "logging", "notifications", "extra"]
        ),
        json_values,
        max_size=6,
    )
)
def test_the_config_loader_never_crashes(document):
    try:
        config_module.validate(document, SecretContext(environ={}, use_keyring=False))
    except ConfigError as exc:
        assert exc.problems and all(isinstance(path, str) and message for path, message in exc.problems)
