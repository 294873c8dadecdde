"""Buildkite as a first-class source: the real daemon, the fake Buildkite's REST API and
webhooks, the fake Slack and the control API, as an operator would see them together."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from flowforged import app as app_module
from flowforged.poller import POLLER
from flowforged.signatures import signature_header
from tests.conftest import API_TOKEN, base_config, make_config
from tests.fakes.buildkite_api import FakeBuildkite
from tests.test_notify import until
from tests.test_poller import Clock, standalone
from tests.world import late_delivery, query, start_with_slack

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
SECRET = "bk-webhook-token-4f0a1c"
TOKEN = "bkua_w0rld0test0token00000000000000000000"


def source(server: Any, repos: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "type": "buildkite",
        "webhook_secret": SECRET,
        "token": TOKEN,
        "api_url": str(server.make_url("/v2")),
        "repos": repos,
        "poll_interval": "1h",  # the first cycle runs at start; the tests run the others
        **extra,
    }


def ago(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(time.time() - seconds))


async def start(aiohttp_client: Any, aiohttp_server: Any, db_path: Path, fake: FakeBuildkite, repos: list[str]):
    return await start_with_slack(aiohttp_client, aiohttp_server, db_path, "buildkite", source(fake.server, repos))


async def fake_buildkite(aiohttp_server: Any, **options: Any) -> FakeBuildkite:
    fake = FakeBuildkite(token=TOKEN, **options)
    fake.server = await aiohttp_server(fake.app)
    return fake


async def api_runs(client: Any) -> list[dict[str, Any]]:
    return (await (await client.get("/api/v1/runs", headers=AUTH)).json())["runs"]


async def test_a_build_told_by_webhooks_and_by_polling_is_one_run_and_one_notification(
    aiohttp_client, aiohttp_server, db_path
):
    fake = await fake_buildkite(aiohttp_server)
    fake.add_pipeline("acme/web")
    client, slack = await start(aiohttp_client, aiohttp_server, db_path, fake, ["acme/web"])
    hook = client.make_url("/hooks/buildkite")
    poller = client.app[POLLER]

    build = fake.add_build("acme/web", state="running", jobs=("RSpec", "Lint"), created_at=ago(60))
    delivery = await fake.send_webhook(client.session, hook, fake.webhook_payload(build["id"]), signing_token=SECRET)
    assert delivery.status == 202
    fake.set_state(build["id"], "failed", failed_jobs=("Lint",))
    lint = next(j for j in build["jobs"] if j.get("name") == "Lint")
    job_delivery = await fake.send_webhook(client.session, hook, fake.job_payload(lint), token=SECRET)
    delivery = await fake.send_webhook(client.session, hook, fake.webhook_payload(build["id"]), signing_token=SECRET)
    assert (job_delivery.status, delivery.status) == (202, 202)
    cycle = await poller.poll_once("buildkite")
    assert (cycle.ok, cycle.events, cycle.transitions) == (True, 0, [])  # the webhooks told it all

    [run] = await api_runs(client)
    assert (run["pipeline"], run["run_id"], run["number"], run["branch"]) == ("acme/web", build["id"], 1, "main")
    assert (run["status"], run["provider_status"], run["transition"]) == ("failed", "failed", "broken")
    assert run["url"] == build["web_url"] and run["sha"] == build["commit"]
    await until(lambda: len(slack.messages) == 1, what="the breakage in Slack")
    assert "acme/web" in json.dumps(slack.messages[0]) and "Lint" in json.dumps(slack.messages[0])
    states = [e["status"] for e in query(db_path, "SELECT status FROM events WHERE kind = 'run' ORDER BY id")]
    assert states == ["running", "failed"]

    # The next one is polled first; its webhook comes late and adds nothing.
    again = fake.add_build("acme/web", state="failed")
    cycle = await poller.poll_once("buildkite")
    assert [t["transition"] for t in cycle.transitions] == ["still_failing"]
    delivery = await fake.send_webhook(client.session, hook, fake.webhook_payload(again["id"]), token=SECRET)
    assert delivery.status == 202
    late = late_delivery(db_path, delivery.body)
    assert late == [{"parse_error": None, "events": 0}]  # applied, and it recorded nothing new
    assert len(await api_runs(client)) == 2
    assert (await poller.poll_once("buildkite")).events == 0
    assert len(slack.received) == 1


async def test_builds_missed_while_the_daemon_was_down_are_found_by_polling(aiohttp_client, aiohttp_server, db_path):
    fake = await fake_buildkite(aiohttp_server)
    fake.add_pipeline("acme/web")
    fake.add_pipeline("acme/api")
    fake.add_pipeline("elsewhere/site")
    client, slack = await start(aiohttp_client, aiohttp_server, db_path, fake, ["acme/*"])
    await client.close()  # down: no webhook reaches it, builds go on in Buildkite
    made = [
        fake.add_build(key, branch=branch, state=state, created_at=ago(3000 - n * 300))
        for n, (key, branch, state) in enumerate(
            [
                ("acme/web", "main", "passed"),
                ("acme/web", "main", "failed"),
                ("acme/web", "main", "failed"),
                ("acme/api", "main", "passed"),
                ("acme/api", "feature/login", "failed"),
                ("acme/api", "main", "running"),
            ]
        )
    ]
    fake.add_build("elsewhere/site", state="failed", created_at=ago(100))  # another organization

    client, slack = await start(aiohttp_client, aiohttp_server, db_path, fake, ["acme/*"])
    poller = client.app[POLLER]
    runs = {r["run_id"]: r for r in await api_runs(client)}
    assert set(runs) == {b["id"] for b in made}
    assert [runs[b["id"]]["transition"] for b in made] == [None, "broken", "still_failing", None, "broken", None]
    assert [runs[b["id"]]["status"] for b in made] == ["success", "failed", "failed", "success", "failed", "running"]
    await until(lambda: len(slack.messages) == 2, what="one message per breakage")
    # The failed jobs were read from the builds, so that the notifications name them.
    failed = query(db_path, "SELECT name FROM jobs WHERE status = 'failed'")
    assert [j["name"] for j in failed] == ["Lint"] * 3

    # The running build ends while nobody is told: the next cycle finds it among the finished ones.
    fake.set_state(made[-1]["id"], "failed")
    cycle = await poller.poll_once("buildkite")
    assert [(t["run_id"], t["transition"]) for t in cycle.transitions] == [(made[-1]["id"], "broken")]
    quiet = await poller.poll_once("buildkite")
    assert (quiet.events, quiet.transitions, quiet.requests["ok"]) == (0, [], 2)  # created + finished windows
    await until(lambda: len(slack.messages) == 3)
    assert (
        query(db_path, "SELECT transition, state FROM outbox ORDER BY id")
        == [{"transition": "broken", "state": "sent"}] * 3
    )


async def test_an_unfinished_build_older_than_the_windows_is_followed(aiohttp_client, aiohttp_server, db_path):
    fake = await fake_buildkite(aiohttp_server)
    slow = fake.add_build("acme/web", state="scheduled", created_at=ago(600))
    fake.add_build("acme/web", state="passed", created_at=ago(10))  # the created cursor moves past the slow one
    client, _ = await start(aiohttp_client, aiohttp_server, db_path, fake, ["acme/web"])
    poller = client.app[POLLER]
    fake.set_state(slow["id"], "running")  # neither created nor finished since the cursors
    fake.requests.clear()
    cycle = await poller.poll_once("buildkite")
    assert cycle.events == 1 and {r["run_id"]: r["status"] for r in await api_runs(client)}[slow["id"]] == "running"
    assert fake.requests[-1].query.getall("state[]") == ["scheduled", "running", "failing", "canceling", "blocked"]
    quiet = await poller.poll_once("buildkite")  # still unfinished, still asked for: one more request
    assert (quiet.events, quiet.requests["ok"]) == (0, 3)


async def test_bad_or_replayed_signatures_get_401_and_store_nothing(aiohttp_client, aiohttp_server, db_path):
    fake = await fake_buildkite(aiohttp_server)
    build = fake.add_build("acme/web", state="failed")
    client = await aiohttp_client(
        app_module.build(
            make_config(base_config(db_path, sources={"buildkite": {"type": "buildkite", "webhook_secret": SECRET}}))
        )
    )
    hook = client.make_url("/hooks/buildkite")
    payload = fake.webhook_payload(build["id"])
    now = int(time.time())
    for attempt in [
        {},  # no token, no signature
        {"token": "not-the-token"},
        {"signing_token": "another-webhook-token"},
        {"signing_token": SECRET, "timestamp": now - 301},  # a captured delivery, replayed six minutes on
        {"signing_token": SECRET, "timestamp": now + 600},
    ]:
        delivery = await fake.send_webhook(client.session, hook, payload, **attempt)
        assert delivery.status == 401, attempt
    body = json.dumps(payload).encode()
    tampered = json.dumps({**payload, "build": {**payload["build"], "state": "passed"}}).encode()
    headers = {
        "X-Buildkite-Event": "build.finished",
        "Content-Type": "application/json",
        "X-Buildkite-Signature": fake_signature(body, now),
    }
    async with client.session.post(hook, data=tampered, headers=headers) as response:
        assert response.status == 401
    assert query(db_path, "SELECT id FROM deliveries") == [] and query(db_path, "SELECT id FROM runs") == []

    # The same signed delivery twice within the window: stored once.
    async with client.session.post(hook, data=body, headers=headers) as response:
        assert response.status == 202
    async with client.session.post(hook, data=body, headers=headers) as response:
        assert response.status == 200 and (await response.json())["status"] == "duplicate"
    assert len(query(db_path, "SELECT id FROM deliveries")) == 1 and len(query(db_path, "SELECT id FROM runs")) == 1


def fake_signature(body: bytes, timestamp: int) -> str:
    return signature_header(SECRET, timestamp, body)


async def test_trigger_rerun_and_cancel_through_the_api_reach_buildkite(aiohttp_client, aiohttp_server, db_path):
    fake = await fake_buildkite(aiohttp_server)
    failed = fake.add_build("acme/web", state="failed", created_at=ago(600))
    client, _ = await start(aiohttp_client, aiohttp_server, db_path, fake, ["acme/web"])
    [pipeline] = (await (await client.get("/api/v1/pipelines", headers=AUTH)).json())["pipelines"]
    [run] = await api_runs(client)
    fake.requests.clear()

    response = await client.post(
        f"/api/v1/pipelines/{pipeline['id']}/trigger",
        headers=AUTH,
        json={"ref": "main", "inputs": {"message": "Deploy", "DEPLOY_ENV": "staging"}},
    )
    assert response.status == 202, await response.text()
    started = (await response.json())["run"]
    assert (started["number"], started["branch"], started["provider_status"]) == (2, "main", "scheduled")
    response = await client.post(f"/api/v1/runs/{run['id']}/rerun", headers=AUTH, json={})
    assert response.status == 202, await response.text()
    response = await client.post(f"/api/v1/runs/{run['id']}/rerun", headers=AUTH, json={"failed_only": True})
    assert response.status == 202, await response.text()
    response = await client.post(f"/api/v1/runs/{run['id']}/cancel", headers=AUTH, json={})
    assert response.status == 202, await response.text()
    base = "/v2/organizations/acme/pipelines/web/builds"
    assert [(r.method, r.path, r.json) for r in fake.requests] == [
        ("POST", base, {"commit": "HEAD", "branch": "main", "message": "Deploy", "env": {"DEPLOY_ENV": "staging"}}),
        ("PUT", f"{base}/1/rebuild", None),  # a new build (number 3) of the same commit
        ("POST", f"{base}/1/retry_failed_jobs", None),  # the failed job again, in the same build
        ("PUT", f"{base}/1/cancel", None),
    ]
    assert fake.find("acme/web", 3)["rebuilt_from"]["number"] == 1
    assert (failed["state"], fake.find("acme/web", 2)["source"]) == ("canceled", "api")

    # Cancelling a build that has finished: Buildkite's 422, said as a 409.
    response = await client.post(f"/api/v1/runs/{run['id']}/cancel", headers=AUTH, json={})
    assert response.status == 409
    error = (await response.json())["error"]
    assert "build 1 of acme/web cannot be cancelled" in error["message"] and TOKEN not in error["message"]


async def test_a_spent_rate_limit_sends_nothing_until_the_reset(aiohttp_server, db_path):
    clock = Clock(time.time())
    fake = await fake_buildkite(aiohttp_server, clock=clock)
    fake.add_build("acme/web", state="failed", created_at=ago(600))
    config = make_config(base_config(db_path, sources={"buildkite": source(fake.server, ["acme/*"], poll_interval=0)}))
    async with standalone(config, clock) as poller:
        fake.exhaust(reset_in=45)  # 429, RateLimit-Remaining: 0, RateLimit-Reset: 45 (seconds)
        first = await poller.poll_once("buildkite")
        assert first.rate_limited and len(fake.requests) == 1 and fake.requests[0].status == 429
        clock.now += 30
        assert (await poller.poll_once("buildkite")).rate_limited and len(fake.requests) == 1
        clock.now += 20  # past the reset
        resumed = await poller.poll_once("buildkite")
        assert resumed.ok and len(query(db_path, "SELECT id FROM runs")) == 1
        status = poller.status()["buildkite"]
        assert status["rate_limit_remaining"] == fake.remaining and status["requests"]["rate_limited"] == 2


async def test_link_pagination_reads_every_page_of_a_window(aiohttp_client, aiohttp_server, db_path):
    fake = await fake_buildkite(aiohttp_server)
    for n in range(130):
        fake.add_build("acme/web", state="passed", created_at=ago(3000 + n), jobs=("Test",))
    client, _ = await start(aiohttp_client, aiohttp_server, db_path, fake, ["acme/*"])
    assert client.app[POLLER].last_cycle("buildkite").errors == []
    assert len(query(db_path, "SELECT id FROM runs")) == 130
    pages = [r.query.get("page") for r in fake.requests if r.path == "/v2/organizations/acme/builds"]
    assert pages.count("2") == 2  # the second page of each window, through the Link header
