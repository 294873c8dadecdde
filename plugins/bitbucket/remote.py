"""Bitbucket Pipelines over the REST API 2.0 (https://developer.atlassian.com/cloud/bitbucket/rest/api-group-pipelines/):
what the poller reads, and run a pipeline, re-run and stop.

A cycle lists each repository's pipelines newest first (`sort=-created_on`, 100 a page, following the
`next` URL of the body) until it has passed both its window (created since the cursor, less a slack)
and the oldest run the store last saw unfinished: build numbers grow with creation, so nothing older
can have changed for us. A quiet cycle costs one request per repository. Every pipeline whose status
the store does not hold yet is ingested, oldest first, with the failed steps of a failed one
(`/pipelines/{uuid}/steps/`) before it, so that a notification can name them.

Bitbucket counts requests to /2.0/repositories/* per user (per access token) in a rolling hour:
1,000, scaled up to 10,000 for workspaces of more than 100 paid users
(https://support.atlassian.com/bitbucket-cloud/docs/api-request-limits/). Only requests made with an
access token are told `X-RateLimit-Limit`, `X-RateLimit-Resource` and `X-RateLimit-NearLimit` (true
when less than 20% is left); no header says what remains or when, so requests are paced to 90% of
the base limit and a 429 blocks the source until Retry-After, else a minute.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from flowforged.errors import ProviderError
from flowforged.http import ProviderClient
from flowforged.model import Status
from flowforged.pagination import NextInBody
from flowforged.plugin import PollContext, Provider, RemoteAPI, operation_error
from flowforged.polling import JsonCursor, answer, epoch, iso, newest, operate, state_of, window_start
from flowforged.ratelimits import Budget, RateLimits, header_map, integer

DEFAULT_API_URL = "https://api.bitbucket.org/2.0"
PIPELINE_EVENT = "api:pipeline"
STEP_EVENT = "api:step"
PAGELEN = 100  # the largest page Bitbucket serves
MAX_PAGES = 10  # a cycle reads at most this many pages of one repository: 1,000 pipelines
POINTS_PER_MINUTE = 15  # 90% of 1,000 requests an hour
READ_MEMORY = 1000  # failed runs whose steps were read, remembered so that they are read once
OPEN = frozenset({Status.PENDING.value, Status.RUNNING.value, Status.BLOCKED.value})
_SLUG = r"[A-Za-z0-9_.-]+"
_REPO = re.compile(rf"({_SLUG})/({_SLUG})")
_RUN = re.compile(r"#(\d+)$")


def parse_repos(entries: list[str]) -> list[str]:
    """`repos` entries: `workspace/repo` (slugs), as lower-case pipeline keys."""
    found = []
    for entry in entries:
        if not _REPO.fullmatch(entry.strip()):
            raise ValueError(f"{entry!r}: expected workspace/repo (the slugs in the repository's URL)")
        found.append(entry.strip().lower())
    return found


def repo_path(pipeline: str) -> str:
    if not _REPO.fullmatch(pipeline):
        raise ProviderError(
            f"{pipeline!r} is not a Bitbucket repository (workspace/repo)", status=404, code="not_found"
        )
    workspace, slug = pipeline.split("/", 1)
    return f"/repositories/{quote(workspace, safe='')}/{quote(slug, safe='')}/pipelines/"


def build_number(run: Mapping[str, Any]) -> int:
    if run.get("number") is not None:
        return int(run["number"])
    if match := _RUN.search(run.get("run_id") or ""):
        return int(match.group(1))
    raise ProviderError(f"run {run.get('run_id')} has no build number", status=404, code="not_found")


class BitbucketRateLimits(RateLimits):
    """X-RateLimit-Limit and X-RateLimit-NearLimit: the remaining count is only known to be under 20%
    of the limit, or not; that bound is what the budget reports. No reset is told (the window rolls)."""

    def budget(self, headers: Mapping[str, str], now: float) -> Budget | None:
        h = header_map(headers)
        limit = integer(h.get("X-RateLimit-Limit"))
        if limit is None:
            return None
        near = (h.get("X-RateLimit-NearLimit") or "").strip().lower() == "true"
        return Budget(limit, limit // 5 if near else limit, None)


REMOTE = RemoteAPI(
    default_url=DEFAULT_API_URL,
    pagination=NextInBody("next"),  # {"values": [...], "next": "https://api.bitbucket.org/2.0/...&page=2"}
    rate_limits=BitbucketRateLimits(),
    points_per_minute=POINTS_PER_MINUTE,
)


@dataclasses.dataclass(frozen=True, slots=True)
class Cursor(JsonCursor):
    created: str | None = None  # the newest created_on seen, or how far back the window was looked at


def run_info(provider: Provider, pipeline: Mapping[str, Any], repo: str) -> dict[str, Any]:
    """What the control API answers about a pipeline an operation started, in Run field names."""
    [event] = provider.normalize(PIPELINE_EVENT, {"pipeline": pipeline, "repo": repo})
    return {
        "run_id": event.run_id,
        "number": event.number,
        "url": event.url,
        "branch": event.branch,
        "sha": event.sha,
        "provider_status": event.provider_status,
    }


# --- polling -------------------------------------------------------------------------------------


async def poll_target(provider: Provider, client: ProviderClient, ctx: PollContext, target: str) -> None:
    key = f"pipelines:{target}"
    cursor = Cursor.load(await ctx.cursor(key))
    since = window_start(ctx, cursor.created)
    unfinished = [
        build_number(run)
        for run in await ctx.open_runs()
        if run.get("pipeline") == target and run.get("status") in OPEN
    ]
    floor = min(unfinished, default=None)
    listed = await _recent(client, target, since, floor)
    wanted = [
        p
        for p in listed
        if epoch(p["created_on"]) >= since or (floor is not None and p.get("build_number") in unfinished)
    ]
    await _ingest(provider, client, ctx, target, wanted)
    updated = Cursor(newest(cursor.created or iso(since), *(p.get("created_on") for p in wanted)))
    if updated != cursor:
        await ctx.set_cursor(key, updated.dump())


async def _recent(client: ProviderClient, target: str, since: float, floor: int | None) -> list[dict[str, Any]]:
    """Pipelines newest first, until past the window and the oldest unfinished run."""
    found: list[dict[str, Any]] = []
    pages = 0
    async for page in client.pages(repo_path(target), params={"sort": "-created_on", "pagelen": PAGELEN}):
        values = (page.data or {}).get("values") or []
        found += values
        pages += 1
        if not values or pages >= MAX_PAGES:
            break
        last = values[-1]
        if epoch(last["created_on"]) < since and (floor is None or last.get("build_number", 0) <= floor):
            break
    return found


async def _ingest(
    provider: Provider, client: ProviderClient, ctx: PollContext, target: str, pipelines: list[dict[str, Any]]
) -> None:
    """Each pipeline whose status the store does not hold, oldest first. Only the status is compared:
    a build status webhook tells the same state at another moment (its own updated_on), and a state
    told once is enough. A build status names no step, so the failed steps of a failure a webhook told
    are read here too, once in this process."""
    states = {p["uuid"]: state_of(provider, PIPELINE_EVENT, {"pipeline": p, "repo": target}) for p in pipelines}
    known = await ctx.known([(s.run_id, 1) for s in states.values() if s is not None])
    read: dict[str, bool] = ctx.memory.setdefault("steps read", {})
    for pipeline in sorted(pipelines, key=lambda p: p.get("build_number") or 0):
        state = states[pipeline["uuid"]]
        told = state is not None and (known.get((state.run_id, 1)) or ("",))[0] == state.status.value
        if state is not None and state.status is Status.FAILED and state.run_id not in read:
            for step in await _steps(client, target, pipeline["uuid"]):
                if (step.get("state") or {}).get("name") == "COMPLETED" and (
                    (step["state"].get("result") or {}).get("name") in ("FAILED", "ERROR")
                ):
                    await ctx.emit(STEP_EVENT, {"step": step, "pipeline": pipeline, "repo": target})
            read[state.run_id] = True
            while len(read) > READ_MEMORY:
                read.pop(next(iter(read)))
        if not told:
            await ctx.emit(PIPELINE_EVENT, {"pipeline": pipeline, "repo": target})


async def _steps(client: ProviderClient, target: str, uuid: str) -> list[dict[str, Any]]:
    steps: list[dict[str, Any]] = []
    async for page in client.pages(f"{repo_path(target)}{quote(uuid, safe='')}/steps/", params={"pagelen": PAGELEN}):
        steps += (page.data or {}).get("values") or []
    return steps


# --- operations ----------------------------------------------------------------------------------


def explain(source: str, error: ProviderError, *, action: str, subject: str) -> ProviderError:
    # Running and stopping pipelines needs the write:pipeline:bitbucket scope (Pipelines: Write).
    return operation_error(error, source, action, subject, "the write:pipeline:bitbucket scope (Pipelines: Write)")


async def _operate(
    client: ProviderClient, source: str, method: str, path: str, body: Any, action: str, subject: str
) -> dict[str, Any] | None:
    explain_it = functools.partial(explain, source, action=action, subject=subject)
    return answer(await operate(client, method, path, explain_it, json=body))


async def find(client: ProviderClient, source: str, run: Mapping[str, Any]) -> dict[str, Any]:
    """The pipeline of a run (its UUID is what the API's paths take): the list newest first, down to
    its build number."""
    number, pipeline = build_number(run), run["pipeline"]
    async for page in client.pages(repo_path(pipeline), params={"sort": "-created_on", "pagelen": PAGELEN}):
        values = (page.data or {}).get("values") or []
        for item in values:
            if item.get("build_number") == number:
                return item
        if not values or values[-1].get("build_number", 0) < number:
            break
    raise ProviderError(
        f"{source}: pipeline #{number} of {pipeline} was not found: it does not exist or the API token cannot see it",
        status=404,
        code="not_found",
    )


_INPUTS = ("commit", "pipeline", "ref_type")


async def trigger(
    provider: Provider,
    client: ProviderClient,
    pipeline: str,
    ref: str,
    inputs: Mapping[str, Any],
    variables: Mapping[str, str] | None = None,
) -> dict[str, Any] | None:
    """Run a pipeline on a branch (or `ref_type: tag`), https://developer.atlassian.com/cloud/bitbucket/rest/api-group-pipelines/#api-repositories-workspace-repo-slug-pipelines-post:
    201 and the pipeline. Inputs: `commit` (a hash: that commit, in the context of the ref),
    `pipeline` (the name of a custom pipeline of bitbucket-pipelines.yml); variables become the
    pipeline's variables (not secured)."""
    source = provider.name
    unknown = sorted(set(inputs) - set(_INPUTS))
    if unknown:
        raise ProviderError(
            f"inputs: {', '.join(unknown)}: Bitbucket takes only {', '.join(_INPUTS)} (pass the rest as variables)",
            status=422,
            code="not_supported",
        )
    target: dict[str, Any] = {
        "type": "pipeline_ref_target",
        "ref_type": str(inputs.get("ref_type") or "branch"),
        "ref_name": ref,
    }
    if inputs.get("commit"):
        target["commit"] = {"type": "commit", "hash": str(inputs["commit"])}
    if inputs.get("pipeline"):
        target["selector"] = {"type": "custom", "pattern": str(inputs["pipeline"])}
    body: dict[str, Any] = {"target": target}
    if variables:
        body["variables"] = [{"key": k, "value": v, "secured": False} for k, v in variables.items()]
    created = await _operate(
        client, source, "POST", repo_path(pipeline), body, "trigger", f"a pipeline of {pipeline} on {ref}"
    )
    return run_info(provider, created, pipeline) if created else None


async def rerun(provider: Provider, client: ProviderClient, run: Mapping[str, Any]) -> dict[str, Any] | None:
    """A new pipeline with the old one's target: the same commit, ref and pipeline definition. The
    API has no re-run of its own, and its variables are not readable (secured ones never), so they
    are not passed again."""
    source = provider.name
    old = await find(client, source, run)
    kept = {k: v for k, v in (old.get("target") or {}).items() if k in ("type", "ref_type", "ref_name", "selector")}
    commit = ((old.get("target") or {}).get("commit") or {}).get("hash")
    if commit:
        kept["commit"] = {"type": "commit", "hash": commit}
    if kept.get("type") == "pipeline_pullrequest_target":
        kept = {**(old.get("target") or {})}
    subject = f"pipeline #{old['build_number']} of {run['pipeline']}"
    created = await _operate(client, source, "POST", repo_path(run["pipeline"]), {"target": kept}, "re-run", subject)
    return run_info(provider, created, run["pipeline"]) if created else None


async def cancel(source: str, client: ProviderClient, run: Mapping[str, Any]) -> dict[str, Any] | None:
    """POST .../pipelines/{uuid}/stopPipeline: 204. Bitbucket answers 400 to a pipeline that has
    completed; that is said as a conflict before anything is sent."""
    old = await find(client, source, run)
    subject = f"pipeline #{old['build_number']} of {run['pipeline']}"
    if (old.get("state") or {}).get("name") == "COMPLETED":
        raise ProviderError(f"{source}: {subject} cannot be cancelled (it has completed)", status=409, code="conflict")
    path = f"{repo_path(run['pipeline'])}{quote(old['uuid'], safe='')}/stopPipeline"
    await _operate(client, source, "POST", path, None, "cancel", subject)
    return None
