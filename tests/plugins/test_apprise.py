"""The `apprise` sink with the real Apprise library, to two kinds of local receiver: its `json://` scheme
to a webhook receiver (tests/fakes/receiver.py) and its `ntfy://` scheme to a fake ntfy server
(tests/fakes/ntfy.py), through the daemon's outbox, retries and dead letters."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from flowforged import app as app_module
from flowforged import logs
from flowforged.errors import ConfigError, PermanentSinkError, SinkError
from flowforged.plugin import Notification, SinkContext
from flowforged_plugins.sinks.apprise import AppriseSink, http_status
from tests.conftest import base_config, github_headers, github_run, make_config
from tests.fakes.ntfy import FakeNtfy
from tests.fakes.receiver import Receiver
from tests.test_notify import until

NTFY_TOKEN = "tk_fakentfyaccesstoken0000000001"


def urls(receiver_server: Any, ntfy_server: Any, token: str = NTFY_TOKEN) -> tuple[str, str]:
    return (
        f"json://127.0.0.1:{receiver_server.port}/hooks/flowforge",
        f"ntfy://{token}@127.0.0.1:{ntfy_server.port}/ci-alerts?auth=token",
    )


@pytest.fixture
async def receiver(aiohttp_server: Any) -> Receiver:
    fake = Receiver()
    fake.server = await aiohttp_server(fake.app())  # type: ignore[attr-defined]
    return fake


@pytest.fixture
async def ntfy(aiohttp_server: Any) -> FakeNtfy:
    fake = FakeNtfy(token=NTFY_TOKEN)
    fake.server = await aiohttp_server(fake.app())  # type: ignore[attr-defined]
    return fake


def sink(*apprise_urls: str, timeout: str = "10s") -> AppriseSink:
    data = base_config(Path("/nonexistent/flowforge.db"))
    data["sinks"] = {"alerts": {"type": "apprise", "urls": list(apprise_urls), "timeout": timeout}}
    return AppriseSink("alerts", make_config(data).sink_configs["alerts"])


def notification(transition: str = "broken", notification_id: int = 1) -> Notification:
    return Notification(
        id=notification_id,
        sink="alerts",
        transition=transition,
        source="github",
        pipeline="octo-org/octo-repo/.github/workflows/ci.yml",
        branch="main",
        run_id="30433642",
        attempt=1,
        url="https://github.com/octo-org/octo-repo/actions/runs/30433642",
        sha="acb5820ced9479c074f688cc328bf03f341a511d",
        commit_message="Update README.md\n\nmore",
        author="Octo Cat",
        duration_seconds=272.0,
        failed_jobs=("test (ubuntu-latest)",),
        pipeline_name="CI",
    )


CONTEXT = SinkContext(http=None, log=logs.get("test"))


async def test_a_breakage_reaches_both_receivers_through_the_daemon(
    aiohttp_client: Any, db_path: Any, receiver: Receiver, ntfy: FakeNtfy
) -> None:
    json_url, ntfy_url = urls(receiver.server, ntfy.server)  # type: ignore[attr-defined]
    client = await start(aiohttp_client, db_path, json_url, ntfy_url)
    body = json.dumps(github_run("failure")).encode()
    assert (await client.post("/hooks/github", data=body, headers=github_headers(body))).status == 202
    await until(lambda: receiver.received and ntfy.messages, what="both receivers")
    [posted] = receiver.received
    sent = posted.json()
    assert sent["title"].startswith("🔴 Broken: ") and sent["type"] == "failure"
    assert "Pipeline: octo-org/octo-repo/" in sent["message"] and "Run: https://github.com/" in sent["message"]
    [published] = ntfy.messages  # the fake ntfy takes only the access token in the {env: ...} URL
    assert published["topic"] == "ci-alerts" and published["title"] == sent["title"]
    assert published["message"] == sent["message"]
    await until(lambda: _outbox(db_path) == [("sent", 1)], what="the outbox row sent")


async def test_a_failing_receiver_is_retried_and_the_other_is_not_told_twice(
    aiohttp_client: Any, db_path: Any, receiver: Receiver, ntfy: FakeNtfy
) -> None:
    ntfy.fail_next(50001)
    json_url, ntfy_url = urls(receiver.server, ntfy.server)  # type: ignore[attr-defined]
    client = await start(aiohttp_client, db_path, json_url, ntfy_url)
    body = json.dumps(github_run("failure")).encode()
    assert (await client.post("/hooks/github", data=body, headers=github_headers(body))).status == 202
    await until(lambda: _outbox(db_path) == [("sent", 2)], what="sent at the second attempt")
    assert ntfy.refused == [50001] and len(ntfy.messages) == 1
    assert len(receiver.received) == 1, "the receiver that took it the first time is not sent it again"


async def test_a_refusal_is_permanent_and_names_the_url_not_its_token(receiver: Receiver, ntfy: FakeNtfy) -> None:
    json_url, ntfy_url = urls(receiver.server, ntfy.server, token="tk_wrongtoken000000000000000000")  # type: ignore[attr-defined]
    with pytest.raises(PermanentSinkError) as refused:
        await sink(json_url, ntfy_url).send(notification(), CONTEXT)
    assert "urls.1" in str(refused.value) and "HTTP 403" in str(refused.value)
    assert "tk_wrongtoken" not in str(refused.value)
    assert len(receiver.received) == 1


@pytest.mark.parametrize(("code", "retried"), [(42901, True), (50001, True), (40001, False)])
async def test_ntfy_errors_are_classified(ntfy: FakeNtfy, code: int, retried: bool) -> None:
    ntfy.fail_next(code)
    _, ntfy_url = urls(ntfy.server, ntfy.server)  # type: ignore[attr-defined]
    with pytest.raises((SinkError, PermanentSinkError)) as failed:
        await sink(ntfy_url).send(notification(), CONTEXT)
    assert isinstance(failed.value, SinkError if retried else PermanentSinkError)
    assert f"HTTP {code // 100}" in str(failed.value)


async def test_a_receiver_that_does_not_answer_is_retried(receiver: Receiver) -> None:
    receiver.script(["hang"])
    json_url = f"json://127.0.0.1:{receiver.server.port}/hooks/flowforge"  # type: ignore[attr-defined]
    with pytest.raises(SinkError) as failed:
        await sink(json_url, timeout="1s").send(notification(), CONTEXT)
    assert "urls.0" in str(failed.value) and "in time" in str(failed.value)


async def test_a_receiver_that_is_down_is_retried(unused_tcp_port: int) -> None:
    with pytest.raises(SinkError) as failed:
        await sink(f"json://127.0.0.1:{unused_tcp_port}/x").send(notification(), CONTEXT)
    assert "connection error" in str(failed.value)


def test_an_unusable_url_is_a_config_error_naming_its_key(tmp_path: Any) -> None:
    data = base_config(tmp_path / "db")
    data["sinks"] = {"alerts": {"type": "apprise", "urls": ["json://127.0.0.1/x", "nosuchscheme://s3cr3t@host"]}}
    with pytest.raises(ConfigError) as caught:
        make_config(data)
    [(key, message)] = caught.value.problems
    assert key == "sinks.alerts.urls.1" and "nosuchscheme" in message and "s3cr3t" not in message


def test_urls_must_be_a_list(tmp_path: Any) -> None:
    data = base_config(tmp_path / "db")
    data["sinks"] = {"alerts": {"type": "apprise", "urls": []}}
    with pytest.raises(ConfigError) as caught:
        make_config(data)
    assert [key for key, _ in caught.value.problems] == ["sinks.alerts.urls"]


def test_the_status_is_read_from_apprises_failure_lines() -> None:
    assert http_status("Failed to send JSON POST notification: Bad Request, error=400.") == 400
    assert http_status("Failed to send ntfy notification to topic 'x': forbidden, error=40301.") == 403
    assert http_status("A Connection error occurred sending JSON notification to 127.0.0.1.") is None


# --- helpers ---------------------------------------------------------------------------------------


async def start(aiohttp_client: Any, db_path: Any, json_url: str, ntfy_url: str) -> Any:
    """The daemon with the ntfy URL (it holds a token) given as {env: NTFY_URL}."""
    data = base_config(db_path)
    data["sinks"] = {"alerts": {"type": "apprise", "urls": [json_url, {"env": "NTFY_URL"}]}}
    data["rules"] = [{"name": "all", "branches": ["*"], "on": ["broken", "fixed"], "sinks": ["alerts"]}]
    data["notifications"] = {"backoff_base": "50ms", "backoff_cap": "100ms"}
    return await aiohttp_client(app_module.build(make_config(data, environ={"NTFY_URL": ntfy_url})))


def _outbox(db_path: Any) -> list[tuple[str, int]]:
    with sqlite3.connect(db_path) as conn:
        return conn.execute("SELECT state, attempts FROM outbox ORDER BY id").fetchall()
