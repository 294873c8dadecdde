"""Clicks on the Slack app's buttons (`POST /hooks/slack/actions`): signed by the fake Slack as Slack
documents it, turned into operations at the fake GitHub, recorded with who asked; replayed, forged and
unauthorized clicks do nothing."""

from __future__ import annotations

import sqlite3
import time
import urllib.parse
from typing import Any

import pytest

from tests.conftest import API_TOKEN
from tests.fakes.slack_api import FakeSlackAPI, Message, sign
from tests.plugins.test_slack_app import SIGNING_SECRET, World, slack_fixture, world_fixture  # noqa: F401 - fixtures
from tests.test_notify import until

ALICE = ("U0ALICE", "alice")
MALLORY = ("U0MALLORY", "mallory")


def requests(db_path: Any) -> list[dict[str, Any]]:
    with sqlite3.connect(db_path) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(row) for row in conn.execute("SELECT * FROM operation_requests ORDER BY id")]


def reruns(github: Any) -> list[str]:
    return [r.path for r in github.requests if r.method == "POST" and "/rerun" in r.path]


async def broken(world: World, slack: FakeSlackAPI) -> tuple[Any, Message, dict[str, Any]]:
    client = await world.start()
    run = await world.finish("failure", created=9000, ended=7200)
    await until(lambda: len(slack.parents()) == 1, what="the broken message")
    world.github.requests.clear()
    return client, slack.parents()[0], run


async def click(client: Any, body: bytes, headers: dict[str, str]) -> Any:
    return await client.post("/hooks/slack/actions", data=body, headers=headers)


async def test_a_signed_click_reruns_the_failed_jobs_and_says_who_asked(world: World, slack: FakeSlackAPI) -> None:
    client, parent, run = await broken(world, slack)
    response = await click(client, *slack.click(parent, "rerun_failed", ALICE, SIGNING_SECRET))
    assert response.status == 200
    await until(lambda: reruns(world.github), what="the re-run at GitHub")
    [path] = reruns(world.github)
    assert path.endswith(f"/actions/runs/{run['id']}/rerun-failed-jobs")
    await until(lambda: parent.edits == 1, what="the message to show who asked")
    assert "Re-run of the failed jobs requested by <@U0ALICE>" in parent.all_text()
    assert parent.buttons(), "the buttons stay for the next click"
    [asked] = requests(world.db_path)
    assert (asked["user_id"], asked["user_name"], asked["action"], asked["outcome"]) == (
        "U0ALICE",
        "alice",
        "rerun_failed",
        "accepted",
    )
    assert asked["source"] == "github" and asked["branch"] == "main"


async def test_rerun_reruns_every_job(world: World, slack: FakeSlackAPI) -> None:
    client, parent, run = await broken(world, slack)
    assert (await click(client, *slack.click(parent, "rerun", ALICE, SIGNING_SECRET))).status == 200
    await until(lambda: reruns(world.github), what="the re-run at GitHub")
    assert reruns(world.github)[0].endswith(f"/actions/runs/{run['id']}/rerun")


async def test_silence_for_an_hour_silences_the_pipeline(world: World, slack: FakeSlackAPI) -> None:
    client, parent, _ = await broken(world, slack)
    assert (await click(client, *slack.click(parent, "silence_1h", ALICE, SIGNING_SECRET))).status == 200
    await until(lambda: requests(world.db_path), what="the request")
    response = await client.get("/api/v1/silences", headers={"Authorization": f"Bearer {API_TOKEN}"})
    [silence] = (await response.json())["silences"]
    assert silence["sources"] == ["github"] and silence["branches"] == ["main"]
    assert silence["comment"] == "from Slack by @alice"
    assert reruns(world.github) == []


async def test_a_replayed_click_is_refused_and_does_nothing(world: World, slack: FakeSlackAPI) -> None:
    client, parent, _ = await broken(world, slack)
    old = int(time.time()) - 6 * 60  # captured six minutes ago, signed with the right secret
    response = await click(client, *slack.click(parent, "rerun", ALICE, SIGNING_SECRET, timestamp=old))
    assert response.status == 401
    fresh = await click(client, *slack.click(parent, "silence_1h", ALICE, SIGNING_SECRET))
    assert fresh.status == 200  # a later genuine click shows the replay was not merely slow
    await until(lambda: requests(world.db_path), what="the genuine click")
    assert [r["action"] for r in requests(world.db_path)] == ["silence_1h"]
    assert reruns(world.github) == []


@pytest.mark.parametrize("forgery", ["wrong secret", "body changed", "no signature"])
async def test_a_forged_click_is_401_and_does_nothing(world: World, slack: FakeSlackAPI, forgery: str) -> None:
    client, parent, _ = await broken(world, slack)
    body, headers = slack.click(parent, "rerun", ALICE, SIGNING_SECRET)
    if forgery == "wrong secret":
        body, headers = slack.click(parent, "rerun", ALICE, "not-the-signing-secret")
    elif forgery == "body changed":
        _, headers = slack.click(parent, "rerun", MALLORY, SIGNING_SECRET)  # another click's signature
    else:
        del headers["X-Slack-Signature"]
    assert (await click(client, body, headers)).status == 401
    fresh = await click(client, *slack.click(parent, "silence_1h", ALICE, SIGNING_SECRET))
    assert fresh.status == 200
    await until(lambda: requests(world.db_path), what="the genuine click")
    assert [r["action"] for r in requests(world.db_path)] == ["silence_1h"]
    assert reruns(world.github) == []
    assert parent.edits == 1  # the genuine click's note only


async def test_a_user_not_allowed_gets_an_ephemeral_refusal(world: World, slack: FakeSlackAPI) -> None:
    client, parent, _ = await broken(world, slack)
    assert (await click(client, *slack.click(parent, "rerun", MALLORY, SIGNING_SECRET))).status == 200
    await until(lambda: slack.ephemeral, what="the refusal")
    [refusal] = slack.ephemeral
    assert refusal["user"] == "U0MALLORY" and refusal["channel"] == parent.channel
    assert "not allowed" in refusal["text"] and "actions.allowed_users" in refusal["text"]
    [asked] = requests(world.db_path)
    assert (asked["user_id"], asked["outcome"]) == ("U0MALLORY", "refused")
    assert reruns(world.github) == []
    assert parent.edits == 0


async def test_a_member_of_an_allowed_user_group_may_act(
    aiohttp_client: Any, db_path: Any, github: Any, slack: FakeSlackAPI
) -> None:
    github.add_repo("octo-org/octo-repo")
    github.add_workflow("octo-org/octo-repo", ".github/workflows/ci.yml")
    slack.usergroups["S0ONCALL"] = ["U0BOB"]
    group_world = World(aiohttp_client, db_path, github, slack.server, ["S0ONCALL"])  # type: ignore[attr-defined]
    client, parent, _ = await broken(group_world, slack)
    assert (await click(client, *slack.click(parent, "rerun", ("U0BOB", "bob"), SIGNING_SECRET))).status == 200
    await until(lambda: reruns(github), what="the re-run at GitHub")
    assert (await click(client, *slack.click(parent, "rerun", ALICE, SIGNING_SECRET))).status == 200
    await until(lambda: slack.ephemeral, what="alice, not in the group, refused")
    assert len(reruns(github)) == 1


async def test_a_click_over_the_body_limit_is_refused_unread(world: World, slack: FakeSlackAPI) -> None:
    client, _, _ = await broken(world, slack)
    body = b"payload=" + b"x" * (1024 * 1024 + 1)
    response = await click(client, body, sign(body, SIGNING_SECRET, int(time.time())))
    assert response.status == 413
    assert requests(world.db_path) == []


async def test_a_signed_payload_nested_too_deep_is_400_and_does_nothing(world: World, slack: FakeSlackAPI) -> None:
    client, _, _ = await broken(world, slack)
    body = b"payload=" + urllib.parse.quote("[" * 100_000 + "]" * 100_000).encode()
    response = await click(client, body, sign(body, SIGNING_SECRET, int(time.time())))
    assert response.status == 400
    assert requests(world.db_path) == [] and reruns(world.github) == []
