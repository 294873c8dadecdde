"""Argo CD as a source: the real daemon, the fake Argo CD API and its Notifications webhook service, the
fake Slack and the control API, as an operator would see them together."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from flowforged import app as app_module
from flowforged.poller import POLLER
from tests.conftest import API_TOKEN, base_config, make_config
from tests.fakes.argocd_api import FakeArgoCD, render
from tests.test_notify import until
from tests.world import late_delivery, query, start_with_slack

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
SECRET = "argocd-notifications-token-7d1e"
TOKEN = "eyJhbGciOiJIUzI1NiJ9.flowforge-account-api-key"  # noqa: S105 (a test token)


def source(fake: FakeArgoCD, repos: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "type": "argocd",
        "webhook_secret": SECRET,
        "token": TOKEN,
        "api_url": str(fake.server.make_url("/")),
        "repos": repos,
        "poll_interval": "1h",  # the first cycle runs at start; the tests run the others
        **extra,
    }


async def fake_argocd(aiohttp_server: Any) -> FakeArgoCD:
    fake = FakeArgoCD(token=TOKEN)
    fake.server = await aiohttp_server(fake.app)
    return fake


async def start(aiohttp_client: Any, aiohttp_server: Any, db_path: Path, fake: FakeArgoCD, repos: list[str]):
    return await start_with_slack(
        aiohttp_client, aiohttp_server, db_path, "argocd", source(fake, repos), on=("broken", "fixed")
    )


async def api_runs(client: Any) -> list[dict[str, Any]]:
    return (await (await client.get("/api/v1/runs", headers=AUTH)).json())["runs"]


async def test_a_sync_told_by_webhooks_and_by_polling_is_one_run_and_one_notification(
    aiohttp_client, aiohttp_server, db_path
):
    fake = await fake_argocd(aiohttp_server)
    fake.add_app("guestbook")
    client, slack = await start(aiohttp_client, aiohttp_server, db_path, fake, ["default"])
    hook = client.make_url("/hooks/argocd")
    poller = client.app[POLLER]

    began = time.time() - 60
    fake.request_sync("guestbook", "main")
    fake.start("guestbook", at=began)
    assert (await fake.send_webhook(client.session, hook, "guestbook", SECRET)).status == 202  # on Running
    fake.finish("guestbook", "Failed", at=began + 40, failed=("Deployment/guestbook-ui", "hook:Job/migrate"))
    assert (await fake.send_webhook(client.session, hook, "guestbook", SECRET)).status == 202  # on Failed
    cycle = await poller.poll_once("argocd")
    assert (cycle.ok, cycle.events, cycle.transitions) == (True, 0, [])  # the webhooks told it all

    [run] = await api_runs(client)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(began))
    assert (run["pipeline"], run["branch"], run["run_id"]) == (
        "default/guestbook",
        "main",
        f"argocd/guestbook@{started}",
    )
    assert (run["status"], run["provider_status"], run["transition"]) == ("failed", "Failed", "broken")
    assert run["sha"] == fake.head("main") and run["url"].endswith("/applications/argocd/guestbook")
    await until(lambda: len(slack.messages) == 1, what="the breakage in Slack")
    message = json.dumps(slack.messages[0])
    assert "default/guestbook" in message and "Deployment/guestbook-ui" in message and "Job/migrate" in message
    states = [e["status"] for e in query(db_path, "SELECT status FROM events WHERE kind = 'run' ORDER BY id")]
    assert states == ["running", "failed"]

    # The next sync is polled first; its webhook comes late and adds nothing.
    fake.sync("guestbook", at=began + 50, took=5)
    cycle = await poller.poll_once("argocd")
    assert [t["transition"] for t in cycle.transitions] == ["fixed"]
    delivery = await fake.send_webhook(client.session, hook, "guestbook", SECRET)
    assert delivery.status == 202
    late = late_delivery(db_path, delivery.body)
    assert late == [{"parse_error": None, "events": 0}]  # applied, and it recorded nothing new
    assert len(await api_runs(client)) == 2
    quiet = await poller.poll_once("argocd")
    assert (quiet.events, quiet.requests["ok"]) == (0, 1)  # one list, its resourceVersion unchanged
    await until(lambda: len(slack.messages) == 2, what="the fix in Slack")


async def test_syncs_missed_while_the_daemon_was_down_are_found_by_polling(aiohttp_client, aiohttp_server, db_path):
    fake = await fake_argocd(aiohttp_server)
    for name, project in (("web", "shop"), ("api", "shop"), ("wiki", "internal")):
        fake.add_app(name, project=project)
    client, slack = await start(aiohttp_client, aiohttp_server, db_path, fake, ["shop"])
    await client.close()  # down: no webhook reaches it, syncs go on in Argo CD
    now = time.time()
    fake.sync("web", at=now - 3000)
    fake.sync("web", at=now - 2400)  # both recorded in status.history
    fake.sync("web", at=now - 1800, phase="Failed", failed=("Deployment/web",))  # the last operation
    fake.sync("api", at=now - 1200)
    fake.sync("wiki", at=now - 600, phase="Failed")  # another project: not polled
    fake.request_sync("api", "main")
    fake.start("api", at=now - 300)  # still running

    client, slack = await start(aiohttp_client, aiohttp_server, db_path, fake, ["shop"])
    poller = client.app[POLLER]
    runs = sorted(await api_runs(client), key=lambda r: r["started_at"])
    assert [(r["pipeline"], r["status"], r["transition"], r["number"]) for r in runs] == [
        ("shop/web", "success", None, 0),
        ("shop/web", "success", None, 1),
        ("shop/web", "failed", "broken", None),
        ("shop/api", "success", None, 0),
        ("shop/api", "running", None, None),
    ]
    await until(lambda: len(slack.messages) == 1, what="one message for the breakage")
    assert [j["name"] for j in query(db_path, "SELECT name FROM jobs WHERE status = 'failed'")] == ["Deployment/web"]
    assert fake.requests[-1].query.getall("projects") == ["shop"]

    # The running sync ends, and another follows, while nobody is told: history tells the first.
    fake.finish("api", "Succeeded", at=now - 200)
    fake.request_sync("api", "main")
    fake.start("api", at=now - 100)
    cycle = await poller.poll_once("argocd")
    assert cycle.events == 2
    api = sorted((r for r in await api_runs(client) if r["pipeline"] == "shop/api"), key=lambda r: r["started_at"])
    assert [(r["status"], r["number"]) for r in api] == [("success", 0), ("success", 1), ("running", None)]
    quiet = await poller.poll_once("argocd")
    assert (quiet.events, quiet.transitions, quiet.requests["ok"]) == (0, [], 1)


async def test_a_bad_token_gets_401_and_stores_nothing(aiohttp_client, aiohttp_server, db_path):
    fake = await fake_argocd(aiohttp_server)
    fake.add_app("guestbook")
    fake.sync("guestbook", at=time.time() - 100, phase="Failed")
    config = base_config(db_path, sources={"argocd": {"type": "argocd", "webhook_secret": SECRET}})
    client = await aiohttp_client(app_module.build(make_config(config)))
    hook = client.make_url("/hooks/argocd")
    for token in (None, "not-the-token", SECRET[:-1]):
        assert (await fake.send_webhook(client.session, hook, "guestbook", token)).status == 401, token
    assert query(db_path, "SELECT id FROM deliveries") == [] and query(db_path, "SELECT id FROM runs") == []

    # The webhook service retries a delivery it did not see answered: the same body, stored once.
    assert (await fake.send_webhook(client.session, hook, "guestbook", SECRET)).status == 202
    again = await fake.send_webhook(client.session, hook, "guestbook", SECRET)
    assert again.status == 200 and json.loads(again.body)["status"] == "duplicate"
    assert len(query(db_path, "SELECT id FROM deliveries")) == 1 and len(query(db_path, "SELECT id FROM runs")) == 1
    stored = query(db_path, "SELECT headers FROM deliveries")[0]["headers"]
    assert SECRET not in stored


async def test_sync_resync_and_terminate_reach_argocd(aiohttp_client, aiohttp_server, db_path):
    fake = await fake_argocd(aiohttp_server)
    fake.add_app("guestbook")
    state = fake.sync("guestbook", at=time.time() - 600, phase="Failed")
    client, _ = await start(aiohttp_client, aiohttp_server, db_path, fake, ["*"])
    [pipeline] = (await (await client.get("/api/v1/pipelines", headers=AUTH)).json())["pipelines"]
    [failed] = await api_runs(client)
    fake.requests.clear()

    response = await client.post(
        f"/api/v1/pipelines/{pipeline['id']}/trigger", headers=AUTH, json={"ref": "main", "inputs": {"prune": True}}
    )
    assert response.status == 202, await response.text()
    assert (await response.json())["run"]["provider_status"] == "Requested"
    # One operation at a time: Argo CD's FailedPrecondition (400), said as a conflict.
    response = await client.post(f"/api/v1/runs/{failed['id']}/rerun", headers=AUTH, json={})
    assert response.status == 409
    assert "another operation is already in progress" in (await response.json())["error"]["message"]
    fake.start("guestbook")
    fake.finish("guestbook", "Succeeded")
    response = await client.post(f"/api/v1/runs/{failed['id']}/rerun", headers=AUTH, json={})
    assert response.status == 202, await response.text()
    base = "/api/v1/applications/guestbook"
    sha = state["syncResult"]["revision"]
    assert [(r.method, r.path, r.json) for r in fake.requests] == [
        ("POST", f"{base}/sync", {"revision": "main", "prune": True, "project": "default"}),
        ("POST", f"{base}/sync", {"revision": sha, "prune": False, "project": "default"}),
        ("POST", f"{base}/sync", {"revision": sha, "prune": False, "project": "default"}),
    ]
    assert fake.apps["guestbook"]["operation"]["sync"] == {"revision": sha, "prune": False}

    # Cancel: the application is read, and the operation terminated only if it is this run's.
    fake.start("guestbook")
    await client.app[POLLER].poll_once("argocd")
    run = next(r for r in await api_runs(client) if r["status"] == "running")
    fake.requests.clear()
    response = await client.post(f"/api/v1/runs/{run['id']}/cancel", headers=AUTH, json={})
    assert response.status == 202, await response.text()
    assert [(r.method, r.path, dict(r.query)) for r in fake.requests] == [
        ("GET", base, {}),
        ("DELETE", f"{base}/operation", {"project": "default"}),
    ]
    assert fake.apps["guestbook"]["status"]["operationState"]["phase"] == "Terminating"
    fake.terminated("guestbook")
    await client.app[POLLER].poll_once("argocd")
    assert {r["run_id"]: r["status"] for r in await api_runs(client)}[run["run_id"]] == "cancelled"

    # A run that has ended is not taken for the one that follows it: nothing is terminated.
    fake.request_sync("guestbook", "main")
    fake.start("guestbook")
    fake.requests.clear()
    response = await client.post(f"/api/v1/runs/{failed['id']}/cancel", headers=AUTH, json={})
    assert response.status == 409 and "cannot be cancelled" in (await response.json())["error"]["message"]
    assert [r.method for r in fake.requests] == ["GET"]
    assert fake.apps["guestbook"]["status"]["operationState"]["phase"] == "Running"


async def test_what_argocd_cannot_do_is_refused_before_anything_is_sent(aiohttp_client, aiohttp_server, db_path):
    fake = await fake_argocd(aiohttp_server)
    fake.add_app("guestbook", auto_sync=True)
    fake.sync("guestbook", at=time.time() - 600, phase="Failed")
    client, _ = await start(aiohttp_client, aiohttp_server, db_path, fake, ["*"])
    [pipeline] = (await (await client.get("/api/v1/pipelines", headers=AUTH)).json())["pipelines"]
    [run] = await api_runs(client)
    fake.requests.clear()
    refused = [
        await client.post(f"/api/v1/runs/{run['id']}/rerun", headers=AUTH, json={"failed_only": True}),
        await client.post(f"/api/v1/runs/{run['id']}/cancel", headers=AUTH, json={"force": True}),
        await client.post(
            f"/api/v1/pipelines/{pipeline['id']}/trigger", headers=AUTH, json={"ref": "main", "variables": {"A": "1"}}
        ),
        await client.post(
            f"/api/v1/pipelines/{pipeline['id']}/trigger",
            headers=AUTH,
            json={"ref": "main", "inputs": {"dryRun": True}},
        ),
        await client.post(
            f"/api/v1/pipelines/{pipeline['id']}/trigger",
            headers=AUTH,
            json={"ref": "main", "inputs": {"prune": "yes"}},
        ),
    ]
    assert [r.status for r in refused] == [422] * 5
    assert fake.requests == []

    # An auto-synced application syncs only its target revision: Argo CD says so, as a conflict.
    response = await client.post(f"/api/v1/pipelines/{pipeline['id']}/trigger", headers=AUTH, json={"ref": "v2"})
    assert response.status == 409 and "auto-sync currently set to main" in (await response.json())["error"]["message"]
    # Without the RBAC `sync` action: 403, naming the policy line the account needs.
    fake.allowed = {"get"}
    response = await client.post(f"/api/v1/pipelines/{pipeline['id']}/trigger", headers=AUTH, json={"ref": "main"})
    error = (await response.json())["error"]["message"]
    assert response.status == 403 and "applications, sync" in error and TOKEN not in error


def test_the_fake_renders_the_template_as_json() -> None:
    fake = FakeArgoCD()
    fake.add_app("guestbook")
    body = json.loads(render(fake.apps["guestbook"]))
    assert body["status"]["operationState"] is None and body["spec"]["sources"] is None
