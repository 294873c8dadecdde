"""The `slack` sink as a Slack app: one breakage is one thread in the fake Slack Web API
(tests/fakes/slack_api.py), kept in the store across restarts; Slack's errors and rate limits."""

from __future__ import annotations

import sqlite3
from typing import Any

import aiohttp
import pytest

from flowforged import app as app_module
from flowforged.errors import ConfigError, PermanentSinkError, SinkError
from flowforged.notify_test import send_sample
from flowforged.poller import POLLER
from flowforged.secrets import Secret
from flowforged_plugins.sinks.slack_app import WebAPI
from tests.conftest import GITHUB_SECRET, base_config, make_config
from tests.fakes.slack_api import FakeSlackAPI
from tests.test_notify import until
from tests.test_poller import CI, REPO, completed, github_source

BOT_TOKEN = "xoxb-1111-2222-fakebottoken0000"
SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
CHANNEL = "C0FLOWFORGE"
HOOK = "https://hooks.slack.com/services/T0/B0/x"


def slack_sink(server: Any, **extra: Any) -> dict[str, Any]:
    return {
        "type": "slack",
        "bot_token": BOT_TOKEN,
        "channel": CHANNEL,
        "signing_secret": SIGNING_SECRET,
        "api_url": str(server.make_url("/api")),
        **extra,
    }


class World:
    """The daemon with the fake GitHub as its source and the fake Slack app as its sink."""

    def __init__(self, aiohttp_client: Any, db_path: Any, github: Any, slack_server: Any, allowed: list[str]):
        self.aiohttp_client, self.db_path, self.github = aiohttp_client, db_path, github
        data = base_config(db_path, sources={"github": github_source(github.server, [REPO])})
        data["sinks"] = {"team": slack_sink(slack_server)}
        data["rules"] = [
            {
                "name": "main",
                "branches": ["main"],
                "on": ["broken", "still_failing", "fixed"],
                "repeat_interval": 0,
                "sinks": ["team"],
                "actions": {"allowed_users": allowed},
            }
        ]
        self.config = data
        self.client: Any = None

    async def start(self) -> Any:
        self.client = await self.aiohttp_client(app_module.build(make_config(self.config)))
        await until(lambda: self.client.app[POLLER].last_cycle("github") is not None, what="the first poll")
        return self.client

    async def restart(self) -> Any:
        await self.client.close()
        return await self.start()

    async def finish(self, conclusion: str, created: float, ended: float | None = None) -> dict[str, Any]:
        """A run of main that finished (`ended` seconds ago), told by GitHub's webhook."""
        run = completed(self.github, "main", conclusion, created=created, jobs=True, ended=ended)
        delivery = await self.github.send_webhook(
            self.client.session, self.client.make_url("/hooks/github"), run["id"], GITHUB_SECRET
        )
        assert delivery.status == 202
        return run

    def outbox(self) -> list[tuple[str, str, str | None]]:
        with sqlite3.connect(self.db_path) as conn:
            return conn.execute("SELECT transition, state, last_error FROM outbox ORDER BY id").fetchall()


@pytest.fixture(name="slack")
async def slack_fixture(aiohttp_server: Any) -> FakeSlackAPI:
    fake = FakeSlackAPI(BOT_TOKEN)
    fake.server = await aiohttp_server(fake.app())  # type: ignore[attr-defined]
    return fake


@pytest.fixture(name="world")
def world_fixture(aiohttp_client: Any, db_path: Any, github: Any, slack: FakeSlackAPI) -> World:
    github.add_repo(REPO)
    github.add_workflow(REPO, CI)
    return World(aiohttp_client, db_path, github, slack.server, ["U0ALICE"])  # type: ignore[attr-defined]


async def test_a_breakage_a_still_failing_run_and_the_fix_are_one_thread_across_a_restart(
    world: World, slack: FakeSlackAPI
) -> None:
    await world.start()
    await world.finish("failure", created=9000, ended=7200)  # broke two hours ago
    await until(lambda: len(slack.parents()) == 1, what="the broken message")
    [parent] = slack.parents()
    assert "Broken" in parent.text
    assert parent.buttons() == ["Re-run failed jobs", "Re-run", "Silence for 1 h"]

    await world.finish("failure", created=6000, ended=5000)
    await until(lambda: len(slack.replies(parent)) == 1, what="the still-failing reply")
    assert "Still failing" in slack.replies(parent)[0].text

    await world.restart()  # the thread is found in the store, not in memory
    fix = await world.finish("success", created=600, ended=0)
    await until(lambda: len(slack.replies(parent)) == 2, what="the fixed reply")

    assert slack.parents() == [parent], "the fix is told in the breakage's thread, not in a new message"
    assert parent.edits == 1
    shown = parent.all_text()
    assert "Fixed" in shown and "Broken" not in shown
    assert fix["head_sha"][:7] in shown, "the parent says which commit fixed it"
    assert "after *2h" in shown, "and after how long"
    assert parent.buttons() == [], "a fixed breakage has nothing left to click"
    reply = slack.replies(parent)[1].all_text()
    assert "Fixed after *2h" in reply and fix["head_sha"][:7] in reply
    assert [t for t, _, _ in world.outbox()] == ["broken", "still_failing", "fixed"]
    assert {state for _, state, _ in world.outbox()} == {"sent"}


async def test_a_new_breakage_after_a_fix_starts_a_new_thread(world: World, slack: FakeSlackAPI) -> None:
    await world.start()
    await world.finish("failure", created=9000, ended=8000)
    await until(lambda: len(slack.parents()) == 1)
    await world.finish("success", created=7000, ended=6000)
    await until(lambda: len(slack.replies(slack.parents()[0])) == 1, what="the fix")
    await world.finish("failure", created=5000, ended=4000)
    await until(lambda: len(slack.parents()) == 2, what="the second breakage's own message")
    assert slack.replies(slack.parents()[1]) == []
    assert slack.parents()[1].buttons(), "the new breakage has its buttons"


async def test_a_rate_limited_post_is_retried_after_slacks_retry_after(world: World, slack: FakeSlackAPI) -> None:
    slack.rate_limit_next("chat.postMessage", retry_after=1)
    await world.start()
    await world.finish("failure", created=9000, ended=8000)
    await until(lambda: world.outbox()[:1] and world.outbox()[0][1] == "sent", what="the retried message")
    statuses = [status for method, status, _ in slack.calls if method == "chat.postMessage"]
    assert statuses == [429, 200]
    with sqlite3.connect(world.db_path) as conn:
        created, sent = conn.execute("SELECT created_at, sent_at FROM outbox").fetchone()
    assert sent - created >= 1.0, "not sent again before Slack's Retry-After"
    assert len(slack.parents()) == 1


@pytest.mark.parametrize(
    ("error", "hint"),
    [
        ("channel_not_found", "no such channel"),
        ("not_in_channel", "invite it"),
        ("invalid_auth", "install the app again"),
    ],
)
async def test_a_refused_post_is_dead_and_says_what_to_do(
    world: World, slack: FakeSlackAPI, error: str, hint: str
) -> None:
    slack.fail_next("chat.postMessage", error)
    await world.start()
    await world.finish("failure", created=9000, ended=8000)
    await until(lambda: world.outbox()[:1] and world.outbox()[0][1] == "dead", what="the dead notification")
    [(_, _, last_error)] = world.outbox()
    assert error in last_error and hint in last_error
    assert BOT_TOKEN not in last_error


async def test_a_method_that_was_rate_limited_is_not_called_again_before_its_retry_after(
    slack: FakeSlackAPI,
) -> None:
    api = WebAPI(str(slack.server.make_url("/api")), Secret(BOT_TOKEN, "inline"))  # type: ignore[attr-defined]
    body = {"channel": CHANNEL, "text": "hello"}
    slack.rate_limit_next("chat.update", retry_after=30)
    async with aiohttp.ClientSession() as http:
        posted = await api.call(http, "chat.postMessage", body)
        with pytest.raises(SinkError) as first:
            await api.call(http, "chat.update", {**body, "ts": posted["ts"]})
        with pytest.raises(SinkError) as second:
            await api.call(http, "chat.update", {**body, "ts": posted["ts"]})
        assert await api.call(http, "chat.postMessage", body), "limits are per method"
    assert first.value.retry_after == 30
    assert second.value.retry_after is not None and 0 < second.value.retry_after <= 30
    assert [m for m, _, _ in slack.calls] == ["chat.postMessage", "chat.update", "chat.postMessage"]


async def test_slack_trouble_is_retried_and_a_wrong_token_is_not(slack: FakeSlackAPI) -> None:
    url = str(slack.server.make_url("/api"))  # type: ignore[attr-defined]
    body = {"channel": CHANNEL, "text": "hello"}
    slack.fail_next("chat.postMessage", "internal_error")
    slack.fail_next("chat.postMessage", "fatal_error", status=500)
    async with aiohttp.ClientSession() as http:
        for _ in range(2):
            with pytest.raises(SinkError):  # not PermanentSinkError: retried
                await WebAPI(url, Secret(BOT_TOKEN, "inline")).call(http, "chat.postMessage", body)
        with pytest.raises(PermanentSinkError, match="invalid_auth"):
            await WebAPI(url, Secret("xoxb-wrong", "inline")).call(http, "chat.postMessage", body)


@pytest.mark.parametrize(
    ("sink", "key", "message"),
    [
        ({"bot_token": BOT_TOKEN}, "sinks.team", "channel: missing"),
        ({"bot_token": BOT_TOKEN, "channel": CHANNEL, "webhook_url": HOOK}, "sinks.team", "bot_token: give"),
        ({"channel": CHANNEL, "webhook_url": HOOK}, "sinks.team", "channel: only for a Slack app"),
        ({}, "sinks.team", "webhook_url: missing"),
    ],
)
def test_a_slack_sink_is_a_webhook_or_an_app(tmp_path: Any, sink: dict[str, Any], key: str, message: str) -> None:
    data = base_config(tmp_path / "db", sinks={"team": {"type": "slack", **sink}})
    with pytest.raises(ConfigError) as caught:
        make_config(data)
    assert any(path == key and message in text for path, text in caught.value.problems), caught.value.problems


def test_allowed_users_are_slack_ids(tmp_path: Any) -> None:
    data = base_config(tmp_path / "db")
    data["rules"] = [{"name": "r", "sinks": ["console"], "actions": {"allowed_users": ["U0ALICE", "@bob"]}}]
    with pytest.raises(ConfigError) as caught:
        make_config(data)
    assert any(path == "rules.0.actions.allowed_users" and "@bob" in text for path, text in caught.value.problems)


async def test_notify_test_posts_a_sample_without_a_thread_or_buttons(tmp_path: Any, slack: FakeSlackAPI) -> None:
    data = base_config(tmp_path / "db", sinks={"team": slack_sink(slack.server)})  # type: ignore[attr-defined]
    [sink] = app_module.make_sinks(make_config(data)).values()
    sent, answer = await send_sample(sink)
    assert sent, answer
    [message] = slack.parents()
    assert "Broken" in message.text and message.buttons() == []
