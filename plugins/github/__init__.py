"""GitHub Actions: webhooks (workflow_run, workflow_job) and the REST API (polling and operations).

This module is the pure half; `remote` holds the remote half (the REST API), which GitHubProvider
delegates to.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import pydantic
from pydantic import Field

from flowforged.config import SecretValue, SourceConfig
from flowforged.credentials import Auth
from flowforged.errors import NotJSON, ProviderError, WebhookRejected
from flowforged.http import ProviderClient
from flowforged.model import PULL_REQUEST_TRIGGERS, Event, JobEvent, RunEvent, Status, parse_time
from flowforged.plugin import Capabilities, Example, Headers, PollContext, Provider, decode_json
from flowforged_plugins.github import app, remote

if TYPE_CHECKING:
    import aiohttp

# https://docs.github.com/en/rest/actions/workflow-runs: status and conclusion values.
_STATUS = {
    "requested": Status.PENDING,
    "queued": Status.PENDING,
    "pending": Status.PENDING,
    "waiting": Status.BLOCKED,  # waiting for an environment's required reviewers
    "in_progress": Status.RUNNING,
}
_CONCLUSION = {
    "success": Status.SUCCESS,
    "failure": Status.FAILED,
    "timed_out": Status.FAILED,
    "startup_failure": Status.FAILED,
    "cancelled": Status.CANCELLED,
    "skipped": Status.SKIPPED,
    "neutral": Status.SUCCESS,
    "stale": Status.CANCELLED,
    "action_required": Status.BLOCKED,
}


def status_of(status: str | None, conclusion: str | None) -> tuple[Status, str]:
    """GitHub's (status, conclusion) to the normalized status and the provider's own words."""
    if status == "completed":
        return _CONCLUSION.get(conclusion or "", Status.FAILED), f"completed/{conclusion}"
    return _STATUS.get(status or "", Status.PENDING), status or "unknown"


def sign(secret: str, body: bytes) -> str:
    """The X-Hub-Signature-256 value GitHub sends for `body`."""
    # hmac.digest() is OpenSSL's one-shot HMAC: several times faster than hmac.new() on this hot path.
    return "sha256=" + hmac.digest(secret.encode(), body, "sha256").hex()


def workflow_path(run: dict[str, Any]) -> str:
    """The workflow file: webhooks send `.github/workflows/ci.yml`, the REST API may add `@main`."""
    path = run.get("path")
    return path.split("@", 1)[0] if path else str(run.get("workflow_id"))


def proposal(run: dict[str, Any], repo: str | None) -> tuple[int | None, str | None]:
    """(pull request number, head repository) of a run of a pull request, else (None, None). A run is
    a pull request's when its `event` says so, or when its commit comes from another repository (a
    fork). Its `pull_requests` name the pull request, but only those of the same repository (a fork's
    is empty, https://docs.github.com/en/webhooks/webhook-events-and-payloads#workflow_run) and never
    in a list polled with exclude_pull_requests: the head repository and branch, which every run
    carries, are what its state is kept by. A push run lists the open pull requests of its branch
    too: that does not make it a pull request's."""
    head = (run.get("head_repository") or {}).get("full_name")
    if run.get("event") not in PULL_REQUEST_TRIGGERS and not (head and repo and head != repo):
        return None, None
    numbers = [p.get("number") for p in run.get("pull_requests") or [] if isinstance(p, dict)]
    return (numbers[0] if numbers else None), head or repo


def normalize_run(source: str, run: dict[str, Any], repository: dict[str, Any] | None = None) -> RunEvent:
    """One workflow run object (webhook `workflow_run` or REST `GET .../actions/runs`) to a RunEvent."""
    repo = (repository or run.get("repository") or {}).get("full_name")
    pull_request, head_repo = proposal(run, repo)
    status, provider_status = status_of(run.get("status"), run.get("conclusion"))
    # A workflow run has no completed_at: once it is completed, updated_at is when it ended.
    finished = parse_time(run.get("updated_at")) if status.terminal else None
    head = run.get("head_commit") or {}
    actor = run.get("triggering_actor") or run.get("actor") or {}
    return RunEvent(
        source=source,
        pipeline=f"{repo}/{workflow_path(run)}",
        pipeline_name=run.get("name") or run.get("path") or "",
        run_id=str(run["id"]),
        attempt=int(run.get("run_attempt") or 1),
        status=status,
        provider_status=provider_status,
        updated_at=parse_time(run["updated_at"]) or "",
        branch=run.get("head_branch"),
        sha=run.get("head_sha"),
        url=run.get("html_url"),
        created_at=parse_time(run.get("created_at")),
        started_at=parse_time(run.get("run_started_at")),
        finished_at=finished,
        repo=repo,
        default_branch=(repository or run.get("repository") or {}).get("default_branch"),
        commit_message=(head.get("message") or "").split("\n", 1)[0] or run.get("display_title"),
        author=(head.get("author") or {}).get("name") or actor.get("login"),
        trigger=run.get("event"),
        number=run.get("run_number"),
        pull_request=pull_request,
        head_repo=head_repo,
    )


def normalize_job(source: str, job: dict[str, Any], repository: dict[str, Any] | None = None) -> JobEvent:
    status, provider_status = status_of(job.get("status"), job.get("conclusion"))
    updated = job.get("completed_at") or job.get("started_at") or job.get("created_at")
    return JobEvent(
        source=source,
        run_id=str(job["run_id"]),
        attempt=int(job.get("run_attempt") or 1),
        job_id=str(job["id"]),
        name=job.get("name") or "",
        status=status,
        provider_status=provider_status,
        updated_at=parse_time(updated) or "",
        url=job.get("html_url"),
        started_at=parse_time(job.get("started_at")),
        finished_at=parse_time(job.get("completed_at")),
        branch=job.get("head_branch"),
        sha=job.get("head_sha"),
    )


# A workflow_run delivery cut to what normalize() reads (the full one: tests/fixtures/github/).
EXAMPLE_PAYLOAD: dict[str, Any] = {
    "action": "completed",
    "workflow_run": {
        "id": 30433642,
        "name": "CI",
        "path": ".github/workflows/ci.yml",
        "head_branch": "main",
        "head_sha": "acb5820ced9479c074f688cc328bf03f341a511d",
        "event": "push",
        "status": "completed",
        "conclusion": "failure",
        "run_attempt": 1,
        "run_number": 562,
        "html_url": "https://github.com/octo-org/octo-repo/actions/runs/30433642",
        "created_at": "2026-01-05T10:00:00Z",
        "updated_at": "2026-01-05T10:04:00Z",
        "run_started_at": "2026-01-05T10:00:05Z",
        "head_commit": {"message": "Fix the build", "author": {"name": "Mona Lisa"}},
    },
    "repository": {"full_name": "octo-org/octo-repo", "default_branch": "main"},
}


class GitHubSourceConfig(SourceConfig):
    repos_hint = "the repositories to poll (owner/repo, owner/*, org:NAME, or installation for a GitHub App)"
    # A GitHub App instead of `token` (app.py): its id (or client id), its private key (PEM), and the
    # installation, named or looked up from the organization `repos` names.
    app_id: int | str | None = None
    private_key: SecretValue | None = None
    installation_id: int | None = Field(default=None, gt=0)

    @pydantic.field_validator("repos", mode="before")
    @classmethod
    def _installation(cls, value: Any) -> Any:
        return [value] if value == remote.INSTALLATION else value  # `repos: installation`, without a list

    @property
    def is_app(self) -> bool:
        return self.app_id is not None or self.private_key is not None

    def check_repos(self) -> None:
        remote.parse_repos(self.repos)

    def problems(self) -> list[tuple[str, str]]:
        found = super().problems()
        if self.is_app:  # the App's token stands for `token`
            return [p for p in found if p[0] != "token"] + app.config_problems(self)
        if remote.INSTALLATION in self.repos:
            found.append(("repos", "installation: only a GitHub App (app_id, private_key) has an installation"))
        if self.installation_id is not None:
            found.append(("installation_id", "only for a GitHub App: give app_id and private_key too"))
        return found


class GitHubProvider(Provider):
    type = "github"
    capabilities = Capabilities(
        trigger=True, inputs=True, rerun=True, rerun_failed=True, cancel=True, force_cancel=True
    )
    remote = remote.REMOTE
    config_model = GitHubSourceConfig
    stored_headers = ("X-GitHub-Event", "X-GitHub-Delivery", "X-GitHub-Hook-ID", "Content-Type", "User-Agent")

    def verify(self, headers: Headers, body: bytes, now: float) -> None:
        secret = self.config.webhook_secret
        if secret is None:
            return  # insecure_no_auth, checked at start
        signature = headers.get("X-Hub-Signature-256")
        if not signature:
            if headers.get("X-Hub-Signature"):
                raise WebhookRejected("only the SHA-1 X-Hub-Signature was sent; X-Hub-Signature-256 is required")
            raise WebhookRejected("X-Hub-Signature-256 is missing")
        expected = sign(secret.get(), body)
        if not hmac.compare_digest(expected.encode(), signature.strip().encode()):
            raise WebhookRejected("X-Hub-Signature-256 does not match the body")

    def delivery_id(self, headers: Headers) -> str | None:
        return headers.get("X-GitHub-Delivery")

    def event_name(self, headers: Headers, payload: Any) -> str:
        return headers.get("X-GitHub-Event") or "unknown"

    def decode(self, headers: Headers, body: bytes) -> Any:
        # A webhook may be set to application/x-www-form-urlencoded: the JSON is the `payload` field.
        if headers.get("Content-Type", "").startswith("application/x-www-form-urlencoded"):
            try:
                fields = parse_qs(body.decode(), strict_parsing=True)
            except (UnicodeDecodeError, ValueError):
                raise NotJSON("form body cannot be decoded") from None
            if "payload" not in fields:
                raise NotJSON("form body has no payload field")
            body = fields["payload"][0].encode()
        return decode_json(body)

    def normalize(self, event: str, payload: Any) -> list[Event]:
        if self.config.is_app and app.delivered_elsewhere(self.config, payload):
            return []
        if event == "workflow_run":
            return [normalize_run(self.name, payload["workflow_run"], payload.get("repository"))]
        if event == "workflow_job":
            job = normalize_job(self.name, payload["workflow_job"], payload.get("repository"))
            return [job]
        return []

    @classmethod
    def example(cls) -> Example:
        return Example(
            config={"type": "github", "webhook_secret": "example-secret"},
            event="workflow_run",
            payload=EXAMPLE_PAYLOAD,
            sign=lambda config, body, now: {
                "X-GitHub-Event": "workflow_run",
                "X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
                "X-Hub-Signature-256": sign(config["webhook_secret"], body),
            },
        )

    # --- remote half (remote.py; a GitHub App's credentials in app.py) -------------------------------
    def auth(self, session: aiohttp.ClientSession) -> Auth:
        if self.config.is_app:
            return app.installation_auth(self, session)
        return super().auth(session)

    async def poll_targets(self, client: ProviderClient, ctx: PollContext) -> list[str]:
        found = await remote.targets(client, ctx, self.config.repos)
        if remote.INSTALLATION in self.config.repos:
            try:
                found = await app.installation_repos(client, ctx) + found
            except ProviderError as exc:
                ctx.error(remote.INSTALLATION, exc)
        return list(dict.fromkeys(found))

    async def poll_target(self, client: ProviderClient, ctx: PollContext, target: str) -> None:
        await remote.poll_repo(self, client, ctx, target)

    async def trigger(
        self,
        client: ProviderClient,
        pipeline: str,
        ref: str,
        inputs: Mapping[str, Any],
        variables: Mapping[str, str] | None = None,
    ) -> dict[str, Any] | None:
        if variables:
            raise ProviderError(
                f"{self.name}: a GitHub workflow takes inputs, not variables", status=400, code="bad_request"
            )
        return await remote.trigger(self.name, client, pipeline, ref, inputs)

    async def rerun(self, client: ProviderClient, run: Mapping[str, Any], failed_only: bool) -> dict[str, Any] | None:
        await remote.rerun(self.name, client, run, failed_only)
        return None

    async def cancel(self, client: ProviderClient, run: Mapping[str, Any], force: bool) -> dict[str, Any] | None:
        await remote.cancel(self.name, client, run, force)
        return None
