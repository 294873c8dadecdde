"""GitHub Actions over the REST API: what the poller reads, and trigger, re-run and cancel (the
provider's remote half).

The pure helpers come first (repository specs, paths, cursors, rate limits, error wording); the async
functions after them are thin: every request goes through the core's ProviderClient (rate limits,
ETags, backoff), every run and job goes to `ctx.emit()` in the payload shape of the webhook events, so that
normalize() and `flowforged reindex` read polled items exactly as they read webhooks.

How a cycle stays cheap (https://docs.github.com/en/rest/using-the-rest-api/best-practices-for-using-
the-rest-api#use-conditional-requests-if-appropriate): the first page of each repository's runs is
asked for with If-None-Match. A 304 means no run on it changed, and it costs nothing of the primary
rate limit. When it did change, only the runs updated since the cursor are ingested, and only runs
the store does not already hold in that state.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from flowforged import logs
from flowforged.errors import ProviderError
from flowforged.http import ProviderClient, Response, provider_message
from flowforged.model import Status
from flowforged.pagination import LinkHeader
from flowforged.plugin import PollContext, Provider, RemoteAPI, operation_error
from flowforged.polling import JsonCursor, epoch, iso, newest, operate, same_etag, untold, window_start
from flowforged.ratelimits import XRateLimitHeaders, header_map

log = logs.get("flowforged.github")
DEFAULT_API_URL = "https://api.github.com"
# https://docs.github.com/en/rest/about-the-rest-api/api-versions and .../media-types
API_HEADERS = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28"}
PAGE = 30  # runs on the conditional first page: its body is what a change costs
MAX_PAGE = 100  # the largest per_page GitHub accepts
OWNER_REFRESH = 600.0  # seconds between two listings of an organization's repositories
OPEN = (Status.PENDING, Status.RUNNING, Status.BLOCKED)
JOB_TRIES = 5  # cycles that try again to read the jobs of a failed run whose jobs endpoint failed
# The secondary rate limit: "No more than 900 points per minute are allowed for REST API endpoints",
# 304s included; the poller paces to 90% of it, leaving room for the same token's other clients.
# https://docs.github.com/en/rest/using-the-rest-api/rate-limits-for-the-rest-api#about-secondary-rate-limits
POINTS_PER_MINUTE = 810
INSTALLATION = "installation"  # `repos: installation`: every repository a GitHub App's installation sees


# --- pure half ---------------------------------------------------------------------------------


# GitHub account names: letters, digits and hyphens; repository names add `.` and `_`.
_OWNER = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_REPO = re.compile(rf"{_OWNER}/[A-Za-z0-9._-]+")
_ORG = re.compile(rf"org:({_OWNER})|({_OWNER})/\*")


def parse_repos(entries: list[str]) -> tuple[list[str], list[str]]:
    """`repos` entries as (repositories, owners): `owner/repo`, or `org:NAME` / `NAME/*` for every
    repository of an organization (or user); `installation` (a GitHub App's repositories, app.py) is
    neither. ValueError names an entry that is none of these."""
    repos: list[str] = []
    owners: list[str] = []
    for entry in entries:
        entry = entry.strip()
        if entry == INSTALLATION:
            continue
        if _REPO.fullmatch(entry):
            repos.append(entry)
        elif match := _ORG.fullmatch(entry):
            owners.append(match.group(1) or match.group(2))
        else:
            raise ValueError(f"{entry!r}: expected owner/repo, owner/*, org:NAME or installation")
    return repos, owners


def split_pipeline(pipeline: str) -> tuple[str, str]:
    """`octo-org/octo-repo/.github/workflows/ci.yml` as (`octo-org/octo-repo`, `.github/workflows/ci.yml`)."""
    parts = pipeline.split("/", 2)
    if len(parts) < 3 or not all(parts):
        raise ProviderError(
            f"{pipeline!r} is not a GitHub pipeline (owner/repo/workflow path)", status=404, code="not_found"
        )
    return f"{parts[0]}/{parts[1]}", parts[2]


def workflow_id(path: str) -> str:
    """What .../workflows/{workflow_id}/dispatches takes: the workflow's id or its file name."""
    return quote(path.rsplit("/", 1)[-1], safe="")


@dataclasses.dataclass(frozen=True, slots=True)
class Cursor(JsonCursor):
    """A repository's cursor in poll_state: the newest `updated_at` seen (or how far back the window
    was looked at); the creation time of the oldest run on the first page when it was last read (an
    unfinished run older than that is off the first page: its changes need a request of its own); and
    the ETag of the first page whose runs were ingested. The client stores an ETag as soon as a page
    arrives: a cycle cut short before its ingest (a shutdown, a store error) would otherwise take the
    next 304 for news already told."""

    seen: str | None = None
    floor: str | None = None
    etag: str | None = None


def ingested(response: Response, processed: str | None) -> bool:
    """Whether a 304 names what was ingested. A 304 carries the ETag (RFC 9110 15.4.5); one without
    is trusted as long as something was ingested."""
    if processed is None:
        return False
    etag = response.headers.get("ETag")
    return etag is None or same_etag(etag, processed)


def run_payload(run: dict[str, Any], default_branch: str | None = None) -> dict[str, Any]:
    """A REST run in the shape of a `workflow_run` event. REST runs carry a minimal repository without
    default_branch: the organization listing supplies it when there is one."""
    repository = dict(run.get("repository") or {})
    if default_branch and not repository.get("default_branch"):
        repository["default_branch"] = default_branch
    return {"workflow_run": run, "repository": repository}


def unique_runs(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One object per run (pages shift while they are read), the latest state of each, oldest first,
    so that transitions are decided in the order the runs happened."""
    latest: dict[Any, dict[str, Any]] = {}
    for run in runs:
        other = latest.get(run["id"])
        if other is None or (run.get("run_attempt") or 1, epoch(run["updated_at"])) >= (
            other.get("run_attempt") or 1,
            epoch(other["updated_at"]),
        ):
            latest[run["id"]] = run
    return sorted(latest.values(), key=lambda r: (epoch(r["created_at"]), r["id"]))


def explain(source: str, error: ProviderError, *, action: str, subject: str) -> ProviderError:
    if error.status == 403 and "already running" in str(error).lower():
        # GitHub answers a re-run of a run in progress with 403 "This workflow is already running".
        return ProviderError(
            f"{source}: cannot {action} {subject}: it is still running; cancel it or wait",
            status=409,
            code="conflict",
        )
    # Fine-grained tokens: "Actions" repository permission, write; classic tokens: the `repo` scope.
    return operation_error(error, source, action, subject, "the Actions read and write permission")


def points(method: str) -> int:
    """What a REST request counts against the secondary limit: 1 for GET, HEAD and OPTIONS, 5 for
    POST, PATCH, PUT and DELETE (#calculating-points-for-the-secondary-rate-limit, same page)."""
    return 1 if method.upper() in ("GET", "HEAD", "OPTIONS") else 5


class GitHubRateLimits(XRateLimitHeaders):
    """GitHub's X-RateLimit-* headers, its 403s that are rate limits, and the budgets of its own that
    search and GraphQL requests spend."""

    def limited(self, status: int, headers: Mapping[str, str], data: Any) -> bool:
        if status == 429:
            return True
        if status != 403:
            return False
        # A 403 is a rate limit when it has retry-after, x-ratelimit-remaining: 0 or says so ("You have
        # exceeded a secondary rate limit", "API rate limit exceeded for ...").
        h = header_map(headers)
        if "Retry-After" in h or h.get("x-ratelimit-remaining") == "0":
            return True
        return "rate limit" in provider_message(data).lower()

    def resource(self, path: str) -> str:
        if path.startswith("/search/"):
            return "search"
        if path.rstrip("/") == "/graphql":
            return "graphql"
        return "core"


# https://docs.github.com/en/rest/authentication/authenticating-to-the-rest-api: Bearer works for
# classic and fine-grained personal access tokens and for GitHub App installation tokens.
REMOTE = RemoteAPI(
    default_url=DEFAULT_API_URL,
    pagination=LinkHeader(),
    rate_limits=GitHubRateLimits(),
    points_per_minute=POINTS_PER_MINUTE,
    points=points,
    headers=API_HEADERS,
)


# --- polling -------------------------------------------------------------------------------------


async def targets(client: ProviderClient, ctx: PollContext, entries: list[str]) -> list[str]:
    repos, owners = parse_repos(entries)
    found = list(repos)
    for owner in owners:
        try:
            found += await owner_repos(client, ctx, owner)
        except ProviderError as exc:
            ctx.error(f"org:{owner}", exc)
    return list(dict.fromkeys(found))


async def owner_repos(client: ProviderClient, ctx: PollContext, owner: str) -> list[str]:
    """The repositories of an organization (or a user), listed again at most every OWNER_REFRESH."""
    listings: dict[str, Any] = ctx.memory.setdefault("owners", {})
    cached = listings.get(owner)
    if cached is not None and ctx.now - cached["at"] < OWNER_REFRESH:
        return cached["repos"]
    # https://docs.github.com/en/rest/repos/repos#list-organization-repositories: newest first, so that
    # a new repository changes the first page (and its ETag).
    params = {"per_page": MAX_PAGE, "sort": "created", "direction": "desc"}
    path = f"/orgs/{quote(owner, safe='')}/repos"
    try:
        first = await client.get(path, params=params, conditional=cached is not None)
    except ProviderError as exc:
        if exc.status != 404:
            raise
        path = f"/users/{quote(owner, safe='')}/repos"  # a user account, not an organization
        first = await client.get(path, params=params, conditional=cached is not None)
    if first.not_modified and cached is not None:
        cached["at"] = ctx.now
        return cached["repos"]
    items = list(first.data or [])
    page = first
    while "next" in page.links:
        page = await client.get(page.links["next"])
        items += page.data or []
    # Archived repositories run no workflows (https://docs.github.com/en/repositories/archiving-a-github-repository).
    live = [r for r in items if not r.get("archived")]
    branches: dict[str, str] = ctx.memory.setdefault("default_branch", {})
    branches.update({r["full_name"]: r["default_branch"] for r in live if r.get("default_branch")})
    listings[owner] = {"at": ctx.now, "repos": [r["full_name"] for r in live]}
    return listings[owner]["repos"]


async def poll_repo(provider: Provider, client: ProviderClient, ctx: PollContext, repo: str) -> None:
    """One repository's cycle: the first page of runs (conditional), more of the window if it holds
    too few, unfinished runs that left the first page, then each changed run (and the jobs of a failed
    one) to ingest, oldest first; the cursor last."""
    key = f"runs:{repo}"
    cursor = Cursor.load(await ctx.cursor(key))
    since = window_start(ctx, cursor.seen)
    path = f"/repos/{repo}/actions/runs"
    # https://docs.github.com/en/rest/actions/workflow-runs#list-workflow-runs-for-a-repository
    params: dict[str, Any] = {"per_page": PAGE, "exclude_pull_requests": True}
    first = await client.get(path, params=params, conditional=True)
    if first.not_modified and (cursor.seen is None or not ingested(first, cursor.etag)):
        # Unchanged since the client last read it, but that read was not ingested: read it again.
        first = await client.get(path, params=params)
    runs: list[dict[str, Any]] = []
    floor, etag = cursor.floor, cursor.etag
    if not first.not_modified:
        runs = list(first.data.get("workflow_runs") or [])
        floor, etag = (runs[-1]["created_at"] if runs else None), first.headers.get("ETag")
        if runs and epoch(runs[-1]["created_at"]) >= since and "next" in first.links:
            runs += await window(client, path, since)
    await jobs_later(client, ctx, repo)
    alone, etags = await moved_on(client, ctx, repo, {r["id"] for r in runs}, floor)
    branch = ctx.memory.get("default_branch", {}).get(repo)
    await ingest_runs(provider, client, ctx, repo, runs + alone, since, branch)
    ctx.memory.setdefault("run_etags", {}).update(etags)
    seen = newest(cursor.seen or iso(ctx.since), *(r.get("updated_at") for r in runs + alone))
    updated = Cursor(seen, floor, etag)
    if updated != cursor:
        await ctx.set_cursor(key, updated.dump())


async def window(client: ProviderClient, path: str, since: float) -> list[dict[str, Any]]:
    """The runs created since `since`, 100 a page. GitHub answers at most 1000 runs to a filtered
    list (the `created` parameter is a filter), enough for any backfill window a poller needs."""
    params = {"per_page": MAX_PAGE, "created": f">={iso(since)}", "exclude_pull_requests": True}
    runs: list[dict[str, Any]] = []
    async for page in client.pages(path, params=params):
        runs += page.data.get("workflow_runs") or []
    return runs


async def moved_on(
    client: ProviderClient, ctx: PollContext, repo: str, listed: set[Any], floor: str | None
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Unfinished runs that are no longer on the first page, each read on its own, conditionally (an
    unchanged run costs a free 304); the runs that changed, and the ETags to remember once they are
    ingested (in memory: after a restart each is read in full once)."""
    processed: dict[str, str] = ctx.memory.get("run_etags", {})
    found: list[dict[str, Any]] = []
    etags: dict[str, str] = {}
    for run in await ctx.open_runs():
        run_id = str(run["run_id"])
        if not run["pipeline"].startswith(repo + "/") or int(run_id) in listed:
            continue
        if floor is not None and run["created_at"] and epoch(run["created_at"]) >= epoch(floor):
            continue  # still on the first page, whose 304 said it has not changed
        path = f"/repos/{repo}/actions/runs/{run_id}"
        try:
            response = await client.get(path, conditional=True)
            if response.not_modified and not ingested(response, processed.get(run_id)):
                response = await client.get(path)
        except ProviderError as exc:
            if exc.status == 404:
                continue  # deleted: nothing more will happen to it
            raise
        if not response.not_modified:
            found.append(response.data)
            if tag := response.headers.get("ETag"):
                etags[run_id] = tag
    return found, etags


async def ingest_runs(
    provider: Provider,
    client: ProviderClient,
    ctx: PollContext,
    repo: str,
    runs: list[dict[str, Any]],
    since: float,
    default_branch: str | None,
) -> None:
    fresh = [run_payload(r, default_branch) for r in unique_runs(runs) if epoch(r["updated_at"]) >= since]
    for payload, event in await untold(ctx, provider, "workflow_run", fresh):
        if event is not None and event.status is Status.FAILED:
            await failed_jobs(client, ctx, repo, payload["workflow_run"])  # before the run: a notification names them
        await ctx.emit("workflow_run", payload)


async def failed_jobs(client: ProviderClient, ctx: PollContext, repo: str, run: dict[str, Any]) -> None:
    """The jobs of a failed run, when they can be read. The run is recorded without them otherwise: a
    jobs endpoint that fails must not hide the failure itself. After a 5xx the next cycles try again
    (JOB_TRIES); after a 404 GitHub has no jobs to give."""
    pending: dict[str, Any] = ctx.memory.setdefault("jobs_later", {})
    try:
        await ingest_jobs(client, ctx, repo, run)
    except ProviderError as exc:
        tries = pending.get(str(run["id"]), {}).get("tries", 0) + 1
        retry = exc.status != 404 and tries < JOB_TRIES
        log.warning("jobs of a failed run not read", source=ctx.source, run=run["id"], error=str(exc), retry=retry)
        if retry:
            pending[str(run["id"])] = {"repo": repo, "run": run, "tries": tries}
        else:
            pending.pop(str(run["id"]), None)
    else:
        pending.pop(str(run["id"]), None)


async def jobs_later(client: ProviderClient, ctx: PollContext, repo: str) -> None:
    """The jobs of this repository's failed runs whose jobs endpoint failed in an earlier cycle."""
    pending: dict[str, Any] = ctx.memory.get("jobs_later", {})
    for entry in [e for e in pending.values() if e["repo"] == repo]:
        await failed_jobs(client, ctx, repo, entry["run"])


async def ingest_jobs(client: ProviderClient, ctx: PollContext, repo: str, run: dict[str, Any]) -> None:
    # https://docs.github.com/en/rest/actions/workflow-jobs#list-jobs-for-a-workflow-run-attempt
    attempt = run.get("run_attempt") or 1
    path = f"/repos/{repo}/actions/runs/{run['id']}/attempts/{attempt}/jobs"
    async for page in client.pages(path, params={"per_page": MAX_PAGE}):
        for job in page.data.get("jobs") or []:
            await ctx.emit("workflow_job", {"workflow_job": job})


# --- operations ----------------------------------------------------------------------------------


async def trigger(
    source: str, client: ProviderClient, pipeline: str, ref: str, inputs: Mapping[str, Any]
) -> dict[str, Any] | None:
    """workflow_dispatch (https://docs.github.com/en/rest/actions/workflows#create-a-workflow-dispatch-
    event). With return_run_details GitHub answers 200 with workflow_run_id, run_url and html_url; an
    older GitHub Enterprise answers 204 and the run is found by the next poll."""
    repo, path = split_pipeline(pipeline)
    body: dict[str, Any] = {"ref": ref, "return_run_details": True}
    if inputs:
        body["inputs"] = dict(inputs)
    url = f"/repos/{repo}/actions/workflows/{workflow_id(path)}/dispatches"
    response = await operate(
        client, "POST", url, _explain(source, "trigger", f"workflow {pipeline} on {ref}"), json=body
    )
    return response.data if response.status == 200 and isinstance(response.data, dict) else None


async def rerun(source: str, client: ProviderClient, run: Mapping[str, Any], failed_only: bool) -> None:
    """https://docs.github.com/en/rest/actions/workflow-runs#re-run-a-workflow and #re-run-failed-jobs-
    from-a-workflow-run: 201, a new attempt of the same run id."""
    repo, _ = split_pipeline(run["pipeline"])
    action = "rerun-failed-jobs" if failed_only else "rerun"
    url = f"/repos/{repo}/actions/runs/{run['run_id']}/{action}"
    await operate(client, "POST", url, _explain(source, "re-run", f"run {run['run_id']} of {run['pipeline']}"))


async def cancel(source: str, client: ProviderClient, run: Mapping[str, Any], force: bool) -> None:
    """https://docs.github.com/en/rest/actions/workflow-runs#cancel-a-workflow-run (409 once completed)
    and #force-cancel-a-workflow-run, which also stops what always() conditions keep running."""
    repo, _ = split_pipeline(run["pipeline"])
    action = "force-cancel" if force else "cancel"
    url = f"/repos/{repo}/actions/runs/{run['run_id']}/{action}"
    await operate(client, "POST", url, _explain(source, action, f"run {run['run_id']} of {run['pipeline']}"))


def _explain(source: str, action: str, subject: str) -> functools.partial[ProviderError]:
    return functools.partial(explain, source, action=action, subject=subject)
