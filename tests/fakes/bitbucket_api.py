"""A fake Bitbucket Cloud REST API 2.0 (Pipelines) as an aiohttp app, following Atlassian's reference
(https://developer.atlassian.com/cloud/bitbucket/rest/api-group-pipelines/, .../rest/intro/#pagination,
https://support.atlassian.com/bitbucket-cloud/docs/api-request-limits/), and the sender of the build
status webhooks Pipelines causes (https://support.atlassian.com/bitbucket-cloud/docs/event-payloads/).

    fake = FakeBitbucket(token="bb-access-token")
    pipeline = fake.add_pipeline("acme/web", branch="main", state="IN_PROGRESS")
    server = await aiohttp_server(fake.app)
    fake.finish(pipeline["uuid"], "FAILED", failed_steps=("Test",))

Pipelines and steps have the fields of the reference's schemas (`pipeline`, `pipeline_step`,
`pipeline_state_*`). Bodies name `https://api.bitbucket.org`; the fake rewrites that to its own address.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

from flowforged.fakeapi import Delivery, FakeProviderAPI, int_param, json_body, page_of
from flowforged_plugins.bitbucket import sign

API = "https://api.bitbucket.org"
STATE_TYPES = {"PENDING": "pipeline_state_pending", "IN_PROGRESS": "pipeline_state_in_progress"}
RESULTS = ("SUCCESSFUL", "FAILED", "ERROR", "STOPPED", "EXPIRED")
# What a pipeline's build status says of it (commit status states).
STATUS_OF = {"SUCCESSFUL": "SUCCESSFUL", "FAILED": "FAILED", "ERROR": "FAILED", "STOPPED": "STOPPED"}


def bb_time(epoch: float) -> str:
    """Bitbucket's timestamps: "2015-11-19T20:37:35.547563+00:00"."""
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="microseconds")


def state(name: str, detail: str | None = None) -> dict[str, Any]:
    """A pipeline_state: PENDING; IN_PROGRESS with a stage (RUNNING, PAUSED); COMPLETED with a result."""
    if name in RESULTS:
        low = name.lower()
        return {
            "name": "COMPLETED",
            "type": "pipeline_state_completed",
            "result": {"name": name, "type": f"pipeline_state_completed_{low}"},
        }
    if name == "IN_PROGRESS":
        stage = detail or "RUNNING"
        return {
            "name": "IN_PROGRESS",
            "type": "pipeline_state_in_progress",
            "stage": {"name": stage, "type": f"pipeline_state_in_progress_{stage.lower()}"},
        }
    return {"name": "PENDING", "type": "pipeline_state_pending"}


def step_state(name: str) -> dict[str, Any]:
    if name in RESULTS or name == "NOT_RUN":
        return {
            "name": "COMPLETED",
            "type": "pipeline_step_state_completed",
            "result": {"name": name, "type": f"pipeline_step_state_completed_{name.lower()}"},
        }
    return {"name": name, "type": f"pipeline_step_state_{name.lower()}"}


class FakeBitbucket(FakeProviderAPI):
    """Repositories' pipelines and their steps in memory, served as Bitbucket Cloud's API 2.0 does."""

    def __init__(
        self,
        token: str = "bb-fake-token",  # noqa: S107 (a fake's test token)
        *,
        email: str | None = None,
        rate_limit: int = 1000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(token, rate_limit=rate_limit, window=3600, clock=clock)
        self.email = email  # an Atlassian API token goes with its account's email (Basic)
        self.pipelines: dict[str, dict[str, Any]] = {}  # uuid -> pipeline (with "_repo", "_steps")
        self.created: list[dict[str, Any]] = []  # bodies of POST .../pipelines/

    # --- the world ---

    def now(self) -> str:
        return bb_time(self.clock())

    def add_pipeline(
        self,
        repo: str,
        *,
        branch: str = "main",
        state_name: str = "PENDING",
        commit: str | None = None,
        created_on: str | None = None,
        steps: tuple[str, ...] = ("Build", "Test"),
        failed_steps: tuple[str, ...] = (),
        target: dict[str, Any] | None = None,
        trigger: str = "PUSH",
    ) -> dict[str, Any]:
        number = 1 + sum(1 for p in self.pipelines.values() if p["_repo"] == repo)
        pipeline_uuid = "{" + str(uuid.uuid4()) + "}"
        workspace, slug = repo.split("/", 1)
        commit = commit or hashlib.sha1(pipeline_uuid.encode(), usedforsecurity=False).hexdigest()
        pipeline: dict[str, Any] = {
            "type": "pipeline",
            "uuid": pipeline_uuid,
            "build_number": number,
            "creator": {"type": "user", "display_name": "Emma", "uuid": "{a54f16da-24e9-4d7f-a3a7-b1ba2cd98aa3}"},
            "repository": {
                "type": "repository",
                "full_name": repo,
                "name": slug,
                "uuid": "{673a6070-3421-46c9-9d48-90745f7bfe8e}",
                "links": {"self": {"href": f"{API}/2.0/repositories/{workspace}/{slug}"}},
            },
            "target": target
            or {
                "type": "pipeline_ref_target",
                "ref_type": "branch",
                "ref_name": branch,
                "commit": {"type": "commit", "hash": commit},
                "selector": {"type": "branches", "pattern": branch},
            },
            "trigger": {"name": trigger, "type": f"pipeline_trigger_{trigger.lower()}"},
            "state": state("PENDING"),
            "created_on": created_on or self.now(),
            "completed_on": None,
            "build_seconds_used": 0,
            "links": {"self": {"href": f"{API}/2.0/repositories/{workspace}/{slug}/pipelines/{pipeline_uuid}"}},
            "_repo": repo,
            "_steps": [self._step(pipeline_uuid, name) for name in steps],
        }
        self.pipelines[pipeline_uuid] = pipeline
        if state_name in RESULTS:
            self.finish(pipeline_uuid, state_name, failed_steps=failed_steps)
        elif state_name != "PENDING":
            self.move(pipeline_uuid, state_name)
        return pipeline

    def _step(self, pipeline_uuid: str, name: str) -> dict[str, Any]:
        return {
            "type": "pipeline_step",
            "uuid": "{" + str(uuid.uuid4()) + "}",
            "name": name,
            "pipeline": {"type": "pipeline", "uuid": pipeline_uuid},
            "state": step_state("PENDING"),
            "started_on": None,
            "completed_on": None,
            "image": {"name": "atlassian/default-image:4"},
            "script_commands": [{"name": name, "command": f"make {name.lower()}"}],
        }

    def move(self, pipeline_uuid: str, name: str, stage: str | None = None) -> dict[str, Any]:
        pipeline = self.pipelines[pipeline_uuid]
        pipeline["state"] = state(name, stage)
        for step in pipeline["_steps"]:
            if name == "IN_PROGRESS" and step["state"]["name"] == "PENDING":
                step.update(state=step_state("IN_PROGRESS"), started_on=self.now())
        return pipeline

    def finish(self, pipeline_uuid: str, result: str, failed_steps: tuple[str, ...] = ()) -> dict[str, Any]:
        """Complete a pipeline: its steps pass, but those named fail (the last one, when a failed
        pipeline names none); a stopped pipeline stops its steps."""
        pipeline = self.pipelines[pipeline_uuid]
        now = self.now()
        names = [s["name"] for s in pipeline["_steps"]]
        failing = failed_steps or (tuple(names[-1:]) if result in ("FAILED", "ERROR") else ())
        for step in pipeline["_steps"]:
            outcome = "FAILED" if step["name"] in failing else "STOPPED" if result == "STOPPED" else "SUCCESSFUL"
            step.update(state=step_state(outcome), started_on=step["started_on"] or now, completed_on=now)
        pipeline.update(state=state(result), completed_on=now, build_seconds_used=42)
        return pipeline

    def find(self, repo: str, number: int) -> dict[str, Any] | None:
        return next((p for p in self.pipelines.values() if p["_repo"] == repo and p["build_number"] == number), None)

    def served(self, pipeline: dict[str, Any]) -> dict[str, Any]:
        return {k: copy.deepcopy(v) for k, v in pipeline.items() if not k.startswith("_")}

    # --- the provider's words ---

    def authorized(self, request: web.Request) -> bool:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        if self.email is not None:
            expected = base64.b64encode(f"{self.email}:{self.token}".encode()).decode()
            return scheme.lower() == "basic" and value == expected
        return scheme.lower() == "bearer" and value == self.token

    def error(self, status: int, message: Any) -> web.Response:
        # https://developer.atlassian.com/cloud/bitbucket/rest/intro/#standardized-error-responses
        return web.json_response({"type": "error", "error": {"message": message}}, status=status)

    def unauthorized(self) -> web.Response:
        return self.error(401, "Access token expired or invalid.")

    def limit_exceeded(self) -> web.Response:
        # https://confluence.atlassian.com/display/BBKB/Bitbucket+Cloud+Rate+Limit+Troubleshooting
        response = self.error(429, "Rate limit for this resource has been exceeded")
        response.headers.update(self.rate_headers())
        return response

    def rate_headers(self) -> dict[str, str]:
        # Only the limit and whether less than 20% of it is left; no remaining count, no reset.
        return {
            "X-RateLimit-Limit": str(self.rate_limit),
            "X-RateLimit-Resource": "api",
            "X-RateLimit-NearLimit": "true" if self.remaining < self.rate_limit / 5 else "false",
        }

    def body(self, request: web.Request, data: Any, status: int = 200, headers: Any = None) -> web.Response:
        text = json.dumps(data).replace(API, str(request.url.origin()))
        return web.Response(text=text, status=status, content_type="application/json", headers=headers)

    # --- routes ---

    def add_routes(self, router: web.UrlDispatcher) -> None:
        base = "/2.0/repositories/{workspace}/{slug}/pipelines"
        for path in (base, base + "/"):
            router.add_get(path, self.list_pipelines)
            router.add_post(path, self.create_pipeline)
        one = base + "/{uuid:[^/]+}"  # a UUID in braces, as the API writes it
        router.add_get(one, self.get_pipeline)
        router.add_get(one + "/steps/", self.list_steps)
        router.add_get(one + "/steps", self.list_steps)
        router.add_post(one + "/stopPipeline", self.stop_pipeline)

    def _repo(self, request: web.Request) -> str:
        return f"{request.match_info['workspace']}/{request.match_info['slug']}".lower()

    def _pipeline(self, request: web.Request) -> dict[str, Any] | None:
        found = self.pipelines.get(request.match_info["uuid"])
        return found if found is not None and found["_repo"].lower() == self._repo(request) else None

    def _page(self, request: web.Request, items: list[Any]) -> web.Response:
        """https://developer.atlassian.com/cloud/bitbucket/rest/intro/#pagination: pagelen (10 by
        default, at most 100), page, and the next page's whole URL in `next`."""
        pagelen = int_param(request, "pagelen", 10, 100)
        page = int_param(request, "page", 1)
        chunk, last = page_of(items, page, pagelen)
        data: dict[str, Any] = {"page": page, "pagelen": pagelen, "size": len(items), "values": chunk}
        following = self.next_url(request, page, last)
        if following:
            data["next"] = following
        return self.body(request, data)

    async def list_pipelines(self, request: web.Request) -> web.Response:
        items = [p for p in self.pipelines.values() if p["_repo"].lower() == self._repo(request)]
        sort = request.query.get("sort", "created_on")
        if sort not in ("created_on", "-created_on"):
            return self.error(400, f"Invalid sort attribute provided '{sort.lstrip('-')}'")
        items.sort(key=lambda p: (p["created_on"], p["build_number"]), reverse=sort.startswith("-"))
        return self._page(request, [self.served(p) for p in items])

    async def get_pipeline(self, request: web.Request) -> web.Response:
        found = self._pipeline(request)
        return self.body(request, self.served(found)) if found else self.error(404, "Pipeline not found")

    async def list_steps(self, request: web.Request) -> web.Response:
        found = self._pipeline(request)
        if found is None:
            return self.error(404, "Pipeline not found")
        return self._page(request, copy.deepcopy(found["_steps"]))

    async def create_pipeline(self, request: web.Request) -> web.Response:
        payload = await json_body(request)
        target = payload.get("target") if isinstance(payload, dict) else None
        if not isinstance(target, dict) or target.get("type") not in ("pipeline_ref_target", "pipeline_commit_target"):
            return self.error(400, "An invalid field was found in the JSON payload")
        repo = next((p["_repo"] for p in self.pipelines.values() if p["_repo"].lower() == self._repo(request)), None)
        repo = repo or self._repo(request)
        self.created.append({"repo": repo, **payload})
        made = self.add_pipeline(
            repo,
            branch=target.get("ref_name") or "",
            commit=(target.get("commit") or {}).get("hash"),
            target=copy.deepcopy(target),
            trigger="MANUAL",
        )
        if "commit" not in made["target"]:
            made["target"]["commit"] = {
                "type": "commit",
                "hash": hashlib.sha1(made["uuid"].encode(), usedforsecurity=False).hexdigest(),
            }
        return self.body(request, self.served(made), status=201)

    async def stop_pipeline(self, request: web.Request) -> web.Response:
        found = self._pipeline(request)
        if found is None:
            return self.error(404, "Pipeline not found")
        if found["state"]["name"] == "COMPLETED":
            return self.error(400, "The pipeline has already completed.")
        self.finish(found["uuid"], "STOPPED")
        return web.Response(status=204)

    # --- webhooks ---

    def status_payload(self, pipeline_uuid: str) -> dict[str, Any]:
        """The build status a pipeline has now, as `repo:commit_status_*` carries it: Atlassian's
        documented example (tests/fixtures/bitbucket) with a pipeline's name, URL and refname."""
        pipeline = self.pipelines[pipeline_uuid]
        repo, number = pipeline["_repo"], pipeline["build_number"]
        result = (pipeline["state"].get("result") or {}).get("name")
        commit = pipeline["target"]["commit"]["hash"]
        ref = pipeline["target"].get("ref_name") or pipeline["target"].get("source")
        api = f"{API}/2.0/repositories/{repo}/commit/{commit}"
        status = {
            "key": str(hash(pipeline_uuid) % 2**31),
            "type": "build",
            "state": STATUS_OF.get(result or "", "INPROGRESS"),
            "name": f"Pipeline #{number} for {ref}",
            "refname": ref,
            "commit": {"type": "commit", "hash": commit, "message": "Fix the build\n"},
            "url": f"https://bitbucket.org/{repo}/addon/pipelines/home#!/results/{number}",
            "description": "",
            "created_on": pipeline["created_on"],
            "updated_on": self.now(),
            "links": {"commit": {"href": api}, "self": {"href": f"{api}/statuses/build/x"}},
        }
        repository = {k: pipeline["repository"][k] for k in ("type", "full_name", "name", "uuid")}
        return {"repository": repository, "actor": pipeline["creator"], "commit_status": status}

    async def send_webhook(
        self,
        session: aiohttp.ClientSession,
        url: str | URL,
        payload: dict[str, Any],
        *,
        secret: str | None,
        event: str = "repo:commit_status_updated",
        signature: str | None = None,
    ) -> Delivery:
        """POST a delivery with the headers Bitbucket sends; signed with `secret` (none: unsigned)."""
        body = json.dumps(payload).encode()
        delivery = str(uuid.uuid4())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "Bitbucket-Webhooks/2.0",
            "X-Event-Key": event,
            "X-Hook-UUID": "{0e5b5b4c-8a7f-4a5e-9b8b-1d4d0b7d6c11}",
            "X-Request-UUID": delivery,
            "X-Attempt-Number": "1",
        }
        if signature is not None:
            headers["X-Hub-Signature"] = signature
        elif secret is not None:
            headers["X-Hub-Signature"] = sign(secret, body)
        async with session.post(url, data=body, headers=headers) as response:
            return Delivery(delivery, response.status, await response.read())
