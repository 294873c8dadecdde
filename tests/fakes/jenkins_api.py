"""A fake Jenkins (JSON API, build triggers, queue, CSRF crumbs) as an aiohttp app, following the
Remote Access API (https://www.jenkins.io/doc/book/using/remote-access-api/) and CSRF protection
(https://www.jenkins.io/doc/book/security/csrf-protection/), and the sender of the Notification
plugin's deliveries (https://plugins.jenkins.io/notification/).

    fake = FakeJenkins(username="flowforge", token="11aa...")
    fake.add_folder("platform")
    fake.add_job("platform/api", parameters={"BRANCH": "main"})
    build = fake.add_build("platform/api", result="FAILURE")
    server = await aiohttp_server(fake.app)

What it does as Jenkins does:
- `tree=` picks the fields of an answer, `{M,N}` a range of a list (M inclusive, N exclusive);
- folders (com.cloudbees.hudson.plugins.folder.Folder) and multibranch projects
  (WorkflowMultiBranchProject, whose branch jobs are named with `/` encoded as %2F) list their jobs;
- with `csrf` on, a POST without the crumb of its web session (GET /crumbIssuer/api/json, cookie
  JSESSIONID.*) is answered 403; with it off, /crumbIssuer is 404;
- POST .../build and .../buildWithParameters answer 201 with `Location: <root URL>queue/item/N/`;
  the queue item becomes a build (`executable`) after `queue_polls` reads of it;
- POST .../N/stop aborts a build and redirects (302) to its page; .../term exists for Pipeline builds;
- errors are Jenkins' HTML pages; there are no rate-limit headers.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, unquote

import aiohttp
from aiohttp import web
from yarl import URL

from flowforged.fakeapi import Delivery, FakeProviderAPI
from flowforged.signatures import signature_header

FOLDER = "com.cloudbees.hudson.plugins.folder.Folder"
MULTIBRANCH = "org.jenkinsci.plugins.workflow.multibranch.WorkflowMultiBranchProject"
PIPELINE = "org.jenkinsci.plugins.workflow.job.WorkflowJob"
FREESTYLE = "hudson.model.FreeStyleProject"
RUN = {PIPELINE: "org.jenkinsci.plugins.workflow.job.WorkflowRun", FREESTYLE: "hudson.model.FreeStyleBuild"}
CRUMB_FIELD = "Jenkins-Crumb"
SESSION_COOKIE = "JSESSIONID.f4k3c0de"


# --- tree= -------------------------------------------------------------------------------------


def parse_tree(text: str) -> dict[str, tuple[Any, str | None]]:
    """`a,b[c,d[e]]{0,10}` as {name: (subtree or None, range or None)}."""
    fields, _ = _fields(text, 0)
    return fields


def _fields(text: str, i: int) -> tuple[dict[str, tuple[Any, str | None]], int]:
    out: dict[str, tuple[Any, str | None]] = {}
    while i < len(text):
        j = i
        while j < len(text) and text[j] not in ",[]{}":
            j += 1
        name, i = text[i:j].strip(), j
        sub: Any = None
        span = None
        if i < len(text) and text[i] == "[":
            sub, i = _fields(text, i + 1)
            i += 1  # the closing ]
        if i < len(text) and text[i] == "{":
            end = text.index("}", i)
            span, i = text[i + 1 : end], end + 1
        if name:
            out[name] = (sub, span)
        if i < len(text) and text[i] == ",":
            i += 1
        elif i < len(text) and text[i] == "]":
            return out, i
    return out, i


def _slice(items: list[Any], span: str) -> list[Any]:
    low, sep, high = span.partition(",")
    if not sep:
        return items[int(low) : int(low) + 1]
    return items[int(low) if low else 0 : int(high) if high else None]


def apply_tree(value: Any, fields: dict[str, tuple[Any, str | None]]) -> Any:
    if isinstance(value, list):
        return [apply_tree(item, fields) for item in value]
    if not isinstance(value, dict):
        return value
    out = {"_class": value["_class"]} if "_class" in value else {}
    for name, (sub, span) in fields.items():
        if name not in value:
            continue
        item = value[name]
        if isinstance(item, list) and span is not None:
            item = _slice(item, span)
        out[name] = apply_tree(item, sub) if sub is not None else item
    return out


# --- the fake ----------------------------------------------------------------------------------


class FakeJenkins(FakeProviderAPI):
    """Folders, jobs, builds and the queue in memory, served as Jenkins does."""

    def __init__(
        self,
        username: str = "flowforge",
        token: str = "11f4k3t0k3n000000000000000000000ab",  # noqa: S107 (a fake's test token)
        *,
        csrf: bool = True,
        queue_polls: int = 1,
        clock: Callable[[], float] = time.time,
    ) -> None:
        # Jenkins has no rate limit: a budget nobody spends.
        super().__init__(token, rate_limit=10**9, window=3600, clock=clock)
        self.username = username
        self.csrf = csrf
        self.queue_polls = queue_polls
        self.root_url: str | None = None  # the configured root URL; None: the address asked
        self.items: dict[str, dict[str, Any]] = {"": {"_class": "hudson.model.Hudson", "jobs": []}}
        self.queue: dict[int, dict[str, Any]] = {}
        self.triggered: list[dict[str, Any]] = []  # each POST build/buildWithParameters: job, endpoint, params
        self.sessions: dict[str, str] = {}  # session id -> crumb
        self._queue_ids = itertools.count(101)

    # --- the world ---

    def _parent(self, name: str) -> dict[str, Any]:
        parent, _, _ = name.rpartition("/")
        if parent not in self.items:
            self.add_folder(parent)
        return self.items[parent]

    def add_folder(self, name: str, *, multibranch: bool = False) -> dict[str, Any]:
        if name in self.items:
            return self.items[name]
        parent = self._parent(name)
        self.items[name] = {"_class": MULTIBRANCH if multibranch else FOLDER, "jobs": []}
        parent["jobs"].append(name)
        return self.items[name]

    def add_job(
        self, name: str, *, parameters: dict[str, str] | None = None, pipeline: bool = True, buildable: bool = True
    ) -> dict[str, Any]:
        """A job (a Pipeline, or a freestyle project); `parameters` are its string parameters and
        their defaults. The folders above it are made when missing."""
        if name in self.items:
            return self.items[name]
        parent = self._parent(name)
        self.items[name] = {
            "_class": PIPELINE if pipeline else FREESTYLE,
            "parameters": dict(parameters or {}),
            "buildable": buildable,
            "builds": [],  # newest first, as Jenkins lists them
            "next": 1,
        }
        parent["jobs"].append(name)
        return self.items[name]

    def add_build(
        self,
        job: str,
        *,
        result: str | None = None,
        started: float | None = None,
        duration: float = 0.0,
        parameters: dict[str, str] | None = None,
        branch: str | None = "origin/main",
        sha: str | None = None,
        message: str = "Fix the flaky login test",
        author: str = "Ada Lovelace",
        cause: str = "hudson.model.Cause$UserIdCause",
        queue_id: int | None = None,
    ) -> dict[str, Any]:
        """A build of `job` (made when missing), started at `started` (epoch seconds, default now):
        still building when `result` is None, else finished `duration` seconds later."""
        item = self.add_job(job) if job not in self.items else self.items[job]
        number = item["next"]
        item["next"] += 1
        values = {**item["parameters"], **(parameters or {})}
        sha = sha or hashlib.sha1(f"{job}#{number}".encode(), usedforsecurity=False).hexdigest()
        actions: list[dict[str, Any]] = []
        if values:
            actions.append(
                {
                    "_class": "hudson.model.ParametersAction",
                    "parameters": [
                        {"_class": "hudson.model.StringParameterValue", "name": k, "value": v}
                        for k, v in values.items()
                    ],
                }
            )
        user = cause.endswith("UserIdCause")
        actions.append(
            {
                "_class": "hudson.model.CauseAction",
                "causes": [
                    {
                        "_class": cause,
                        "shortDescription": f"Started by user {author}" if user else "Started by an SCM change",
                        **({"userId": "ada", "userName": author} if user else {}),
                    }
                ],
            }
        )
        if branch is not None:
            actions.append(
                {
                    "_class": "hudson.plugins.git.util.BuildData",
                    "lastBuiltRevision": {"SHA1": sha, "branch": [{"SHA1": sha, "name": branch}]},
                    "remoteUrls": [f"https://github.com/acme/{job.split('/')[-1]}.git"],
                }
            )
        actions.append({"_class": "org.jenkinsci.plugins.workflow.libs.LibrariesAction"})
        start_ms = int((self.clock() if started is None else started) * 1000)
        build = {
            "_class": RUN[item["_class"]],
            "actions": actions,
            "artifacts": [],
            "building": result is None,
            "description": None,
            "displayName": f"#{number}",
            "duration": 0 if result is None else int(duration * 1000),
            "estimatedDuration": 60000,
            "executor": None,
            "fullDisplayName": f"{job.replace('/', ' » ')} #{number}",
            "id": str(number),
            "keepLog": False,
            "number": number,
            "queueId": queue_id if queue_id is not None else next(self._queue_ids),
            "result": result,
            "timestamp": start_ms,
            "url": f"{{root}}{_job_url(job)}{number}/",
            "changeSets": [
                {
                    "_class": "hudson.plugins.git.GitChangeSetList",
                    "items": [
                        {
                            "_class": "hudson.plugins.git.GitChangeSet",
                            "commitId": sha,
                            "msg": message,
                            "author": {"absoluteUrl": "https://jenkins.example.com/user/ada", "fullName": author},
                            "timestamp": start_ms - 60000,
                        }
                    ],
                    "kind": "git",
                }
            ],
            "culprits": [{"absoluteUrl": "https://jenkins.example.com/user/ada", "fullName": author}],
        }
        if item["_class"] == PIPELINE:
            build["inProgress"] = result is None
        item["builds"].insert(0, build)
        return build

    def find(self, job: str, number: int) -> dict[str, Any] | None:
        return next((b for b in self.items.get(job, {}).get("builds", []) if b["number"] == number), None)

    def finish(self, job: str, number: int, result: str, *, duration: float | None = None) -> dict[str, Any]:
        """End a build with `result`, `duration` seconds after its start (default: now)."""
        build = self.find(job, number)
        assert build is not None
        ended = self.clock() * 1000 if duration is None else build["timestamp"] + duration * 1000
        build.update(result=result, building=False, duration=int(max(ended - build["timestamp"], 0)))
        if "inProgress" in build:
            build["inProgress"] = False
        return build

    # --- the provider's words ---

    def authorized(self, request: web.Request) -> bool:
        expected = base64.b64encode(f"{self.username}:{self.token}".encode()).decode()
        return request.headers.get("Authorization", "") == f"Basic {expected}"

    def unauthorized(self) -> web.Response:
        return self._page(401, "Invalid password/token for user: " + self.username)

    def limit_exceeded(self) -> web.Response:
        raise AssertionError("Jenkins has no rate limit")

    def rate_headers(self) -> dict[str, str]:
        return {"X-Jenkins": "2.452.2", "X-Jenkins-Session": "f4k3c0de"}

    def error(self, status: int, message: Any) -> web.Response:
        return self._page(status, str(message))

    @staticmethod
    def _page(status: int, message: str) -> web.Response:
        title = f"Error {status} {message}"
        html = f"<html><head><title>{title}</title></head><body><h2>HTTP ERROR {status} {message}</h2></body></html>"
        return web.Response(status=status, text=html, content_type="text/html")

    def _root(self, request: web.Request) -> str:
        return self.root_url or f"{request.url.origin()}/"

    def body(self, request: web.Request, data: Any, status: int = 200, headers: Any = None) -> web.Response:
        text = json.dumps(data).replace("{root}", self._root(request))
        return web.Response(text=text, status=status, content_type="application/json", headers=headers)

    # --- routes ---

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_route("*", "/{tail:.*}", self.dispatch)

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        # The raw path: a multibranch job's name keeps its %2F (served as %252F).
        segments = [s for s in request.raw_path.split("?", 1)[0].split("/") if s]
        names: list[str] = []
        while len(segments) >= 2 and segments[0] == "job":
            names.append(unquote(segments[1]))
            segments = segments[2:]
        job = "/".join(names)
        method = request.method
        if not names and segments == ["crumbIssuer", "api", "json"] and method == "GET":
            return self.crumb_issuer(request)
        if not names and len(segments) == 5 and segments[:2] == ["queue", "item"] and segments[3:] == ["api", "json"]:
            return self.queue_item(request, int(segments[2]))
        if job not in self.items:
            return self.error(404, "Not Found")
        if segments == ["api", "json"] and method == "GET":
            return self.item_json(request, job)
        if method == "POST" and not self._crumb_ok(request):
            return self.error(403, "No valid crumb was included in the request")
        if segments in (["build"], ["buildWithParameters"]) and method == "POST":
            return await self.build_now(request, job, segments[0])
        if segments and segments[0].isdigit():
            build = self.find(job, int(segments[0]))
            if build is None:
                return self.error(404, "Not Found")
            rest = segments[1:]
            if rest == ["api", "json"] and method == "GET":
                return self.filtered(request, build)
            if rest == [] and method == "GET":
                return web.Response(
                    text=f"<html><body>{build['fullDisplayName']}</body></html>", content_type="text/html"
                )
            if rest in (["stop"], ["term"]) and method == "POST":
                return self.stop(request, job, build, rest[0])
        return self.error(404, "Not Found")

    def filtered(self, request: web.Request, data: dict[str, Any]) -> web.Response:
        tree = request.query.get("tree")
        return self.body(request, apply_tree(data, parse_tree(tree)) if tree else data)

    def item_json(self, request: web.Request, name: str) -> web.Response:
        item = self.items[name]
        short = name.rsplit("/", 1)[-1]
        base = {"_class": item["_class"], "name": short, "fullName": name, "url": f"{{root}}{_job_url(name)}"}
        if "jobs" in item:
            children = []
            for child in item["jobs"]:
                kind = self.items[child]["_class"]
                children.append(
                    {
                        "_class": kind,
                        "name": child.rsplit("/", 1)[-1],
                        "url": f"{{root}}{_job_url(child)}",
                        "color": "blue",
                    }
                )
            data = {**base, "jobs": children}
        else:
            properties = []
            if item["parameters"]:
                properties.append(
                    {
                        "_class": "hudson.model.ParametersDefinitionProperty",
                        "parameterDefinitions": [
                            {
                                "_class": "hudson.model.StringParameterDefinition",
                                "name": key,
                                "type": "StringParameterDefinition",
                                "defaultParameterValue": {
                                    "_class": "hudson.model.StringParameterValue",
                                    "value": value,
                                },
                            }
                            for key, value in item["parameters"].items()
                        ],
                    }
                )
            builds = item["builds"]
            data = {
                **base,
                "buildable": item["buildable"],
                "builds": builds,
                "lastBuild": {"number": builds[0]["number"], "url": builds[0]["url"]} if builds else None,
                "nextBuildNumber": item["next"],
                "property": properties,
            }
            if "tree" not in request.query:  # depth 0: a build is its number and URL
                data["builds"] = [{"_class": b["_class"], "number": b["number"], "url": b["url"]} for b in builds]
        return self.filtered(request, data)

    # --- CSRF ---

    def crumb_issuer(self, request: web.Request) -> web.Response:
        if not self.csrf:
            return self.error(404, "Not Found")
        session = uuid.uuid4().hex
        self.sessions[session] = hashlib.sha256(session.encode()).hexdigest()
        data = {
            "_class": "hudson.security.csrf.DefaultCrumbIssuer",
            "crumb": self.sessions[session],
            "crumbRequestField": CRUMB_FIELD,
        }
        response = self.body(request, data)
        response.set_cookie(SESSION_COOKIE, session, path="/", httponly=True)
        return response

    def _crumb_ok(self, request: web.Request) -> bool:
        if not self.csrf:
            return True
        session = request.cookies.get(SESSION_COOKIE)
        return session is not None and self.sessions.get(session) == request.headers.get(CRUMB_FIELD)

    # --- builds and the queue ---

    async def build_now(self, request: web.Request, job: str, endpoint: str) -> web.Response:
        item = self.items[job]
        if "jobs" in item:
            return self.error(405, "Method Not Allowed")
        if not item["buildable"]:
            return self.error(409, f"{job} is disabled")
        if endpoint == "buildWithParameters" and not item["parameters"]:
            return self.error(400, f"{job} is not parameterized")
        if endpoint == "build" and item["parameters"]:
            return self.error(400, f"{job} is parameterized: use buildWithParameters")
        form = await request.post()
        params = {k: v for k, v in [*request.query.items(), *form.items()] if k not in ("delay", "token")}
        self.triggered.append({"job": job, "endpoint": endpoint, "params": params, "delay": request.query.get("delay")})
        queue_id = next(self._queue_ids)
        self.queue[queue_id] = {"job": job, "params": params, "reads": 0, "build": None, "cancelled": False}
        location = f"{self._root(request)}queue/item/{queue_id}/"
        return web.Response(status=201, headers={"Location": location})

    def queue_item(self, request: web.Request, queue_id: int) -> web.Response:
        entry = self.queue.get(queue_id)
        if entry is None:
            return self.error(404, "Not Found")
        entry["reads"] += 1
        task = {"_class": self.items[entry["job"]]["_class"], "name": entry["job"].rsplit("/", 1)[-1]}
        if entry["cancelled"]:
            data = {"_class": "hudson.model.Queue$LeftItem", "id": queue_id, "cancelled": True, "executable": None}
        elif entry["build"] is None and entry["reads"] <= self.queue_polls:
            data = {
                "_class": "hudson.model.Queue$WaitingItem",
                "id": queue_id,
                "blocked": False,
                "buildable": False,
                "stuck": False,
                "task": task,
                "why": "Waiting for next available executor",
            }
        else:
            if entry["build"] is None:
                entry["build"] = self.add_build(entry["job"], parameters=entry["params"], queue_id=queue_id)
            build = entry["build"]
            data = {
                "_class": "hudson.model.Queue$LeftItem",
                "id": queue_id,
                "cancelled": False,
                "task": task,
                "why": None,
                "executable": {"_class": build["_class"], "number": build["number"], "url": build["url"]},
            }
        return self.filtered(request, data)

    def stop(self, request: web.Request, job: str, build: dict[str, Any], action: str) -> web.Response:
        if action == "term" and self.items[job]["_class"] != PIPELINE:
            return self.error(404, "Not Found")
        if build["building"]:
            self.finish(job, build["number"], "ABORTED")
        # Run.doStop: HttpResponses.forwardToPreviousPage(), the build's page when there is no Referer.
        return web.Response(status=302, headers={"Location": "."})

    # --- the Notification plugin ---

    def notification(
        self, job: str, number: int, phase: str, *, root: str = "https://jenkins.example.com/"
    ) -> dict[str, Any]:
        """What the Notification plugin sends for `phase` of a build (JSON format, Gson with
        lower_case_with_underscores; `status` only once the build has a result)."""
        build = self.find(job, number)
        assert build is not None
        moment = {
            "QUEUED": build["timestamp"] - 2000,
            "STARTED": build["timestamp"],
            "COMPLETED": build["timestamp"] + build["duration"],
            "FINALIZED": build["timestamp"] + build["duration"] + 1500,
        }[phase]
        revision = next((a["lastBuiltRevision"] for a in build["actions"] if "lastBuiltRevision" in a), None)
        parameters = next((a["parameters"] for a in build["actions"] if "parameters" in a), [])
        state: dict[str, Any] = {
            "full_url": f"{root}{_job_url(job)}{number}/",
            "number": number,
            "queue_id": build["queueId"],
            "phase": phase,
            "url": f"{_job_url(job)}{number}/",
            "scm": {
                "url": f"https://github.com/acme/{job.split('/')[-1]}.git",
                "branch": revision["branch"][0]["name"] if revision else None,
                "commit": revision["SHA1"] if revision else None,
                "changes": [],
                "culprits": ["ada"],
            },
            "parameters": {p["name"]: p["value"] for p in parameters},
            "log": "",
            "notes": "",
            "artifacts": {},
            "timestamp": moment,
            "duration": build["duration"],
        }
        if phase in ("COMPLETED", "FINALIZED") and build["result"] is not None:
            state["status"] = build["result"]
        state = {k: v for k, v in state.items() if v is not None}
        state["scm"] = {k: v for k, v in state["scm"].items() if v is not None}
        return {
            "name": job.rsplit("/", 1)[-1],
            "display_name": job.rsplit("/", 1)[-1],
            "url": _job_url(job),
            "build": state,
        }

    async def send_notification(
        self,
        session: aiohttp.ClientSession,
        url: str | URL,
        payload: dict[str, Any],
        *,
        password: str | None = None,
        token: str | None = None,
        signing_secret: str | None = None,
        timestamp: int | None = None,
    ) -> Delivery:
        """POST a delivery as the plugin does (Content-Type application/json;charset=UTF-8): with
        `password`, the Basic authorization it sends for an endpoint URL with user information;
        with `token` or `signing_secret`, the headers another sender would add."""
        body = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json;charset=UTF-8", "User-Agent": "Java/17.0.10"}
        if password is not None:
            headers["Authorization"] = "Basic " + base64.b64encode(f"flowforge:{password}".encode()).decode()
        if token is not None:
            headers["X-FlowForge-Token"] = token
        if signing_secret is not None:
            moment = int(self.clock()) if timestamp is None else timestamp
            headers["X-FlowForge-Signature"] = signature_header(signing_secret, moment, body)
        async with session.post(url, data=body, headers=headers) as response:
            return Delivery(str(uuid.uuid4()), response.status, await response.read())


def _job_url(name: str) -> str:
    """`folder/app` -> `job/folder/job/app/`, each name URL-encoded (a branch's %2F as %252F)."""
    return "".join(f"job/{quote(segment, safe='')}/" for segment in name.split("/")) if name else ""
