"""Buildkite over the REST API (https://buildkite.com/docs/apis/rest-api/builds): what the poller
reads, and create build, rebuild, retry of failed jobs and cancel.

A cycle asks each target (an organization, or one pipeline) for two windows of builds, 100 a page,
following the `Link` header: those created since its `created` cursor (new builds, whatever their
state) and those finished since its `finished` cursor (what ended, however old). A build the store
last saw unfinished that is in neither is looked for among the builds still going (one more list,
filtered by state). Every build the store does not already hold in that state is ingested, oldest
first, with the failed jobs of a failed one before it, so that a notification can name them.

Buildkite allows 200 REST requests a minute per organization and 50 per user
(https://buildkite.com/docs/apis/rest-api/rate-limits), told in RateLimit-* headers that the core
client reads; a quiet cycle costs two requests per target, so an organization-wide entry (`org/*`)
is the cheap way to watch many pipelines.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlsplit

from flowforged.errors import ProviderError
from flowforged.http import ProviderClient
from flowforged.model import Status
from flowforged.pagination import LinkHeader
from flowforged.plugin import PollContext, Provider, RemoteAPI, operation_error
from flowforged.polling import JsonCursor, answer, iso, newest, operate, state_of, text, window_start
from flowforged.ratelimits import RateLimitHeaders, Tightest

DEFAULT_API_URL = "https://api.buildkite.com/v2"
BUILD_EVENT = "api:build"
JOB_EVENT = "api:job"
PER_PAGE = 100  # the largest per_page Buildkite accepts
# 200 REST requests a minute per organization, for all of its users together (rate-limits page above):
# paced to 90% of it. A tighter per-user budget, when sent, is read from RateLimit-User-* by the client.
POINTS_PER_MINUTE = 180
# https://buildkite.com/docs/apis/rest-api/builds#list-builds-for-a-pipeline (state[] filter)
OPEN_STATES = ["scheduled", "running", "failing", "canceling", "blocked"]
OPEN = frozenset({Status.PENDING.value, Status.RUNNING.value, Status.BLOCKED.value})
DEFAULT_MESSAGE = "Triggered through FlowForge"

_SLUG = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
_PIPELINE = re.compile(rf"({_SLUG})/({_SLUG})")
_ORG = re.compile(rf"org:({_SLUG})|({_SLUG})/\*")
_NUMBER = re.compile(r"/builds/(\d+)")


# --- pure half ---------------------------------------------------------------------------------


def parse_repos(entries: list[str]) -> tuple[list[str], list[str]]:
    """`repos` entries as (pipelines, organizations): `org/pipeline`, or `org/*` / `org:NAME` for
    every pipeline of an organization."""
    pipelines: list[str] = []
    orgs: list[str] = []
    for entry in entries:
        entry = entry.strip()
        if match := _ORG.fullmatch(entry):
            orgs.append(match.group(1) or match.group(2))
        elif _PIPELINE.fullmatch(entry):
            pipelines.append(entry)
        else:
            raise ValueError(f"{entry!r}: expected org/pipeline (slugs), org/* or org:NAME")
    return pipelines, orgs


def targets(entries: list[str]) -> list[str]:
    """What a cycle asks for: each organization (`org`), and each pipeline (`org/pipeline`) whose
    organization is not polled as a whole already."""
    pipelines, orgs = parse_repos(entries)
    return list(dict.fromkeys([*orgs, *(p for p in pipelines if p.split("/", 1)[0] not in orgs)]))


def builds_path(target: str) -> str:
    org, _, pipeline = target.partition("/")
    base = f"/organizations/{quote(org, safe='')}"
    return f"{base}/pipelines/{quote(pipeline, safe='')}/builds" if pipeline else f"{base}/builds"


def split_pipeline(pipeline: str) -> tuple[str, str]:
    if not _PIPELINE.fullmatch(pipeline):
        raise ProviderError(f"{pipeline!r} is not a Buildkite pipeline (org/pipeline)", status=404, code="not_found")
    org, slug = pipeline.split("/", 1)
    return org, slug


def build_number(run: Mapping[str, Any]) -> int:
    """The build number the REST API's URLs take: the run's `number`, else read from its web URL."""
    if run.get("number") is not None:
        return int(run["number"])
    if match := _NUMBER.search(urlsplit(run.get("url") or "").path):
        return int(match.group(1))
    raise ProviderError(f"run {run.get('run_id')} has no build number", status=404, code="not_found")


def belongs(pipeline: str, target: str) -> bool:
    """Whether a pipeline is polled through a target: an organization, or that pipeline itself."""
    return pipeline.startswith(target + "/") if "/" not in target else pipeline == target


@dataclasses.dataclass(frozen=True, slots=True)
class Cursor(JsonCursor):
    """A target's cursor in poll_state: the newest `created_at` and `finished_at` seen, or how far
    back the window was looked at."""

    created: str | None = None
    finished: str | None = None


def run_info(build: Mapping[str, Any]) -> dict[str, Any]:
    """What the control API answers about a build an operation started, in Run field names."""
    return {
        "run_id": str(build.get("id")),
        "number": build.get("number"),
        "url": build.get("web_url"),
        "branch": build.get("branch"),
        "sha": build.get("commit"),
        "provider_status": build.get("state"),
    }


def explain(source: str, error: ProviderError, *, action: str, subject: str) -> ProviderError:
    # https://buildkite.com/docs/apis/managing-api-tokens#token-scopes: write_builds creates,
    # rebuilds, retries and cancels builds.
    return operation_error(error, source, action, subject, "the write_builds scope on the organization")


# --- client --------------------------------------------------------------------------------------

# https://buildkite.com/docs/apis/rest-api#authentication: an API access token as a Bearer token.
# https://buildkite.com/docs/apis/rest-api/rate-limits: RateLimit-Remaining, -Limit, -Reset (seconds
# from now) for the organization, and RateLimit-User-* for the user beside it: a 429 comes from
# whichever runs out first, so the tighter of the two is the one to count.
REMOTE = RemoteAPI(
    default_url=DEFAULT_API_URL,
    pagination=LinkHeader(),
    rate_limits=Tightest(RateLimitHeaders("RateLimit-"), RateLimitHeaders("RateLimit-User-")),
    points_per_minute=POINTS_PER_MINUTE,
)


# --- polling -------------------------------------------------------------------------------------


async def poll_target(provider: Provider, client: ProviderClient, ctx: PollContext, target: str) -> None:
    key = f"builds:{target}"
    cursor = Cursor.load(await ctx.cursor(key))
    path = builds_path(target)
    created_since = window_start(ctx, cursor.created)
    finished_since = window_start(ctx, cursor.finished)
    created = await _list(client, path, {"created_from": iso(created_since)})
    finished = await _list(client, path, {"finished_from": iso(finished_since)})
    listed = {b["id"] for b in created + finished}
    lost = [
        run
        for run in await ctx.open_runs()
        if run.get("status") in OPEN and belongs(run["pipeline"], target) and run["run_id"] not in listed
    ]
    going = await _list(client, path, {"state[]": OPEN_STATES}) if lost else []
    await _ingest(provider, ctx, created + finished + going)
    updated = Cursor(
        newest(cursor.created or iso(created_since), *(b.get("created_at") for b in created)),
        newest(cursor.finished or iso(finished_since), *(b.get("finished_at") for b in finished)),
    )
    if updated != cursor:
        await ctx.set_cursor(key, updated.dump())


async def _list(client: ProviderClient, path: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    builds: list[dict[str, Any]] = []
    async for page in client.pages(path, params={**params, "per_page": PER_PAGE}):
        builds += page.data or []
    return builds


async def _ingest(provider: Provider, ctx: PollContext, builds: list[dict[str, Any]]) -> None:
    """Each build once (the latest state of it seen), oldest first, skipping what the store holds."""
    states: dict[str, tuple[str, str, int]] = {}
    latest: dict[str, dict[str, Any]] = {}
    for build in builds:
        state = _state(provider, build)
        if state is None:
            latest.setdefault(build["id"], build)  # stored raw with its error
            continue
        if build["id"] not in states or state[1:] > states[build["id"]][1:]:
            states[build["id"]], latest[build["id"]] = state, build
    known = await ctx.known([(build_id, 1) for build_id in states])
    for build in sorted(latest.values(), key=lambda b: (b.get("created_at") or "", b.get("number") or 0)):
        state = states.get(build["id"])
        if state is not None and known.get((build["id"], 1)) == state[:2]:
            continue
        pipeline = build.get("pipeline") or {}
        if state is not None and state[0] == Status.FAILED.value:
            summary = {k: v for k, v in build.items() if k not in ("jobs", "pipeline")}
            for job in build.get("jobs") or []:
                if job.get("state") in ("failed", "timed_out", "expired") and not job.get("soft_failed"):
                    await ctx.emit(JOB_EVENT, {"job": job, "build": summary, "pipeline": pipeline})
        await ctx.emit(BUILD_EVENT, {"build": build, "pipeline": pipeline})


_RANK = {Status.PENDING.value: 0, Status.BLOCKED.value: 1, Status.RUNNING.value: 2}


def _state(provider: Provider, build: dict[str, Any]) -> tuple[str, str, int] | None:
    """(status, updated_at, rank) as the store will record the build; None if it cannot be normalized."""
    event = state_of(provider, BUILD_EVENT, {"build": build, "pipeline": build.get("pipeline") or {}})
    if event is None:
        return None
    return event.status.value, event.updated_at, 3 if event.status.terminal else _RANK[event.status.value]


# --- operations ----------------------------------------------------------------------------------


async def trigger(
    source: str,
    client: ProviderClient,
    pipeline: str,
    ref: str,
    inputs: Mapping[str, Any],
    variables: Mapping[str, str] | None = None,
) -> dict[str, Any] | None:
    """https://buildkite.com/docs/apis/rest-api/builds#create-a-build: 201 and the new build. The ref
    is the branch; the inputs `commit` (default HEAD) and `message` fill those fields, every other
    input (and every variable) becomes an environment variable of the build."""
    org, slug = split_pipeline(pipeline)
    env = {name: text(value) for name, value in inputs.items() if name not in ("commit", "message")}
    env.update(variables or {})
    body: dict[str, Any] = {
        "commit": text(inputs.get("commit") or "HEAD"),
        "branch": ref,
        "message": text(inputs.get("message") or DEFAULT_MESSAGE),
    }
    if env:
        body["env"] = env
    response = await _operate(
        client, source, "POST", builds_path(f"{org}/{slug}"), body, "trigger", f"a build of {pipeline} on {ref}"
    )
    return run_info(response) if response else None


async def rerun(
    source: str, client: ProviderClient, run: Mapping[str, Any], failed_only: bool
) -> dict[str, Any] | None:
    """A rebuild (https://buildkite.com/docs/apis/rest-api/builds#rebuild-a-build) is a new build of
    the same commit, branch, message and environment; with failed_only, the failed jobs of the same
    build are retried instead (#retry-failed-jobs-for-a-build)."""
    number = build_number(run)
    # Rebuild is a PUT, but retry of failed jobs is a POST that answers with the count of jobs queued
    # again, not a build (buildkite.com/resources/changelog/348-retry-all-failed-jobs-via-api).
    method, action = ("POST", "retry_failed_jobs") if failed_only else ("PUT", "rebuild")
    url = f"{builds_path(run['pipeline'])}/{number}/{action}"
    response = await _operate(client, source, method, url, None, "re-run", f"build {number} of {run['pipeline']}")
    return run_info(response) if response and "id" in response else None


async def cancel(source: str, client: ProviderClient, run: Mapping[str, Any]) -> dict[str, Any] | None:
    """https://buildkite.com/docs/apis/rest-api/builds#cancel-a-build: only a scheduled, running or
    failing build; 422 otherwise, which reads as a 409."""
    number = build_number(run)
    url = f"{builds_path(run['pipeline'])}/{number}/cancel"
    response = await _operate(client, source, "PUT", url, None, "cancel", f"build {number} of {run['pipeline']}")
    return run_info(response) if response else None


async def _operate(
    client: ProviderClient, source: str, method: str, url: str, body: Any, action: str, subject: str
) -> dict[str, Any] | None:
    explain_it = functools.partial(explain, source, action=action, subject=subject)
    return answer(await operate(client, method, url, explain_it, json=body))
