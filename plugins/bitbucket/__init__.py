"""Bitbucket Pipelines (Cloud): build-status webhooks, and pipelines read from the REST API 2.0.

This module is the pure half; `remote` holds the remote half (polling, run a pipeline, re-run, stop),
which BitbucketProvider delegates to.

Bitbucket Cloud has no webhook event of its own for Pipelines: a pipeline reports itself as a commit
build status, so its webhooks are `repo:commit_status_created` and `repo:commit_status_updated`
(https://support.atlassian.com/bitbucket-cloud/docs/event-payloads/#Build-status-created), with the
status `{"name": "Pipeline #42 for main", "state": INPROGRESS | SUCCESSFUL | FAILED | STOPPED,
"refname", "url": ".../addon/pipelines/home#!/results/42", "commit", "created_on", "updated_on"}`
beside the repository. Statuses that other build tools post are not pipelines and are ignored.

Polled pipelines are ingested under the event names `api:pipeline` ({"pipeline", "repo"}) and
`api:step` ({"step", "pipeline", "repo"}), with the states of
https://developer.atlassian.com/cloud/bitbucket/rest/api-group-pipelines/: `state.name` PENDING,
IN_PROGRESS (`state.stage.name` RUNNING, PAUSED at a manual step, HALTED) or COMPLETED
(`state.result.name` SUCCESSFUL, FAILED, ERROR, STOPPED, EXPIRED).

A pipeline is a repository, `{workspace}/{repo slug}` in lower case (Bitbucket's URLs are not case
sensitive, its `full_name` keeps the case it was created with): the pipeline definitions of one
`bitbucket-pipelines.yml` share one build number sequence. A run's id is `{workspace}/{repo}#{build
number}`, not the pipeline's UUID: the build status a webhook carries names the build number, never
the UUID, and a webhook and a poll of one run must be one run. A re-run is a new pipeline, so a new run.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Mapping
from typing import Any

import aiohttp

from flowforged.config import SourceConfig
from flowforged.credentials import Auth, basic, bearer
from flowforged.errors import WebhookRejected
from flowforged.http import ProviderClient
from flowforged.model import Event, JobEvent, RunEvent, Status, parse_time
from flowforged.plugin import Capabilities, Example, Headers, PollContext, Provider
from flowforged_plugins.bitbucket import remote

STATUS_EVENTS = ("repo:commit_status_created", "repo:commit_status_updated")
SIGNATURE_HEADER = "X-Hub-Signature"
WEB_URL = "https://bitbucket.org"
# https://developer.atlassian.com/cloud/bitbucket/rest/api-group-commit-statuses/ (state)
_STATUS_STATE = {
    "INPROGRESS": Status.RUNNING,
    "SUCCESSFUL": Status.SUCCESS,
    "FAILED": Status.FAILED,
    "STOPPED": Status.CANCELLED,
}
# The result of a COMPLETED pipeline or step (pipeline_state_completed_* / pipeline_step_state_completed_*).
_RESULT = {
    "SUCCESSFUL": Status.SUCCESS,
    "FAILED": Status.FAILED,
    "ERROR": Status.FAILED,  # Bitbucket could not run it (a bad bitbucket-pipelines.yml, an image that would not pull)
    "STOPPED": Status.CANCELLED,
    # Undocumented beyond its name: a pipeline that ran out of time before it could finish. Like a
    # stop, it says nothing about the code, so it does not move its branch's state.
    "EXPIRED": Status.CANCELLED,
    "NOT_RUN": Status.SKIPPED,
}
# The stage of an IN_PROGRESS pipeline: PAUSED waits for a manual step, or for another pipeline's
# deployment (https://confluence.atlassian.com/display/BBKB/Differences+between+Bitbucket+pipelines+status+from+UI+and+API+results);
# HALTED waits too.
_STAGE = {"RUNNING": Status.RUNNING, "PAUSED": Status.BLOCKED, "HALTED": Status.BLOCKED}
# Where a build status of Pipelines points: the old and the new address of a result page.
_RESULT_URL = re.compile(r"/(?:addon/pipelines/home#!/results|pipelines/results)/(\d+)")


def pipeline_key(full_name: str) -> str:
    return full_name.strip().lower()


def run_id(pipeline: str, number: int) -> str:
    return f"{pipeline}#{number}"


def results_url(pipeline: str, number: int) -> str:
    return f"{WEB_URL}/{pipeline}/addon/pipelines/home#!/results/{number}"


def pipeline_status(state: Mapping[str, Any]) -> tuple[Status, str]:
    """A pipeline's or a step's normalized status and Bitbucket's word for it: the result of a
    completed one, the stage of one in progress, else the state's name."""
    name = state.get("name") or "PENDING"
    if name == "COMPLETED":
        result = (state.get("result") or {}).get("name") or "FAILED"
        return _RESULT.get(result, Status.FAILED), result
    if name == "IN_PROGRESS":
        stage = (state.get("stage") or {}).get("name") or "RUNNING"
        return _STAGE.get(stage, Status.RUNNING), stage
    if name in ("PAUSED", "HALTED"):  # steps name these as states of their own
        return Status.BLOCKED, name
    return Status.PENDING, name


def _commit_hash(status: Mapping[str, Any]) -> str | None:
    commit = status.get("commit")
    if isinstance(commit, dict) and commit.get("hash"):
        return commit["hash"]
    href = ((status.get("links") or {}).get("commit") or {}).get("href") or ""
    return href.rstrip("/").rsplit("/", 1)[-1] or None


def _first_line(text: str | None) -> str | None:
    line = (text or "").strip().split("\n", 1)[0]
    return line or None


def normalize_status(source: str, payload: Mapping[str, Any]) -> RunEvent | None:
    """A `repo:commit_status_*` delivery to a RunEvent; None for a status Pipelines did not post."""
    status = payload["commit_status"]
    match = _RESULT_URL.search(status.get("url") or "")
    if status.get("type", "build") != "build" or match is None:
        return None
    repository = payload.get("repository") or status.get("repository") or {}
    pipeline = pipeline_key(repository["full_name"])
    number = int(match.group(1))
    state = status.get("state") or "INPROGRESS"
    normalized = _STATUS_STATE.get(state, Status.RUNNING)
    commit = status.get("commit") if isinstance(status.get("commit"), dict) else {}
    author = (commit.get("author") or {}) if commit else {}
    return RunEvent(
        source=source,
        pipeline=pipeline,
        pipeline_name=repository.get("full_name") or pipeline,
        run_id=run_id(pipeline, number),
        attempt=1,
        status=normalized,
        provider_status=state,
        updated_at=parse_time(status.get("updated_on") or status.get("created_on")) or "",
        branch=status.get("refname") or None,
        sha=_commit_hash(status),
        url=status.get("url"),
        created_at=parse_time(status.get("created_on")),
        finished_at=parse_time(status.get("updated_on")) if normalized.terminal else None,
        repo=repository.get("full_name"),
        commit_message=_first_line(commit.get("message")),
        author=(author.get("user") or {}).get("display_name") or author.get("raw"),
        number=number,
    )


def _target(pipeline: Mapping[str, Any]) -> tuple[str | None, int | None, str | None]:
    """(branch, pull request id, trigger) of a pipeline's target: a pull request's pipeline runs on
    its source branch and is recorded with its pull request."""
    target = pipeline.get("target") or {}
    trigger = ((pipeline.get("trigger") or {}).get("name") or "").lower() or None
    if target.get("type") == "pipeline_pullrequest_target":
        request = (target.get("pullrequest") or {}).get("id")
        return target.get("source"), int(request) if request is not None else None, "pull_request"
    return target.get("ref_name"), None, trigger


def normalize_pipeline(source: str, pipeline: Mapping[str, Any], repo: str | None = None) -> RunEvent:
    """A pipeline of the REST API to a RunEvent."""
    full_name = (pipeline.get("repository") or {}).get("full_name") or repo
    if not full_name:
        raise ValueError("the pipeline names no repository")
    key = pipeline_key(full_name)
    number = int(pipeline["build_number"])
    status, word = pipeline_status(pipeline.get("state") or {})
    branch, pull_request, trigger = _target(pipeline)
    created = parse_time(pipeline.get("created_on"))
    finished = parse_time(pipeline.get("completed_on")) if status.terminal else None
    return RunEvent(
        source=source,
        pipeline=key,
        pipeline_name=full_name,
        run_id=run_id(key, number),
        attempt=1,
        status=status,
        provider_status=word,
        # A pipeline has no updated_on: its end, else its creation, is the moment it was seen so.
        updated_at=finished or created or "",
        branch=branch,
        sha=((pipeline.get("target") or {}).get("commit") or {}).get("hash"),
        url=results_url(key, number),
        created_at=created,
        finished_at=finished,
        repo=full_name,
        author=(pipeline.get("creator") or {}).get("display_name"),
        trigger=trigger,
        number=number,
        pull_request=pull_request,
    )


def normalize_step(
    source: str, step: Mapping[str, Any], pipeline: Mapping[str, Any], repo: str | None = None
) -> JobEvent:
    run = normalize_pipeline(source, pipeline, repo)
    status, word = pipeline_status(step.get("state") or {})
    finished = parse_time(step.get("completed_on")) if status.terminal else None
    started = parse_time(step.get("started_on"))
    return JobEvent(
        source=source,
        run_id=run.run_id,
        attempt=1,
        job_id=str(step["uuid"]),
        name=step.get("name") or "Build",  # an unnamed step is shown as "Build" in Bitbucket
        status=status,
        provider_status=word,
        updated_at=finished or started or run.created_at or "",
        pipeline=run.pipeline,
        url=run.url,
        started_at=started,
        finished_at=finished,
        branch=run.branch,
        sha=run.sha,
    )


def sign(secret: str, body: bytes) -> str:
    """X-Hub-Signature: `sha256=` and the hex HMAC-SHA256 of the raw body, keyed with the webhook's
    secret (https://support.atlassian.com/bitbucket-cloud/docs/manage-webhooks/#Secure-webhooks)."""
    return "sha256=" + hmac.digest(secret.encode(), body, "sha256").hex()


# repo:commit_status_updated as Pipelines sends it: Atlassian's documented example
# (tests/fixtures/bitbucket) with the name, URL and refname a pipeline's build status has.
EXAMPLE_PAYLOAD: dict[str, Any] = {
    "repository": {"full_name": "team_name/repo_name", "name": "repo_name", "type": "repository"},
    "commit_status": {
        "name": "Pipeline #42 for main",
        "state": "FAILED",
        "key": "-1879968562",
        "type": "build",
        "refname": "main",
        "url": "https://bitbucket.org/team_name/repo_name/addon/pipelines/home#!/results/42",
        "created_on": "2026-01-05T10:00:01.547563+00:00",
        "updated_on": "2026-01-05T10:04:00.433108+00:00",
        "commit": {"type": "commit", "hash": "9fec847784abb10b2fa567ee63b85bd238955d0e", "message": "Fix it\n"},
    },
}


class BitbucketSourceConfig(SourceConfig):
    repos_hint = "the repositories to poll (workspace/repo)"
    # An Atlassian API token is sent with the account's email address (Basic); an access token of a
    # repository, project or workspace alone, as a Bearer token (https://developer.atlassian.com/cloud/bitbucket/rest/intro/#authentication).
    username: str | None = None

    def check_repos(self) -> None:
        remote.parse_repos(self.repos)


class BitbucketProvider(Provider):
    type = "bitbucket"
    capabilities = Capabilities(trigger=True, inputs=True, variables=True, rerun=True, cancel=True)
    remote = remote.REMOTE
    config_model = BitbucketSourceConfig
    # Never X-Hub-Signature: not a secret, but useless once verified.
    stored_headers = ("X-Event-Key", "X-Request-UUID", "X-Hook-UUID", "X-Attempt-Number", "User-Agent", "Content-Type")

    def verify(self, headers: Headers, body: bytes, now: float) -> None:
        secret = self.config.webhook_secret
        if secret is None:
            return  # insecure_no_auth, checked at start
        sent = headers.get(SIGNATURE_HEADER)
        if not sent:
            raise WebhookRejected(f"no {SIGNATURE_HEADER}: give the webhook a secret in Bitbucket")
        method, _, _ = sent.partition("=")
        if method != "sha256":  # "the method may change": refuse what cannot be checked
            raise WebhookRejected(f"{SIGNATURE_HEADER} uses {method!r}, not sha256")
        if not hmac.compare_digest(sent.encode(), sign(secret.get(), body).encode()):
            raise WebhookRejected(f"{SIGNATURE_HEADER} does not match the body")

    def delivery_id(self, headers: Headers) -> str | None:
        return headers.get("X-Request-UUID")

    def event_name(self, headers: Headers, payload: Any) -> str:
        return headers.get("X-Event-Key") or "unknown"

    def normalize(self, event: str, payload: Any) -> list[Event]:
        if event in STATUS_EVENTS:
            found = normalize_status(self.name, payload)
            return [found] if found is not None else []
        if event == remote.PIPELINE_EVENT:
            return [normalize_pipeline(self.name, payload["pipeline"], payload.get("repo"))]
        if event == remote.STEP_EVENT:
            return [normalize_step(self.name, payload["step"], payload["pipeline"], payload.get("repo"))]
        return []  # repo:push, pull requests, ...

    @classmethod
    def example(cls) -> Example:
        return Example(
            config={"type": "bitbucket", "webhook_secret": "example-secret"},
            event="repo:commit_status_updated",
            payload=EXAMPLE_PAYLOAD,
            sign=lambda config, body, now: {
                "X-Event-Key": "repo:commit_status_updated",
                SIGNATURE_HEADER: sign(config["webhook_secret"], body),
            },
        )

    # --- remote half (remote.py) -------------------------------------------------------------------
    def auth(self, session: aiohttp.ClientSession) -> Auth:
        if self.config.token is None:
            raise NotImplementedError(f"source {self.name} has no API token")
        if self.config.username:
            return basic(self.config.username, self.config.token.get())
        return bearer(self.config.token.get())

    async def poll_targets(self, client: ProviderClient, ctx: PollContext) -> list[str]:
        return list(dict.fromkeys(remote.parse_repos(self.config.repos)))  # as the store keys them: lower case

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
        return await remote.trigger(self, client, pipeline, ref, inputs, variables)

    async def rerun(
        self, client: ProviderClient, run: Mapping[str, Any], failed_only: bool | None
    ) -> dict[str, Any] | None:
        return await remote.rerun(self, client, run)

    async def cancel(self, client: ProviderClient, run: Mapping[str, Any], force: bool) -> dict[str, Any] | None:
        return await remote.cancel(self.name, client, run)
