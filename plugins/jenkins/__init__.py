"""Jenkins: Notification plugin webhooks, and builds read from the JSON API.

This module is the pure half; `remote` holds the remote half (polling jobs inside folders and multibranch
projects, trigger with parameters, re-run, stop), which JenkinsProvider delegates to.

Webhooks come from the Notification plugin (https://plugins.jenkins.io/notification/), one per phase
of a build: QUEUED, STARTED, COMPLETED, FINALIZED. Its JSON (Gson, lower_case_with_underscores) is
`{"name", "display_name", "url": "job/folder/job/app/", "build": {"full_url", "number", "queue_id",
"phase", "status" (absent until the build has a result), "url", "scm": {"url", "branch", "commit",
"culprits"}, "parameters", "timestamp", "duration", ...}}`. The plugin cannot add headers of its own
or sign a body, but it sends the user information of its endpoint URL as Basic authentication: the
endpoint `https://flowforge:<webhook_secret>@flowforge.example.com/hooks/jenkins` authenticates (the
user name is not checked). Other senders may use `X-FlowForge-Token: <webhook_secret>`, or sign the
body as Buildkite does: `X-FlowForge-Signature: timestamp=<unix>,signature=<hex HMAC-SHA256 of
"{timestamp}.{body}">`, valid for five minutes.

Polled builds are ingested under the event name `api:build` ({"job": {"full_name", "multibranch"},
"build": <JSON API build>}). A pipeline is a job's full name (`folder/app`, `org/repo/main` for the
branch job of a multibranch project); a run's id is Jenkins' own external id of a build,
`{full name}#{number}`, since build numbers are unique only within a job. A re-run is a new build.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urlsplit

import aiohttp

from flowforged.config import SourceConfig
from flowforged.credentials import Auth, basic
from flowforged.errors import WebhookRejected
from flowforged.http import ProviderClient
from flowforged.model import Event, RunEvent, Status, parse_time
from flowforged.plugin import Capabilities, Example, Headers, PollContext, Provider
from flowforged.signatures import check_timestamped, same_secret, signature_header
from flowforged_plugins.jenkins import remote

# https://javadoc.jenkins.io/hudson/model/Result.html
_RESULT = {
    "SUCCESS": Status.SUCCESS,
    "UNSTABLE": Status.FAILED,  # tests failed: the build is not good
    "FAILURE": Status.FAILED,
    "ABORTED": Status.CANCELLED,
    "NOT_BUILT": Status.SKIPPED,
}
QUEUED, STARTED, COMPLETED, FINALIZED = "QUEUED", "STARTED", "COMPLETED", "FINALIZED"
SIGNATURE_HEADER = "X-FlowForge-Signature"
TOKEN_HEADER = "X-FlowForge-Token"  # noqa: S105 (a header name)
# Parameters that name the branch of a job that is not in a multibranch project.
BRANCH_PARAMETERS = ("BRANCH", "BRANCH_NAME", "GIT_BRANCH", "ref")
# hudson.model.Cause subclasses: how a build was started, in a word.
_CAUSES = {
    "UserIdCause": "user",
    "UserCause": "user",
    "SCMTriggerCause": "scm",
    "TimerTriggerCause": "schedule",
    "UpstreamCause": "upstream",
    "RemoteCause": "remote",
    "BranchIndexingCause": "branch_indexing",
    "BranchEventCause": "branch_event",
    "ReplayCause": "replay",
    "RebuildCause": "rebuild",
    "GitHubPushCause": "push",
    "GitLabWebHookCause": "push",
}


def result_status(result: str | None) -> Status:
    return _RESULT.get(result or "", Status.FAILED)


def full_name(url: str) -> str:
    """A job's full name from its URL (`job/folder/job/app/`, absolute or not, maybe with a build
    number after it): the name after each `job` segment, URL-decoded once. A multibranch branch job's
    name keeps its own encoding (`feature%2Flogin`), as Jenkins names the item."""
    segments = [s for s in urlsplit(url).path.split("/") if s]
    names: list[str] = []
    index = 0
    while index < len(segments) - 1:
        if segments[index] == "job":
            names.append(unquote(segments[index + 1]))
            index += 2
        else:
            index += 1
    if not names:
        raise ValueError(f"{url!r} is not the URL of a Jenkins job")
    return "/".join(names)


def run_id(job: str, number: int) -> str:
    return f"{job}#{number}"


def branch_name(value: str | None) -> str | None:
    """A branch as git reports it (`origin/main`, `refs/remotes/origin/main`, `refs/heads/main`)."""
    if not value:
        return None
    for prefix in ("refs/heads/", "refs/remotes/origin/", "remotes/origin/", "origin/"):
        if value.startswith(prefix):
            return value[len(prefix) :] or None
    return value


def _millis(value: Any) -> float | None:
    """A Jenkins time in epoch milliseconds: a number, or the plugin's older text form. 0 is no time:
    the plugin sends it for QUEUED when the build had no executor to ask."""
    if value is None or value == "" or value == 0:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"a Jenkins time is epoch milliseconds, not {type(value).__name__}")
    text = value.strip().replace("Z", "+00:00")
    moment = datetime.fromisoformat(text)
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp() * 1000


def _time(ms: float | None) -> str | None:
    return parse_time(int(ms)) if ms is not None else None


def normalize_notification(source: str, payload: Mapping[str, Any]) -> list[Event]:
    """A Notification plugin delivery. Its `timestamp` is the moment of its phase
    (https://github.com/jenkinsci/notification-plugin, JobListener): QUEUED when the build entered
    the queue (now less the time it spent there), STARTED the build's start, COMPLETED its end (start
    + duration), FINALIZED the moment its logs and artifacts were done with: later than its end, so
    FINALIZED names no finish of its own. Its duration gives one from a start told before; a delivery
    without a timestamp is dated when it was received (by the ingest)."""
    build = payload["build"]
    phase = build.get("phase")
    job = full_name(payload.get("url") or "") if payload.get("url") else payload["name"]
    at = _millis(build.get("timestamp"))
    duration = build.get("duration") or 0
    created = started = finished = None
    took = None
    if phase == QUEUED:
        status, provider_status, created = Status.PENDING, QUEUED, at
    elif phase == STARTED:
        status, provider_status, started = Status.RUNNING, STARTED, at
    elif phase in (COMPLETED, FINALIZED):
        status, provider_status = result_status(build.get("status")), build.get("status") or "unknown"
        took = duration / 1000
        if phase == COMPLETED and at is not None:
            started, finished = at - duration, at
    else:
        return []  # NONE: a manual notifyEndpoints step, which says nothing about the build
    scm = build.get("scm") or {}
    parameters = build.get("parameters") or {}
    culprits = scm.get("culprits") or []
    return [
        RunEvent(
            source=source,
            pipeline=job,
            pipeline_name=job,
            run_id=run_id(job, int(build["number"])),
            attempt=1,
            status=status,
            provider_status=provider_status,
            updated_at=_time(at) or "",
            branch=branch_name(scm.get("branch")) or _parameter_branch(parameters),
            sha=scm.get("commit"),
            url=build.get("full_url"),
            created_at=_time(created if created is not None else started),
            started_at=_time(started),
            finished_at=_time(finished) if status.terminal else None,
            author=culprits[0] if culprits else None,
            number=int(build["number"]),
            duration_seconds=took if status.terminal else None,
        )
    ]


def _parameter_branch(parameters: Mapping[str, Any]) -> str | None:
    for name in BRANCH_PARAMETERS:
        if parameters.get(name):
            return branch_name(str(parameters[name]))
    return None


def _trigger(build: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """How the build was started and by whom (CauseAction)."""
    for causes in remote.actions(build, "causes"):
        for cause in causes or []:
            kind = str(cause.get("_class") or "").rsplit("$", 1)[-1].rsplit(".", 1)[-1]
            return _CAUSES.get(kind, kind or None), cause.get("userName")
    return None, None


def normalize_api_build(source: str, payload: Mapping[str, Any]) -> RunEvent:
    """A build of the JSON API (`.../api/json?tree=builds[...]`), keyed as the Notification plugin's
    delivery of the same state: a build in progress as STARTED at its start, a finished one as its
    result at start + duration."""
    job = payload["job"]["full_name"]
    build = payload["build"]
    start = _millis(build.get("timestamp"))
    result = build.get("result")
    if build.get("building") or build.get("inProgress") or result is None:
        status, provider_status, finished = Status.RUNNING, STARTED, None
    else:
        status, provider_status = result_status(result), result
        finished = start + (build.get("duration") or 0) if start is not None else None
    revisions = [r for r in remote.actions(build, "lastBuiltRevision") if isinstance(r, dict)]
    branches = (revisions[0].get("branch") or []) if revisions else []
    if payload["job"].get("multibranch"):
        branch = unquote(job.rsplit("/", 1)[-1])  # the branch job of a multibranch project
    else:
        branch = branch_name(branches[0].get("name") if branches else None) or _parameter_branch(
            remote.build_parameters(build)
        )
    change_sets = [*(build.get("changeSets") or []), *([build["changeSet"]] if build.get("changeSet") else [])]
    changes = [item for change in change_sets for item in change.get("items") or []]
    last = changes[-1] if changes else {}
    trigger, user = _trigger(build)
    return RunEvent(
        source=source,
        pipeline=job,
        pipeline_name=job,
        run_id=run_id(job, int(build["number"])),
        attempt=1,
        status=status,
        provider_status=provider_status,
        updated_at=_time(finished if finished is not None else start) or "",
        branch=branch,
        sha=revisions[0].get("SHA1") if revisions else None,
        url=build.get("url"),
        created_at=_time(start),
        started_at=_time(start),
        finished_at=_time(finished) if status.terminal else None,
        commit_message=(last.get("msg") or "").split("\n", 1)[0] or None,
        author=(last.get("author") or {}).get("fullName") or user,
        trigger=trigger,
        number=int(build["number"]),
    )


# A Notification plugin delivery (https://github.com/jenkinsci/notification-plugin), cut short.
EXAMPLE_PAYLOAD: dict[str, Any] = {
    "name": "app",
    "url": "job/app/",
    "build": {
        "full_url": "https://jenkins.example.com/job/app/7/",
        "number": 7,
        "phase": COMPLETED,
        "status": "FAILURE",
        "timestamp": 1767607440000,
        "duration": 240000,
        "scm": {"branch": "origin/main", "commit": "c0ffee0ddba11c0ffee0ddba11c0ffee0ddba11c"},
    },
}


class JenkinsSourceConfig(SourceConfig):
    repos_hint = "the jobs or folders to poll (folder/job, folder, or * for all)"
    username: str | None = None  # the user whose API token `token` is
    # Jenkins sends no rate-limit headers: at most this many API requests a second (None: no limit).
    max_rps: float | None = 10.0
    # A triggered job that has a parameter of this name gets the trigger's ref in it.
    ref_parameter: str = "BRANCH"

    def problems(self) -> list[tuple[str, str]]:
        found = super().problems()
        if self.token is not None and not self.username:
            found.append(("username", "missing: a Jenkins API token belongs to a user name"))
        if (self.poll_interval > 0 or self.token is not None) and not self.api_url:
            found.append(("api_url", "missing: the address of the Jenkins server (https://jenkins.example.com/)"))
        return found

    def check_repos(self) -> None:
        remote.parse_repos(self.repos)


class JenkinsProvider(Provider):
    type = "jenkins"
    capabilities = Capabilities(trigger=True, inputs=True, rerun=True, cancel=True, force_cancel=True)
    remote = remote.REMOTE
    config_model = JenkinsSourceConfig
    # Never Authorization or X-FlowForge-Token: they carry the secret.
    stored_headers = (SIGNATURE_HEADER, "Content-Type", "User-Agent")

    def __init__(self, name: str, config: SourceConfig):
        super().__init__(name, config)
        self.crumb = remote.Crumb()  # this Jenkins' CSRF crumb, once it asked for one

    def verify(self, headers: Headers, body: bytes, now: float) -> None:
        secret = self.config.webhook_secret
        if secret is None:
            return  # insecure_no_auth, checked at start
        if (signature := headers.get(SIGNATURE_HEADER)) is not None:
            check_timestamped(SIGNATURE_HEADER, signature, secret.get(), body, now)
            return
        if (token := headers.get(TOKEN_HEADER)) is not None:
            if not same_secret(token, secret.get()):
                raise WebhookRejected(f"{TOKEN_HEADER} does not match")
            return
        scheme, _, credentials = (headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "basic":
            raise WebhookRejected(f"no {SIGNATURE_HEADER}, {TOKEN_HEADER} or Basic authorization was sent")
        try:
            _, _, password = base64.b64decode(credentials, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise WebhookRejected("the Basic authorization cannot be decoded") from None
        # The plugin sends the URL's user information as written: percent-encoded where the secret has
        # characters a URL cannot carry as they are.
        if not (same_secret(password, secret.get()) or same_secret(unquote(password), secret.get())):
            raise WebhookRejected("the password of the Basic authorization does not match")

    def delivery_id(self, headers: Headers) -> str | None:
        # The Notification plugin sends no delivery id; a retry sends the same body, whose hash stands in.
        return None

    def event_name(self, headers: Headers, payload: Any) -> str:
        build = payload.get("build") if isinstance(payload, dict) else None
        phase = build.get("phase") if isinstance(build, dict) else None
        return phase if isinstance(phase, str) else "unknown"

    def normalize(self, event: str, payload: Any) -> list[Event]:
        if event == remote.BUILD_EVENT:
            return [normalize_api_build(self.name, payload)]
        if event in (QUEUED, STARTED, COMPLETED, FINALIZED):
            return normalize_notification(self.name, payload)
        return []

    @classmethod
    def example(cls) -> Example:
        return Example(
            config={"type": "jenkins", "webhook_secret": "example-secret"},
            event=COMPLETED,
            payload=EXAMPLE_PAYLOAD,
            sign=lambda config, body, now: {
                SIGNATURE_HEADER: signature_header(config["webhook_secret"], int(now), body),
                "Content-Type": "application/json",
            },
        )

    # --- remote half (remote.py) -------------------------------------------------------------------
    def auth(self, session: aiohttp.ClientSession) -> Auth:
        # https://www.jenkins.io/doc/book/using/remote-access-api/: Basic authentication with the user's
        # API token (User > Security > API Token), never the password.
        config: JenkinsSourceConfig = self.config  # type: ignore[assignment]
        if config.token is None or not config.username:
            raise NotImplementedError(f"source {self.name} has no API token or user name")
        return basic(config.username, config.token.get())

    async def poll_targets(self, client: ProviderClient, ctx: PollContext) -> list[str]:
        return await remote.targets(client, ctx, self.config.repos)

    async def poll_target(self, client: ProviderClient, ctx: PollContext, target: str) -> None:
        await remote.poll_job(self, client, ctx, target)

    async def trigger(
        self,
        client: ProviderClient,
        pipeline: str,
        ref: str,
        inputs: Mapping[str, Any],
        variables: Mapping[str, str] | None = None,
    ) -> dict[str, Any] | None:
        config: JenkinsSourceConfig = self.config  # type: ignore[assignment]
        parameters = {**inputs, **(variables or {})}
        return await remote.trigger(self.name, client, self.crumb, pipeline, ref, parameters, config.ref_parameter)

    async def rerun(self, client: ProviderClient, run: Mapping[str, Any], failed_only: bool) -> dict[str, Any] | None:
        return await remote.rerun(self.name, client, self.crumb, run)

    async def cancel(self, client: ProviderClient, run: Mapping[str, Any], force: bool) -> dict[str, Any] | None:
        return await remote.cancel(self.name, client, self.crumb, run, force)
