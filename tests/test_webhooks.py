"""POST /hooks/{source}: every status code of flowforged/webhooks.py, with the real fixture payloads."""

from __future__ import annotations

import json
import sqlite3
import time
import urllib.parse

import pytest

from flowforged.store import connect, raw
from flowforged_plugins import gitlab
from tests.conftest import (
    GITHUB_SECRET,
    GITLAB_TOKEN,
    applied,
    base_config,
    fixture,
    github_headers,
    github_run,
    gitlab_headers,
    gitlab_pipeline,
)


def count(db, table: str) -> int:
    applied(db)  # what was acknowledged is applied: the rows read are final
    with sqlite3.connect(db) as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def runs(db) -> list[dict]:
    applied(db)
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM runs ORDER BY id")]


async def test_signed_workflow_run_is_stored_and_normalized(daemon, db_path):
    client = await daemon()
    body = json.dumps(fixture("github/webhooks/workflow_run.completed.success.json")).encode()
    response = await client.post("/hooks/github", data=body, headers=github_headers(body, delivery="d-1"))
    assert response.status == 202
    assert await response.json() == {"status": "accepted", "delivery": "d-1"}
    [run] = runs(db_path)
    assert count(db_path, "events") == 1
    assert run["pipeline"] == "octo-org/octo-repo/.github/workflows/test.yml"
    assert (run["run_id"], run["attempt"], run["branch"], run["status"]) == ("289782451", 1, "master", "success")
    assert run["provider_status"] == "completed/success"
    assert run["finished_at"] == "2020-10-05T16:33:49Z"  # updated_at: a completed run has no completed_at


async def test_redelivery_is_200_and_changes_nothing(daemon, db_path):
    client = await daemon()
    body = json.dumps(github_run("failure")).encode()
    headers = github_headers(body, delivery="same-id")
    assert (await client.post("/hooks/github", data=body, headers=headers)).status == 202
    response = await client.post("/hooks/github", data=body, headers=headers)
    assert response.status == 200
    assert (await response.json())["status"] == "duplicate"
    assert (count(db_path, "deliveries"), count(db_path, "events"), count(db_path, "runs")) == (1, 1, 1)


async def test_same_state_under_a_new_delivery_id_adds_no_event(daemon, db_path):
    client = await daemon()
    body = json.dumps(github_run("failure")).encode()
    for _ in range(2):
        assert (await client.post("/hooks/github", data=body, headers=github_headers(body))).status == 202
    assert (count(db_path, "deliveries"), count(db_path, "events")) == (2, 1)
    assert [r["transition"] for r in runs(db_path)] == ["broken"]


async def test_form_encoded_body_is_accepted(daemon, db_path):
    client = await daemon()
    payload = json.dumps(fixture("github/webhooks/workflow_run.requested.json"))
    body = urllib.parse.urlencode({"payload": payload}).encode()
    headers = github_headers(body) | {"Content-Type": "application/x-www-form-urlencoded"}
    assert (await client.post("/hooks/github", data=body, headers=headers)).status == 202
    assert [r["status"] for r in runs(db_path)] == ["pending"]


async def test_bad_signatures_get_401_and_store_nothing(daemon, db_path):
    client = await daemon()
    body = json.dumps(github_run("failure")).encode()
    good = github_headers(body)
    cases = {
        "wrong secret": github_headers(body, secret="not-the-secret"),
        "missing": {k: v for k, v in good.items() if k != "X-Hub-Signature-256"},
        "sha1 only": {k: v for k, v in good.items() if k != "X-Hub-Signature-256"}
        | {"X-Hub-Signature": "sha1=" + "0" * 40},
        "body changed": good,
    }
    for name, headers in cases.items():
        sent = body + b" " if name == "body changed" else body
        response = await client.post("/hooks/github", data=sent, headers=headers)
        assert response.status == 401, name
        assert (await response.json())["error"]["code"] == "unauthorized"
    assert count(db_path, "deliveries") == 0


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"this is not json", "NotJSON: the body is not JSON"),
        (
            json.dumps(github_run("failure")).encode().replace(b'"master"', b'"ma\xffster"'),
            "NotJSON: the body is not UTF-8",
        ),
    ],
    ids=["not JSON", "not UTF-8"],
)
async def test_an_authentic_body_that_cannot_be_read_is_accepted_and_kept_raw_with_its_error(
    daemon, db_path, body, error
):
    client = await daemon()
    response = await client.post("/hooks/github", data=body, headers=github_headers(body, delivery="d-odd"))
    assert response.status == 202
    assert await response.json() == {"status": "accepted", "delivery": "d-odd"}
    [row] = deliveries(db_path)
    assert row["parse_error"] == error
    assert raw_body(db_path, row) == body  # kept as it came
    assert (count(db_path, "events"), count(db_path, "runs")) == (0, 0)


async def test_unknown_source_is_404(daemon):
    client = await daemon()
    response = await client.post("/hooks/bitbucket", data=b"{}")
    assert response.status == 404
    assert (await response.json())["error"]["code"] == "unknown_source"


async def test_body_over_the_limit_is_413_and_not_stored(daemon, db_path):
    client = await daemon(server={"listen": "127.0.0.1:0", "max_body_bytes": 10_000})
    body = json.dumps(fixture("github/webhooks/workflow_run.completed.success.json")).encode()
    assert len(body) > 10_000
    response = await client.post("/hooks/github", data=body, headers=github_headers(body))
    assert response.status == 413
    assert count(db_path, "deliveries") == 0


async def test_ping_and_uninteresting_events_are_accepted_and_stored(daemon, db_path):
    client = await daemon()
    for event, name in (("ping", "ping.json"), ("check_run", "check_run.completed.json")):
        body = json.dumps(fixture(f"github/webhooks/{name}")).encode()
        response = await client.post("/hooks/github", data=body, headers=github_headers(body, event=event))
        assert response.status == 202
    assert [(row["event"], row["parse_error"]) for row in deliveries(db_path)] == [("ping", None), ("check_run", None)]
    assert (count(db_path, "events"), count(db_path, "runs")) == (0, 0)


async def test_authentic_unparseable_payload_is_stored_raw_with_its_error(daemon, db_path):
    client = await daemon()
    payload = fixture("github/webhooks/workflow_run.completed.success.json")
    del payload["workflow_run"]["id"]
    body = json.dumps(payload).encode()
    response = await client.post("/hooks/github", data=body, headers=github_headers(body, delivery="odd"))
    assert response.status == 202
    applied(db_path)
    with sqlite3.connect(db_path) as conn:
        error = conn.execute("SELECT parse_error FROM deliveries WHERE delivery_id = 'odd'").fetchone()[0]
    assert error == "KeyError: 'id'"
    assert count(db_path, "runs") == 0


async def test_workflow_job_is_normalized_into_a_job(daemon, db_path):
    client = await daemon()
    body = json.dumps(fixture("github/webhooks/workflow_job.completed.failure.json")).encode()
    response = await client.post("/hooks/github", data=body, headers=github_headers(body, event="workflow_job"))
    assert response.status == 202
    applied(db_path)
    with sqlite3.connect(db_path) as conn:
        job = conn.execute("SELECT run_id, job_id, name, status FROM jobs").fetchone()
    assert job == ("2202229078", "289782451", "linters", "failed")


async def test_gitlab_pipeline_and_job_hooks(daemon, db_path):
    client = await daemon()
    body = json.dumps(fixture("gitlab/webhooks/pipeline_hook.success.json")).encode()
    assert (await client.post("/hooks/gitlab", data=body, headers=gitlab_headers())).status == 202
    body = json.dumps(fixture("gitlab/webhooks/job_hook.json")).encode()
    assert (await client.post("/hooks/gitlab", data=body, headers=gitlab_headers("Job Hook"))).status == 202
    [run] = runs(db_path)
    assert (run["pipeline"], run["run_id"], run["status"], run["branch"]) == (
        "gitlab-org/gitlab-test",
        "31",
        "success",
        "master",
    )
    assert (run["created_at"], run["finished_at"]) == ("2016-08-12T15:23:28Z", "2016-08-12T15:26:29Z")
    # No started_at in a Pipeline Hook: GitLab's own duration and queued_duration are the figures.
    assert (run["started_at"], run["duration_seconds"], run["queue_seconds"]) == (None, 63.0, 12.0)
    assert (run["pull_request"], run["trigger"]) == (1, "merge_request_event")  # GitLab's example is an MR's
    applied(db_path)
    with sqlite3.connect(db_path) as conn:
        job = conn.execute("SELECT run_id, job_id, name, status, finished_at FROM jobs").fetchone()
    assert job == ("743121198", "3580121225", "auto_deploy:start", "success", "2023-01-10T13:50:54Z")


async def test_gitlab_wrong_or_missing_token_is_401(daemon, db_path):
    client = await daemon()
    body = json.dumps(gitlab_pipeline()).encode()
    bad = gitlab_headers(token="wrong")
    missing = {k: v for k, v in gitlab_headers().items() if k != "X-Gitlab-Token"}
    for headers in (bad, missing):
        assert (await client.post("/hooks/gitlab", data=body, headers=headers)).status == 401
    assert count(db_path, "deliveries") == 0


async def test_gitlab_dedupes_by_idempotency_key_then_event_uuid(daemon, db_path):
    client = await daemon()
    body = json.dumps(gitlab_pipeline("failed")).encode()
    headers = gitlab_headers(delivery="idem-1")
    assert (await client.post("/hooks/gitlab", data=body, headers=headers)).status == 202
    assert (await client.post("/hooks/gitlab", data=body, headers=headers)).status == 200
    no_key = {k: v for k, v in gitlab_headers().items() if k != "Idempotency-Key"}
    assert (await client.post("/hooks/gitlab", data=body, headers=no_key)).status == 202
    assert (await client.post("/hooks/gitlab", data=body, headers=no_key)).status == 200
    assert count(db_path, "deliveries") == 2


SIGNING = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # base64 of a 24-byte key


def signed_gitlab(body: bytes, *, timestamp: int | None = None, token: str = SIGNING) -> dict[str, str]:
    timestamp = int(time.time()) if timestamp is None else timestamp
    headers = gitlab_headers(delivery="msg-1")
    headers |= {
        "webhook-id": "msg-1",
        "webhook-timestamp": str(timestamp),
        "webhook-signature": gitlab.sign(token, "msg-1", str(timestamp), body),
    }
    return headers


async def test_gitlab_signing_token_scheme(daemon, db_path):
    data = base_config(db_path)
    data["sources"]["gitlab"] = {"type": "gitlab", "signing_token": SIGNING}
    client = await daemon(data)
    body = json.dumps(gitlab_pipeline()).encode()
    stale = signed_gitlab(body, timestamp=int(time.time()) - 301)
    assert (await client.post("/hooks/gitlab", data=body, headers=stale)).status == 401
    forged = signed_gitlab(body, token="whsec_" + "A" * 32)
    assert (await client.post("/hooks/gitlab", data=body, headers=forged)).status == 401
    unsigned = {k: v for k, v in signed_gitlab(body).items() if k != "webhook-signature"}
    assert (await client.post("/hooks/gitlab", data=body, headers=unsigned)).status == 401
    assert count(db_path, "deliveries") == 0
    rotated = signed_gitlab(body)
    rotated["webhook-signature"] = "v1,b2xkLWtleQ== " + rotated["webhook-signature"]
    assert (await client.post("/hooks/gitlab", data=body, headers=rotated)).status == 202
    assert count(db_path, "deliveries") == 1


async def test_store_that_cannot_commit_gives_503_then_recovers(daemon, db_path):
    client = await daemon(storage={"path": str(db_path), "busy_timeout": "50ms"})
    body = json.dumps(github_run("failure")).encode()
    headers = github_headers(body, delivery="during-outage")
    blocker = sqlite3.connect(db_path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # another process holds the database: the writer cannot commit
    try:
        response = await client.post("/hooks/github", data=body, headers=headers)
        assert response.status == 503
        assert (await response.json())["error"]["code"] == "store_unavailable"
        assert (await client.get("/readyz")).status == 503
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert count(db_path, "deliveries") == 0
    assert (await client.post("/hooks/github", data=body, headers=headers)).status == 202
    assert (await client.get("/readyz")).status == 200


async def test_source_without_secret_refuses_to_start_unless_insecure(db_path):
    import pytest

    from flowforged.errors import ConfigError
    from tests.conftest import make_config

    data = base_config(db_path)
    del data["sources"]["github"]["webhook_secret"]
    with pytest.raises(ConfigError) as raised:
        make_config(data)
    assert raised.value.problems[0][0] == "sources.github.webhook_secret"
    data["sources"]["github"]["insecure_no_auth"] = True
    cfg = make_config(data)
    assert any("insecure_no_auth" in w for w in cfg.warnings)


async def test_health_endpoints(daemon):
    client = await daemon()
    assert (await client.get("/healthz")).status == 200
    response = await client.get("/readyz")
    assert response.status == 200
    assert (await response.json())["status"] == "ready"


def test_github_secret_vector():
    from flowforged_plugins import github

    # GitHub's own test vector (docs: "Validating webhook deliveries").
    assert github.sign("It's a Secret to Everybody", b"Hello, World!") == (
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    )
    assert GITHUB_SECRET and GITLAB_TOKEN


def deliveries(db) -> list[dict]:
    applied(db)
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT id, event, parse_error, body FROM deliveries ORDER BY id")]


def raw_body(db, row: dict) -> bytes:
    conn = connect(db, readonly=True)
    try:
        return raw.read(conn, row["id"], row["body"])
    finally:
        conn.close()


def with_raw(payload: dict, field: str, raw: str) -> bytes:
    """The payload as JSON with the workflow run's `field` written as `raw` JSON text (what json.dumps
    would not write: a lone surrogate escape, an integer beyond 64 bits)."""
    payload["workflow_run"][field] = "@@RAW@@"
    return json.dumps(payload).replace('"@@RAW@@"', raw).encode()


DEEP = 5000
UNHOLDABLE = {
    # what: (field, raw JSON text, the parse error stored)
    "lone surrogate in the branch": ("head_branch", '"main\\ud800"', "branch: not valid Unicode"),
    "attempt beyond 64 bits": ("run_attempt", str(2**70), "attempt: 1180591620717411303424 is beyond 64 bits"),
    "run number beyond 64 bits": ("run_number", str(-(2**64)), "number: -18446744073709551616 is beyond 64 bits"),
    "an object where the branch belongs": ("head_branch", '{"name": "main"}', "branch: expected str or None, got dict"),
    "JSON nested thousands of levels": ("head_commit", "[" * DEEP + "]" * DEEP, "nested too deeply"),
}


@pytest.mark.parametrize("what", list(UNHOLDABLE))
async def test_authentic_payload_the_store_cannot_hold_is_stored_raw_and_acknowledged(daemon, db_path, what):
    field, raw, error = UNHOLDABLE[what]
    body = with_raw(github_run("failure"), field, raw)
    client = await daemon()
    response = await client.post("/hooks/github", data=body, headers=github_headers(body, delivery="d-bad"))
    assert response.status == 202
    assert await response.json() == {"status": "accepted", "delivery": "d-bad"}
    [row] = deliveries(db_path)
    assert error in row["parse_error"]
    assert raw_body(db_path, row) == body  # kept as it came, for reindex after a parser fix
    assert (count(db_path, "events"), count(db_path, "runs")) == (0, 0)
    # The next delivery is stored as usual: nothing was left half done.
    good = json.dumps(github_run("failure")).encode()
    assert (await client.post("/hooks/github", data=good, headers=github_headers(good))).status == 202
    assert count(db_path, "runs") == 1


async def test_gitlab_hook_with_an_object_for_its_kind_is_stored_raw(daemon, db_path):
    client = await daemon()
    payload = gitlab_pipeline("failed")
    payload["object_kind"] = {"kind": "pipeline"}
    headers = {k: v for k, v in gitlab_headers().items() if k != "X-Gitlab-Event"}
    body = json.dumps(payload).encode()
    assert (await client.post("/hooks/gitlab", data=body, headers=headers)).status == 202
    [row] = deliveries(db_path)
    assert row["event"] == "unknown"


async def test_a_merge_request_pipeline_on_master_leaves_masters_state_alone(daemon, db_path):
    client = await daemon()
    pushed = json.dumps(gitlab_pipeline("success", pipeline_id=30)).encode()
    assert (await client.post("/hooks/gitlab", data=pushed, headers=gitlab_headers())).status == 202
    merge_request = fixture("gitlab/webhooks/pipeline_hook.success.json")  # source merge_request_event, ref master
    merge_request["object_attributes"].update(status="failed", detailed_status="failed")
    body = json.dumps(merge_request).encode()
    assert (await client.post("/hooks/gitlab", data=body, headers=gitlab_headers())).status == 202
    applied(db_path)
    with sqlite3.connect(db_path) as conn:
        state = conn.execute("SELECT branch, status FROM pipeline_state ORDER BY branch").fetchall()
    assert state == [("master", "success"), ("pull/1", "failed")]
    assert [(r["run_id"], r["branch"], r["pull_request"]) for r in runs(db_path)] == [
        ("30", "master", None),
        ("31", "master", 1),
    ]
