"""The Bitbucket Pipelines plugin's pure half on Atlassian's published payloads (tests/fixtures/bitbucket):
webhook signatures, which build statuses are pipelines, pipeline and step states; then the remote half's
helpers against the fake API."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict

from flowforged.errors import ProviderError, WebhookRejected
from flowforged.http import MemoryEtags
from flowforged.model import Status
from flowforged.testkit import provider_problems
from flowforged_plugins.bitbucket import (
    BitbucketProvider,
    BitbucketSourceConfig,
    normalize_pipeline,
    pipeline_status,
    remote,
    sign,
)
from tests.fakes.bitbucket_api import FakeBitbucket, state, step_state

FIXTURES = Path(__file__).parent.parent / "fixtures" / "bitbucket" / "webhooks"
SECRET = "It's a Secret to Everybody"


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text())


def as_pipeline(payload: dict[str, Any], number: int = 7, ref: str = "main") -> dict[str, Any]:
    """The documented build status, as Pipelines posts it: its name, result URL and refname."""
    payload = copy.deepcopy(payload)
    payload["commit_status"].update(
        name=f"Pipeline #{number} for {ref}",
        url=f"https://bitbucket.org/team_name/repo_name/addon/pipelines/home#!/results/{number}",
        refname=ref,
    )
    return payload


def provider(**config: Any) -> BitbucketProvider:
    return BitbucketProvider("bb", BitbucketSourceConfig.model_validate({"type": "bitbucket", **config}))


def test_the_provider_passes_the_contract() -> None:
    assert provider_problems(BitbucketProvider, "bitbucket") == []


def test_the_signature_is_an_hmac_sha256_of_the_body() -> None:
    # The same construction as GitHub's X-Hub-Signature-256, whose published test vector this is.
    assert sign(SECRET, b"Hello, World!") == ("sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17")


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "no X-Hub-Signature"),
        ({"X-Hub-Signature": sign("another secret", b"{}")}, "does not match"),
        ({"X-Hub-Signature": "sha1=" + sign(SECRET, b"{}")[7:]}, "not sha256"),
        ({"X-Hub-Signature": sign(SECRET, b"{} ")}, "does not match"),  # another body
    ],
)
def test_a_request_not_signed_with_the_secret_is_rejected(headers: dict[str, str], reason: str) -> None:
    with pytest.raises(WebhookRejected, match=reason):
        provider(webhook_secret=SECRET).verify(CIMultiDict(headers), b"{}", 0.0)
    provider(webhook_secret=SECRET).verify(CIMultiDict({"X-Hub-Signature": sign(SECRET, b"{}")}), b"{}", 0.0)


def test_delivery_id_and_event_come_from_bitbucket_headers() -> None:
    headers = CIMultiDict({"X-Event-Key": "repo:commit_status_updated", "X-Request-UUID": "c0ffee"})
    bb = provider(webhook_secret=SECRET)
    assert (bb.delivery_id(headers), bb.event_name(headers, {})) == ("c0ffee", "repo:commit_status_updated")
    assert "X-Hub-Signature" not in BitbucketProvider.stored_headers


def test_a_build_status_another_tool_posted_is_not_a_pipeline() -> None:
    bb = provider(webhook_secret=SECRET)
    assert bb.normalize("repo:commit_status_updated", fixture("repo-commit-status-updated.json")) == []
    assert bb.normalize("repo:push", {}) == []


def test_a_pipeline_build_status_is_a_run_keyed_by_repository_and_build_number() -> None:
    bb = provider(webhook_secret=SECRET)
    [started] = bb.normalize("repo:commit_status_created", as_pipeline(fixture("repo-commit-status-created.json")))
    [ended] = bb.normalize("repo:commit_status_updated", as_pipeline(fixture("repo-commit-status-updated.json")))
    assert (started.pipeline, started.run_id, started.number) == ("team_name/repo_name", "team_name/repo_name#7", 7)
    assert (started.status, started.provider_status, started.finished_at) == (Status.RUNNING, "INPROGRESS", None)
    assert (ended.run_id, ended.status, ended.provider_status) == (started.run_id, Status.SUCCESS, "SUCCESSFUL")
    assert ended.sha == "9fec847784abb10b2fa567ee63b85bd238955d0e"  # from links.commit: the example has no commit
    assert (ended.branch, ended.updated_at, ended.finished_at) == (
        "main",
        "2015-11-20T08:01:16Z",
        "2015-11-20T08:01:16Z",
    )
    assert ended.created_at == "2015-11-19T20:37:35Z"
    for word, status in (("FAILED", Status.FAILED), ("STOPPED", Status.CANCELLED)):
        payload = as_pipeline(fixture("repo-commit-status-updated.json"))
        payload["commit_status"]["state"] = word
        assert bb.normalize("repo:commit_status_updated", payload)[0].status is status


def test_the_new_results_address_is_a_pipeline_too() -> None:
    payload = fixture("repo-commit-status-updated.json")
    payload["commit_status"]["url"] = "https://bitbucket.org/team_name/repo_name/pipelines/results/12"
    [event] = provider(webhook_secret=SECRET).normalize("repo:commit_status_updated", payload)
    assert event.number == 12


@pytest.mark.parametrize(
    ("name", "detail", "expected"),
    [
        ("PENDING", None, (Status.PENDING, "PENDING")),
        ("IN_PROGRESS", "RUNNING", (Status.RUNNING, "RUNNING")),
        ("IN_PROGRESS", "PAUSED", (Status.BLOCKED, "PAUSED")),
        ("SUCCESSFUL", None, (Status.SUCCESS, "SUCCESSFUL")),
        ("FAILED", None, (Status.FAILED, "FAILED")),
        ("ERROR", None, (Status.FAILED, "ERROR")),
        ("STOPPED", None, (Status.CANCELLED, "STOPPED")),
        ("EXPIRED", None, (Status.CANCELLED, "EXPIRED")),
    ],
)
def test_pipeline_states_map_to_statuses(name: str, detail: str | None, expected: tuple[Status, str]) -> None:
    assert pipeline_status(state(name, detail)) == expected


def test_step_states_map_to_statuses() -> None:
    assert pipeline_status(step_state("NOT_RUN")) == (Status.SKIPPED, "NOT_RUN")
    assert pipeline_status(step_state("IN_PROGRESS"))[0] is Status.RUNNING
    assert pipeline_status(step_state("READY"))[0] is Status.PENDING


def test_a_pull_request_pipeline_is_recorded_with_its_pull_request() -> None:
    fake = FakeBitbucket()
    target = {
        "type": "pipeline_pullrequest_target",
        "source": "feature/login",
        "destination": "main",
        "commit": {"type": "commit", "hash": "1a372fc"},
        "pullrequest": {"type": "pullrequest", "id": 3},
    }
    made = fake.add_pipeline("Acme/Web", state_name="FAILED", target=target)
    event = normalize_pipeline("bb", fake.served(made))
    assert (event.pipeline, event.branch, event.pull_request, event.proposed) == ("acme/web", "feature/login", 3, True)
    assert event.url == "https://bitbucket.org/acme/web/addon/pipelines/home#!/results/1"


def test_repos_must_be_workspace_slash_repo() -> None:
    assert remote.parse_repos(["Acme/Web"]) == ["acme/web"]
    config = BitbucketSourceConfig.model_validate(
        {"type": "bitbucket", "webhook_secret": "s", "token": "t", "repos": ["acme"], "poll_interval": "5m"}
    )
    assert ("repos", "'acme': expected workspace/repo (the slugs in the repository's URL)") in config.problems()


def test_the_rate_limit_headers_tell_only_whether_a_fifth_is_left() -> None:
    limits = remote.BitbucketRateLimits()
    assert limits.budget({}, 0.0) is None  # an API token, not an access token: no headers
    plenty = limits.budget({"X-RateLimit-Limit": "2500", "X-RateLimit-NearLimit": "false"}, 0.0)
    near = limits.budget({"X-RateLimit-Limit": "2500", "X-RateLimit-NearLimit": "true"}, 0.0)
    assert (plenty.limit, plenty.remaining, near.remaining, near.reset_at) == (2500, 2500, 500, None)


async def test_an_api_token_is_sent_with_its_email(aiohttp_server) -> None:
    fake = FakeBitbucket(token="ATATT-api-token", email="ops@example.com")
    fake.add_pipeline("acme/web", state_name="SUCCESSFUL")
    server = await aiohttp_server(fake.app)
    bb = provider(
        webhook_secret=SECRET, token="ATATT-api-token", username="ops@example.com", api_url=str(server.make_url("/2.0"))
    )
    async with aiohttp.ClientSession() as session:
        client = bb.make_client(session, MemoryEtags(), points_per_minute=6000)
        found = await remote.find(client, "bb", {"pipeline": "acme/web", "run_id": "acme/web#1", "number": None})
        assert found["build_number"] == 1
        with pytest.raises(ProviderError, match="pipeline #9 of acme/web was not found"):
            await remote.find(client, "bb", {"pipeline": "acme/web", "run_id": "acme/web#9"})
    assert fake.requests[0].status == 200


async def test_trigger_refuses_inputs_bitbucket_has_no_place_for(aiohttp_server) -> None:
    fake = FakeBitbucket(token="t")
    server = await aiohttp_server(fake.app)
    bb = provider(webhook_secret=SECRET, token="t", api_url=str(server.make_url("/2.0")))
    async with aiohttp.ClientSession() as session:
        client = bb.make_client(session, MemoryEtags(), points_per_minute=6000)
        with pytest.raises(ProviderError, match="inputs: message") as caught:
            await bb.trigger(client, "acme/web", "main", {"message": "hi"})
        assert caught.value.status == 422
        made = await bb.trigger(client, "acme/web", "v1.2", {"ref_type": "tag", "commit": "abc123"})
    assert made["run_id"] == "acme/web#1"
    assert fake.requests[-1].json == {
        "target": {
            "type": "pipeline_ref_target",
            "ref_type": "tag",
            "ref_name": "v1.2",
            "commit": {"type": "commit", "hash": "abc123"},
        }
    }
