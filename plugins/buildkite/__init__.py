"""Buildkite Pipelines: build and job webhooks, and builds read from the REST API.

This module is the pure half; `remote` holds the remote half (polling, create build, rebuild, retry of
failed jobs, cancel), which BuildkiteProvider delegates to. Webhooks arrive as `build.*` and `job.*`
events (https://buildkite.com/docs/apis/webhooks/pipelines/build-events, .../job-events); polled REST
builds are ingested under the event names `api:build` ({"build", "pipeline"}) and `api:job`
({"job", "build", "pipeline"}), normalized by the same functions, so that a state a webhook already
told has the same key and is stored once.

A pipeline is named `{organization}/{pipeline slug}`. A run's id is the build's UUID (`id`): build
numbers are unique only within a pipeline; the number is kept as the run's `number` for URLs. A
rebuild is a new build, so a new run, not a new attempt.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from flowforged.config import SourceConfig
from flowforged.errors import WebhookRejected
from flowforged.http import ProviderClient
from flowforged.model import Event, JobEvent, RunEvent, Status, parse_time
from flowforged.plugin import Capabilities, Example, Headers, PollContext, Provider
from flowforged.signatures import check_timestamped, same_secret, signature_header
from flowforged_plugins.buildkite import remote

# https://buildkite.com/docs/apis/rest-api/builds (build data model) and
# https://buildkite.com/docs/pipelines/configure/notify#build-states
_BUILD = {
    "creating": Status.PENDING,
    "scheduled": Status.PENDING,
    "waiting": Status.PENDING,
    "running": Status.RUNNING,
    "failing": Status.RUNNING,  # a job failed, others are still running: not over yet
    "canceling": Status.RUNNING,
    "blocked": Status.BLOCKED,
    "passed": Status.SUCCESS,
    "failed": Status.FAILED,
    "waiting_failed": Status.FAILED,
    "canceled": Status.CANCELLED,
    "skipped": Status.SKIPPED,
    "not_run": Status.SKIPPED,
}
# Job states (same page, job data model).
_JOB = {
    "pending": Status.PENDING,
    "waiting": Status.PENDING,
    "scheduled": Status.PENDING,
    "assigned": Status.PENDING,
    "accepted": Status.PENDING,
    "limiting": Status.PENDING,
    "limited": Status.PENDING,
    "reserved": Status.PENDING,
    "blocked": Status.BLOCKED,
    "unblocked": Status.SUCCESS,  # a block step someone let through
    "running": Status.RUNNING,
    "canceling": Status.RUNNING,
    "timing_out": Status.RUNNING,
    "passed": Status.SUCCESS,
    "failed": Status.FAILED,
    "timed_out": Status.FAILED,
    "waiting_failed": Status.FAILED,
    "blocked_failed": Status.FAILED,
    "unblocked_failed": Status.FAILED,
    "expired": Status.FAILED,  # no agent took it in time
    "canceled": Status.CANCELLED,
    "skipped": Status.SKIPPED,
    "broken": Status.SKIPPED,  # not run: a condition or a failed dependency kept it out
}
# Waiter jobs (`wait` steps) are plumbing between steps, with no name anyone would look for.
_JOB_TYPES = ("script", "trigger", "manual")
_API_PATH = re.compile(r"/organizations/([^/]+)/pipelines/([^/]+)")


def build_status(build: Mapping[str, Any]) -> tuple[Status, str]:
    """A build's normalized status and the provider's word for it. A build waiting on a block step
    keeps its last state in the REST API (`passed`) with `blocked: true`; webhooks and notifications
    say `blocked`."""
    state = build.get("state") or "unknown"
    if build.get("blocked") and state in ("passed", "blocked"):
        return Status.BLOCKED, "blocked"
    return _BUILD.get(state, Status.PENDING), state


def job_status(job: Mapping[str, Any]) -> tuple[Status, str]:
    state = job.get("state") or "unknown"
    if job.get("soft_failed") and state == "failed":
        # A soft failure (soft_fail in the step) does not fail its build: it is not what broke it.
        return Status.SUCCESS, "soft_failed"
    return _JOB.get(state, Status.PENDING), state


def pipeline_of(build: Mapping[str, Any], pipeline: Mapping[str, Any] | None) -> str:
    """`{organization}/{pipeline slug}`, from the API URL of the build or its pipeline (present in
    webhooks and REST answers alike), else from the build's web URL (`/{org}/{pipeline}/builds/N`)."""
    pipeline = pipeline or build.get("pipeline") or {}
    for url in (build.get("url"), pipeline.get("url")):
        if url and (match := _API_PATH.search(urlsplit(url).path)):
            return f"{match.group(1)}/{pipeline.get('slug') or match.group(2)}"
    parts = urlsplit(build.get("web_url") or pipeline.get("web_url") or "").path.strip("/").split("/")
    if len(parts) >= 2 and all(parts[:2]):
        return f"{parts[0]}/{pipeline.get('slug') or parts[1]}"
    raise ValueError("the build names no organization (no url or web_url)")


def _first_line(text: str | None) -> str | None:
    line = (text or "").strip().split("\n", 1)[0]
    return line or None


def _updated(item: Mapping[str, Any], status: Status, state: str) -> str:
    """The moment a build or job was last seen to change. Neither has an updated_at: the latest of
    its own times that fits its state stands in for it, the same whether read from a webhook or the
    API, so that both give the same state the same key."""
    if status.terminal or status is Status.BLOCKED:
        moment = item.get("finished_at")
    elif state == "failing":
        moment = item.get("failing_at")
    else:
        moment = None
    moment = moment or item.get("started_at") or item.get("runnable_at") or item.get("scheduled_at")
    return parse_time(moment or item.get("created_at")) or ""


def normalize_build(source: str, build: Mapping[str, Any], pipeline: Mapping[str, Any] | None = None) -> RunEvent:
    """A build, from a `build.*` webhook or the REST API, to a RunEvent."""
    pipeline = pipeline or build.get("pipeline") or {}
    status, provider_status = build_status(build)
    author = build.get("author") or build.get("creator") or {}
    key = pipeline_of(build, pipeline)
    return RunEvent(
        source=source,
        pipeline=key,
        pipeline_name=pipeline.get("name") or key,
        run_id=str(build["id"]),
        attempt=1,
        status=status,
        provider_status=provider_status,
        updated_at=_updated(build, status, provider_status),
        branch=build.get("branch") or None,
        sha=build.get("commit") if build.get("commit") != "HEAD" else None,
        url=build.get("web_url"),
        created_at=parse_time(build.get("created_at")),
        started_at=parse_time(build.get("started_at")),
        finished_at=parse_time(build.get("finished_at")) if status.terminal else None,
        repo=pipeline.get("repository"),
        default_branch=pipeline.get("default_branch"),
        commit_message=_first_line(build.get("message")),
        author=author.get("name") if isinstance(author, dict) else None,
        trigger=build.get("source"),
        number=build.get("number"),
    )


def normalize_job(
    source: str, job: Mapping[str, Any], build: Mapping[str, Any], pipeline: Mapping[str, Any] | None = None
) -> JobEvent | None:
    """A job of a build (`job.*` webhook, or one of a REST build's jobs); None for a waiter."""
    if job.get("type") not in _JOB_TYPES:
        return None
    status, provider_status = job_status(job)
    return JobEvent(
        source=source,
        run_id=str(build["id"]),
        attempt=1,
        job_id=str(job["id"]),
        name=job.get("name") or job.get("label") or job.get("step_key") or job["type"],
        status=status,
        provider_status=provider_status,
        updated_at=_updated(job, status, provider_status),
        pipeline=pipeline_of(build, pipeline),
        url=job.get("web_url"),
        stage=job.get("group_key"),
        started_at=parse_time(job.get("started_at")),
        finished_at=parse_time(job.get("finished_at")) if status.terminal else None,
        branch=build.get("branch") or None,
        sha=build.get("commit") if build.get("commit") != "HEAD" else None,
    )


# A build.finished delivery cut to what normalize() reads
# (https://buildkite.com/docs/apis/webhooks/pipelines/build-events).
EXAMPLE_PAYLOAD: dict[str, Any] = {
    "event": "build.finished",
    "build": {
        "id": "f62a1b4d-10f9-4790-bc1c-e2c3a0c80983",
        "url": "https://api.buildkite.com/v2/organizations/acme/pipelines/web/builds/42",
        "web_url": "https://buildkite.com/acme/web/builds/42",
        "number": 42,
        "state": "failed",
        "branch": "main",
        "commit": "a65572555600c07c7ee79a3a2c5b7b2a5a1e9c0d",
        "message": "Fix the build",
        "source": "webhook",
        "author": {"name": "Keith Pitt"},
        "created_at": "2026-01-05T10:00:00.000Z",
        "started_at": "2026-01-05T10:00:05.000Z",
        "finished_at": "2026-01-05T10:04:00.000Z",
    },
    "pipeline": {"slug": "web", "name": "Web", "repository": "git@github.com:acme/web.git", "default_branch": "main"},
}


class BuildkiteSourceConfig(SourceConfig):
    repos_hint = "what to poll (org/pipeline, or org/* for every pipeline)"

    def check_repos(self) -> None:
        remote.parse_repos(self.repos)


class BuildkiteProvider(Provider):
    type = "buildkite"
    capabilities = Capabilities(trigger=True, inputs=True, variables=True, rerun=True, rerun_failed=True, cancel=True)
    remote = remote.REMOTE
    config_model = BuildkiteSourceConfig
    # Never X-Buildkite-Token: it is the secret itself.
    stored_headers = ("X-Buildkite-Event", "X-Buildkite-Signature", "Content-Type", "User-Agent")

    def verify(self, headers: Headers, body: bytes, now: float) -> None:
        """https://buildkite.com/docs/apis/webhooks/pipelines#webhook-signature: the webhook's Token is
        sent either as it is (X-Buildkite-Token) or as the key of an HMAC with a timestamp
        (X-Buildkite-Signature), whichever the webhook's settings say."""
        secret = self.config.webhook_secret
        if secret is None:
            return  # insecure_no_auth, checked at start
        signature = headers.get("X-Buildkite-Signature")
        if signature is not None:
            check_timestamped("X-Buildkite-Signature", signature, secret.get(), body, now)
            return
        token = headers.get("X-Buildkite-Token")
        if token is None:
            raise WebhookRejected("neither X-Buildkite-Signature nor X-Buildkite-Token was sent")
        if not same_secret(token, secret.get()):
            raise WebhookRejected("X-Buildkite-Token does not match")

    def delivery_id(self, headers: Headers) -> str | None:
        # Buildkite sends no delivery id: a delivery sent again has the same body, whose hash stands in.
        return None

    def event_name(self, headers: Headers, payload: Any) -> str:
        if headers.get("X-Buildkite-Event"):
            return headers["X-Buildkite-Event"]
        event = payload.get("event") if isinstance(payload, dict) else None
        return event if isinstance(event, str) else "unknown"

    def normalize(self, event: str, payload: Any) -> list[Event]:
        if event.startswith("build.") or event == remote.BUILD_EVENT:
            return [normalize_build(self.name, payload["build"], payload.get("pipeline"))]
        if event.startswith("job.") or event == remote.JOB_EVENT:
            job = normalize_job(self.name, payload["job"], payload["build"], payload.get("pipeline"))
            return [job] if job is not None else []
        return []  # ping, agent.*, ...

    @classmethod
    def example(cls) -> Example:
        return Example(
            config={"type": "buildkite", "webhook_secret": "example-token"},
            event="build.finished",
            payload=EXAMPLE_PAYLOAD,
            sign=lambda config, body, now: {
                "X-Buildkite-Event": "build.finished",
                "X-Buildkite-Signature": signature_header(config["webhook_secret"], int(now), body),
            },
        )

    # --- remote half (remote.py) -------------------------------------------------------------------
    async def poll_targets(self, client: ProviderClient, ctx: PollContext) -> list[str]:
        return remote.targets(self.config.repos)

    async def poll_target(self, client: ProviderClient, ctx: PollContext, target: str) -> None:
        await remote.poll_target(self, client, ctx, target)

    async def trigger(
        self,
        client: ProviderClient,
        pipeline: str,
        ref: str,
        inputs: Mapping[str, Any],
        variables: Mapping[str, str] | None = None,
    ) -> dict[str, Any] | None:
        return await remote.trigger(self.name, client, pipeline, ref, inputs, variables)

    async def rerun(self, client: ProviderClient, run: Mapping[str, Any], failed_only: bool) -> dict[str, Any] | None:
        return await remote.rerun(self.name, client, run, failed_only)

    async def cancel(self, client: ProviderClient, run: Mapping[str, Any], force: bool) -> dict[str, Any] | None:
        return await remote.cancel(self.name, client, run)
