"""Jenkins as a first-class source: the real daemon, the fake Jenkins (JSON API, queue,
CSRF crumbs) and its Notification plugin deliveries, the fake Slack and the control API, together."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from flowforged import app as app_module
from flowforged.poller import POLLER
from flowforged.store import reads
from tests.conftest import API_TOKEN, applied, base_config, make_config, reindex_all
from tests.fakes.jenkins_api import CRUMB_FIELD, SESSION_COOKIE, FakeJenkins
from tests.test_notify import until
from tests.world import late_delivery, query, start_with_slack

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
SECRET = "jk-webhook-secret-2b7d90"
TOKEN = "11d0e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0"


def source(server: Any, repos: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "type": "jenkins",
        "webhook_secret": SECRET,
        "username": "flowforge",
        "token": TOKEN,
        "api_url": str(server.make_url("/")),
        "repos": repos,
        "poll_interval": "1h",  # the first cycle runs at start; the tests run the others
        "max_rps": None,
        **extra,
    }


async def fake_jenkins(aiohttp_server: Any, **options: Any) -> FakeJenkins:
    fake = FakeJenkins(token=TOKEN, **options)
    fake.server = await aiohttp_server(fake.app)
    return fake


async def start(aiohttp_client: Any, aiohttp_server: Any, db_path: Path, fake: FakeJenkins, repos: list[str]):
    return await start_with_slack(aiohttp_client, aiohttp_server, db_path, "jenkins", source(fake.server, repos))


async def api_runs(client: Any) -> dict[str, dict[str, Any]]:
    return {r["run_id"]: r for r in (await (await client.get("/api/v1/runs", headers=AUTH)).json())["runs"]}


async def test_a_build_told_by_notifications_and_by_polling_is_one_run_and_one_notification(
    aiohttp_client, aiohttp_server, db_path
):
    fake = await fake_jenkins(aiohttp_server)
    fake.add_job("platform/api", parameters={"BRANCH": "main"})
    client, slack = await start(aiohttp_client, aiohttp_server, db_path, fake, ["platform"])
    hook = client.make_url("/hooks/jenkins")
    poller = client.app[POLLER]

    fake.add_build("platform/api", started=time.time() - 300)
    for phase in ("QUEUED", "STARTED"):
        delivery = await fake.send_notification(
            client.session, hook, fake.notification("platform/api", 1, phase), password=SECRET
        )
        assert delivery.status == 202, phase
    assert (await poller.poll_once("jenkins")).events == 0  # the notifications told it
    fake.finish("platform/api", 1, "UNSTABLE")
    for phase in ("COMPLETED", "FINALIZED"):
        delivery = await fake.send_notification(
            client.session, hook, fake.notification("platform/api", 1, phase), password=SECRET
        )
        assert delivery.status == 202, phase
    cycle = await poller.poll_once("jenkins")
    assert (cycle.ok, cycle.events, cycle.transitions) == (True, 0, [])

    runs = await api_runs(client)
    run = runs["platform/api#1"]
    assert (run["pipeline"], run["number"], run["branch"]) == ("platform/api", 1, "main")
    assert (run["status"], run["provider_status"], run["transition"]) == ("failed", "UNSTABLE", "broken")
    assert run["url"] == "https://jenkins.example.com/job/platform/job/api/1/"
    states = [e["status"] for e in query(db_path, "SELECT status FROM events WHERE kind = 'run' ORDER BY id")]
    assert states == ["pending", "running", "failed", "failed"]  # FINALIZED comes after COMPLETED
    await until(lambda: len(slack.messages) == 1, what="the breakage in Slack")
    assert "platform/api" in json.dumps(slack.messages[0])

    # The next build is polled first; its notification comes late and adds nothing.
    fake.add_build("platform/api", result="FAILURE", started=time.time() - 30, duration=20)
    cycle = await poller.poll_once("jenkins")
    assert [(t["run_id"], t["transition"]) for t in cycle.transitions] == [("platform/api#2", "still_failing")]
    delivery = await fake.send_notification(
        client.session, hook, fake.notification("platform/api", 2, "COMPLETED"), password=SECRET
    )
    assert delivery.status == 202
    late = late_delivery(db_path, delivery.body)
    assert late == [{"parse_error": None, "events": 0}]  # applied, and it recorded nothing new
    assert len(await api_runs(client)) == 2 and len(slack.received) == 1


async def test_builds_missed_while_down_are_found_in_folders_and_multibranch_projects(
    aiohttp_client, aiohttp_server, db_path
):
    fake = await fake_jenkins(aiohttp_server)
    fake.add_folder("org/repo", multibranch=True)
    fake.add_job("org/repo/main")
    fake.add_job("org/repo/feature%2Flogin")
    fake.add_job("platform/api", parameters={"BRANCH": "main"})
    fake.add_job("tools/lint", pipeline=False)
    client, slack = await start(aiohttp_client, aiohttp_server, db_path, fake, ["*"])
    await client.close()  # down: no notification reaches it
    now = time.time()
    made = [
        fake.add_build("org/repo/main", result="SUCCESS", started=now - 3000, duration=60, branch="main"),
        fake.add_build("org/repo/main", result="FAILURE", started=now - 2400, duration=60, branch="main"),
        fake.add_build(
            "org/repo/feature%2Flogin", result="FAILURE", started=now - 1800, duration=60, branch="feature/login"
        ),
        fake.add_build("platform/api", result="UNSTABLE", started=now - 1200, duration=60),
        fake.add_build("tools/lint", result="ABORTED", started=now - 900, duration=5, branch=None),
        fake.add_build("platform/api", started=now - 600),  # still building
    ]
    client, slack = await start(aiohttp_client, aiohttp_server, db_path, fake, ["*"])
    poller = client.app[POLLER]
    assert poller.last_cycle("jenkins").errors == []
    runs = await api_runs(client)
    keys = [
        "org/repo/main#1",
        "org/repo/main#2",
        "org/repo/feature%2Flogin#1",
        "platform/api#1",
        "tools/lint#1",
        "platform/api#2",
    ]
    assert set(runs) == set(keys)
    assert [runs[k]["status"] for k in keys] == ["success", "failed", "failed", "failed", "cancelled", "running"]
    assert [runs[k]["transition"] for k in keys] == [None, "broken", "broken", "broken", None, None]
    assert [runs[k]["branch"] for k in keys] == ["main", "main", "feature/login", "main", None, "main"]
    assert runs["org/repo/main#2"]["commit_message"] == "Fix the flaky login test"
    assert runs["org/repo/main#2"]["duration_seconds"] == 60.0
    await until(lambda: len(slack.messages) == 3, what="one message per breakage")
    # Every answer was cut to what was asked for with tree=.
    reads = [r for r in fake.requests if r.path.endswith("/api/json")]
    assert reads and all("tree" in r.query for r in reads)
    assert any(r.path == "/job/org/job/repo/job/feature%252Flogin/api/json" for r in reads)

    # The running build ends while nobody is told: the next cycle finds it.
    fake.finish("platform/api", made[-1]["number"], "SUCCESS")
    cycle = await poller.poll_once("jenkins")
    assert [(t["run_id"], t["transition"]) for t in cycle.transitions] == [("platform/api#2", "fixed")]
    quiet = await poller.poll_once("jenkins")
    assert (quiet.events, quiet.transitions) == (0, [])
    assert quiet.requests["ok"] == 4  # one read per job: the folders are listed again only every 10 minutes


async def test_a_build_that_left_the_first_page_is_still_followed(aiohttp_client, aiohttp_server, db_path):
    fake = await fake_jenkins(aiohttp_server)
    slow = fake.add_build("app", started=time.time() - 3600)
    client, _ = await start(aiohttp_client, aiohttp_server, db_path, fake, ["app"])
    for n in range(30):  # more than a page of builds after it
        fake.add_build("app", result="SUCCESS", started=time.time() - 1800 + n, duration=10)
    poller = client.app[POLLER]
    assert (await poller.poll_once("jenkins")).events == 30  # the pages back to the cursor
    fake.finish("app", slow["number"], "FAILURE")
    fake.requests.clear()
    cycle = await poller.poll_once("jenkins")
    assert cycle.events == 1 and (await api_runs(client))["app#1"]["status"] == "failed"
    assert cycle.transitions == []  # older than the builds that passed since: history, not news
    assert [r.path for r in fake.requests] == ["/job/app/api/json", "/job/app/1/api/json"]


async def test_bad_or_replayed_credentials_get_401_and_store_nothing(aiohttp_client, aiohttp_server, db_path):
    fake = await fake_jenkins(aiohttp_server)
    fake.add_build("app", result="FAILURE", duration=30)
    client = await aiohttp_client(
        app_module.build(
            make_config(base_config(db_path, sources={"jenkins": {"type": "jenkins", "webhook_secret": SECRET}}))
        )
    )
    hook = client.make_url("/hooks/jenkins")
    payload = fake.notification("app", 1, "COMPLETED")
    now = int(time.time())
    for attempt in [
        {},
        {"password": "not-the-secret"},
        {"token": "not-the-secret"},
        {"signing_secret": "another-secret"},
        {"signing_secret": SECRET, "timestamp": now - 400},  # captured, sent again minutes later
    ]:
        delivery = await fake.send_notification(client.session, hook, payload, **attempt)
        assert delivery.status == 401, attempt
    assert query(db_path, "SELECT id FROM deliveries") == [] and query(db_path, "SELECT id FROM runs") == []
    for attempt in [{"password": SECRET}, {"token": SECRET}, {"signing_secret": SECRET}]:
        delivery = await fake.send_notification(client.session, hook, payload, **attempt)
        assert delivery.status in (200, 202), attempt  # the same body again is a duplicate
    assert len(query(db_path, "SELECT id FROM deliveries")) == 1 and len(query(db_path, "SELECT id FROM runs")) == 1


async def test_trigger_rerun_and_cancel_through_the_api_with_a_crumb_and_the_queue(
    aiohttp_client, aiohttp_server, db_path
):
    fake = await fake_jenkins(aiohttp_server, csrf=True, queue_polls=1)
    fake.root_url = "https://jenkins.example.com/"  # Location names the root URL, not the address asked
    fake.add_job("platform/api", parameters={"BRANCH": "main", "DEPLOY": "false"})
    fake.add_build(
        "platform/api",
        result="FAILURE",
        started=time.time() - 600,
        duration=60,
        parameters={"BRANCH": "release/2.0", "DEPLOY": "true"},
    )
    client, _ = await start(aiohttp_client, aiohttp_server, db_path, fake, ["platform/api"])
    [pipeline] = (await (await client.get("/api/v1/pipelines", headers=AUTH)).json())["pipelines"]
    run = (await api_runs(client))["platform/api#1"]
    fake.requests.clear()

    response = await client.post(
        f"/api/v1/pipelines/{pipeline['id']}/trigger", headers=AUTH, json={"ref": "main", "inputs": {"DEPLOY": True}}
    )
    assert response.status == 202, await response.text()
    started = (await response.json())["run"]
    assert (started["run_id"], started["number"]) == ("platform/api#2", 2)
    assert started["url"] == "https://jenkins.example.com/job/platform/job/api/2/"
    steps = [(r.method, r.path, r.status) for r in fake.requests]
    assert steps == [
        ("GET", "/job/platform/job/api/api/json", 200),  # its parameters
        ("POST", "/job/platform/job/api/buildWithParameters", 403),  # CSRF protection: no crumb
        ("GET", "/crumbIssuer/api/json", 200),
        ("POST", "/job/platform/job/api/buildWithParameters", 201),
        ("GET", "/queue/item/102/api/json", 200),  # waiting for an executor
        ("GET", "/queue/item/102/api/json", 200),  # left the queue: build 2
    ]
    accepted = fake.requests[3]
    assert accepted.headers[CRUMB_FIELD] and SESSION_COOKIE in accepted.headers["Cookie"]
    assert fake.triggered[-1] == {
        "job": "platform/api",
        "endpoint": "buildWithParameters",
        "params": {"DEPLOY": "true", "BRANCH": "main"},
        "delay": "0sec",
    }

    fake.requests.clear()
    response = await client.post(f"/api/v1/runs/{run['id']}/rerun", headers=AUTH, json={})
    assert response.status == 202, await response.text()
    assert fake.triggered[-1]["params"] == {"BRANCH": "release/2.0", "DEPLOY": "true"}  # the build's own
    assert not any(r.path.startswith("/crumbIssuer") for r in fake.requests)  # the crumb is kept

    await client.app[POLLER].poll_once("jenkins")
    building = (await api_runs(client))["platform/api#2"]
    assert building["status"] == "running"
    fake.requests.clear()
    response = await client.post(f"/api/v1/runs/{building['id']}/cancel", headers=AUTH, json={})
    assert response.status == 202, await response.text()
    assert [(r.method, r.path, r.status) for r in fake.requests] == [
        ("GET", "/job/platform/job/api/2/api/json", 200),
        ("POST", "/job/platform/job/api/2/stop", 302),
        ("GET", "/job/platform/job/api/2/", 200),  # the redirect after a POST, followed with a GET
    ]
    assert fake.find("platform/api", 2)["result"] == "ABORTED"
    response = await client.post(f"/api/v1/runs/{building['id']}/cancel", headers=AUTH, json={"force": True})
    assert response.status == 409
    error = (await response.json())["error"]["message"]
    assert "build 2 of platform/api cannot be cancelled: it has already finished (ABORTED)" in error


async def test_a_job_without_parameters_and_a_jenkins_without_csrf(aiohttp_client, aiohttp_server, db_path):
    fake = await fake_jenkins(aiohttp_server, csrf=False, queue_polls=0)
    fake.add_job("tools/lint", pipeline=False)
    fake.add_build("tools/lint", result="SUCCESS", duration=5)
    fake.add_job("tools/off", buildable=False)
    fake.add_build("tools/off", result="SUCCESS", duration=5)
    client, _ = await start(aiohttp_client, aiohttp_server, db_path, fake, ["tools"])
    pipelines = {
        p["pipeline"]: p for p in (await (await client.get("/api/v1/pipelines", headers=AUTH)).json())["pipelines"]
    }
    lint = pipelines["tools/lint"]
    fake.requests.clear()
    response = await client.post(f"/api/v1/pipelines/{lint['id']}/trigger", headers=AUTH, json={"ref": "main"})
    assert response.status == 202 and (await response.json())["run"]["number"] == 2
    assert fake.triggered[-1] == {"job": "tools/lint", "endpoint": "build", "params": {}, "delay": "0sec"}
    assert not any(r.path.startswith("/crumbIssuer") for r in fake.requests)
    response = await client.post(
        f"/api/v1/pipelines/{lint['id']}/trigger", headers=AUTH, json={"ref": "main", "inputs": {"LEVEL": "full"}}
    )
    assert response.status == 400
    assert "tools/lint has no parameter LEVEL (it takes no parameters)" in (await response.json())["error"]["message"]
    # A freestyle build has no term: a forced cancel stops it all the same.
    fake.add_build("tools/lint", started=time.time() - 5)
    await client.app[POLLER].poll_once("jenkins")
    building = (await api_runs(client))["tools/lint#3"]
    fake.requests.clear()
    response = await client.post(f"/api/v1/runs/{building['id']}/cancel", headers=AUTH, json={"force": True})
    assert response.status == 202, await response.text()
    assert [(r.method, r.path, r.status) for r in fake.requests if r.method == "POST"] == [
        ("POST", "/job/tools/job/lint/3/stop", 302),
        ("POST", "/job/tools/job/lint/3/term", 404),
    ]
    # A disabled job cannot be built.
    off = pipelines["tools/off"]
    response = await client.post(f"/api/v1/pipelines/{off['id']}/trigger", headers=AUTH, json={"ref": "main"})
    assert response.status == 409 and "tools/off is disabled" in (await response.json())["error"]["message"]


async def test_finish_is_completed_s_queue_time_is_queued_s_and_finalized_moves_nothing(
    aiohttp_client, aiohttp_server, db_path
):
    fake = await fake_jenkins(aiohttp_server)
    fake.add_job("app", parameters={"BRANCH": "main"})
    client, _ = await start(aiohttp_client, aiohttp_server, db_path, fake, ["app"])
    hook = client.make_url("/hooks/jenkins")
    started = time.time() - 300
    fake.add_build("app", result="FAILURE", started=started, duration=120)
    for phase in ("QUEUED", "STARTED", "COMPLETED", "FINALIZED"):
        delivery = await fake.send_notification(
            client.session, hook, fake.notification("app", 1, phase), password=SECRET
        )
        assert delivery.status == 202, phase
    [run] = query(db_path, "SELECT * FROM runs")
    build = fake.find("app", 1)
    end = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime((build["timestamp"] + build["duration"]) // 1000))
    assert run["finished_at"] == end  # COMPLETED's moment (start + duration), not FINALIZED's later one
    assert (run["duration_seconds"], run["queue_seconds"]) == (build["duration"] / 1000, 2.0)  # QUEUED: 2 s before
    # FINALIZED alone (an endpoint set to "failed" events is told only that) still ends the run.
    fake.add_build("app", result="FAILURE", started=started + 60, duration=30)
    delivery = await fake.send_notification(
        client.session, hook, fake.notification("app", 2, "FINALIZED"), password=SECRET
    )
    assert delivery.status == 202
    second = query(db_path, "SELECT status, duration_seconds FROM runs WHERE run_id = 'app#2'")
    assert second == [{"status": "failed", "duration_seconds": 30.0}]


async def test_a_notification_without_a_timestamp_is_dated_when_received(aiohttp_client, aiohttp_server, db_path):
    fake = await fake_jenkins(aiohttp_server)
    fake.add_job("app")
    client, _ = await start(aiohttp_client, aiohttp_server, db_path, fake, ["app"])
    fake.add_build("app", started=time.time() - 30)
    hook = client.make_url("/hooks/jenkins")
    for phase in ("QUEUED", "STARTED"):
        payload = fake.notification("app", 1, phase)
        payload["build"]["timestamp"] = 0 if phase == "QUEUED" else None  # what the plugin sends without one
        before = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        assert (await fake.send_notification(client.session, hook, payload, password=SECRET)).status == 202
        after = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 1))
        applied(db_path)
        with sqlite3.connect(db_path) as conn:  # the event whole, as readers see it
            conn.row_factory = sqlite3.Row
            [data] = reads.events(conn, limit=1)
        assert before <= data["updated_at"] <= after, phase
        assert "" not in [v for k, v in data.items() if k.endswith("_at")]
    [run] = query(db_path, "SELECT created_at, started_at, updated_at FROM runs")
    assert run["created_at"] is None and run["started_at"] is None and run["updated_at"]
    # Reindex dates them as when they were received, so it finds the same states: no new event.
    await asyncio.sleep(1.1)  # a reindex dated "now" would give other keys from here on
    assert reindex_all(client.app[app_module.CONFIG], db_path) == (0, 0)  # no new event, no parse error
