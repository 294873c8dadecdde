"""The Buildkite plugin's pure half with payloads written from Buildkite's documented schemas: webhook
authentication (token and timestamped signature), build and job states, the keys that make a webhook
and a poll of the same state one event; then the REST half's helpers and operations against the fake."""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
from typing import Any

import aiohttp
import pytest

from flowforged.errors import ConfigError, ProviderError, WebhookRejected
from flowforged.http import MemoryEtags
from flowforged.model import Status
from flowforged.secrets import Secret
from flowforged.signatures import signature_header
from flowforged.store.ingest import event_key
from flowforged_plugins.buildkite import BuildkiteProvider, BuildkiteSourceConfig, build_status, remote
from tests.conftest import base_config, make_config
from tests.fakes.buildkite_api import FakeBuildkite

SECRET = "309c9c842g8565adecpd7469x6005989"
NOW = 1_619_071_700.0

# https://buildkite.com/docs/apis/rest-api/builds#get-a-build (the documented example, its job trimmed
# of the step signature and agent details).
REST_BUILD: dict[str, Any] = {
    "id": "f62a1b4d-10f9-4790-bc1c-e2c3a0c80983",
    "graphql_id": "QnVpbGQtLS1mYmQ2Zjk3OS0yOTRhLTQ3ZjItOTU0Ni1lNTk0M2VlMTAwNzE=",
    "url": "https://api.buildkite.com/v2/organizations/my-great-org/pipelines/my-pipeline/builds/2",
    "web_url": "https://buildkite.com/my-great-org/my-pipeline/builds/2",
    "number": 2,
    "state": "passed",
    "cancel_reason": None,
    "blocked": False,
    "message": "Bumping to version 0.2-beta.6\n\nChangelog in CHANGES.md",
    "commit": "abcd0b72a1e580e90712cdd9eb26d3fb41cd09c8",
    "branch": "main",
    "env": {},
    "source": "webhook",
    "creator": {
        "id": "3d3c3bf0-7d58-4afe-8fe7-b3017d5504de",
        "name": "Keith Pitt",
        "email": "keith@buildkite.com",
        "avatar_url": "https://www.gravatar.com/avatar/e14f55d3f939977cecbf51b64ff6f861",
        "created_at": "2015-05-22T12:36:45.309Z",
    },
    "jobs": [
        {
            "id": "b63254c0-3271-4a98-8270-7cfbd6c2f14e",
            "type": "script",
            "name": "RSpec",
            "step_key": "rspec",
            "group_key": "tests",
            "agent_query_rules": ["*"],
            "state": "passed",
            "web_url": "https://buildkite.com/my-great-org/my-pipeline/builds/2#b63254c0-3271-4a98-8270-7cfbd6c2f14e",
            "command": "bundle exec rspec",
            "soft_failed": False,
            "exit_status": 0,
            "created_at": "2015-05-09T21:05:59.874Z",
            "scheduled_at": "2015-05-09T21:05:59.874Z",
            "runnable_at": "2015-05-09T21:06:59.874Z",
            "started_at": "2015-05-09T21:07:59.874Z",
            "finished_at": "2015-05-09T21:08:59.874Z",
            "retried": False,
        },
        {"id": "4e7c6b7f-2b2e-4a43-9b1e-0c1f1ff1c2d1", "graphql_id": "Sm9iLS0tNGU3", "type": "waiter"},
    ],
    "created_at": "2015-05-09T21:05:59.874Z",
    "scheduled_at": "2015-05-09T21:05:59.874Z",
    "started_at": "2015-05-09T21:05:59.874Z",
    "failing_at": None,
    "finished_at": "2015-05-09T21:08:59.874Z",
    "meta_data": {},
    "pull_request": {},
    "rebuilt_from": {
        "id": "812135b3-eee7-408c-9f63-760538b96bd5",
        "number": 1,
        "url": "https://api.buildkite.com/v2/organizations/my-great-org/pipelines/my-pipeline/builds/1",
    },
    "pipeline": {
        "id": "849411f9-9e6d-4739-a0d8-e247088e9b52",
        "url": "https://api.buildkite.com/v2/organizations/my-great-org/pipelines/my-pipeline",
        "web_url": "https://buildkite.com/my-great-org/my-pipeline",
        "name": "Great Pipeline",
        "slug": "my-pipeline",
        "repository": "git@github.com:my-great-org/my-pipeline",
        "default_branch": "main",
        "provider": {"id": "github", "webhook_url": "https://webhook.buildkite.com/deliver/xxx"},
        "builds_url": "https://api.buildkite.com/v2/organizations/my-great-org/pipelines/my-pipeline/builds",
        "created_at": "2013-09-03 13:24:38 UTC",
    },
}


def webhook(event: str, build: dict[str, Any] | None = None, **changes: Any) -> dict[str, Any]:
    """A `build.*` delivery (https://buildkite.com/docs/apis/webhooks/pipelines/build-events): the
    build without its jobs, the pipeline beside it, the webhook's creator as sender."""
    served = copy.deepcopy(build or REST_BUILD)
    pipeline = served.pop("pipeline")
    served.pop("jobs", None)
    served.update(changes)
    return {"event": event, "build": served, "pipeline": pipeline, "sender": {"id": "8a7693f8", "name": "Some Person"}}


def job_webhook(event: str, **changes: Any) -> dict[str, Any]:
    """A `job.*` delivery (https://buildkite.com/docs/apis/webhooks/pipelines/job-events)."""
    payload = webhook("build.running", state="running", finished_at=None)
    job = {**copy.deepcopy(REST_BUILD["jobs"][0]), **changes}
    return {"event": event, "job": job, **{k: payload[k] for k in ("build", "pipeline", "sender")}}


def provider(**config: Any) -> BuildkiteProvider:
    config.setdefault("webhook_secret", Secret(SECRET, "inline"))
    return BuildkiteProvider("buildkite", BuildkiteSourceConfig(type="buildkite", **config))


def signed(body: bytes, at: float = NOW, secret: str = SECRET) -> dict[str, str]:
    return {"X-Buildkite-Event": "build.finished", "X-Buildkite-Signature": signature_header(secret, int(at), body)}


# --- authentication -------------------------------------------------------------------------------


def test_the_documented_signature_and_the_token_both_authenticate() -> None:
    bk = provider()
    body = json.dumps(webhook("build.finished")).encode()
    bk.verify(signed(body), body, NOW)
    bk.verify(signed(body, at=NOW - 299), body, NOW)  # within the five minutes
    bk.verify({"X-Buildkite-Token": SECRET}, body, NOW)
    # The header's form, as documented: timestamp=...,signature=<hex of HMAC-SHA256("{timestamp}.{body}")>
    digest = hmac.new(SECRET.encode(), f"{int(NOW)}.".encode() + body, hashlib.sha256).hexdigest()
    assert signed(body)["X-Buildkite-Signature"] == f"timestamp={int(NOW)},signature={digest}"


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "neither"),
        ({"X-Buildkite-Token": "not-the-token"}, "does not match"),
        ({"X-Buildkite-Token": SECRET[:-1]}, "does not match"),
        ({"X-Buildkite-Signature": "signature=00"}, "no timestamp"),
        ({"X-Buildkite-Signature": "timestamp=soon,signature=00"}, "not a number"),
        ({"X-Buildkite-Signature": f"timestamp={int(NOW)},signature={'0' * 64}"}, "does not match"),
    ],
)
def test_bad_tokens_and_signatures_are_rejected(headers: dict[str, str], reason: str) -> None:
    with pytest.raises(WebhookRejected, match=reason):
        provider().verify(headers, b"{}", NOW)


def test_a_replayed_or_tampered_signature_is_rejected() -> None:
    bk = provider()
    body = json.dumps(webhook("build.finished")).encode()
    with pytest.raises(WebhookRejected, match="window"):
        bk.verify(signed(body, at=NOW - 301), body, NOW)  # captured six minutes ago, sent again
    with pytest.raises(WebhookRejected, match="window"):
        bk.verify(signed(body, at=NOW + 400), body, NOW)
    with pytest.raises(WebhookRejected, match="does not match"):
        bk.verify(signed(body), body.replace(b"passed", b"failed"), NOW)
    with pytest.raises(WebhookRejected, match="does not match"):
        bk.verify(signed(body, secret="another-webhook-token"), body, NOW)
    # A signature header that fails is not saved by a token header beside it.
    with pytest.raises(WebhookRejected):
        bk.verify({**signed(body, at=NOW - 900), "X-Buildkite-Token": SECRET}, body, NOW)


def test_the_token_is_never_kept_with_the_delivery() -> None:
    assert "X-Buildkite-Token" not in BuildkiteProvider.stored_headers
    assert provider().delivery_id({"X-Buildkite-Event": "build.finished"}) is None  # the body's hash stands in


# --- normalization --------------------------------------------------------------------------------


def test_a_finished_build_webhook() -> None:
    [run] = provider().normalize("build.finished", webhook("build.finished"))
    assert (run.pipeline, run.pipeline_name, run.run_id, run.number) == (
        "my-great-org/my-pipeline",
        "Great Pipeline",
        REST_BUILD["id"],
        2,
    )
    assert (run.status, run.provider_status, run.attempt) == (Status.SUCCESS, "passed", 1)
    assert (run.branch, run.sha, run.url) == ("main", REST_BUILD["commit"], REST_BUILD["web_url"])
    assert (run.created_at, run.started_at, run.finished_at, run.updated_at) == (
        "2015-05-09T21:05:59Z",
        "2015-05-09T21:05:59Z",
        "2015-05-09T21:08:59Z",
        "2015-05-09T21:08:59Z",
    )
    assert (run.commit_message, run.author, run.trigger, run.default_branch) == (
        "Bumping to version 0.2-beta.6",
        "Keith Pitt",
        "webhook",
        "main",
    )


@pytest.mark.parametrize(
    ("state", "status"),
    [
        ("creating", Status.PENDING),
        ("scheduled", Status.PENDING),
        ("running", Status.RUNNING),
        ("failing", Status.RUNNING),
        ("canceling", Status.RUNNING),
        ("blocked", Status.BLOCKED),
        ("passed", Status.SUCCESS),
        ("failed", Status.FAILED),
        ("canceled", Status.CANCELLED),
        ("skipped", Status.SKIPPED),
        ("not_run", Status.SKIPPED),
    ],
)
def test_every_documented_build_state(state: str, status: Status) -> None:
    assert build_status({"state": state}) == (status, state)
    [run] = provider().normalize("build.finished", webhook("build.finished", state=state))
    assert run.status is status and (run.finished_at is not None) is status.terminal


def test_a_blocked_build_reads_the_same_from_the_api_and_from_webhooks() -> None:
    # The REST API keeps the last state with blocked: true; webhooks and notifications say blocked.
    rest = {**copy.deepcopy(REST_BUILD), "blocked": True}
    [polled] = provider().normalize(remote.BUILD_EVENT, {"build": rest, "pipeline": rest["pipeline"]})
    [hooked] = provider().normalize("build.finished", webhook("build.finished", blocked=True, state="blocked"))
    assert (polled.status, polled.provider_status) == (Status.BLOCKED, "blocked")
    assert event_key(polled) == event_key(hooked)


def test_a_failing_build_is_still_running_and_later_than_its_start() -> None:
    failing = webhook("build.failing", state="failing", finished_at=None, failing_at="2015-05-09T21:07:10.000Z")
    [run] = provider().normalize("build.failing", failing)
    assert (run.status, run.provider_status, run.updated_at) == (Status.RUNNING, "failing", "2015-05-09T21:07:10Z")
    [running] = provider().normalize("build.running", webhook("build.running", state="running", finished_at=None))
    assert running.updated_at < run.updated_at


@pytest.mark.parametrize(
    ("state", "status"),
    [
        ("passed", "passed"),
        ("failing", "failing"),
        ("running", "running"),
        ("scheduled", "scheduled"),
        ("canceled", "canceled"),
    ],
)
def test_a_polled_build_has_the_key_of_its_webhook(state: str, status: str) -> None:
    changes: dict[str, Any] = {"state": state}
    if state not in ("passed", "canceled"):
        changes["finished_at"] = None
    if state == "failing":
        changes["failing_at"] = "2015-05-09T21:07:10.000Z"
    rest = {**copy.deepcopy(REST_BUILD), **changes}
    bk = provider()
    [polled] = bk.normalize(remote.BUILD_EVENT, {"build": rest, "pipeline": rest["pipeline"]})
    [hooked] = bk.normalize(f"build.{status}", webhook(f"build.{status}", rest))
    assert event_key(polled) == event_key(hooked)
    assert polled == hooked


def test_job_events() -> None:
    bk = provider()
    [job] = bk.normalize("job.finished", job_webhook("job.finished", state="failed", exit_status=1))
    assert (job.run_id, job.job_id, job.name, job.status, job.provider_status) == (
        REST_BUILD["id"],
        REST_BUILD["jobs"][0]["id"],
        "RSpec",
        Status.FAILED,
        "failed",
    )
    assert (job.pipeline, job.stage, job.finished_at) == ("my-great-org/my-pipeline", "tests", "2015-05-09T21:08:59Z")
    [started] = bk.normalize("job.started", job_webhook("job.started", state="running", finished_at=None))
    assert (started.status, started.updated_at) == (Status.RUNNING, "2015-05-09T21:07:59Z")
    # A soft failure does not fail its build: it is not what a notification should name.
    [soft] = bk.normalize("job.finished", job_webhook("job.finished", state="failed", soft_failed=True))
    assert (soft.status, soft.provider_status) == (Status.SUCCESS, "soft_failed")
    # A block step waiting for someone, then let through.
    block = {"type": "manual", "label": ":rocket: Deploy?", "state": "blocked", "name": None}
    [waiting] = bk.normalize("job.scheduled", job_webhook("job.scheduled", **block))
    assert (waiting.name, waiting.status) == (":rocket: Deploy?", Status.BLOCKED)
    [activated] = bk.normalize("job.activated", job_webhook("job.activated", **{**block, "state": "unblocked"}))
    assert activated.status is Status.SUCCESS
    # Waiter jobs (wait steps), pings and agents are nothing to record.
    assert bk.normalize("job.finished", job_webhook("job.finished", type="waiter")) == []
    assert bk.normalize("ping", {"event": "ping", "service": {}, "organization": {}, "sender": {}}) == []
    assert bk.normalize("agent.connected", {"event": "agent.connected", "agent": {}}) == []


def test_the_event_name_comes_from_the_header_or_the_body() -> None:
    bk = provider()
    assert bk.event_name({"X-Buildkite-Event": "build.running"}, {}) == "build.running"
    assert bk.event_name({}, {"event": "job.finished"}) == "job.finished"
    assert bk.event_name({}, []) == "unknown"


def test_the_pipeline_is_named_by_any_url_the_build_has() -> None:
    bk = provider()
    payload = webhook("build.finished")
    payload["build"].pop("url")
    payload["pipeline"].pop("url")
    [run] = bk.normalize("build.finished", payload)
    assert run.pipeline == "my-great-org/my-pipeline"  # from web_url
    payload["build"].pop("web_url")
    payload["pipeline"].pop("web_url")
    with pytest.raises(ValueError, match="organization"):
        bk.normalize("build.finished", payload)


# --- config and helpers ---------------------------------------------------------------------------


def test_repos_entries() -> None:
    assert remote.parse_repos(["acme/web", "org:acme", "other/*", "acme/api"]) == (
        ["acme/web", "acme/api"],
        ["acme", "other"],
    )
    assert remote.targets(["acme/web", "acme/*", "beta/api"]) == ["acme", "beta/api"]  # the org covers acme/web
    for bad in ["acme", "acme/web/extra", "https://buildkite.com/acme/web", "org:"]:
        with pytest.raises(ValueError, match="expected org/pipeline"):
            remote.parse_repos([bad])
    assert remote.builds_path("acme") == "/organizations/acme/builds"
    assert remote.builds_path("acme/web") == "/organizations/acme/pipelines/web/builds"
    assert remote.build_number({"number": None, "url": "https://buildkite.com/acme/web/builds/77"}) == 77


def test_config_needs_a_token_and_repos_to_poll(db_path: Any) -> None:
    source = {"type": "buildkite", "webhook_secret": SECRET, "repos": ["acme"], "poll_interval": 60}
    with pytest.raises(ConfigError) as caught:
        make_config(base_config(db_path, sources={"buildkite": source}))
    problems = dict(caught.value.problems)
    assert "expected org/pipeline" in problems["sources.buildkite.repos"]
    assert problems["sources.buildkite.token"].startswith("missing: polling")
    no_secret = {"type": "buildkite", "token": "bkua_x"}
    with pytest.raises(ConfigError) as caught:
        make_config(base_config(db_path, sources={"buildkite": no_secret}))
    assert dict(caught.value.problems)["sources.buildkite.webhook_secret"].startswith("missing")


def test_the_rate_limit_budget_counts_the_tighter_of_organization_and_user() -> None:
    # https://buildkite.com/docs/apis/rest-api/rate-limits#checking-rate-limit-details: resets in seconds.
    headers = {
        "RateLimit-User-Scope": "rest_user",
        "RateLimit-User-Remaining": "35",
        "RateLimit-User-Limit": "50",
        "RateLimit-User-Reset": "42",
        "RateLimit-Scope": "rest",
        "RateLimit-Remaining": "80",
        "RateLimit-Limit": "200",
        "RateLimit-Reset": "42",
    }
    parse_budget = remote.REMOTE.rate_limits.budget
    budget = parse_budget(headers, NOW)
    assert (budget.limit, budget.remaining, budget.reset_at) == (50, 35, NOW + 42)
    busy = {**headers, "RateLimit-Remaining": "3", "RateLimit-Reset": "20"}
    budget = parse_budget(busy, NOW)
    assert (budget.limit, budget.remaining, budget.reset_at) == (200, 3, NOW + 20)


# --- operations against the fake -------------------------------------------------------------------

TOKEN = "bkua_0p3r4t10ns0000000000000000000000000"


@pytest.fixture
async def fake(aiohttp_server: Any) -> Any:
    bk = FakeBuildkite(token=TOKEN)
    bk.server = await aiohttp_server(bk.app)
    return bk


async def client_for(fake: Any, session: aiohttp.ClientSession) -> Any:
    bk = provider(token=Secret(TOKEN, "inline"), api_url=str(fake.server.make_url("/v2")))
    return bk, bk.make_client(session, MemoryEtags())


async def test_create_build_carries_branch_commit_message_and_env(fake: Any) -> None:
    fake.add_pipeline("acme/web")
    async with aiohttp.ClientSession() as session:
        bk, client = await client_for(fake, session)
        started = await bk.trigger(
            client, "acme/web", "release/2.0", {"commit": "abc123", "DEPLOY": True}, {"REGION": "eu"}
        )
        plain = await bk.trigger(client, "acme/web", "main", {})
    assert fake.created == [
        {
            "pipeline": "acme/web",
            "commit": "abc123",
            "branch": "release/2.0",
            "message": remote.DEFAULT_MESSAGE,
            "env": {"DEPLOY": "true", "REGION": "eu"},
        },
        {"pipeline": "acme/web", "commit": "HEAD", "branch": "main", "message": remote.DEFAULT_MESSAGE},
    ]
    assert started["number"] == 1 and started["url"].endswith("/acme/web/builds/1") and plain["number"] == 2
    assert started["run_id"] in fake.builds


async def test_operation_errors_say_what_was_refused(fake: Any) -> None:
    done = fake.add_build("acme/web", state="passed")
    run = {"pipeline": "acme/web", "run_id": done["id"], "number": done["number"], "url": done["web_url"]}
    async with aiohttp.ClientSession() as session:
        bk, client = await client_for(fake, session)
        with pytest.raises(ProviderError) as caught:
            await bk.cancel(client, run, False)
        assert caught.value.status == 409 and "cannot be cancelled" in str(caught.value)
        assert "because it's passed" in str(caught.value)
        fake.fail_next(1, 403, {"message": "Forbidden"})
        with pytest.raises(ProviderError) as caught:
            await bk.rerun(client, run, False)
        assert caught.value.status == 403 and "write_builds" in str(caught.value)
        with pytest.raises(ProviderError) as caught:
            await bk.trigger(client, "acme/nothing-here", "main", {})
        assert caught.value.status == 404 and "was not found" in str(caught.value)
