"""One fake CI world drives both halves: the fake GitHub's API and its webhooks, the fake Slack, and
the daemon's control API, as an operator would see them together (issues 3 and 4)."""

from __future__ import annotations

import sqlite3

from flowforged import app as app_module
from flowforged.poller import POLLER
from tests.conftest import API_TOKEN, GH_TOKEN, GITHUB_SECRET, base_config, make_config
from tests.fakes.slack import FakeSlack
from tests.test_notify import until
from tests.test_poller import CI, REPO, completed, github_source

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


async def start_daemon(aiohttp_client, aiohttp_server, db_path, fake):
    slack = FakeSlack()
    slack_server = await aiohttp_server(slack.app())
    data = base_config(db_path, sources={"github": github_source(fake.server, [REPO])})
    data["sinks"] = {"team-slack": {"type": "slack", "webhook_url": str(slack_server.make_url(slack.path))}}
    data["rules"] = [{"name": "all", "branches": ["*"], "on": ["broken"], "sinks": ["team-slack"]}]
    client = await aiohttp_client(app_module.build(make_config(data)))
    return client, slack


def outbox(db_path) -> list[tuple[str, str]]:
    with sqlite3.connect(db_path) as conn:
        return conn.execute("SELECT transition, state FROM outbox ORDER BY id").fetchall()


async def test_runs_missed_while_down_are_found_and_each_failure_notified_once(
    aiohttp_client, aiohttp_server, db_path, github
):
    github.add_repo(REPO)
    client, slack = await start_daemon(aiohttp_client, aiohttp_server, db_path, github)
    await until(lambda: client.app[POLLER].last_cycle("github") is not None)
    await client.close()  # the daemon is down and no webhook reaches it: five runs, two failing
    made = [
        completed(github, branch, conclusion, created=3000 - n * 300)
        for n, (branch, conclusion) in enumerate(
            [("main", "success"), ("main", "failure"), ("main", "failure"), ("dev", "success"), ("dev", "failure")]
        )
    ]
    client, slack = await start_daemon(aiohttp_client, aiohttp_server, db_path, github)
    poller = client.app[POLLER]
    await until(lambda: poller.last_cycle("github") is not None, what="the first cycle after the restart")
    response = await client.get("/api/v1/runs", headers=AUTH)
    listed = {r["run_id"]: r for r in (await response.json())["runs"]}
    assert set(listed) == {str(r["id"]) for r in made}
    assert sorted(r["transition"] or "" for r in listed.values()) == ["", "", "broken", "broken", "still_failing"]
    await until(lambda: len(slack.messages) == 2, what="one message per breakage")
    # Webhooks for the same runs arrive late, and the poller runs again: nothing new is said.
    for run in made:
        delivery = await github.send_webhook(client.session, client.make_url("/hooks/github"), run["id"], GITHUB_SECRET)
        assert delivery.status == 202
    await poller.poll_once("github")
    assert outbox(db_path) == [("broken", "sent"), ("broken", "sent")]
    assert len(slack.received) == 2


async def test_trigger_rerun_and_cancel_through_the_api_reach_github(aiohttp_client, aiohttp_server, db_path, github):
    github.add_repo(REPO)
    github.add_workflow(REPO, CI)
    failed = completed(github, "main", "failure", created=600, jobs=True)
    client, _ = await start_daemon(aiohttp_client, aiohttp_server, db_path, github)
    await until(lambda: client.app[POLLER].last_cycle("github") is not None)
    [pipeline] = (await (await client.get("/api/v1/pipelines", headers=AUTH)).json())["pipelines"]
    [run] = (await (await client.get("/api/v1/runs", headers=AUTH)).json())["runs"]
    assert run["run_id"] == str(failed["id"])
    github.requests.clear()

    response = await client.post(
        f"/api/v1/pipelines/{pipeline['id']}/trigger",
        headers=AUTH,
        json={"ref": "main", "inputs": {"environment": "staging"}},
    )
    assert response.status == 202, await response.text()
    response = await client.post(f"/api/v1/runs/{run['id']}/rerun", headers=AUTH, json={"failed_only": True})
    assert response.status == 202, await response.text()
    response = await client.post(f"/api/v1/runs/{run['id']}/cancel", headers=AUTH, json={"force": True})
    assert response.status == 202, await response.text()
    posts = [(r.method, r.path, r.json) for r in github.requests if r.method == "POST"]
    assert posts == [
        (
            "POST",
            f"/repos/{REPO}/actions/workflows/ci.yml/dispatches",
            {"ref": "main", "inputs": {"environment": "staging"}, "return_run_details": True},
        ),
        ("POST", f"/repos/{REPO}/actions/runs/{failed['id']}/rerun-failed-jobs", None),
        ("POST", f"/repos/{REPO}/actions/runs/{failed['id']}/force-cancel", None),
    ]


async def test_cancelling_a_finished_run_is_a_clear_409(aiohttp_client, aiohttp_server, db_path, github):
    github.add_repo(REPO)
    completed(github, "main", "success", created=600)
    client, _ = await start_daemon(aiohttp_client, aiohttp_server, db_path, github)
    await until(lambda: client.app[POLLER].last_cycle("github") is not None)
    [run] = (await (await client.get("/api/v1/runs", headers=AUTH)).json())["runs"]
    response = await client.post(f"/api/v1/runs/{run['id']}/cancel", headers=AUTH, json={})
    assert response.status == 409
    error = (await response.json())["error"]
    assert "cannot be cancelled" in error["message"] and GH_TOKEN not in await response.text()
