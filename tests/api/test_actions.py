"""Re-run, cancel and trigger through the Operations seam; notifications and silences of the outbox."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest

from flowforged.errors import ProviderError, RateLimited
from tests.api.client import Api, until
from tests.conftest import github_run

# --- operations -------------------------------------------------------------------------------------


async def test_rerun_and_cancel_call_the_operations(api):
    await api.seed()
    [run] = (await api.get("/runs", source="github", status="failed")).body["runs"]
    reply = await api.post(f"/runs/{run['id']}/rerun", {"failed_only": True})
    assert (reply.status, reply.body) == (202, {"status": "accepted", "action": "rerun", "run": run})
    assert (await api.post(f"/runs/{run['id']}/rerun")).status == 202
    assert (await api.post(f"/runs/{run['id']}/cancel", {"force": True})).status == 202
    assert (await api.post(f"/runs/{run['id']}/cancel", {})).status == 202
    assert [(action, given["id"], option) for action, given, option in api.operations.calls] == [
        ("rerun", run["id"], True),
        ("rerun", run["id"], None),  # the provider's own re-run
        ("cancel", run["id"], True),
        ("cancel", run["id"], False),
    ]


async def test_trigger_calls_the_operation_with_ref_and_inputs(api):
    await api.seed()
    github = (await api.get("/pipelines", source="github")).body["pipelines"][0]
    reply = await api.post(f"/pipelines/{github['id']}/trigger", {"ref": "main", "inputs": {"level": "full"}})
    assert (reply.status, reply.body["run"]) == (202, None)
    api.operations.started = {"run_id": "555", "url": "https://github.com/octo-org/octo-repo/actions/runs/555"}
    reply = await api.post(f"/pipelines/{github['id']}/trigger", {"ref": "v1.2"})
    assert reply.body["run"] == api.operations.started
    assert api.operations.calls == [
        ("trigger", "github", github["pipeline"], "main", {"level": "full"}, {}),
        ("trigger", "github", github["pipeline"], "v1.2", {}, {}),
    ]


@pytest.mark.parametrize(
    ("path", "body", "named"),
    [
        ("/runs/{id}/rerun", {"failed_only": "yes"}, "failed_only"),
        ("/runs/{id}/rerun", {"failedOnly": True}, "failedOnly"),
        ("/runs/{id}/cancel", [True], "body"),
        ("/pipelines/{id}/trigger", {}, "ref"),
        ("/pipelines/{id}/trigger", {"ref": ""}, "ref"),
        ("/pipelines/{id}/trigger", {"ref": "x", "inputs": [1]}, "inputs"),
        ("/pipelines/{id}/trigger", {"ref": "x", "inputs": {"a": {"b": 1}}}, "inputs"),
    ],
)
async def test_bad_bodies_are_400_and_call_nothing(api, path, body, named):
    await api.seed()
    reply = await api.post(path.replace("{id}", "1"), body)
    assert (reply.status, reply.body["error"]["code"]) == (400, "invalid_body")
    assert reply.body["error"]["message"].startswith(f"{named}:")
    reply = await api.call("POST", path.replace("{id}", "1"), data=b"{not json")
    assert reply.status == 400 and api.operations.calls == []


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (409, "conflict"),
        (404, "not_found"),
        (403, "forbidden"),
        (502, "provider_auth_failed"),
        (409, "no_api_token"),
        (501, "not_supported"),
    ],
)
async def test_provider_errors_keep_their_status_and_code(api, status, code):
    await api.seed()
    message = "github: run 102 of octo-org/octo-repo cannot be cancelled (the provider said: completed)"
    api.operations.error = ProviderError(message, status=status, code=code)
    for path in ("/runs/2/cancel", "/runs/2/rerun", "/pipelines/1/trigger"):
        reply = await api.post(path, {"ref": "main"} if "trigger" in path else None)
        assert (reply.status, reply.body) == (status, {"error": {"code": code, "message": message}})


async def test_a_spent_provider_budget_is_503_with_retry_after(api):
    await api.seed()
    api.operations.error = RateLimited("github: rate limit spent", retry_after=41.2)
    reply = await api.post("/runs/1/rerun")
    assert (reply.status, reply.body["error"]["code"], reply.headers["Retry-After"]) == (503, "rate_limited", "42")


# --- notifications and silences -----------------------------------------------------------------------


async def test_notifications_list_filter_and_retry(api):
    await api.github(github_run("failure", run_id=1))  # broken on master: one notification to console
    sent = await until(lambda: _notifications(api, state="sent"))
    [note] = sent
    assert (note["sink"], note["rule"], note["transition"], note["attempts"]) == ("console", "all", "broken", 1)
    assert (await api.get("/notifications", state="dead")).body == {"notifications": [], "next_cursor": None}
    reply = await api.post(f"/notifications/{note['id']}/retry")
    assert (reply.status, reply.body["error"]["code"]) == (409, "not_retryable")
    with sqlite3.connect(api.db) as conn:
        conn.execute("UPDATE outbox SET state = 'dead', last_error = 'gave up' WHERE id = ?", (note["id"],))
    assert [n["id"] for n in await _notifications(api, state="dead")] == [note["id"]]
    reply = await api.post(f"/notifications/{note['id']}/retry")
    assert reply.status == 202 and reply.body["notification"]["state"] in ("pending", "sent")
    [again] = await until(lambda: _notifications(api, state="sent"))  # the dispatcher was woken
    assert again["id"] == note["id"] and again["attempts"] == 1


async def _notifications(api: Api, **params: Any) -> list[dict[str, Any]]:
    return (await api.get("/notifications", **params)).body["notifications"]


async def test_notifications_are_paged(api):
    for run_id in range(1, 5):  # broken, then still failing three times
        at = f"2024-01-0{run_id}T10:00:00Z"
        await api.github(github_run("failure", run_id=run_id, created_at=at, updated_at=at))
    everything = [n["id"] for n in await _notifications(api)]
    first = (await api.get("/notifications", limit=3)).body
    second = (await api.get("/notifications", limit=3, cursor=first["next_cursor"])).body
    assert len(everything) == 4 and [n["id"] for n in first["notifications"] + second["notifications"]] == everything


async def test_silences_add_list_expire(api):
    reply = await api.post(
        "/silences", {"pipelines": ["octo-org/*"], "branches": ["main"], "until": "2h", "comment": "migrating runners"}
    )
    assert reply.status == 201
    silence = reply.body["silence"]
    assert reply.headers["Location"] == f"/api/v1/silences/{silence['id']}"
    assert (silence["sources"], silence["pipelines"], silence["branches"]) == (["*"], ["octo-org/*"], ["main"])
    assert silence["active"] and silence["expired_at"] is None and silence["comment"] == "migrating runners"
    until = (await api.post("/silences", {"until": "2999-01-01T00:00:00Z"})).body["silence"]["until"]
    assert until == "2999-01-01T00:00:00Z"
    assert len((await api.get("/silences")).body["silences"]) == 2
    reply = await api.post(f"/silences/{silence['id']}/expire")
    assert reply.status == 200 and not reply.body["silence"]["active"] and reply.body["silence"]["expired_at"]
    assert (await api.post(f"/silences/{silence['id']}/expire")).body == reply.body  # changes nothing
    assert [s["id"] for s in (await api.get("/silences")).body["silences"]] != [silence["id"]]
    assert len((await api.get("/silences", all="true")).body["silences"]) == 2
    assert (await api.get(f"/silences/{silence['id']}")).body == reply.body


@pytest.mark.parametrize(
    ("body", "named", "status"),
    [
        ({"until": "tomorrow"}, "until", 400),
        ({"until": "2001-01-01T00:00:00Z"}, "until", 422),  # well formed, but in the past
        ({"until": "2999-01-01T00:00:00"}, "until", 400),
        ({"until": "2999-02-30T00:00:00Z"}, "until", 400),
        ({"until": "99999999w"}, "until", 422),
        ({"until": "0"}, "until", 422),
        ({"sources": []}, "sources", 400),
        ({"branches": "main"}, "branches", 400),
        ({"comment": 3}, "comment", 400),
        ({"reason": "x"}, "reason", 400),
    ],
)
async def test_bad_silences_are_refused_naming_the_field(api, body, named, status):
    reply = await api.post("/silences", body)
    assert reply.status == status and reply.body["error"]["message"].startswith(f"{named}:")
    assert (await api.get("/silences", all="true")).body["silences"] == []
