"""SIGHUP on a real daemon: the new sources, sinks, rules and polling apply without a restart; the
listener and every acknowledged delivery survive; a file with problems changes nothing."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.conftest import (
    API_TOKEN,
    GH_TOKEN,
    GITHUB_SECRET,
    GITLAB_TOKEN,
    base_config,
    github_headers,
    github_run,
    gitlab_headers,
    gitlab_pipeline,
)
from tests.daemon import DaemonProcess

pytestmark = pytest.mark.reliability
ROTATED = "gh-webhook-secret-rotated-77e1"


@pytest.fixture
def daemon(tmp_path):
    process = DaemonProcess(tmp_path, base_config(tmp_path / "flowforge.db"))
    process.start()
    yield process
    process.close()


def log_lines(daemon: DaemonProcess) -> list[dict[str, Any]]:
    lines = []
    for line in daemon.output().splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            continue
    return lines


def write(daemon: DaemonProcess, config: dict[str, Any] | str, listen: str | None = None) -> None:
    """Replace the daemon's config file, keeping its listener unless `listen` says otherwise."""
    if isinstance(config, dict):
        server = {**config.get("server", {}), "listen": listen or f"127.0.0.1:{daemon.port}"}
        config = yaml.safe_dump({**config, "server": server})
    daemon.config_path.write_text(config)


async def sighup(daemon: DaemonProcess, timeout: float = 20.0) -> dict[str, Any]:
    """Send SIGHUP and wait for the daemon's verdict: the reloaded or not-reloaded line it logs."""
    outcomes = ("configuration reloaded", "configuration not reloaded: the running configuration stays")
    before = sum(1 for line in log_lines(daemon) if line.get("event") in outcomes)
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + timeout
    while True:
        done = [line for line in log_lines(daemon) if line.get("event") in outcomes]
        if len(done) > before:
            notices(daemon)
            return done[before]
        assert daemon.proc.poll() is None, daemon.output()
        assert time.monotonic() < deadline, f"no reload verdict within {timeout}s:\n{daemon.output()}"
        await asyncio.sleep(0.05)


def notices(daemon: DaemonProcess) -> list[str]:
    """Read what the daemon told systemd so far, as systemd would (its queue is short)."""
    while True:
        try:
            daemon.messages.append(daemon.notify.recv(4096).decode())
        except TimeoutError:
            return daemon.messages


async def post(url: str, body: bytes, headers: dict[str, str], path: str = "/hooks/github") -> int:
    async with aiohttp.ClientSession() as session, session.post(url + path, data=body, headers=headers) as answer:
        return answer.status


def signed(conclusion: str, run_id: int, secret: str = GITHUB_SECRET) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(github_run(conclusion, run_id=run_id)).encode()
    return body, github_headers(body, secret=secret)


async def wait_for(condition, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


async def test_sighup_swaps_sources_sinks_and_rules_in_the_running_daemon(daemon, aiohttp_server, tmp_path):
    from tests.fakes.slack import FakeSlack

    slack = FakeSlack()
    server = await aiohttp_server(slack.app())
    pid = daemon.proc.pid
    assert await post(daemon.url, *signed("failure", 1)) == 202
    assert await post(daemon.url, *signed("success", 2)) == 202  # fixed, but no rule: nobody is told
    config = base_config(tmp_path / "flowforge.db")
    config["sources"]["github"]["webhook_secret"] = ROTATED
    del config["sources"]["gitlab"]
    config["sinks"]["team-slack"] = {"type": "slack", "webhook_url": str(server.make_url(slack.path))}
    config["rules"] = [{"name": "failures", "branches": ["*"], "on": ["broken", "fixed"], "sinks": ["team-slack"]}]
    write(daemon, config)
    verdict = await sighup(daemon)
    assert verdict["sources_changed"] == ["github"] and verdict["sources_removed"] == ["gitlab"]
    assert verdict["sinks_added"] == ["team-slack"] and verdict["rules"] == 1
    assert notices(daemon)[-2:] == ["RELOADING=1", "READY=1"]  # systemd sees the reload and its end
    # The old secret is refused, the new one accepted, the removed source is gone: same listener.
    assert await post(daemon.url, *signed("failure", 3)) == 401
    assert await post(daemon.url, *signed("failure", 3, ROTATED)) == 202
    body = json.dumps(gitlab_pipeline("failed")).encode()
    assert await post(daemon.url, body, gitlab_headers(token=GITLAB_TOKEN), "/hooks/gitlab") == 404
    # The new rule sends the breakage through the new sink.
    await wait_for(lambda: len(slack.messages) == 1, f"no Slack message:\n{daemon.output()}")
    assert "broken" in json.dumps(slack.messages[0]).lower()
    assert daemon.proc.pid == pid and daemon.proc.poll() is None


async def test_sighup_starts_and_stops_polling(daemon, aiohttp_server, tmp_path):
    from tests.fakes.github_api import FakeGitHub

    github = FakeGitHub(token=GH_TOKEN)
    server = await aiohttp_server(github.app)
    github.add_run("octo-org/octo-repo", branch="main", status="completed", conclusion="failure")
    config = base_config(tmp_path / "flowforge.db")
    config["sources"]["github"].update(
        token=GH_TOKEN, api_url=str(server.make_url("")), repos=["octo-org/octo-repo"], poll_interval="1h"
    )
    write(daemon, config)
    assert (await sighup(daemon))["sources_changed"] == ["github"]

    def polled_runs() -> int:
        with sqlite3.connect(tmp_path / "flowforge.db") as conn:
            return conn.execute("SELECT count(*) FROM runs WHERE source = 'github'").fetchone()[0]

    await wait_for(lambda: polled_runs() == 1, f"the run was not polled:\n{daemon.output()}")
    assert (await sources(daemon))["github"] == (True, True)
    config["sources"]["github"]["poll_interval"] = "0s"
    write(daemon, config)
    await sighup(daemon)
    assert (await sources(daemon))["github"] == (False, False)


async def sources(daemon: DaemonProcess) -> dict[str, tuple[bool, bool]]:
    """Each source: whether its config polls, and whether a next cycle is scheduled (the control API)."""
    headers = {"Authorization": f"Bearer {API_TOKEN}"}
    async with aiohttp.ClientSession() as session:
        async with session.get(daemon.url + "/api/v1/sources", headers=headers) as answer:
            assert answer.status == 200
            listed = (await answer.json())["sources"]
    return {item["name"]: (item["polling"]["enabled"], item["polling"]["next_poll_at"] is not None) for item in listed}


async def test_deliveries_during_reloads_are_all_answered_and_stored(daemon, tmp_path):
    """Reloads that swap the github source while 400 deliveries are in flight: the listener never
    drops a connection, and every delivery acknowledged is in the store."""
    configs = []
    for backfill in ("1h", "2h"):  # each reload changes the source, so its provider is swapped
        config = base_config(tmp_path / "flowforge.db")
        config["sources"]["github"]["backfill"] = backfill
        configs.append(config)
    answers: list[tuple[str, int | str]] = []
    queue = [signed("failure" if n % 2 else "success", 50_000 + n) for n in range(400)]

    async def sender(session: aiohttp.ClientSession) -> None:
        while queue:
            body, headers = queue.pop()
            try:
                async with session.post(daemon.url + "/hooks/github", data=body, headers=headers) as answer:
                    answers.append((headers["X-GitHub-Delivery"], answer.status))
            except aiohttp.ClientError as exc:
                answers.append((headers["X-GitHub-Delivery"], type(exc).__name__))

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        senders = asyncio.gather(*(sender(session) for _ in range(8)))
        reloads = 0
        while queue:  # reload again and again while the deliveries flow
            write(daemon, configs[reloads % 2])
            assert (await sighup(daemon))["event"] == "configuration reloaded"
            reloads += 1
        await senders
    assert reloads >= 2
    assert [status for _, status in answers if status != 202] == []
    with sqlite3.connect(tmp_path / "flowforge.db") as conn:
        stored = {row[0] for row in conn.execute("SELECT delivery_id FROM deliveries")}
    assert {delivery for delivery, _ in answers} <= stored


async def test_an_invalid_file_keeps_the_running_config_and_logs_every_problem(daemon, tmp_path):
    config = base_config(tmp_path / "flowforge.db")
    config["sources"]["github"]["webhook_secret"] = ROTATED
    del config["sources"]["gitlab"]["webhook_secret"]
    config["sources"]["github"]["poll_interval"] = "soon"
    config["rules"] = [{"name": "r", "sinks": ["nope"]}]
    write(daemon, config)
    verdict = await sighup(daemon)
    assert verdict["event"] == "configuration not reloaded: the running configuration stays"
    problems = {line["key"]: line["problem"] for line in log_lines(daemon) if line["event"] == "configuration problem"}
    assert problems["sources.gitlab.webhook_secret"].startswith("missing")
    assert problems["sources.github.poll_interval"] == "not a duration: 'soon' (use e.g. 30s, 15m, 4h, 7d)"
    assert problems["rules.0.sinks"] == "no sink named 'nope' in sinks"
    assert sorted(verdict["keys"]) == sorted(problems)
    # Nothing of the bad file applies: the old secret still works, the rotated one does not.
    assert await post(daemon.url, *signed("failure", 7)) == 202
    assert await post(daemon.url, *signed("failure", 8, ROTATED)) == 401
    write(daemon, "sources: [unclosed\n")
    assert (await sighup(daemon))["keys"] == [str(daemon.config_path)]
    assert "not valid YAML at line 2" in daemon.output()
    assert await post(daemon.url, *signed("success", 9)) == 202


async def test_a_new_listen_address_needs_a_restart_and_the_rest_still_applies(daemon, tmp_path):
    from tests.daemon import free_port

    config = base_config(tmp_path / "flowforge.db")
    config["server"] = {"idle_timeout": "20s"}
    config["storage"]["path"] = str(Path(tmp_path / "elsewhere.db"))
    config["sources"]["github"]["webhook_secret"] = ROTATED
    write(daemon, config, listen=f"127.0.0.1:{free_port()}")
    assert (await sighup(daemon))["event"] == "configuration reloaded"
    [restart] = [line for line in log_lines(daemon) if line["event"].startswith("configuration change needs a restart")]
    assert restart["keys"] == ["server.listen", "server.idle_timeout", "storage.path"]
    assert await post(daemon.url, *signed("failure", 11, ROTATED)) == 202  # the same listener, the new secret
    with sqlite3.connect(tmp_path / "flowforge.db") as conn:  # and the same database
        assert conn.execute("SELECT count(*) FROM deliveries").fetchone()[0] == 1
