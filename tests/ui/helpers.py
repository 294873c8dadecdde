"""What the board's tests share: a daemon with the board, signing in as a browser does, seeding runs
through the webhook path with the real payloads."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from flowforged import app as app_module
from tests.conftest import (
    API_TOKEN,
    base_config,
    github_headers,
    github_run,
    gitlab_headers,
    gitlab_pipeline,
    make_config,
)

VIEWER_TOKEN = "viewer-token-7d2e90aa"
CSRF = re.compile(r'name="csrf" value="([^"]*)"')


def board_config(db: Path, **ui: Any) -> dict[str, Any]:
    data = base_config(db)
    data["ui"] = {"viewer_token": VIEWER_TOKEN, **ui}
    return data


async def start(aiohttp_client: Any, db: Path, **ui: Any) -> TestClient:
    return await aiohttp_client(app_module.build(make_config(board_config(db, **ui))))


def csrf_of(page: str) -> str:
    found = CSRF.search(page)
    assert found is not None, "the page has no form with a CSRF token"
    return html.unescape(found.group(1))


async def sign_in(client: TestClient, token: str = API_TOKEN, next_path: str = "/") -> tuple[Any, str]:
    """Sign in through the form; returns the answer to the POST and the session's CSRF token."""
    form = await client.get("/signin")
    csrf = csrf_of(await form.text())
    answer = await client.post("/signin", data={"csrf": csrf, "token": token, "next": next_path}, allow_redirects=False)
    if answer.status != 303:
        return answer, ""
    board = await client.get("/")
    return answer, csrf_of(await board.text())


async def seed(client: TestClient) -> None:
    """A passing then failing GitHub workflow on master, and a passing GitLab pipeline."""
    for n, conclusion in enumerate(["success", "failure"]):
        body = github_run(conclusion, run_id=1000 + n, updated_at=f"2020-10-05T16:4{n}:00Z")
        raw = json.dumps(body).encode()
        reply = await client.post("/hooks/github", data=raw, headers=github_headers(raw))
        assert reply.status == 202, await reply.text()
    reply = await client.post("/hooks/gitlab", json=gitlab_pipeline("success"), headers=gitlab_headers())
    assert reply.status == 202, await reply.text()
