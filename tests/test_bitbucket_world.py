"""Bitbucket Pipelines as a first-class source: the real daemon, the fake Bitbucket Cloud API and its
build status webhooks, the fake Slack and the control API, as an operator would see them together."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from flowforged import app as app_module
from flowforged.poller import POLLER
from flowforged_plugins.bitbucket import sign
from tests.conftest import API_TOKEN, base_config, make_config
from tests.fakes.bitbucket_api import FakeBitbucket, bb_time
from tests.test_notify import until
from tests.test_poller import Clock, standalone
from tests.world import query, start_with_slack

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
SECRET = "bb-webhook-secret-5e1f0a"
TOKEN = "ATCTT3xFfGN0w0rld0test0token0000000000000000"


def source(server: Any, repos: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "type": "bitbucket",
        "webhook_secret": SECRET,
        "token": TOKEN,
        "api_url": str(server.make_url("/2.0")),
        "repos": repos,
        "poll_interval": "1h",  # the first cycle runs at start; the tests run the others
        "points_per_minute": 6000,  # not the 15 a minute of Bitbucket's hourly limit: the tests would wait
        **extra,
    }


def ago(seconds: float) -> str:
    return bb_time(time.time() - seconds)


async def fake_bitbucket(aiohttp_server: Any, **options: Any) -> FakeBitbucket:
    fake = FakeBitbucket(token=TOKEN, **options)
    fake.server = await aiohttp_server(fake.app)
    return fake


async def start(
    aiohttp_client: Any, aiohttp_server: Any, db_path: Path, fake: FakeBitbucket, repos: list[str], **rule: Any
):
    return await start_with_slack(
        aiohttp_client, aiohttp_server, db_path, "bitbucket", source(fake.server, repos), **rule
    )


async def api_runs(client: Any) -> list[dict[str, Any]]:
    return (await (await client.get("/api/v1/runs", headers=AUTH)).json())["runs"]


async def test_a_pipeline_told_by_webhooks_and_by_polling_is_one_run_and_one_notification(
    aiohttp_client, aiohttp_server, db_path
):
    fake = await fake_bitbucket(aiohttp_server)
    client, slack = await start(aiohttp_client, aiohttp_server, db_path, fake, ["acme/web"])
    hook = client.make_url("/hooks/bitbucket")
    poller = client.app[POLLER]

    pipeline = fake.add_pipeline("acme/web", state_name="IN_PROGRESS", steps=("Build", "Test"), created_on=ago(60))
    created = await fake.send_webhook(
        client.session, hook, fake.status_payload(pipeline["uuid"]), secret=SECRET, event="repo:commit_status_created"
    )
    assert created.status == 202
    fake.finish(pipeline["uuid"], "FAILED", failed_steps=("Test",))
    updated = await fake.send_webhook(client.session, hook, fake.status_payload(pipeline["uuid"]), secret=SECRET)
    assert updated.status == 202
    cycle = await poller.poll_once("bitbucket")
    # The webhooks told the failure; the poll adds the failed step (a build status names none), no transition.
    assert (cycle.ok, cycle.transitions) == (True, [])

    [run] = await api_runs(client)
    assert (run["pipeline"], run["run_id"], run["number"], run["branch"]) == ("acme/web", "acme/web#1", 1, "main")
    assert (run["status"], run["transition"]) == ("failed", "broken")
    assert run["sha"] == pipeline["target"]["commit"]["hash"]
    await until(lambda: len(slack.messages) == 1, what="the breakage in Slack")
    assert "acme/web" in json.dumps(slack.messages[0])
    assert [j["name"] for j in query(db_path, "SELECT name FROM jobs WHERE status = 'failed'")] == ["Test"]

    # The next one is polled first; its webhook comes late and changes nothing.
    again = fake.add_pipeline("acme/web", state_name="FAILED")
    cycle = await poller.poll_once("bitbucket")
    assert [t["transition"] for t in cycle.transitions] == ["still_failing"]
    late = await fake.send_webhook(client.session, hook, fake.status_payload(again["uuid"]), secret=SECRET)
    assert late.status == 202
    assert len(await api_runs(client)) == 2
    assert (await poller.poll_once("bitbucket")).events == 0
    assert len(slack.received) == 1
    assert query(db_path, "SELECT transition FROM outbox ORDER BY id") == [{"transition": "broken"}]


async def test_a_failure_told_by_webhook_names_its_failed_step_when_a_poll_comes_within_group_wait(
    aiohttp_client, aiohttp_server, db_path
):
    fake = await fake_bitbucket(aiohttp_server)
    client, slack = await start(aiohttp_client, aiohttp_server, db_path, fake, ["acme/web"], group_wait="3s")
    pipeline = fake.add_pipeline("acme/web", state_name="FAILED", failed_steps=("Lint",), steps=("Lint", "Test"))
    hook = client.make_url("/hooks/bitbucket")
    delivery = await fake.send_webhook(client.session, hook, fake.status_payload(pipeline["uuid"]), secret=SECRET)
    assert delivery.status == 202
    cycle = await client.app[POLLER].poll_once("bitbucket")
    assert (cycle.events, cycle.transitions) == (1, [])  # the failed step; the failure was told
    await until(lambda: len(slack.messages) == 1, what="the breakage in Slack, after group_wait")
    assert "Lint" in json.dumps(slack.messages[0]) and "Test" not in json.dumps(slack.messages[0])


async def test_pipelines_missed_while_the_daemon_was_down_are_found_by_polling(aiohttp_client, aiohttp_server, db_path):
    fake = await fake_bitbucket(aiohttp_server)
    client, slack = await start(aiohttp_client, aiohttp_server, db_path, fake, ["acme/web", "acme/api"])
    await client.close()  # down: no webhook reaches it, pipelines go on in Bitbucket
    made = [
        fake.add_pipeline(repo, branch=branch, state_name=state, created_on=ago(3000 - n * 300))
        for n, (repo, branch, state) in enumerate(
            [
                ("acme/web", "main", "SUCCESSFUL"),
                ("acme/web", "main", "FAILED"),
                ("acme/web", "main", "ERROR"),
                ("acme/api", "main", "SUCCESSFUL"),
                ("acme/api", "feature/login", "FAILED"),
                ("acme/api", "main", "IN_PROGRESS"),
            ]
        )
    ]
    fake.add_pipeline("elsewhere/site", state_name="FAILED", created_on=ago(100))  # not polled

    client, slack = await start(aiohttp_client, aiohttp_server, db_path, fake, ["acme/web", "acme/api"])
    poller = client.app[POLLER]
    runs = {r["run_id"]: r for r in await api_runs(client)}
    ids = [f"{p['_repo']}#{p['build_number']}" for p in made]
    assert set(runs) == set(ids)
    assert [runs[i]["transition"] for i in ids] == [None, "broken", "still_failing", None, "broken", None]
    assert [runs[i]["status"] for i in ids] == ["success", "failed", "failed", "success", "failed", "running"]
    await until(lambda: len(slack.messages) == 2, what="one message per breakage")
    failed = query(db_path, "SELECT name FROM jobs WHERE status = 'failed'")
    assert [j["name"] for j in failed] == ["Test"] * 3  # read from the steps, so that notifications name them

    # The running one ends while nobody is told: the next cycle finds it, one request per repository.
    fake.finish(made[-1]["uuid"], "FAILED")
    cycle = await poller.poll_once("bitbucket")
    assert [(t["run_id"], t["transition"]) for t in cycle.transitions] == [(ids[-1], "broken")]
    quiet = await poller.poll_once("bitbucket")
    assert (quiet.events, quiet.transitions, quiet.requests["ok"]) == (0, [], 2)
    listed = [r for r in fake.requests if r.path.endswith("/pipelines/")]
    assert {(r.query["sort"], r.query["pagelen"]) for r in listed} == {("-created_on", "100")}


async def test_an_unfinished_pipeline_older_than_the_window_is_followed(aiohttp_client, aiohttp_server, db_path):
    fake = await fake_bitbucket(aiohttp_server)
    slow = fake.add_pipeline("acme/web", state_name="IN_PROGRESS", created_on=ago(7200))
    for n in range(150):  # newer pipelines of another branch push it to the second page
        fake.add_pipeline("acme/web", branch="dev", state_name="SUCCESSFUL", created_on=ago(7000 - n), steps=("Build",))
    client, _ = await start(aiohttp_client, aiohttp_server, db_path, fake, ["Acme/Web"])  # as the URL has it
    poller = client.app[POLLER]
    fake.finish(slow["uuid"], "FAILED")
    fake.requests.clear()
    cycle = await poller.poll_once("bitbucket")
    assert [t["run_id"] for t in cycle.transitions] == ["acme/web#1"]
    pages = [r.query.get("page") for r in fake.requests if r.path.endswith("/pipelines/")]
    assert pages == [None, "2"]  # through the `next` URL of the body, down to build #1


async def test_bad_signatures_get_401_and_store_nothing(aiohttp_client, aiohttp_server, db_path):
    fake = await fake_bitbucket(aiohttp_server)
    pipeline = fake.add_pipeline("acme/web", state_name="FAILED")
    client = await aiohttp_client(
        app_module.build(
            make_config(base_config(db_path, sources={"bitbucket": {"type": "bitbucket", "webhook_secret": SECRET}}))
        )
    )
    hook = client.make_url("/hooks/bitbucket")
    payload = fake.status_payload(pipeline["uuid"])
    body = json.dumps(payload).encode()
    for attempt in [
        {"secret": None},  # a webhook without a secret: unsigned
        {"secret": "another-secret"},
        {"secret": None, "signature": "sha1=" + sign(SECRET, body).removeprefix("sha256=")},
        {"secret": None, "signature": sign(SECRET, body)},  # the signature of another body (json.dumps again)
    ]:
        if attempt.get("signature") == sign(SECRET, body):
            payload = {**payload, "commit_status": {**payload["commit_status"], "state": "SUCCESSFUL"}}
        delivery = await fake.send_webhook(client.session, hook, payload, **attempt)
        assert delivery.status == 401, attempt
    assert query(db_path, "SELECT id FROM deliveries") == [] and query(db_path, "SELECT id FROM runs") == []

    good = await fake.send_webhook(client.session, hook, fake.status_payload(pipeline["uuid"]), secret=SECRET)
    assert good.status == 202
    assert len(query(db_path, "SELECT id FROM runs")) == 1
    [stored] = query(db_path, "SELECT delivery_id FROM deliveries")
    assert stored["delivery_id"] == good.delivery_id  # X-Request-UUID


async def test_trigger_rerun_and_cancel_through_the_api_reach_bitbucket(aiohttp_client, aiohttp_server, db_path):
    fake = await fake_bitbucket(aiohttp_server)
    failed = fake.add_pipeline(
        "acme/web",
        state_name="FAILED",
        created_on=ago(600),
        target={
            "type": "pipeline_ref_target",
            "ref_type": "branch",
            "ref_name": "main",
            "commit": {"type": "commit", "hash": "9fec847784abb10b2fa567ee63b85bd238955d0e"},
            "selector": {"type": "custom", "pattern": "nightly"},
        },
    )
    client, _ = await start(aiohttp_client, aiohttp_server, db_path, fake, ["acme/web"])
    [pipeline] = (await (await client.get("/api/v1/pipelines", headers=AUTH)).json())["pipelines"]
    [run] = await api_runs(client)
    fake.requests.clear()

    response = await client.post(
        f"/api/v1/pipelines/{pipeline['id']}/trigger",
        headers=AUTH,
        json={"ref": "main", "inputs": {"pipeline": "deploy"}, "variables": {"DEPLOY_ENV": "staging"}},
    )
    assert response.status == 202, await response.text()
    started = (await response.json())["run"]
    assert (started["run_id"], started["number"], started["branch"]) == ("acme/web#2", 2, "main")
    running = fake.find("acme/web", 2)
    fake.move(running["uuid"], "IN_PROGRESS")
    response = await client.post(f"/api/v1/runs/{run['id']}/rerun", headers=AUTH, json={})
    assert response.status == 202, await response.text()
    response = await client.post(f"/api/v1/runs/{run['id']}/rerun", headers=AUTH, json={"failed_only": True})
    assert response.status == 422 and "failed_only" in (await response.json())["error"]["message"]
    base = "/2.0/repositories/acme/web/pipelines/"
    list_query = {"sort": "-created_on", "pagelen": "100"}
    sent = [(r.method, r.path, r.json) for r in fake.requests]
    assert sent == [
        (
            "POST",
            base,
            {
                "target": {
                    "type": "pipeline_ref_target",
                    "ref_type": "branch",
                    "ref_name": "main",
                    "selector": {"type": "custom", "pattern": "deploy"},
                },
                "variables": [{"key": "DEPLOY_ENV", "value": "staging", "secured": False}],
            },
        ),
        ("GET", base, None),  # the UUID of build #1
        (
            "POST",
            base,
            {
                "target": {
                    "type": "pipeline_ref_target",
                    "ref_type": "branch",
                    "ref_name": "main",
                    "selector": {"type": "custom", "pattern": "nightly"},
                    "commit": {"type": "commit", "hash": "9fec847784abb10b2fa567ee63b85bd238955d0e"},
                },
            },
        ),
    ]
    assert dict(fake.requests[1].query) == list_query
    assert fake.find("acme/web", 3)["target"]["commit"]["hash"] == failed["target"]["commit"]["hash"]

    # Stop the triggered one, once it is known; stopping a completed one is Bitbucket's 400, said as 409.
    await client.app[POLLER].poll_once("bitbucket")
    runs = {r["run_id"]: r for r in await api_runs(client)}
    fake.requests.clear()
    response = await client.post(f"/api/v1/runs/{runs['acme/web#2']['id']}/cancel", headers=AUTH, json={})
    assert response.status == 202, await response.text()
    assert [(r.method, r.path, r.json) for r in fake.requests][-1] == (
        "POST",
        f"{base}%7B{running['uuid'][1:-1]}%7D/stopPipeline",
        None,
    )
    assert fake.find("acme/web", 2)["state"]["result"]["name"] == "STOPPED"
    response = await client.post(f"/api/v1/runs/{run['id']}/cancel", headers=AUTH, json={})
    assert response.status == 409
    error = (await response.json())["error"]
    assert "pipeline #1 of acme/web cannot be cancelled" in error["message"] and TOKEN not in error["message"]


async def test_a_rate_limited_source_sends_nothing_until_it_may(aiohttp_server, db_path):
    clock = Clock(time.time())
    fake = await fake_bitbucket(aiohttp_server, clock=clock)
    fake.add_pipeline("acme/web", state_name="FAILED", created_on=ago(600))
    config = make_config(
        base_config(db_path, sources={"bitbucket": source(fake.server, ["acme/web"], poll_interval=0)})
    )
    async with standalone(config, clock) as poller:
        fake.exhaust(reset_in=3600)  # 429: "Rate limit for this resource has been exceeded", no Retry-After
        first = await poller.poll_once("bitbucket")
        assert first.rate_limited and len(fake.requests) == 1 and fake.requests[0].status == 429
        clock.now += 30
        assert (await poller.poll_once("bitbucket")).rate_limited and len(fake.requests) == 1
        fake.set_rate_limit(remaining=1000)
        clock.now += 31  # a minute after the refusal
        resumed = await poller.poll_once("bitbucket")
        assert resumed.ok and len(query(db_path, "SELECT id FROM runs")) == 1
