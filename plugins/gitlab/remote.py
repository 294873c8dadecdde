"""GitLab CI over the REST API v4: what the poller reads, and create, retry and cancel pipeline.

A cycle asks each project for the pipelines updated since its cursor
(https://docs.gitlab.com/ee/api/pipelines.html#list-project-pipelines: `updated_after`, ordered by
`updated_at`), following `x-next-page`. Conditional requests would not help here: GitLab's throttle
counts a 304 like any other answer, and an unchanged project answers an empty list anyway.

The list gives the short form of a pipeline (no started_at, finished_at, duration, tag or detailed
status). A pipeline that changed status but is still going is ingested from it as it is; one that has
finished costs one more request, for the full form, so that its times and duration are right and its
key matches the Pipeline Hook's. A failed one costs one more, for the names of its failed jobs.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlsplit

from flowforged import logs
from flowforged.errors import ProviderError
from flowforged.http import ProviderClient
from flowforged.model import Status
from flowforged.pagination import NextPageHeader
from flowforged.plugin import PollContext, Provider, RemoteAPI, operation_error
from flowforged.polling import answer, epoch, iso, operate, state_of, window_start
from flowforged.ratelimits import RateLimitHeaders

log = logs.get("flowforged.gitlab")
DEFAULT_API_URL = "https://gitlab.com/api/v4"
PIPELINE_EVENT = "api:pipeline"
JOB_EVENT = "api:job"
PER_PAGE = 100  # the largest per_page GitLab accepts
GROUP_REFRESH = 600.0  # seconds between two listings of a group's projects
# A finished pipeline whose updated_at is this close to the finish the store holds is the same finish
# (GitLab touches updated_at a moment after finished_at); further apart, it ran again (a retry).
SAME_FINISH = 30.0
JOB_TRIES = 5  # cycles that try again to read the jobs of a failed pipeline whose jobs endpoint failed
# GitLab.com: "API traffic will be limited to 2,000 requests per minute for a given user", each answer
# counted, 304s too (https://docs.gitlab.com/user/gitlab_com/rate_limits/). Paced to 90% of it; a
# self-managed instance sets its own limits (points_per_minute in the source's config).
POINTS_PER_MINUTE = 1800
PROJECT_FIELDS = ("id", "path_with_namespace", "web_url", "default_branch", "name")


# --- pure half ---------------------------------------------------------------------------------


def base_url(api_url: str | None) -> str:
    """`api_url` as the API's root: a self-managed instance's address alone gets /api/v4 added."""
    if not api_url:
        return DEFAULT_API_URL
    url = api_url.rstrip("/")
    return url if "/api/v" in urlsplit(url).path else f"{url}/api/v4"


def parse_projects(entries: list[str]) -> tuple[list[str], list[str]]:
    """`repos` entries as (project paths, group paths): `group/project`, or `group:NAME` for every
    project of a group and of its subgroups."""
    projects: list[str] = []
    groups: list[str] = []
    for entry in entries:
        entry = entry.strip().strip("/")
        if entry.startswith("group:") and entry[6:].strip("/"):
            groups.append(entry[6:].strip("/"))
        elif "/" in entry and all(entry.split("/")) and ":" not in entry:
            projects.append(entry)
        else:
            raise ValueError(f"{entry!r}: expected a project path (group/project) or group:NAME")
    return projects, groups


def project_id(path: str) -> str:
    """A project (or group) path as the API takes it in place of an id: URL-encoded, `/` as %2F."""
    return quote(path, safe="")


def project_info(project: Mapping[str, Any]) -> dict[str, Any]:
    return {field: project.get(field) for field in PROJECT_FIELDS}


def gitlab_time(seconds: float) -> str:
    """ISO 8601 with milliseconds, as GitLab writes its own times."""
    return iso(seconds, millis=True)


def needs_ingest(pipeline: Mapping[str, Any], status: Status, stored: tuple[str, str] | None) -> bool:
    """Whether a listed pipeline tells the store something new. A pipeline still going is new when its
    status is; a finished one, when its finish is (a retried pipeline finishes again)."""
    if stored is None or stored[0] != status.value:
        return True
    if not status.terminal:
        return False
    return epoch(pipeline["updated_at"]) > epoch(stored[1]) + SAME_FINISH


def explain(source: str, error: ProviderError, *, action: str, subject: str) -> ProviderError:
    # https://docs.gitlab.com/ee/user/permissions.html: running, retrying and cancelling pipelines
    # needs the Developer role; a personal or project access token needs the `api` scope.
    return operation_error(error, source, action, subject, "the api scope and at least the Developer role")


# --- client --------------------------------------------------------------------------------------

# https://docs.gitlab.com/ee/api/rest/#offset-based-pagination: x-next-page, empty on the last page.
# https://docs.gitlab.com/ee/administration/settings/user_and_ip_rate_limits.html#response-headers:
# RateLimit-Limit, -Observed, -Remaining, -Reset (epoch seconds).
REMOTE = RemoteAPI(
    default_url=DEFAULT_API_URL,
    pagination=NextPageHeader("x-next-page", "page"),
    rate_limits=RateLimitHeaders("RateLimit-"),
    points_per_minute=POINTS_PER_MINUTE,
)


# --- polling -------------------------------------------------------------------------------------


async def targets(client: ProviderClient, ctx: PollContext, entries: list[str]) -> list[str]:
    paths, groups = parse_projects(entries)
    projects: dict[str, dict[str, Any]] = ctx.memory.setdefault("projects", {})
    found: list[str] = []
    for path in paths:
        if path not in projects:
            try:
                # https://docs.gitlab.com/ee/api/projects.html#get-a-single-project: once per process,
                # for the web URL, name and default branch the pipeline list does not carry.
                response = await client.get(f"/projects/{project_id(path)}")
            except ProviderError as exc:
                ctx.error(path, exc)
                continue
            projects[path] = project_info(response.data)
        found.append(path)
    for group in groups:
        try:
            found += await group_projects(client, ctx, group)
        except ProviderError as exc:
            ctx.error(f"group:{group}", exc)
    return list(dict.fromkeys(found))


async def group_projects(client: ProviderClient, ctx: PollContext, group: str) -> list[str]:
    """Every project of a group and its subgroups, listed again at most every GROUP_REFRESH."""
    listings: dict[str, Any] = ctx.memory.setdefault("groups", {})
    cached = listings.get(group)
    if cached is not None and ctx.now - cached["at"] < GROUP_REFRESH:
        return cached["paths"]
    # https://docs.gitlab.com/ee/api/groups.html#list-a-groups-projects: projects shared with the
    # group from elsewhere are not its own; archived ones run no pipelines.
    params = {
        "include_subgroups": True,
        "with_shared": False,
        "archived": False,
        "simple": True,
        "per_page": PER_PAGE,
    }
    projects: dict[str, dict[str, Any]] = ctx.memory.setdefault("projects", {})
    paths: list[str] = []
    async for page in client.pages(f"/groups/{project_id(group)}/projects", params=params):
        for project in page.data or []:
            if project.get("archived"):
                continue
            projects[project["path_with_namespace"]] = project_info(project)
            paths.append(project["path_with_namespace"])
    listings[group] = {"at": ctx.now, "paths": paths}
    return paths


async def poll_project(provider: Provider, client: ProviderClient, ctx: PollContext, path: str) -> None:
    """One project's cycle: the pipelines updated since the cursor, oldest update first, a page at a
    time, the cursor moved after each page (a cycle cut short by the rate limit resumes there)."""
    key = f"pipelines:{path}"
    cursor = await ctx.cursor(key)
    since = window_start(ctx, cursor)
    project = ctx.memory.get("projects", {}).get(path) or {"path_with_namespace": path}
    params = {
        "updated_after": gitlab_time(since),
        "order_by": "updated_at",
        "sort": "asc",
        "per_page": PER_PAGE,
    }
    await jobs_later(client, ctx, path)
    async for page in client.pages(f"/projects/{project_id(path)}/pipelines", params=params):
        pipelines = page.data or []
        known = await ctx.known([(str(p["id"]), 1) for p in pipelines])
        for pipeline in pipelines:
            status = _status(provider, project, pipeline)
            if status is None or needs_ingest(pipeline, status, known.get((str(pipeline["id"]), 1))):
                await ingest_pipeline(client, ctx, project, pipeline, status)
        latest = max((p["updated_at"] for p in pipelines), key=epoch, default=None)
        if latest and (cursor is None or epoch(latest) > epoch(cursor)):
            cursor = latest
            await ctx.set_cursor(key, cursor)
    if cursor is None:
        # Nothing in the window: the next cycle starts from here, not from a window that moves on.
        await ctx.set_cursor(key, gitlab_time(since))


def _status(provider: Provider, project: dict[str, Any], pipeline: dict[str, Any]) -> Status | None:
    event = state_of(provider, PIPELINE_EVENT, {"project": project, "pipeline": pipeline})
    return None if event is None else event.status


async def ingest_pipeline(
    client: ProviderClient,
    ctx: PollContext,
    project: dict[str, Any],
    pipeline: dict[str, Any],
    status: Status | None,
) -> None:
    base = f"/projects/{project_id(project['path_with_namespace'])}/pipelines/{pipeline['id']}"
    payload: dict[str, Any] = {"project": project, "pipeline": pipeline}
    if status is not None and status.terminal:
        # https://docs.gitlab.com/ee/api/pipelines.html#get-a-single-pipeline: the full form.
        payload["pipeline"] = (await client.get(base)).data
    if status is Status.FAILED:
        jobs = await failed_jobs(client, ctx, project, pipeline["id"])
        if jobs and jobs[0].get("commit"):
            payload["commit"] = jobs[0]["commit"]  # the list and the pipeline carry no commit message
    await ctx.emit(PIPELINE_EVENT, payload)


async def failed_jobs(
    client: ProviderClient, ctx: PollContext, project: dict[str, Any], pipeline_id: int
) -> list[dict[str, Any]]:
    """The failed jobs of a pipeline, ingested before it so that they are there when it is announced
    (https://docs.gitlab.com/ee/api/jobs.html#list-pipeline-jobs: scope[] takes only the failed ones,
    which is what a notification names). A jobs endpoint that fails must not hide the failure: the
    pipeline is recorded without them, and after a 5xx the next cycles try again (JOB_TRIES)."""
    pending: dict[str, Any] = ctx.memory.setdefault("jobs_later", {})
    base = f"/projects/{project_id(project['path_with_namespace'])}/pipelines/{pipeline_id}"
    jobs: list[dict[str, Any]] = []
    try:
        async for page in client.pages(f"{base}/jobs", params={"scope[]": "failed", "per_page": PER_PAGE}):
            jobs += page.data or []
    except ProviderError as exc:
        tries = pending.get(str(pipeline_id), {}).get("tries", 0) + 1
        retry = exc.status != 404 and tries < JOB_TRIES
        log.warning("jobs of a failed pipeline not read", source=ctx.source, pipeline=pipeline_id, retry=retry)
        if retry:
            pending[str(pipeline_id)] = {"project": project, "tries": tries}
        else:
            pending.pop(str(pipeline_id), None)
        return []
    pending.pop(str(pipeline_id), None)
    for job in jobs:
        await ctx.emit(JOB_EVENT, {"project": project, "job": job})
    return jobs


async def jobs_later(client: ProviderClient, ctx: PollContext, path: str) -> None:
    """The failed jobs of this project's pipelines whose jobs endpoint failed in an earlier cycle."""
    pending: dict[str, Any] = ctx.memory.get("jobs_later", {})
    for pipeline_id, entry in list(pending.items()):
        if entry["project"]["path_with_namespace"] == path:
            await failed_jobs(client, ctx, entry["project"], int(pipeline_id))


# --- operations ----------------------------------------------------------------------------------


async def trigger(
    source: str,
    client: ProviderClient,
    pipeline: str,
    ref: str,
    inputs: Mapping[str, Any],
    variables: Mapping[str, str] | None = None,
) -> dict[str, Any] | None:
    """https://docs.gitlab.com/ee/api/pipelines.html#create-a-new-pipeline: 201 and the new pipeline.
    `variables` are CI/CD variables; `inputs` the pipeline's spec:inputs (GitLab 17.10 and later)."""
    body: dict[str, Any] = {"ref": ref}
    if variables:
        body["variables"] = [{"key": key, "value": str(value)} for key, value in variables.items()]
    if inputs:
        body["inputs"] = dict(inputs)
    url = f"/projects/{project_id(pipeline)}/pipeline"
    return answer(
        await operate(client, "POST", url, _explain(source, "trigger", f"a pipeline of {pipeline} on {ref}"), json=body)
    )


async def retry(source: str, client: ProviderClient, run: Mapping[str, Any]) -> dict[str, Any] | None:
    """https://docs.gitlab.com/ee/api/pipelines.html#retry-jobs-in-a-pipeline: GitLab re-runs the
    failed and cancelled jobs of a pipeline; it has no call that re-runs the jobs that passed."""
    subject = f"pipeline {run['run_id']} of {run['pipeline']}"
    url = f"/projects/{project_id(run['pipeline'])}/pipelines/{run['run_id']}/retry"
    return answer(await operate(client, "POST", url, _explain(source, "retry", subject)))


async def cancel(source: str, client: ProviderClient, run: Mapping[str, Any]) -> dict[str, Any] | None:
    """https://docs.gitlab.com/ee/api/pipelines.html#cancel-a-pipelines-jobs. GitLab answers 200 with
    the pipeline as it is even when it had already finished: that is reported as the 409 GitHub gives.
    GitLab has no forced cancel of a pipeline: `force` changes nothing."""
    subject = f"pipeline {run['run_id']} of {run['pipeline']}"
    url = f"/projects/{project_id(run['pipeline'])}/pipelines/{run['run_id']}/cancel"
    pipeline = answer(await operate(client, "POST", url, _explain(source, "cancel", subject)))
    status = (pipeline or {}).get("status")
    if status in ("success", "failed", "skipped"):
        raise ProviderError(
            f"{source}: {subject} cannot be cancelled: it has already finished ({status})",
            status=409,
            code="conflict",
        )
    return pipeline


def _explain(source: str, action: str, subject: str) -> functools.partial[ProviderError]:
    return functools.partial(explain, source, action=action, subject=subject)
