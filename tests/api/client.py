"""A client for /api/v1 that checks every response against the OpenAPI document the server serves:
the status documented for that operation, the body valid against its schema, no API token in it.

The provider operations are a recording fake: the API tests are about the API, not the providers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema

from flowforged import app as app_module
from flowforged.api import API, CONTEXT, Context
from flowforged.api.openapi import document
from tests.conftest import (
    API_TOKEN,
    base_config,
    github_headers,
    github_run,
    gitlab_headers,
    gitlab_pipeline,
    make_config,
)

PREFIX = "/api/v1"
DOC = document()
RULES = [
    {
        "name": "all",
        "branches": ["*"],
        "on": ["broken", "still_failing", "fixed"],
        "sinks": ["console"],
        "repeat_interval": "0s",
    }
]


# date-time is checked only when a format checker is given and rfc3339-validator is installed (the
# test extra brings it): without both, any string would pass as a time.
FORMATS = jsonschema.Draft202012Validator.FORMAT_CHECKER
assert "date-time" in FORMATS.checkers, "install rfc3339-validator: the API's times must be checked"


def validate(instance: Any, schema: dict[str, Any]) -> None:
    validator = jsonschema.Draft202012Validator({**schema, "components": DOC["components"]}, format_checker=FORMATS)
    validator.validate(instance)


def operation(method: str, path: str) -> dict[str, Any] | None:
    """The document's operation for a concrete path, literal paths before templated ones."""
    for template in sorted(DOC["paths"], key=lambda t: t.count("{")):
        pattern = re.escape(template).replace(r"\{id\}", "[^/]+")
        if re.fullmatch(pattern, path):
            return DOC["paths"][template].get(method.lower())
    return None


@dataclasses.dataclass
class Reply:
    status: int
    body: Any
    headers: Any


class FakeOperations:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.error: BaseException | None = None
        self.started: dict[str, Any] | None = None
        self.status: dict[str, dict[str, Any]] = {}

    def _record(self, *call: Any) -> None:
        self.calls.append(call)
        if self.error is not None:
            raise self.error

    async def trigger(
        self, source: str, pipeline: str, ref: str, inputs: dict[str, Any], variables: dict[str, str]
    ) -> dict[str, Any] | None:
        self._record("trigger", source, pipeline, ref, inputs, variables)
        return self.started

    async def rerun(self, run: dict[str, Any], failed_only: bool | None) -> None:
        self._record("rerun", run, failed_only)

    async def cancel(self, run: dict[str, Any], force: bool) -> None:
        self._record("cancel", run, force)

    def sources_status(self) -> dict[str, dict[str, Any]]:
        if isinstance(self.error, RuntimeError):
            raise self.error
        return self.status


class Api:
    def __init__(self, client: Any, operations: FakeOperations, db: Path):
        self.client, self.operations, self.db = client, operations, db

    @property
    def context(self) -> Context:
        return self.client.app[API][CONTEXT]

    async def call(
        self,
        method: str,
        path: str,
        *,
        token: str | None = API_TOKEN,
        body: Any = None,
        data: bytes | None = None,
        **params: Any,
    ) -> Reply:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        response = await self.client.request(
            method, PREFIX + path, params=params, json=body, data=data, headers=headers
        )
        text = await response.text()
        assert API_TOKEN not in text
        assert response.content_type == "application/json", text
        reply = Reply(response.status, json.loads(text), response.headers)
        documented = operation(method, path)
        if documented is None or reply.status == 405:  # the router's own 404 and 405
            assert reply.status in (401, 404, 405), (method, path, reply)
            validate(reply.body, {"$ref": "#/components/schemas/Error"})
            return reply
        responses = documented["responses"]
        assert str(reply.status) in responses, f"{method} {path} answered an undocumented {reply.status}: {text}"
        validate(reply.body, responses[str(reply.status)]["content"]["application/json"]["schema"])
        return reply

    async def get(self, path: str, **params: Any) -> Reply:
        return await self.call("GET", path, **params)

    async def post(self, path: str, body: Any = None, **params: Any) -> Reply:
        return await self.call("POST", path, body=body, **params)

    async def github(self, payload: dict[str, Any], event: str = "workflow_run") -> None:
        body = json.dumps(payload).encode()
        response = await self.client.post("/hooks/github", data=body, headers=github_headers(body, event=event))
        assert response.status == 202

    async def gitlab(self, payload: dict[str, Any]) -> None:
        response = await self.client.post("/hooks/gitlab", data=json.dumps(payload).encode(), headers=gitlab_headers())
        assert response.status == 202

    async def seed(self) -> None:
        """Six runs of three pipelines: success and broken on master, a feature branch, one running."""
        for run_id, conclusion, branch, status in (
            (101, "success", "master", "completed"),
            (102, "failure", "master", "completed"),
            (103, "success", "feature", "completed"),
            (104, None, "master", "in_progress"),
        ):
            at = f"2024-01-0{run_id - 100}T10:00:00Z"
            await self.github(
                github_run(
                    conclusion,
                    run_id=run_id,
                    branch=branch,
                    status=status,
                    created_at=at,
                    updated_at=at.replace("10:00", "10:05"),
                )
            )
        await self.gitlab(gitlab_pipeline("success", pipeline_id=31, finished_at="2024-01-01 10:00:00 UTC"))
        await self.gitlab(gitlab_pipeline("failed", pipeline_id=32, finished_at="2024-01-02 10:00:00 UTC"))


async def start(aiohttp_client: Callable[..., Any], db_path: Path, **sections: Any) -> Api:
    operations = FakeOperations()
    application = app_module.build(
        make_config(base_config(db_path, rules=RULES, **sections)), operations=operations, sse_keepalive=0.2
    )
    return Api(await aiohttp_client(application), operations, db_path)


async def until(condition: Callable[[], Any], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := await condition()):
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)
    return value


def concrete(path: str) -> str:
    return path.replace("{id}", "1")
