"""GitLab CI: Pipeline Hook and Job Hook webhooks, and pipelines and jobs read from the REST API.

This module is the pure half; `remote` holds the remote half (polling, create/retry/cancel pipeline),
which GitLabProvider delegates to. Polled REST objects are ingested under the event names
`api:pipeline` ({"project", "pipeline", "commit"?}) and `api:job` ({"project", "job"}), normalized so
that a state a webhook already told has the same key and is stored once.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from flowforged.config import SecretValue, SourceConfig
from flowforged.credentials import Auth, header_token
from flowforged.errors import WebhookRejected
from flowforged.http import ProviderClient
from flowforged.model import Event, JobEvent, RunEvent, Status, parse_time
from flowforged.plugin import Capabilities, Example, Headers, PollContext, Provider
from flowforged_plugins.gitlab import remote

# https://docs.gitlab.com/ee/api/pipelines.html: pipeline and job status values.
_STATUS = {
    "created": Status.PENDING,
    "waiting_for_resource": Status.PENDING,
    "preparing": Status.PENDING,
    "pending": Status.PENDING,
    "scheduled": Status.PENDING,
    "running": Status.RUNNING,
    "manual": Status.BLOCKED,
    "waiting_for_callback": Status.BLOCKED,
    "success": Status.SUCCESS,
    "failed": Status.FAILED,
    "canceled": Status.CANCELLED,
    "canceling": Status.RUNNING,
    "skipped": Status.SKIPPED,
}
SIGNATURE_WINDOW = 300.0  # seconds a signed delivery stays valid, against replay


class GitLabSourceConfig(SourceConfig):
    # The HMAC signing token (`whsec_<base64>`), beside or instead of webhook_secret (X-Gitlab-Token).
    signing_token: SecretValue | None = None

    def problems(self) -> list[tuple[str, str]]:
        found = []
        if self.webhook_secret is None and self.signing_token is None and not self.insecure_no_auth:
            found.append(
                (
                    "webhook_secret",
                    "missing (set webhook_secret or signing_token, or insecure_no_auth: true to accept any request)",
                )
            )
        return found + self.polling_problems()

    def check_repos(self) -> None:
        remote.parse_projects(self.repos)

    @property
    def authenticated(self) -> bool:
        return self.webhook_secret is not None or self.signing_token is not None


def status_of(status: str | None) -> Status:
    return _STATUS.get(status or "", Status.PENDING)


def signing_key(token: str) -> bytes:
    """GitLab signing tokens are Standard Webhooks secrets: `whsec_` then the base64 of the key."""
    if token.startswith("whsec_"):
        try:
            return base64.b64decode(token.removeprefix("whsec_"), validate=True)
        except binascii.Error:
            pass
    return token.encode()


def sign(token: str, webhook_id: str, timestamp: str, body: bytes) -> str:
    """The `webhook-signature` value for a delivery: HMAC-SHA256 over "{id}.{timestamp}.{body}"."""
    digest = hmac.new(signing_key(token), f"{webhook_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(digest.digest()).decode()


def _first_line(text: str | None) -> str | None:
    return text.split("\n", 1)[0] if text else None


# A merge request pipeline runs on refs/merge-requests/<iid>/head (or /merge, /train for merged
# results and merge trains): https://docs.gitlab.com/ee/ci/pipelines/merge_request_pipelines.html
_MR_REF = re.compile(r"refs/merge-requests/(\d+)/(?:head|merge|train)")


def merge_request(attrs: dict[str, Any], hook_mr: Any = None) -> int | None:
    """The iid of the merge request a pipeline runs for: the hook's `merge_request`, or its ref."""
    if isinstance(hook_mr, dict) and hook_mr.get("iid") is not None:
        return hook_mr["iid"]
    match = _MR_REF.fullmatch(attrs.get("ref") or "")
    return int(match.group(1)) if match else None


def seconds(value: Any) -> float | None:
    """GitLab's `duration` and `queued_duration`: seconds, an integer or a float, or null."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"a duration is a number of seconds, not {type(value).__name__}")
    return float(value)


def normalize_pipeline(source: str, payload: dict[str, Any]) -> RunEvent:
    attrs = payload["object_attributes"]
    project = payload.get("project") or {}
    commit = payload.get("commit") or {}
    status = status_of(attrs.get("status"))
    finished = parse_time(attrs.get("finished_at")) if status.terminal else None
    created = parse_time(attrs.get("created_at"))
    web_url = project.get("web_url")
    return RunEvent(
        source=source,
        pipeline=project["path_with_namespace"],
        pipeline_name=project.get("name") or project["path_with_namespace"],
        run_id=str(attrs["id"]),
        attempt=1,
        status=status,
        # `status`, not `detailed_status`: the hook's detailed status is a label ("passed with
        # warnings") and the API's a text ("warning") for one state; a key made of either would
        # record it twice.
        provider_status=attrs.get("status") or "unknown",
        # Pipeline hooks carry no updated_at: the latest moment they name stands in for it.
        updated_at=finished or parse_time(attrs.get("updated_at")) or created or "",
        branch=attrs.get("ref") if not attrs.get("tag") else None,
        sha=attrs.get("sha"),
        url=f"{web_url}/-/pipelines/{attrs['id']}" if web_url else None,
        created_at=created,
        started_at=parse_time(attrs.get("started_at")),
        finished_at=finished,
        repo=project.get("path_with_namespace"),
        default_branch=project.get("default_branch"),
        commit_message=_first_line(commit.get("message")) or commit.get("title"),
        author=(commit.get("author") or {}).get("name") or (payload.get("user") or {}).get("name"),
        trigger=attrs.get("source"),
        number=attrs.get("iid"),
        pull_request=merge_request(attrs, payload.get("merge_request")),
        # Hooks carry no started_at: GitLab's own figures give the duration and the queue time.
        duration_seconds=seconds(attrs.get("duration")) if status.terminal else None,
        queue_seconds=seconds(attrs.get("queued_duration")),
    )


def normalize_job(source: str, payload: dict[str, Any]) -> JobEvent:
    repository = payload.get("repository") or {}
    homepage = repository.get("homepage")
    # A Job Hook names its project only by URL; note that `commit.id` is the pipeline id, not a SHA.
    project = urlsplit(homepage).path.strip("/") if homepage else None
    status = status_of(payload.get("build_status"))
    finished = parse_time(payload.get("build_finished_at")) if status.terminal else None
    started = parse_time(payload.get("build_started_at"))
    return JobEvent(
        source=source,
        run_id=str(payload["pipeline_id"]),
        attempt=1,
        job_id=str(payload["build_id"]),
        name=payload.get("build_name") or "",
        status=status,
        provider_status=payload.get("build_status") or "unknown",
        updated_at=finished or started or parse_time(payload.get("build_created_at")) or "",
        pipeline=project,
        url=f"{homepage}/-/jobs/{payload['build_id']}" if homepage else None,
        stage=payload.get("build_stage"),
        started_at=started,
        finished_at=finished,
        branch=payload.get("ref") if not payload.get("tag") else None,
        sha=payload.get("sha"),
    )


def normalize_api_pipeline(source: str, payload: dict[str, Any]) -> RunEvent:
    """A REST pipeline (https://docs.gitlab.com/ee/api/pipelines.html): the list's short form or the
    single pipeline's full one. The key fields are derived as from a Pipeline Hook: updated_at is the
    finish time of a finished pipeline, provider_status its `status`."""
    pipeline = payload["pipeline"]
    project = payload.get("project") or {}
    commit = payload.get("commit") or {}
    status = status_of(pipeline.get("status"))
    finished = parse_time(pipeline.get("finished_at")) if status.terminal else None
    created = parse_time(pipeline.get("created_at"))
    path = project.get("path_with_namespace")
    web_url = project.get("web_url")
    return RunEvent(
        source=source,
        pipeline=path,
        pipeline_name=project.get("name") or path,
        run_id=str(pipeline["id"]),
        attempt=1,
        status=status,
        provider_status=pipeline.get("status") or "unknown",  # as a Pipeline Hook's (see there)
        updated_at=finished or parse_time(pipeline.get("updated_at")) or created or "",
        # The short form has no `tag`: a tag pipeline read only from the list names its tag here.
        branch=pipeline.get("ref") if not pipeline.get("tag") else None,
        sha=pipeline.get("sha"),
        url=pipeline.get("web_url") or (f"{web_url}/-/pipelines/{pipeline['id']}" if web_url else None),
        created_at=created,
        started_at=parse_time(pipeline.get("started_at")),
        finished_at=finished,
        repo=path,
        default_branch=project.get("default_branch"),
        commit_message=_first_line(commit.get("message")) or commit.get("title"),
        author=commit.get("author_name") or (pipeline.get("user") or {}).get("name"),
        trigger=pipeline.get("source"),
        number=pipeline.get("iid"),
        pull_request=merge_request(pipeline),
        duration_seconds=seconds(pipeline.get("duration")) if status.terminal else None,
        queue_seconds=seconds(pipeline.get("queued_duration")),
    )


def normalize_api_job(source: str, payload: dict[str, Any]) -> JobEvent:
    """A REST job (https://docs.gitlab.com/ee/api/jobs.html), keyed as the Job Hook of the same state."""
    job = payload["job"]
    project = payload.get("project") or {}
    status = status_of(job.get("status"))
    finished = parse_time(job.get("finished_at")) if status.terminal else None
    started = parse_time(job.get("started_at"))
    return JobEvent(
        source=source,
        run_id=str(job["pipeline"]["id"]),
        attempt=1,
        job_id=str(job["id"]),
        name=job.get("name") or "",
        status=status,
        provider_status=job.get("status") or "unknown",
        updated_at=finished or started or parse_time(job.get("created_at")) or "",
        pipeline=project.get("path_with_namespace"),
        url=job.get("web_url"),
        stage=job.get("stage"),
        started_at=started,
        finished_at=finished,
        branch=job.get("ref") if not job.get("tag") else None,
        sha=(job.get("commit") or {}).get("id"),  # in the API, unlike in a Job Hook, a commit SHA
    )


# A Pipeline Hook cut to what normalize() reads (the full one: tests/fixtures/gitlab/).
EXAMPLE_PAYLOAD: dict[str, Any] = {
    "object_kind": "pipeline",
    "object_attributes": {
        "id": 31,
        "iid": 3,
        "ref": "main",
        "tag": False,
        "sha": "bcbb5ec396a2c0f828686f14fac9b80b780504f2",
        "status": "failed",
        "source": "push",
        "created_at": "2026-01-05 10:00:00 UTC",
        "finished_at": "2026-01-05 10:04:00 UTC",
        "duration": 240,
        "queued_duration": 3,
    },
    "project": {"path_with_namespace": "group/project", "web_url": "https://gitlab.example.com/group/project"},
    "commit": {"message": "Fix the build", "author": {"name": "Administrator"}},
}


class GitLabProvider(Provider):
    type = "gitlab"
    capabilities = Capabilities(trigger=True, inputs=True, variables=True, rerun_failed=True, cancel=True)
    remote = remote.REMOTE
    config_model = GitLabSourceConfig
    stored_headers = (
        "X-Gitlab-Event",
        "X-Gitlab-Event-UUID",
        "X-Gitlab-Webhook-UUID",
        "Idempotency-Key",
        "webhook-id",
        "webhook-timestamp",
        "Content-Type",
        "User-Agent",
    )

    def verify(self, headers: Headers, body: bytes, now: float) -> None:
        config: GitLabSourceConfig = self.config  # type: ignore[assignment]
        if config.webhook_secret is not None:
            token = headers.get("X-Gitlab-Token")
            if token is None:
                raise WebhookRejected("X-Gitlab-Token is missing")
            if not hmac.compare_digest(token.encode(), config.webhook_secret.get().encode()):
                raise WebhookRejected("X-Gitlab-Token does not match")
        if config.signing_token is not None:
            self._verify_signature(config.signing_token.get(), headers, body, now)

    def _verify_signature(self, token: str, headers: Headers, body: bytes, now: float) -> None:
        webhook_id = headers.get("webhook-id")
        timestamp = headers.get("webhook-timestamp")
        signatures = headers.get("webhook-signature")
        if not (webhook_id and timestamp and signatures):
            raise WebhookRejected("webhook-id, webhook-timestamp or webhook-signature is missing")
        try:
            sent = int(timestamp)
        except ValueError:
            raise WebhookRejected("webhook-timestamp is not a number") from None
        if abs(now - sent) > SIGNATURE_WINDOW:
            raise WebhookRejected("webhook-timestamp is outside the 5-minute window (replayed or clock skew)")
        expected = sign(token, webhook_id, timestamp, body).encode()
        # The header may list several space-separated signatures (Standard Webhooks, key rotation).
        if not any(hmac.compare_digest(expected, candidate.encode()) for candidate in signatures.split()):
            raise WebhookRejected("webhook-signature does not match the body")

    def delivery_id(self, headers: Headers) -> str | None:
        return headers.get("Idempotency-Key") or headers.get("X-Gitlab-Event-UUID")

    def event_name(self, headers: Headers, payload: Any) -> str:
        if headers.get("X-Gitlab-Event"):
            return headers["X-Gitlab-Event"]
        kind = payload.get("object_kind") if isinstance(payload, dict) else None
        if not isinstance(kind, str) or not kind:
            return "unknown"
        return {"pipeline": "Pipeline Hook", "build": "Job Hook"}.get(kind, kind)

    def normalize(self, event: str, payload: Any) -> list[Event]:
        if event == "Pipeline Hook":
            return [normalize_pipeline(self.name, payload)]
        if event == "Job Hook":
            return [normalize_job(self.name, payload)]
        if event == remote.PIPELINE_EVENT:
            return [normalize_api_pipeline(self.name, payload)]
        if event == remote.JOB_EVENT:
            return [normalize_api_job(self.name, payload)]
        return []

    @classmethod
    def example(cls) -> Example:
        return Example(
            config={"type": "gitlab", "webhook_secret": "example-token"},
            event="Pipeline Hook",
            payload=EXAMPLE_PAYLOAD,
            sign=lambda config, body, now: {
                "X-Gitlab-Event": "Pipeline Hook",
                "X-Gitlab-Event-UUID": "13792a34-cac6-4fda-95a8-c58e00a3954e",
                "X-Gitlab-Token": config["webhook_secret"],
            },
        )

    # --- remote half (remote.py) -------------------------------------------------------------------
    def api_url(self) -> str:
        return remote.base_url(self.config.api_url)

    def auth(self, session: aiohttp.ClientSession) -> Auth:
        # https://docs.gitlab.com/ee/api/rest/authentication.html#personalprojectgroup-access-tokens
        if self.config.token is None:
            raise NotImplementedError(f"source {self.name} has no API token")
        return header_token("PRIVATE-TOKEN", self.config.token.get())

    async def poll_targets(self, client: ProviderClient, ctx: PollContext) -> list[str]:
        return await remote.targets(client, ctx, self.config.repos)

    async def poll_target(self, client: ProviderClient, ctx: PollContext, target: str) -> None:
        await remote.poll_project(self, client, ctx, target)

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
        return await remote.retry(self.name, client, run)

    async def cancel(self, client: ProviderClient, run: Mapping[str, Any], force: bool) -> dict[str, Any] | None:
        return await remote.cancel(self.name, client, run)
