"""Shared test helpers: the real fixture payloads, configs, signed requests and a running app."""

from __future__ import annotations

import copy
import json
import sqlite3
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from flowforged import app as app_module
from flowforged import config, logs
from flowforged.ingest import redecode
from flowforged.secrets import SecretContext
from flowforged.store import connect, reindex
from flowforged_plugins import github as github_plugin

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"  # real provider payloads; tests/fixtures/README.md names each source

GITHUB_SECRET = "gh-webhook-secret-5d1f0c"
GITLAB_TOKEN = "gl-webhook-token-8a2b77"
API_TOKEN = "api-token-0c9e3b1f"
GH_TOKEN = "ghp_poller0test0token0000000000000000001"  # API tokens of the fake providers
GL_TOKEN = "glpat-poller0test0token01"


def fixture(name: str) -> Any:
    """A real provider payload from tests/fixtures, as a fresh object the test may change."""
    return json.loads((FIXTURES / name).read_text())


def github_run(
    conclusion: str | None = "success",
    *,
    run_id: int = 289782451,
    attempt: int = 1,
    branch: str = "master",
    created_at: str = "2020-10-05T16:33:24Z",
    updated_at: str = "2020-10-05T16:40:00Z",
    status: str = "completed",
) -> dict[str, Any]:
    """The real workflow_run.completed payload, varied: failed run, re-run attempt, other branch."""
    payload = fixture("github/webhooks/workflow_run.completed.success.json")
    run = payload["workflow_run"]
    run.update(
        id=run_id,
        run_attempt=attempt,
        head_branch=branch,
        created_at=created_at,
        run_started_at=created_at,
        updated_at=updated_at,
        status=status,
        conclusion=conclusion if status == "completed" else None,
    )
    return payload


def github_headers(
    body: bytes, event: str = "workflow_run", delivery: str | None = None, secret: str = GITHUB_SECRET
) -> dict[str, str]:
    return {
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
        "Content-Type": "application/json",
        "X-Hub-Signature-256": github_plugin.sign(secret, body),
    }


def gitlab_pipeline(
    status: str = "success",
    *,
    pipeline_id: int = 31,
    ref: str = "master",
    finished_at: str | None = "2016-08-12 15:26:29 UTC",
) -> dict[str, Any]:
    """The real Pipeline Hook, varied. The fixture is a merge request's pipeline (source
    merge_request_event): made a push to `ref` here, the kind of run that sets a branch's state."""
    payload = fixture("gitlab/webhooks/pipeline_hook.success.json")
    payload["object_attributes"].update(
        id=pipeline_id, status=status, detailed_status=status, ref=ref, finished_at=finished_at, source="push"
    )
    payload["merge_request"] = None
    return payload


def gitlab_headers(
    event: str = "Pipeline Hook", delivery: str | None = None, token: str = GITLAB_TOKEN
) -> dict[str, str]:
    return {
        "X-Gitlab-Event": event,
        "Idempotency-Key": delivery or str(uuid.uuid4()),
        "X-Gitlab-Event-UUID": str(uuid.uuid4()),
        "Content-Type": "application/json",
        "X-Gitlab-Token": token,
    }


def base_config(db: Path, **sections: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "server": {"listen": "127.0.0.1:0"},
        "storage": {"path": str(db)},
        "api": {"token": API_TOKEN},
        "sources": {
            "github": {"type": "github", "webhook_secret": GITHUB_SECRET},
            "gitlab": {"type": "gitlab", "webhook_secret": GITLAB_TOKEN},
        },
        "sinks": {"console": {"type": "log"}},
        "rules": [],
    }
    for key, value in sections.items():
        data[key] = value
    return copy.deepcopy(data)


def make_config(data: dict[str, Any], environ: dict[str, str] | None = None) -> config.Config:
    return config.validate(data, SecretContext(environ=environ or {}, use_keyring=False))


def applied(db: Path, timeout: float = 10.0) -> None:
    """Wait until the daemon using `db` has applied every webhook delivery it acknowledged: it answers
    once a delivery is stored raw and applies it just after (docs/architecture.md, "Accept, then apply").
    For a test that reads the database file itself; reads through the API wait by themselves."""
    deadline = time.monotonic() + timeout
    while db.exists():
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            try:
                left = conn.execute("SELECT count(*) FROM unapplied").fetchone()[0]
            except sqlite3.OperationalError:  # not migrated yet: nothing was acknowledged
                return
        if not left:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{left} acknowledged deliveries still unapplied after {timeout} s")
        time.sleep(0.005)


@pytest.fixture(autouse=True)
def _logs() -> None:
    logs.setup("debug")


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "flowforge.db"


@pytest.fixture
def daemon(aiohttp_client: Callable[..., Any], db_path: Path) -> Callable[..., Any]:
    """Start the real application (store, webhooks, ...) on a test server; returns its client."""

    async def start(data: dict[str, Any] | None = None, **sections: Any) -> TestClient:
        cfg = make_config(data or base_config(db_path, **sections))
        return await aiohttp_client(app_module.build(cfg))

    return start


@pytest.fixture
async def github(aiohttp_server: Callable[..., Any]) -> Any:
    """The fake GitHub REST API (tests/fakes/github_api.py) on 127.0.0.1; `.server` is its test server."""
    from tests.fakes.github_api import FakeGitHub

    fake = FakeGitHub(token=GH_TOKEN)
    fake.server = await aiohttp_server(fake.app)
    return fake


@pytest.fixture
async def gitlab(aiohttp_server: Callable[..., Any]) -> Any:
    from tests.fakes.gitlab_api import FakeGitLab

    fake = FakeGitLab(token=GL_TOKEN)
    fake.server = await aiohttp_server(fake.app)
    return fake


def reindex_all(cfg: config.Config, db_path: Path) -> tuple[int, int]:
    """`flowforged reindex` over the whole store with today's parsers: (new events, parse errors)."""
    providers = app_module.make_providers(cfg)
    conn = connect(db_path)
    try:
        [*steps] = reindex(conn, lambda *a: redecode(providers, *a), "2026-11-27T00:00:00Z")
    finally:
        conn.close()
    return steps[-1][1:]
