"""Tekton as a first-class source: the real daemon, the fake Kubernetes API with Tekton's resources and
the Tekton controller's CloudEvents, the fake Slack and the control API, together."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from flowforged import app as app_module
from flowforged.poller import POLLER
from tests.conftest import API_TOKEN, base_config, make_config
from tests.fakes.tekton_api import FakeTekton, status_body
from tests.test_notify import until
from tests.test_poller import Clock, standalone
from tests.world import late_delivery, query, start_with_slack

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
SECRET = "tk-sink-secret-5e81c2"
TOKEN = "eyJhbGciOiJSUzI1NiJ9.sa-token-of-flowforge"
RUNS = "/apis/tekton.dev/v1/namespaces/ci/pipelineruns"


def source(server: Any, repos: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "type": "tekton",
        "webhook_secret": SECRET,
        "token": TOKEN,
        "api_url": str(server.make_url("/")),
        "repos": repos,
        "poll_interval": "1h",  # the first cycle runs at start; the tests run the others
        "max_rps": None,
        **extra,
    }


async def fake_tekton(aiohttp_server: Any, **options: Any) -> FakeTekton:
    fake = FakeTekton(token=TOKEN, **options)
    fake.server = await aiohttp_server(fake.app)
    return fake


async def start(aiohttp_client: Any, aiohttp_server: Any, db_path: Path, fake: FakeTekton, repos: list[str], **extra):
    return await start_with_slack(
        aiohttp_client, aiohttp_server, db_path, "tekton", source(fake.server, repos, **extra)
    )


async def api_runs(client: Any) -> dict[str, dict[str, Any]]:
    return {r["run_id"]: r for r in (await (await client.get("/api/v1/runs", headers=AUTH)).json())["runs"]}


def run_id(run: dict[str, Any]) -> str:
    return f"{run['metadata']['namespace']}/{run['metadata']['name']}"


async def test_a_run_told_by_cloudevents_and_by_polling_is_one_run_and_one_notification(
    aiohttp_client, aiohttp_server, db_path
):
    fake = await fake_tekton(aiohttp_server)
    client, slack = await start(aiohttp_client, aiohttp_server, db_path, fake, ["ci"])
    sink = client.make_url("/hooks/tekton")
    poller = client.app[POLLER]

    run = fake.add_run("ci", "build-web", params={"revision": "main"}, created=time.time() - 60, state="Running")
    delivery = await fake.send_event(client.session, sink, "PipelineRun", run, password=SECRET)
    assert delivery.status == 202, delivery.body
    fake.set_state(run, "Failed", failed=("test",))
    test_task = fake.task_runs[("ci", f"{run['metadata']['name']}-test")]
    assert (await fake.send_event(client.session, sink, "TaskRun", test_task, password=SECRET)).status == 202
    assert (await fake.send_event(client.session, sink, "PipelineRun", run, password=SECRET)).status == 202
    cycle = await poller.poll_once("tekton")
    assert (cycle.ok, cycle.events, cycle.transitions) == (True, 0, [])  # the events told it all

    runs = await api_runs(client)
    assert list(runs) == [run_id(run)]
    [stored] = runs.values()
    assert (stored["pipeline"], stored["branch"], stored["status"]) == ("ci/build-web", "main", "failed")
    assert (stored["provider_status"], stored["transition"]) == ("Failed", "broken")
    await until(lambda: len(slack.messages) == 1, what="the breakage in Slack")
    assert "ci/build-web" in json.dumps(slack.messages[0]) and "test" in json.dumps(slack.messages[0])
    states = [e["status"] for e in query(db_path, "SELECT status FROM events WHERE kind = 'run' ORDER BY id")]
    assert states == ["running", "failed"]

    # The next one is polled first; its CloudEvent comes late and adds nothing.
    again = fake.add_run("ci", "build-web", params={"revision": "main"}, state="Failed")
    cycle = await poller.poll_once("tekton")
    assert [t["transition"] for t in cycle.transitions] == ["still_failing"]
    delivery = await fake.send_event(client.session, sink, "PipelineRun", again, password=SECRET)
    assert delivery.status == 202
    late = late_delivery(db_path, delivery.body)
    assert late == [{"parse_error": None, "events": 0}]  # applied, and it recorded nothing new
    # A retry of the same CloudEvent (same Ce-Id) is a duplicate.
    repeated = await fake.send_event(
        client.session, sink, "PipelineRun", again, password=SECRET, event_id=delivery.delivery_id
    )
    assert repeated.status == 200
    assert len(await api_runs(client)) == 2 and (await poller.poll_once("tekton")).events == 0
    assert len(slack.received) == 1


async def test_runs_missed_while_down_are_found_by_polling_page_after_page(aiohttp_client, aiohttp_server, db_path):
    fake = await fake_tekton(aiohttp_server)
    client, slack = await start(aiohttp_client, aiohttp_server, db_path, fake, ["ci", "apps/deploy"])
    await client.close()  # down: the controller's events go nowhere, runs go on
    now = time.time()
    made = [
        fake.add_run(ns, pipeline, params={"revision": branch}, created=now - 3000 + n * 300, state=state)
        for n, (ns, pipeline, branch, state) in enumerate(
            [
                ("ci", "build-web", "main", "Succeeded"),
                ("ci", "build-web", "main", "Failed"),
                ("ci", "build-web", "main", "PipelineRunTimeout"),
                ("ci", "build-api", "feature/login", "Cancelled"),
                ("apps", "deploy", "refs/heads/main", "Failed"),
                ("ci", "build-api", "main", "Running"),
            ]
        )
    ]
    fake.add_run("apps", "other", state="Failed")  # not a polled pipeline of that namespace
    fake.add_run("ci", "build-web", created=now - 3 * 86400, state="Failed")  # older than the backfill
    for n in range(120):  # more than one chunk of `limit`
        fake.add_run("ci", "lint", created=now - 2000 - n, state="Succeeded")
    fake.requests.clear()

    client, slack = await start(aiohttp_client, aiohttp_server, db_path, fake, ["ci", "apps/deploy"])
    poller = client.app[POLLER]
    assert poller.last_cycle("tekton").errors == []
    assert len(query(db_path, "SELECT id FROM runs")) == len(made) + 120
    runs = {r["run_id"]: r for r in query(db_path, "SELECT * FROM runs")}
    assert [runs[run_id(r)]["status"] for r in made] == [
        "success",
        "failed",
        "failed",
        "cancelled",
        "failed",
        "running",
    ]
    assert [runs[run_id(r)]["transition"] for r in made] == [None, "broken", "still_failing", None, "broken", None]
    assert runs[run_id(made[4])]["branch"] == "main"
    chunks = [r.query.get("continue") for r in fake.requests if r.path == RUNS]
    assert len(chunks) == 2 and chunks[0] is None and chunks[1]  # a second chunk through `continue`
    await until(lambda: len(slack.messages) == 2, what="one message per breakage")
    failed = query(db_path, "SELECT name FROM jobs WHERE status = 'failed'")
    # Read from the TaskRuns, named by their PipelineTask; the timed-out run's were cancelled, not failed.
    assert [j["name"] for j in failed] == ["test"] * 2

    fake.set_state(made[-1], "Failed")  # ends while nobody is told
    cycle = await poller.poll_once("tekton")
    assert [(t["run_id"], t["transition"]) for t in cycle.transitions] == [(run_id(made[-1]), "broken")]
    quiet = await poller.poll_once("tekton")
    assert (quiet.events, quiet.transitions, quiet.requests["ok"]) == (0, [], 3)  # two chunks of ci, apps/deploy


async def test_bad_credentials_get_401_and_store_nothing(aiohttp_client, aiohttp_server, db_path):
    fake = await fake_tekton(aiohttp_server)
    run = fake.add_run("ci", "build-web", state="Failed")
    config = base_config(db_path, sources={"tekton": {"type": "tekton", "webhook_secret": SECRET}})
    client = await aiohttp_client(app_module.build(make_config(config)))
    sink = client.make_url("/hooks/tekton")
    for password in (None, "not-the-secret", SECRET.upper(), ""):
        delivery = await fake.send_event(client.session, sink, "PipelineRun", run, password=password)
        assert delivery.status == 401, password
    headers, body = fake.cloud_event("PipelineRun", run)
    headers["Authorization"] = f"Bearer {SECRET}"
    async with client.session.post(sink, data=body, headers=headers) as response:
        assert response.status == 401
    assert query(db_path, "SELECT id FROM deliveries") == [] and query(db_path, "SELECT id FROM runs") == []
    assert (await fake.send_event(client.session, sink, "PipelineRun", run, password=SECRET)).status == 202
    assert [
        r["headers"] for r in query(db_path, "SELECT headers FROM deliveries") if SECRET in (r["headers"] or "")
    ] == []


async def test_trigger_rerun_and_cancel_reach_the_kubernetes_api(aiohttp_client, aiohttp_server, db_path):
    fake = await fake_tekton(aiohttp_server)
    old = fake.add_run("ci", "build-web", params={"revision": "main", "image": "web:1"}, created=time.time() - 600)
    old["spec"]["workspaces"] = [{"name": "src", "volumeClaimTemplate": {"spec": {"accessModes": ["ReadWriteOnce"]}}}]
    old["metadata"]["annotations"] = {"kubectl.kubernetes.io/last-applied-configuration": "{}", "team": "web"}
    fake.set_state(old, "Running")
    client, _ = await start(aiohttp_client, aiohttp_server, db_path, fake, ["ci"])
    [pipeline] = (await (await client.get("/api/v1/pipelines", headers=AUTH)).json())["pipelines"]
    [run] = (await api_runs(client)).values()
    fake.requests.clear()

    response = await client.post(
        f"/api/v1/pipelines/{pipeline['id']}/trigger",
        headers=AUTH,
        json={"ref": "release", "inputs": {"image": "web:2"}},
    )
    assert response.status == 202, await response.text()
    started = (await response.json())["run"]
    assert started["run_id"].startswith("ci/build-web-run-") and started["provider_status"] == "Queued"
    response = await client.post(f"/api/v1/runs/{run['id']}/cancel", headers=AUTH, json={})
    assert response.status == 202, await response.text()
    response = await client.post(f"/api/v1/runs/{run['id']}/rerun", headers=AUTH, json={})
    assert response.status == 202, await response.text()
    name = old["metadata"]["name"]
    spec = {k: v for k, v in old["spec"].items() if k != "status"}
    assert [(r.method, r.path, r.json) for r in fake.requests] == [
        (
            "POST",
            RUNS,
            {
                "apiVersion": "tekton.dev/v1",
                "kind": "PipelineRun",
                "metadata": {"generateName": "build-web-run-"},
                "spec": {
                    "pipelineRef": {"name": "build-web"},
                    "params": [{"name": "revision", "value": "release"}, {"name": "image", "value": "web:2"}],
                },
            },
        ),
        ("GET", f"{RUNS}/{name}", None),
        ("PATCH", f"{RUNS}/{name}", {"spec": {"status": "Cancelled"}}),
        ("GET", f"{RUNS}/{name}", None),
        (
            "POST",
            RUNS,
            {
                "apiVersion": "tekton.dev/v1",
                "kind": "PipelineRun",
                "metadata": {"generateName": "build-web-run-", "annotations": {"team": "web"}},
                "spec": spec,  # params and workspaces kept; the Cancelled status left behind
            },
        ),
    ]
    assert fake.requests[2].headers["Content-Type"] == "application/merge-patch+json"
    assert old["spec"]["status"] == "Cancelled"

    # Options Tekton cannot honour are refused before anything is sent.
    fake.requests.clear()
    response = await client.post(f"/api/v1/runs/{run['id']}/rerun", headers=AUTH, json={"failed_only": True})
    assert response.status == 422 and "failed_only" in (await response.json())["error"]["message"]
    response = await client.post(f"/api/v1/runs/{run['id']}/cancel", headers=AUTH, json={"force": True})
    assert response.status == 422
    response = await client.post(
        f"/api/v1/pipelines/{pipeline['id']}/trigger", headers=AUTH, json={"ref": "main", "variables": {"A": "1"}}
    )
    assert response.status == 422 and fake.requests == []

    # A finished run cannot be cancelled: said as a 409, with no patch sent.
    fake.set_state(old, "Cancelled")
    response = await client.post(f"/api/v1/runs/{run['id']}/cancel", headers=AUTH, json={})
    assert response.status == 409
    error = (await response.json())["error"]["message"]
    assert f"run ci/{name} cannot be cancelled" in error and TOKEN not in error
    assert [r.method for r in fake.requests] == ["GET"]


async def test_the_service_account_token_is_read_again_when_rotated(aiohttp_client, aiohttp_server, db_path, tmp_path):
    fake = await fake_tekton(aiohttp_server)
    fake.add_run("ci", "build-web", state="Succeeded")
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text(TOKEN)
    data = base_config(db_path, sources={"tekton": source(fake.server, ["ci"], service_account_dir=str(account))})
    del data["sources"]["tekton"]["token"]
    client = await aiohttp_client(app_module.build(make_config(data)))
    poller = client.app[POLLER]
    await until(lambda: poller.last_cycle("tekton") is not None, what="the first cycle")
    assert poller.last_cycle("tekton").ok and len(await api_runs(client)) == 1

    fake.token = "rotated-by-the-kubelet"
    (account / "token").write_text(fake.token + "\n")
    stamp = os.stat(account / "token").st_mtime_ns + 1_000_000_000
    os.utime(account / "token", ns=(stamp, stamp))  # a new file, whatever the clock's resolution
    cycle = await poller.poll_once("tekton")
    assert cycle.ok and fake.requests[-1].status == 200


async def test_priority_and_fairness_429_is_honoured_for_its_retry_after(aiohttp_server, db_path):
    clock = Clock(time.time())
    fake = await fake_tekton(aiohttp_server, clock=clock)
    fake.add_run("ci", "build-web", created=clock.now - 600, state="Failed")
    config = make_config(base_config(db_path, sources={"tekton": source(fake.server, ["ci"], poll_interval=0)}))
    async with standalone(config, clock) as poller:
        # kube-apiserver's answer when the priority level's queues are full.
        body = status_body(429, "TooManyRequests", "Too many requests, please try again later.")
        fake.fail_next(1, 429, body, {"Retry-After": "5"})
        first = await poller.poll_once("tekton")
        assert first.rate_limited and [r.status for r in fake.requests] == [429]
        clock.now += 3
        assert (await poller.poll_once("tekton")).rate_limited and len(fake.requests) == 1  # nothing sent
        clock.now += 3  # past the Retry-After
        resumed = await poller.poll_once("tekton")
        assert resumed.ok and len(query(db_path, "SELECT id FROM runs")) == 1
        assert [j["name"] for j in query(db_path, "SELECT name FROM jobs WHERE status = 'failed'")] == ["test"]
