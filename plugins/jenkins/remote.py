"""Jenkins over its JSON API (https://www.jenkins.io/doc/book/using/remote-access-api/): what the
poller reads, and trigger, re-run and stop.

Every request names the fields it wants with `tree=`, so that a job with a long history answers a
few kilobytes. `repos` names jobs, folders or multibranch projects (`*`: the whole server); folders
are listed recursively, at most every JOBS_REFRESH seconds. Each job is then asked for its latest
builds, more of them when more happened since the last cycle than one page holds, and for each
unfinished build the store knows that is no longer among them. A build is ingested when the store
does not hold its state yet.

Jenkins sends no rate-limit headers: the source's `max_rps` spaces the requests instead.

Operations are POSTs, which Jenkins may refuse with 403 until they carry a CSRF crumb (Crumb, below).
A trigger is answered with the queue item of the build to come; it is followed until the build has a
number (or for QUEUE_WAIT seconds).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import quote, urlsplit

from flowforged.errors import ProviderError
from flowforged.http import ProviderClient, Response
from flowforged.model import Status
from flowforged.pagination import Single
from flowforged.plugin import PollContext, Provider, RemoteAPI, operation_error
from flowforged.polling import text, untold
from flowforged.ratelimits import RateLimits

BUILD_EVENT = "api:build"
PAGE = 25  # builds asked for each cycle
MORE = 100  # builds asked for at a time beyond the first page
MAX_BUILDS = 500  # of one job in one cycle
JOBS_REFRESH = 600.0  # seconds between two listings of the folders
QUEUE_WAIT = 10.0  # seconds a trigger waits for its queue item to become a build
OPEN = frozenset({Status.PENDING.value, Status.RUNNING.value, Status.BLOCKED.value})
# https://www.jenkins.io/doc/book/using/remote-access-api/#RemoteaccessAPI-Depthcontrol (tree=)
BUILD_TREE = (
    "number,url,result,building,inProgress,timestamp,duration,queueId,"
    "actions[parameters[name,value],causes[shortDescription,userName],lastBuiltRevision[SHA1,branch[name]]],"
    "changeSets[items[commitId,msg,author[fullName]]],changeSet[items[commitId,msg,author[fullName]]]"
)  # changeSets: a Pipeline's (one per checkout); changeSet: a freestyle build's
LISTING_TREE = "jobs[name]"
JOB_TREE = "buildable,property[parameterDefinitions[name]]"
QUEUE_TREE = "id,why,cancelled,executable[number,url]"
_QUEUE_ITEM = re.compile(r"/queue/item/(\d+)/?$")


# --- pure half ---------------------------------------------------------------------------------


def parse_repos(entries: list[str]) -> list[str]:
    """`repos` entries as item paths (`folder/app`; "" for `*`, the whole server)."""
    paths: list[str] = []
    for entry in entries:
        entry = entry.strip()
        if entry == "*":
            paths.append("")
        elif entry.strip("/") and all(entry.strip("/").split("/")) and "://" not in entry:
            if entry.startswith("job/"):
                raise ValueError(f"{entry!r}: name the job by its full name (folder/app), not its URL path")
            paths.append(entry.strip("/"))
        else:
            raise ValueError(f"{entry!r}: expected a job, folder or multibranch project (folder/app), or *")
    return paths


def job_path(name: str) -> str:
    """An item's URL path: `folder/app` -> `/job/folder/job/app`. A multibranch branch job's name
    (`feature%2Fx`) is encoded once more, as Jenkins serves it (`feature%252Fx`)."""
    return "".join(f"/job/{quote(segment, safe='')}" for segment in name.split("/")) if name else ""


def is_folder(kind: str | None) -> bool:
    """com.cloudbees.hudson.plugins.folder.Folder, jenkins.branch.OrganizationFolder,
    org.jenkinsci.plugins.workflow.multibranch.WorkflowMultiBranchProject, and their kin."""
    name = (kind or "").rsplit(".", 1)[-1]
    return name.endswith("Folder") or name.endswith("MultiBranchProject")


def split_run(run: Mapping[str, Any]) -> tuple[str, int]:
    """(job full name, build number) of a run: its pipeline and its number (or its run id's)."""
    job = run["pipeline"]
    if run.get("number") is not None:
        return job, int(run["number"])
    _, _, number = str(run["run_id"]).rpartition("#")
    if not number.isdigit():
        raise ProviderError(f"run {run['run_id']} has no build number", status=404, code="not_found")
    return job, int(number)


def actions(build: Mapping[str, Any], field: str) -> list[Any]:
    """The values of `field` in a build's actions (with tree=, each action has only its own fields)."""
    return [a[field] for a in build.get("actions") or [] if isinstance(a, dict) and field in a]


def build_parameters(build: Mapping[str, Any]) -> dict[str, Any]:
    """A build's parameters (ParametersAction), as name -> value. A password parameter's value is not
    shown by Jenkins: it is left out."""
    found: dict[str, Any] = {}
    for parameters in actions(build, "parameters"):
        for parameter in parameters or []:
            if isinstance(parameter, dict) and parameter.get("name") and parameter.get("value") is not None:
                found[parameter["name"]] = parameter["value"]
    return found


def explain(source: str, error: ProviderError, action: str, subject: str) -> ProviderError:
    # https://www.jenkins.io/doc/book/security/access-control/permissions/: Job/Build starts builds,
    # Job/Cancel stops them, Job/Read (and Overall/Read) sees them.
    return operation_error(error, source, action, subject, "Job/Build and Job/Cancel on the job")


# --- client --------------------------------------------------------------------------------------

# No default address (every Jenkins is self-hosted); no rate-limit headers (the source's max_rps spaces
# the requests); no pagination (a `tree=` range says which builds a page holds). Basic authentication
# with a user's API token: JenkinsProvider.auth().
REMOTE = RemoteAPI(default_url=None, pagination=Single(), rate_limits=RateLimits())


class Crumb:
    """Jenkins' CSRF protection (https://www.jenkins.io/doc/book/security/csrf-protection/): a POST
    without a valid crumb is answered 403. The crumb comes from /crumbIssuer/api/json and, since
    Jenkins 2.176.2, is only valid in the web session it was issued in: its cookie goes with it. A
    request authenticated by an API token needs none on recent versions, so a crumb is asked for only
    when a POST is refused, and kept for the next ones."""

    def __init__(self) -> None:
        self.headers: dict[str, str] = {}

    async def post(self, client: ProviderClient, path: str, params: Mapping[str, Any] | None = None) -> Response:
        try:
            return await client.request("POST", path, params=params, headers=self.headers or None)
        except ProviderError as exc:
            if exc.status != 403:
                raise
            refused = exc
        if not await self.refresh(client):
            raise refused  # no crumb to be had: the 403 is about a permission
        return await client.request("POST", path, params=params, headers=self.headers)

    async def refresh(self, client: ProviderClient) -> bool:
        try:
            response = await client.get("/crumbIssuer/api/json")
        except ProviderError as exc:
            if exc.status == 404:  # CSRF protection is off
                self.headers = {}
                return False
            raise
        data = response.data if isinstance(response.data, dict) else {}
        field, crumb = data.get("crumbRequestField"), data.get("crumb")
        if not field or not crumb:
            return False
        cookies: SimpleCookie = SimpleCookie()
        for value in getattr(response.headers, "getall", lambda *_: [])("Set-Cookie", []):
            try:
                cookies.load(value)
            except CookieError:
                continue
        self.headers = {field: crumb}
        if cookies:
            self.headers["Cookie"] = "; ".join(f"{name}={morsel.value}" for name, morsel in cookies.items())
        return True


# --- polling -------------------------------------------------------------------------------------


async def targets(client: ProviderClient, ctx: PollContext, entries: list[str]) -> list[str]:
    """Every job under the entries, folders and multibranch projects expanded."""
    cached = ctx.memory.get("listed")
    if cached is not None and ctx.now - cached["at"] < JOBS_REFRESH:
        return cached["jobs"]
    jobs: dict[str, dict[str, Any]] = ctx.memory.setdefault("jobs", {})
    found: list[str] = []
    complete = True
    for path in parse_repos(entries):
        try:
            found += await expand(client, path, jobs)
        except ProviderError as exc:
            ctx.error(path or "*", exc)
            complete = False
    found = list(dict.fromkeys(found))
    if complete:
        ctx.memory["listed"] = {"at": ctx.now, "jobs": found}
    return found


async def expand(client: ProviderClient, path: str, jobs: dict[str, dict[str, Any]]) -> list[str]:
    """The jobs at `path`: itself if it is a job, else those inside it, recursively. A job inside a
    multibranch project is a branch's job: its name is the branch."""
    data = (await client.get(f"{job_path(path)}/api/json", params={"tree": f"_class,{LISTING_TREE}"})).data or {}
    if "jobs" not in data:
        jobs.setdefault(path, {"multibranch": False})
        return [path]
    multibranch = str(data.get("_class") or "").endswith("MultiBranchProject")
    found: list[str] = []
    for child in data.get("jobs") or []:
        name = f"{path}/{child['name']}" if path else child["name"]
        if is_folder(child.get("_class")):
            found += await expand(client, name, jobs)
        else:
            jobs[name] = {"multibranch": multibranch}
            found.append(name)
    return found


async def poll_job(provider: Provider, client: ProviderClient, ctx: PollContext, job: str) -> None:
    key = f"builds:{job}"
    cursor = await ctx.cursor(key)
    last = int(cursor) if cursor and cursor.isdigit() else None
    builds = await _builds(client, ctx, job, last)
    numbers = {b["number"] for b in builds}
    since_ms = ctx.since * 1000
    fresh = [b for b in builds if b.get("building") or b.get("result") is None or _ended_ms(b) >= since_ms]
    fresh += await _left_behind(client, ctx, job, numbers)
    info = {"full_name": job, "multibranch": ctx.memory.get("jobs", {}).get(job, {}).get("multibranch", False)}
    payloads = [{"job": info, "build": build} for build in sorted(fresh, key=lambda b: b["number"])]
    for payload, _ in await untold(ctx, provider, BUILD_EVENT, payloads):
        await ctx.emit(BUILD_EVENT, payload)
    newest = max(numbers, default=None)
    if newest is not None and newest != last:
        await ctx.set_cursor(key, str(newest))


async def _builds(client: ProviderClient, ctx: PollContext, job: str, last: int | None) -> list[dict[str, Any]]:
    """The latest builds, newest first: one page, and more while the oldest read is newer than both
    the cursor and the start of the window."""
    path = f"{job_path(job)}/api/json"
    builds: list[dict[str, Any]] = []
    start, end = 0, PAGE
    while True:
        tree = f"builds[{BUILD_TREE}]{{{start},{end}}}"
        page = (await client.get(path, params={"tree": tree})).data or {}
        batch = page.get("builds") or []
        builds += batch
        if len(batch) < end - start or len(builds) >= MAX_BUILDS:
            return builds
        oldest = builds[-1]
        if (last is not None and oldest["number"] <= last + 1) or _started_ms(oldest) < ctx.since * 1000:
            return builds
        start, end = end, end + MORE


async def _left_behind(client: ProviderClient, ctx: PollContext, job: str, listed: set[int]) -> list[dict[str, Any]]:
    """Unfinished builds of the job the store knows that the pages read no longer show."""
    found: list[dict[str, Any]] = []
    for run in await ctx.open_runs():
        if run["pipeline"] != job or run.get("status") not in OPEN:
            continue
        _, _, number = str(run["run_id"]).rpartition("#")
        if not number.isdigit() or int(number) in listed:
            continue
        try:
            response = await client.get(f"{job_path(job)}/{number}/api/json", params={"tree": BUILD_TREE})
        except ProviderError as exc:
            if exc.status == 404:
                continue  # deleted (or discarded by the job's build retention)
            raise
        if isinstance(response.data, dict):
            found.append(response.data)
    return found


def _started_ms(build: Mapping[str, Any]) -> float:
    return float(build.get("timestamp") or 0)


def _ended_ms(build: Mapping[str, Any]) -> float:
    return _started_ms(build) + float(build.get("duration") or 0)


# --- operations ----------------------------------------------------------------------------------


async def trigger(
    source: str,
    client: ProviderClient,
    crumb: Crumb,
    pipeline: str,
    ref: str,
    parameters: Mapping[str, Any],
    ref_parameter: str,
) -> dict[str, Any] | None:
    """buildWithParameters (or build, for a job without parameters), then the queue item followed
    to the build's number. The ref goes into the job's `ref_parameter` when it has one; a branch job
    of a multibranch project builds its own branch."""
    subject = f"a build of {pipeline}"
    defined = await _parameters(source, client, pipeline, "trigger", subject)
    values = {name: text(value) for name, value in parameters.items()}
    if ref_parameter in defined and ref_parameter not in values:
        values[ref_parameter] = ref
    return await _build_now(source, client, crumb, pipeline, defined, values, "trigger", subject)


async def rerun(source: str, client: ProviderClient, crumb: Crumb, run: Mapping[str, Any]) -> dict[str, Any] | None:
    """A new build of the job with the parameters of the build (Jenkins re-runs nothing in place; a
    password parameter, whose value the API does not show, takes its default)."""
    job, number = split_run(run)
    subject = f"build {number} of {job}"
    try:
        params = {"tree": "actions[parameters[name,value]]"}
        build = (await client.get(f"{job_path(job)}/{number}/api/json", params=params)).data
    except ProviderError as exc:
        raise explain(source, exc, "re-run", subject) from None
    values = {name: text(value) for name, value in build_parameters(build or {}).items()}
    defined = await _parameters(source, client, job, "re-run", subject)
    values = {name: value for name, value in values.items() if name in defined}
    return await _build_now(source, client, crumb, job, defined, values, "re-run", subject)


async def cancel(
    source: str, client: ProviderClient, crumb: Crumb, run: Mapping[str, Any], force: bool
) -> dict[str, Any] | None:
    """POST .../stop; with force, .../term too, which a Pipeline build takes as "stop now, without
    the cleanup stop allows" (a freestyle build has no term: its 404 is ignored)."""
    job, number = split_run(run)
    subject = f"build {number} of {job}"
    path = f"{job_path(job)}/{number}"
    try:
        build = (await client.get(f"{path}/api/json", params={"tree": "building,result"})).data or {}
    except ProviderError as exc:
        raise explain(source, exc, "cancel", subject) from None
    if not build.get("building"):
        raise ProviderError(
            f"{source}: {subject} cannot be cancelled: it has already finished ({build.get('result')})",
            status=409,
            code="conflict",
        )
    try:
        await crumb.post(client, f"{path}/stop")
        if force:
            try:
                await crumb.post(client, f"{path}/term")
            except ProviderError as exc:
                if exc.status != 404:
                    raise
    except ProviderError as exc:
        raise explain(source, exc, "cancel", subject) from None
    return None


async def _parameters(source: str, client: ProviderClient, job: str, action: str, subject: str) -> list[str]:
    """The names of the job's parameters; ProviderError if it cannot be built at all."""
    try:
        data = (await client.get(f"{job_path(job)}/api/json", params={"tree": JOB_TREE})).data or {}
    except ProviderError as exc:
        raise explain(source, exc, action, subject) from None
    if data.get("buildable") is False:
        raise ProviderError(f"{source}: {job} is disabled: it cannot be built", status=409, code="conflict")
    return [
        definition["name"]
        for prop in data.get("property") or []
        for definition in (prop or {}).get("parameterDefinitions") or []
        if definition.get("name")
    ]


async def _build_now(
    source: str,
    client: ProviderClient,
    crumb: Crumb,
    job: str,
    defined: list[str],
    values: dict[str, str],
    action: str,
    subject: str,
) -> dict[str, Any] | None:
    unknown = sorted(set(values) - set(defined))
    if unknown:
        raise ProviderError(
            f"{source}: {job} has no parameter {', '.join(unknown)}"
            + (f" (it has {', '.join(defined)})" if defined else " (it takes no parameters)"),
            status=400,
            code="bad_request",
        )
    # delay=0sec: a build asked for through the API skips the job's quiet period, which is there to
    # gather commits pushed together (https://www.jenkins.io/doc/book/using/remote-access-api/).
    endpoint = "buildWithParameters" if defined else "build"
    try:
        response = await crumb.post(client, f"{job_path(job)}/{endpoint}", {**values, "delay": "0sec"})
    except ProviderError as exc:
        raise explain(source, exc, action, subject) from None
    return await follow_queue(source, client, job, response.headers.get("Location"))


async def follow_queue(source: str, client: ProviderClient, job: str, location: str | None) -> dict[str, Any] | None:
    """https://www.jenkins.io/doc/book/using/remote-access-api/ (queue items): `executable` appears
    once the item has left the queue for an executor; `cancelled` if someone took it off. The path is
    read from Location and asked of api_url: Jenkins writes Location with its configured root URL,
    which may not be the address FlowForge reaches it at."""
    match = _QUEUE_ITEM.search(urlsplit(location or "").path)
    if match is None:
        return None
    item = int(match.group(1))
    waited, delay, why = 0.0, 0.05, None
    while True:
        try:
            data = (await client.get(f"/queue/item/{item}/api/json", params={"tree": QUEUE_TREE})).data or {}
        except ProviderError as exc:
            if exc.status == 404:
                break  # the queue forgets an item some minutes after it left
            raise
        if data.get("cancelled"):
            raise ProviderError(
                f"{source}: the queued build of {job} was cancelled before it started", status=409, code="conflict"
            )
        executable = data.get("executable") or {}
        if executable.get("number") is not None:
            number = int(executable["number"])
            return {"run_id": f"{job}#{number}", "number": number, "url": executable.get("url"), "queue_item": item}
        why = data.get("why")
        if waited >= QUEUE_WAIT:
            break
        await asyncio.sleep(delay)
        waited += delay
        delay = min(delay * 2, 1.0)
    return {"queue_item": item, "provider_status": "QUEUED", "why": why}
