"""The daemon as users run it: a subprocess, systemd notifications, SIGKILL, SIGTERM, and its logs."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import uuid

import aiohttp
import pytest

from tests.conftest import GITHUB_SECRET, applied, base_config, github_headers, github_run
from tests.daemon import DaemonProcess

pytestmark = pytest.mark.reliability


@pytest.fixture
def make_daemon(tmp_path):
    started = []

    def make(config=None, env=None) -> DaemonProcess:
        process = DaemonProcess(tmp_path, config or base_config(tmp_path / "flowforge.db"), env)
        started.append(process)
        return process

    yield make
    for process in started:
        process.close()


def delivery(n: int) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(github_run("failure" if n % 3 else "success", run_id=10_000 + n)).encode()
    return body, github_headers(body, delivery=f"kill-{n}")


async def post_all(url: str, deliveries, acked: list[str], concurrency: int = 16) -> None:
    """Send every delivery; record the ids the daemon acknowledged (202/200) before anything failed."""
    queue = list(deliveries)

    async def worker(session: aiohttp.ClientSession) -> None:
        while queue:
            body, headers = queue.pop()
            try:
                async with session.post(f"{url}/hooks/github", data=body, headers=headers) as response:
                    if response.status in (200, 202):
                        acked.append(headers["X-GitHub-Delivery"])
            except (TimeoutError, aiohttp.ClientError):
                return

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))


def stored(db) -> tuple[set[str], int]:
    with sqlite3.connect(db) as conn:
        ids = {row[0] for row in conn.execute("SELECT delivery_id FROM deliveries")}
        events = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    return ids, events


async def test_sigkill_loses_no_acknowledged_delivery_and_redelivery_adds_nothing(make_daemon, tmp_path):
    daemon = make_daemon()
    daemon.start()
    acked: list[str] = []
    deliveries = [delivery(n) for n in range(600)]
    sender = asyncio.create_task(post_all(daemon.url, deliveries, acked))
    while len(acked) < 150:  # kill in the middle of the burst, with requests in flight
        await asyncio.sleep(0.005)
    await daemon.akill(signal.SIGKILL)
    await sender
    assert 150 <= len(acked) < 600
    daemon.start()  # restart on the same database
    applied(tmp_path / "flowforge.db")  # what was acknowledged but not yet applied at the kill is applied now
    ids, events = stored(tmp_path / "flowforge.db")
    assert set(acked) <= ids, f"acknowledged but lost: {sorted(set(acked) - ids)[:5]}"
    assert events == len(ids)  # each delivery is a run of its own: every stored one was applied
    again: list[str] = []
    await post_all(daemon.url, [d for d in deliveries if d[1]["X-GitHub-Delivery"] in ids], again)
    assert sorted(again) == sorted(ids)
    applied(tmp_path / "flowforge.db")
    assert stored(tmp_path / "flowforge.db") == (ids, events)
    assert daemon.kill(signal.SIGTERM) == 0


async def test_ready_stopping_and_a_clean_drain_on_sigterm(make_daemon, tmp_path):
    daemon = make_daemon()
    daemon.start()
    assert daemon.messages == ["READY=1"]  # sent once the listener is bound
    acked: list[str] = []
    deliveries = [delivery(n) for n in range(300)]
    sender = asyncio.create_task(post_all(daemon.url, deliveries, acked, concurrency=8))
    while len(acked) < 50:
        await asyncio.sleep(0.005)
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGTERM)
    daemon.wait_message("STOPPING=1")
    code = await asyncio.to_thread(daemon.proc.wait, 30)
    await sender
    assert code == 0
    ids, _ = stored(tmp_path / "flowforge.db")
    assert set(acked) <= ids
    assert '"event": "stopped"' in daemon.output()


async def test_watchdog_pings_from_the_event_loop(make_daemon):
    daemon = make_daemon(env={"WATCHDOG_USEC": "200000"})
    daemon.start()
    daemon.wait_message("WATCHDOG=1", timeout=5)


async def test_no_secret_in_any_log_line_of_a_full_run(make_daemon, tmp_path):
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "github-webhook").write_text(GITHUB_SECRET)
    gitlab_token = "gl-" + uuid.uuid4().hex
    api_token = "api-" + uuid.uuid4().hex
    config = base_config(tmp_path / "flowforge.db")
    config["logging"] = {"level": "debug"}
    config["sources"]["github"]["webhook_secret"] = {"secret": "github-webhook"}
    config["sources"]["gitlab"]["webhook_secret"] = {"env": "TEST_GITLAB_TOKEN"}
    config["api"]["token"] = {"secret": "api-token"}
    env = {
        "CREDENTIALS_DIRECTORY": str(creds),
        "TEST_GITLAB_TOKEN": gitlab_token,
        "FLOWFORGED_SECRET_API_TOKEN": api_token,
        "FLOWFORGED_KEYRING_BACKEND": "keyring.backends.fail.Keyring",
    }
    daemon = make_daemon(config, env)
    daemon.start()
    good = json.dumps(github_run("failure")).encode()
    async with aiohttp.ClientSession() as session:
        requests = [
            ("github", good, github_headers(good)),
            ("github", good, github_headers(good, secret="wrong")),
            ("github", b"not json", github_headers(b"not json")),
            ("github", b'{"workflow_run": {}}', github_headers(b'{"workflow_run": {}}')),
            ("gitlab", b"{}", {"X-Gitlab-Token": gitlab_token, "X-Gitlab-Event": "Pipeline Hook"}),
            ("gitlab", b"{}", {"X-Gitlab-Token": gitlab_token[:-1], "X-Gitlab-Event": "Pipeline Hook"}),
        ]
        statuses = []
        for source, body, headers in requests:
            async with session.post(
                f"{daemon.url}/hooks/{source}", data=body, headers=headers, params={"token": api_token}
            ) as response:
                statuses.append(response.status)
                assert gitlab_token not in await response.text()
    assert statuses == [202, 401, 202, 202, 202, 401]  # an authentic body that is not JSON is kept raw
    assert daemon.kill(signal.SIGTERM) == 0
    output = daemon.output()
    assert "webhook rejected" in output and "could not be normalized" in output  # the log was captured
    for secret in (GITHUB_SECRET, gitlab_token, api_token):
        assert secret not in output


async def test_sigkill_while_a_notification_is_due_delivers_it_once_after_restart(
    make_daemon, tmp_path, aiohttp_server
):
    from tests.fakes.slack import FakeSlack
    from tests.test_notify import until

    slack = FakeSlack()
    server = await aiohttp_server(slack.app())
    config = base_config(tmp_path / "flowforge.db")
    config["sinks"] = {"team-slack": {"type": "slack", "webhook_url": str(server.make_url(slack.path))}}
    config["rules"] = [
        {"name": "main", "branches": ["master"], "sinks": ["team-slack"], "on": ["broken"], "group_wait": "1s"}
    ]
    daemon = make_daemon(config)
    daemon.start()
    body = json.dumps(github_run("failure", run_id=4242)).encode()
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{daemon.url}/hooks/github", data=body, headers=github_headers(body)) as response:
            assert response.status == 202
    applied(tmp_path / "flowforge.db")  # the delivery is applied: its notification is planned
    await daemon.akill(signal.SIGKILL)  # the notification is committed, due in 1 s, not yet sent
    with sqlite3.connect(tmp_path / "flowforge.db") as conn:
        assert conn.execute("SELECT state FROM outbox").fetchall() == [("pending",)]
    assert slack.received == []
    daemon.start()

    def state() -> str:
        with sqlite3.connect(tmp_path / "flowforge.db") as conn:
            return conn.execute("SELECT state FROM outbox").fetchone()[0]

    await until(lambda: state() == "sent", timeout=20, what="the notification to be sent after restart")
    assert len(slack.received) == 1 and len(slack.messages) == 1
    assert daemon.kill(signal.SIGTERM) == 0
    daemon.start()  # and a further restart sends nothing again
    assert daemon.kill(signal.SIGTERM) == 0
    assert len(slack.received) == 1
