"""Sources, pipelines, runs, one run, the event log: filters and cursor pages over the real store."""

from __future__ import annotations

import sqlite3

from flowforged.store import queries
from tests.conftest import applied, fixture, github_run

# --- reading ----------------------------------------------------------------------------------------


async def test_sources_show_config_and_poller_state(api):
    api.operations.status = {
        "github": {
            "last_poll_at": "2024-01-01T00:00:00Z",
            "rate_limit_remaining": 4999,
            "requests": {"ok": 3, "not_modified": 2},
        }
    }
    reply = await api.get("/sources")
    github, gitlab = reply.body["sources"]
    assert (github["name"], github["type"], github["webhook"]) == (
        "github",
        "github",
        {"path": "/hooks/github", "authenticated": True},
    )
    assert github["polling"]["last_poll_at"] == "2024-01-01T00:00:00Z"
    assert github["api"]["requests"] == {"ok": 3, "not_modified": 2}
    assert github["api"]["rate_limit_remaining"] == 4999
    assert gitlab["polling"] == {
        "enabled": False,
        "interval_seconds": 0.0,
        "last_poll_at": None,
        "last_ok_at": None,
        "last_error": None,
        "next_poll_at": None,
    }


async def test_runs_use_the_cli_fields_and_filter(api):
    await api.seed()
    reply = await api.get("/runs")
    with sqlite3.connect(api.db) as conn:
        conn.row_factory = sqlite3.Row
        cli = queries.runs(conn)  # what `flowforged runs --json` prints
    assert [{key: run[key] for key in printed} for run, printed in zip(reply.body["runs"], cli, strict=True)] == cli
    assert reply.body["next_cursor"] is None
    assert len(reply.body["runs"]) == 6
    gh = "octo-org/octo-repo/.github/workflows/test.yml"
    for params, expected in (
        ({"source": "gitlab"}, {"31", "32"}),
        ({"status": "failed"}, {"102", "32"}),
        ({"branch": "feature"}, {"103"}),
        ({"status": "running"}, {"104"}),
        ({"source": "github", "pipeline": gh, "branch": "master", "status": "success"}, {"101"}),
    ):
        runs = (await api.get("/runs", **params)).body["runs"]
        assert {r["run_id"] for r in runs} == expected, params
    [broken] = (await api.get("/runs", source="github", status="failed")).body["runs"]
    assert broken["transition"] == "broken"


async def test_cursor_pages_have_no_duplicates_or_gaps(api):
    await api.seed()
    for limit in range(1, 8):
        everything = [r["id"] for r in (await api.get("/runs", limit=500)).body["runs"]]
        assert everything == sorted(everything, reverse=True)
        seen, cursor, pages = [], None, 0
        while True:
            params = {"limit": limit} | ({"cursor": cursor} if cursor else {})
            body = (await api.get("/runs", **params)).body
            seen += [r["id"] for r in body["runs"]]
            pages += 1
            if (cursor := body["next_cursor"]) is None:
                break
            if pages == 1:  # a run arriving between pages does not shift the pages after
                await api.github(github_run("success", run_id=1000 + limit))
        assert seen == everything, limit
        assert pages == -(-len(everything) // limit)


async def test_pipelines_with_branch_state_and_detail(api):
    await api.seed()
    body = (await api.get("/pipelines")).body
    github, gitlab = body["pipelines"]
    assert github["id"] < gitlab["id"] and body["next_cursor"] is None
    assert {(b["branch"], b["status"]) for b in github["branches"]} == {("master", "failed"), ("feature", "success")}
    assert [(b["branch"], b["status"]) for b in gitlab["branches"]] == [("master", "failed")]
    assert (await api.get("/pipelines", source="gitlab")).body["pipelines"] == [gitlab]
    first = await api.get("/pipelines", limit=1)
    assert first.body["pipelines"] == [github]
    assert (await api.get("/pipelines", limit=1, cursor=first.body["next_cursor"])).body["pipelines"] == [gitlab]
    assert (await api.get(f"/pipelines/{gitlab['id']}")).body == {"pipeline": gitlab}


async def test_run_detail_has_its_jobs_and_events(api):
    at = "2024-01-01T10:00:00Z"
    await api.github(github_run(None, run_id=2202229078, status="in_progress", created_at=at, updated_at=at))
    await api.github(fixture("github/webhooks/workflow_job.completed.failure.json"), event="workflow_job")
    await api.github(github_run("failure", run_id=2202229078, created_at=at, updated_at="2024-01-01T10:09:00Z"))
    [run] = (await api.get("/runs")).body["runs"]
    body = (await api.get(f"/runs/{run['id']}")).body
    assert body["run"] == run
    assert [(j["name"], j["status"]) for j in body["jobs"]] == [("linters", "failed")]
    assert [(e["kind"], e["status"]) for e in body["events"]] == [
        ("run", "running"),
        ("job", "failed"),
        ("run", "failed"),
    ]
    assert all(e["origin"] == "webhook" and e["run_id"] == "2202229078" for e in body["events"])


async def test_events_newest_first_filtered_paged_and_followed(api):
    await api.seed()
    everything = (await api.get("/events")).body["events"]
    ids = [e["id"] for e in everything]
    assert ids == sorted(ids, reverse=True) and len(ids) == 6
    assert {e["run_id"] for e in (await api.get("/events", source="gitlab")).body["events"]} == {"31", "32"}
    assert [e["run_id"] for e in (await api.get("/events", run_id="103")).body["events"]] == ["103"]
    first = (await api.get("/events", limit=4)).body
    second = (await api.get("/events", limit=4, cursor=first["next_cursor"])).body
    assert [e["id"] for e in first["events"] + second["events"]] == ids and second["next_cursor"] is None
    # Following: oldest first after an id, a cursor while a page is full, null once caught up.
    follow = (await api.get("/events", after=ids[-1], limit=3)).body
    assert [e["id"] for e in follow["events"]] == sorted(ids)[1:4]
    rest = (await api.get("/events", cursor=follow["next_cursor"], limit=3)).body
    assert [e["id"] for e in rest["events"]] == sorted(ids)[4:] and rest["next_cursor"] is None
    assert (await api.get("/events", after=ids[0])).body == {"events": [], "next_cursor": None}


async def test_every_time_is_rfc3339_or_null_whatever_the_store_holds(api):
    """Stored times come as providers and older versions wrote them: epoch seconds, GitLab's
    `2024-01-02 10:00:00 UTC`, offsets, fractions, an empty string. The API shows each as RFC 3339 in
    UTC, in whole seconds as the store writes them, or null; tests/api/client.py checks the date-times
    of every answer with a format checker."""
    await api.seed()
    applied(api.db)  # the seeded runs are in the file before it is rewritten under the daemon
    with sqlite3.connect(api.db) as conn:
        conn.execute(
            "UPDATE runs SET started_at = '2024-01-02 10:00:00 UTC', created_at = '2024-01-02T12:00:00.250+02:00',"
            " finished_at = 1704190200, updated_at = '' WHERE id = 1"
        )
        conn.execute("UPDATE pipeline_state SET since = 1704190200.5")
        conn.execute("UPDATE pipelines SET first_seen = 'not a time'")
    run = (await api.get("/runs/1")).body["run"]
    assert (run["started_at"], run["created_at"], run["finished_at"], run["updated_at"]) == (
        "2024-01-02T10:00:00Z",
        "2024-01-02T10:00:00Z",
        "2024-01-02T10:10:00Z",
        None,
    )
    pipelines = (await api.get("/pipelines")).body["pipelines"]
    assert {b["since"] for p in pipelines for b in p["branches"]} == {"2024-01-02T10:10:00Z"}
    assert {p["first_seen"] for p in pipelines} == {None}
