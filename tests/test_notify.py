"""Notifications end to end: real fixture payloads in, the fake Slack's inbox out."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time

import pytest

from flowforged import app as app_module
from flowforged.store import outbox
from tests.conftest import applied, base_config, fixture, github_headers, github_run, make_config
from tests.fakes.slack import FakeSlack

PIPELINE = "octo-org/octo-repo/.github/workflows/test.yml"


async def until(condition, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def rows(db) -> list[dict]:
    applied(db)  # the outbox rows of every acknowledged delivery are planned
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM outbox ORDER BY id")]


def settled(db) -> bool:
    return all(r["state"] != "pending" for r in rows(db))


@pytest.fixture
async def world(aiohttp_server, aiohttp_client, db_path):
    """The daemon with a Slack sink pointed at a fake Slack; returns (client, slack, post)."""

    async def start(rules=None, script=(), notifications=None, **extra):
        slack = FakeSlack().script(list(script))
        server = await aiohttp_server(slack.app())
        data = base_config(db_path, **extra)
        data["sinks"] = {"team-slack": {"type": "slack", "webhook_url": str(server.make_url(slack.path))}}
        data["rules"] = rules or [
            {
                "name": "main",
                "branches": ["master"],
                "sinks": ["team-slack"],
                "on": ["broken", "still_failing", "fixed"],
                "repeat_interval": "4h",
            }
        ]
        if notifications:
            data["notifications"] = notifications
        application = app_module.build(make_config(data))
        client = await aiohttp_client(application)

        async def post(
            conclusion, run_id, *, branch="master", attempt=1, path=None, sha=None, delivery=None, change=None
        ):
            payload = github_run(
                conclusion,
                run_id=run_id,
                branch=branch,
                attempt=attempt,
                created_at=f"2026-11-27T08:{run_id % 60:02d}:00Z",
                updated_at=f"2026-11-27T08:{run_id % 60:02d}:{10 + attempt:02d}Z",
            )
            if path:
                payload["workflow_run"]["path"] = path
            if sha:
                payload["workflow_run"]["head_sha"] = sha
            if change:
                payload["workflow_run"].update(change)
            body = json.dumps(payload).encode()
            response = await client.post("/hooks/github", data=body, headers=github_headers(body, delivery=delivery))
            assert response.status in (200, 202)

        return client, slack, post

    return start


async def test_broken_once_silent_while_failing_then_fixed(world, db_path):
    client, slack, post = await world()
    await post("success", 1)
    await post("failure", 2)
    await until(lambda: len(slack.messages) == 1, what="the broken message")
    assert "broken" in slack.messages[0]["text"].lower()
    await post("failure", 3)
    await post("failure", 4)
    await until(lambda: settled(db_path))
    assert [r["transition"] for r in rows(db_path)] == ["broken"]  # repeat_interval holds still_failing back
    await post("success", 5)
    await until(lambda: len(slack.messages) == 2, what="the fixed message")
    assert "fixed" in slack.messages[1]["text"].lower()
    assert [(r["transition"], r["state"]) for r in rows(db_path)] == [("broken", "sent"), ("fixed", "sent")]


async def test_the_same_failure_delivered_twice_is_one_message(world, db_path):
    client, slack, post = await world()
    await post("failure", 10, delivery="once")
    await post("failure", 10, delivery="once")  # a redelivery: 200 duplicate
    await post("failure", 10, delivery="twice")  # the same state under another delivery id
    await until(lambda: len(slack.messages) == 1)
    await until(lambda: settled(db_path))
    assert len(rows(db_path)) == 1 and len(slack.received) == 1


async def test_a_failure_on_an_unmatched_branch_notifies_nobody(world, db_path):
    client, slack, post = await world()
    await post("failure", 20, branch="feature/x")
    applied(db_path)
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("SELECT transition FROM runs").fetchall() == [("broken",)]
    assert rows(db_path) == []


async def test_rules_default_to_the_repositorys_default_branch(world, db_path):
    rule = {"name": "default", "sinks": ["team-slack"], "on": ["broken"]}  # no branches: default branch
    client, slack, post = await world(rules=[rule])
    await post("failure", 21, branch="main")  # the fixture repository's default branch is master
    await post("failure", 22, branch="master")
    await until(lambda: len(slack.messages) == 1)
    assert [r["branch"] for r in rows(db_path)] == ["master"]


async def test_first_match_wins_unless_continue(world, db_path):
    rules = [
        {"name": "first", "branches": ["*"], "sinks": ["team-slack"], "on": ["broken"], "continue": True},
        {"name": "second", "branches": ["*"], "sinks": ["team-slack"], "on": ["broken"]},
        {"name": "third", "branches": ["*"], "sinks": ["team-slack"], "on": ["broken"]},
    ]
    client, slack, post = await world(rules=rules)
    await post("failure", 23)
    await until(lambda: settled(db_path) and len(rows(db_path)) == 2)
    assert [r["rule"] for r in rows(db_path)] == ["first", "second"]


async def test_a_silenced_pipeline_records_suppressed_and_sends_nothing(world, db_path):
    client, slack, post = await world()
    store = client.app[app_module.STORE]
    await store.write(
        outbox.add_silence, ["github"], ["octo-org/*"], ["*"], time.time() + 3600, "deploy freeze", time.time()
    )
    await post("failure", 30)
    [row] = rows(db_path)
    assert (row["state"], row["last_error"]) == ("suppressed", "silenced by silence 1")
    await asyncio.sleep(0)
    assert slack.received == []


async def test_slack_429_retry_after_is_honoured_and_delivered_once(world, db_path):
    client, slack, post = await world(script=["429:2", "200"])
    await post("failure", 40)
    await until(lambda: len(slack.messages) == 1, timeout=15)
    first, second = slack.received
    assert first.status == 429 and second.status == 200
    assert second.at - first.at >= 2.0
    await until(lambda: settled(db_path))
    assert [(r["state"], r["attempts"]) for r in rows(db_path)] == [("sent", 2)]


async def test_slack_down_retries_with_growing_delays_then_dead_after_max_age(world, db_path):
    client, slack, post = await world(script=["500"] * 100, notifications={"max_age": "3s", "backoff_base": "100ms"})
    client.app[app_module.DISPATCHER].rng = lambda: 1.0  # the upper bound of the jitter: 0.1, 0.2, 0.4, ...
    await post("failure", 50)
    await until(lambda: settled(db_path), timeout=15, what="the row to end dead")
    [row] = rows(db_path)
    assert row["state"] == "dead" and row["last_error"].startswith("expired: not sent within max_age")
    times = [r.at for r in slack.received]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert len(times) >= 4
    assert all(later > earlier for earlier, later in zip(gaps, gaps[1:], strict=False)), gaps


async def test_permanent_slack_error_is_dead_at_once(world, db_path):
    client, slack, post = await world(script=["404:no_service"])
    await post("failure", 55)
    await until(lambda: settled(db_path))
    [row] = rows(db_path)
    assert row["state"] == "dead" and "no_service" in row["last_error"]
    assert len(slack.received) == 1


async def test_group_wait_gathers_failures_of_one_commit(world, db_path):
    rule = {"name": "main", "branches": ["master"], "sinks": ["team-slack"], "on": ["broken"], "group_wait": "1s"}
    client, slack, post = await world(rules=[rule])
    await post("failure", 60, path=".github/workflows/test.yml", sha="a" * 40)
    await post("failure", 61, path=".github/workflows/lint.yml", sha="a" * 40)
    await until(lambda: len(slack.messages) == 1, timeout=10)
    await until(lambda: settled(db_path))
    assert [r["state"] for r in rows(db_path)] == ["sent", "sent"]
    text = json.dumps(slack.messages[0])
    assert "test.yml" in text and "lint.yml" in text
    assert len(slack.received) == 1


async def test_a_failure_whose_rerun_passes_within_group_wait_is_not_announced(world, db_path):
    rule = {
        "name": "main",
        "branches": ["master"],
        "sinks": ["team-slack"],
        "on": ["broken", "fixed"],
        "group_wait": "2s",
    }
    client, slack, post = await world(rules=[rule])
    await post("failure", 70)
    await post("success", 70, attempt=2)
    assert [(r["transition"], r["state"]) for r in rows(db_path)] == [("broken", "superseded")]
    await asyncio.sleep(2.5)  # past the group wait: nothing was due, so nothing may arrive
    assert slack.received == []


async def test_min_consecutive_failures_for_flaky_pipelines(world, db_path):
    rule = {
        "name": "flaky",
        "branches": ["master"],
        "sinks": ["team-slack"],
        "on": ["broken", "fixed"],
        "min_consecutive_failures": 2,
    }
    client, slack, post = await world(rules=[rule])
    await post("failure", 80)
    await post("success", 81)  # one failure, then fixed: never announced, so no fix either
    assert rows(db_path) == []
    await post("failure", 82)
    await post("failure", 83)
    await post("success", 84)
    await until(lambda: settled(db_path) and len(rows(db_path)) == 2)
    assert [r["transition"] for r in rows(db_path)] == ["broken", "fixed"]


def fork(owner: str = "someone") -> dict:
    """A run of a pull request out of a fork, as GitHub sends it: event pull_request, the fork as the
    head repository, and an empty pull_requests list (GitHub lists only same-repository ones)."""
    head = fixture("github/webhooks/workflow_run.completed.with-pull-requests.json")["workflow_run"]["head_repository"]
    return {
        "event": "pull_request",
        "pull_requests": [],
        "head_repository": {**head, "full_name": f"{owner}/octo-repo", "owner": {**head["owner"], "login": owner}},
    }


async def test_a_forks_pull_request_on_a_branch_named_like_main_leaves_main_alone(world, db_path):
    client, slack, post = await world()
    await post("success", 30)
    await post("failure", 31, change=fork())  # the fork's head branch is called master too
    await post("success", 32)
    await until(lambda: settled(db_path))
    assert rows(db_path) == [] and slack.messages == []  # main was never broken, so never fixed
    applied(db_path)
    with sqlite3.connect(db_path) as conn:
        conn.row_factory = sqlite3.Row
        state = [dict(r) for r in conn.execute("SELECT branch, status FROM pipeline_state ORDER BY branch")]
        pr = dict(
            conn.execute("SELECT branch, head_repo, pull_request, transition FROM runs WHERE run_id = '31'").fetchone()
        )
    assert state == [
        {"branch": "master", "status": "success"},
        {"branch": "someone/octo-repo:master", "status": "failed"},
    ]
    assert pr == {"branch": "master", "head_repo": "someone/octo-repo", "pull_request": None, "transition": "broken"}


async def test_pull_request_runs_notify_only_rules_that_ask_for_them(world, db_path):
    rules = [
        {"name": "prs", "sinks": ["team-slack"], "on": ["broken"], "pull_requests": True, "continue": True},
        {"name": "main", "branches": ["master"], "sinks": ["team-slack"], "on": ["broken"]},
    ]
    client, slack, post = await world(rules=rules)
    same_repo = fixture("github/webhooks/workflow_run.completed.with-pull-requests.json")["workflow_run"]
    pull = {"event": "pull_request", "pull_requests": same_repo["pull_requests"], "head_branch": "changes"}
    await post("failure", 40, change=pull)
    await post("failure", 41, change=fork("other"))
    await post("failure", 42)
    await until(lambda: len(rows(db_path)) == 4 and settled(db_path))
    # `pull_requests: true` adds pull requests to what a rule takes: the default branch stays in.
    assert [(r["rule"], r["branch"]) for r in rows(db_path)] == [
        ("prs", "octo-org/octo-repo:changes"),
        ("prs", "other/octo-repo:master"),
        ("prs", "master"),
        ("main", "master"),
    ]
    assert json.loads(rows(db_path)[0]["payload"])["pull_request"] == 2
