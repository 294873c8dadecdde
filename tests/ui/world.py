"""A daemon with the board and a fake GitHub, served from a thread of their own: Playwright's sync API
drives the browser from the test's thread, which must not be running an event loop."""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp import web

from flowforged import app as app_module
from flowforged.poller import POLLER
from tests.conftest import GH_TOKEN, GITHUB_SECRET, make_config
from tests.fakes.github_api import FakeGitHub
from tests.test_poller import CI, REPO
from tests.ui.helpers import board_config

T = TypeVar("T")
CHROMIUM = "/usr/bin/chromium"
# Debian's Chromium, headless, and nothing that reaches the network by itself.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def require_chromium() -> None:
    """Skip without Chromium, unless FLOWFORGE_REQUIRE_TOOLS says it must be there (CI)."""
    if shutil.which(CHROMIUM) or Path(CHROMIUM).exists():
        return
    if os.environ.get("FLOWFORGE_REQUIRE_TOOLS"):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)")
    pytest.skip(f"{CHROMIUM} is missing: apt-get install chromium")


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.02)
    return value


class World:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="ui-world", daemon=True)
        self.github = FakeGitHub(token=GH_TOKEN)
        self.github.add_repo(REPO)
        self.github.add_workflow(REPO, CI)
        self.runners: list[web.AppRunner] = []
        self.url = ""
        self.app: web.Application | None = None
        self.session: aiohttp.ClientSession | None = None

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self, **ui: Any) -> World:
        self.thread.start()
        self.call(self._start(ui))
        return self

    async def _serve(self, app: web.Application) -> str:
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.runners.append(runner)
        host, port = runner.addresses[0][:2]
        return f"http://{host}:{port}"

    async def _start(self, ui: dict[str, Any]) -> None:
        github_url = await self._serve(self.github.app)
        data = board_config(self.tmp / "flowforge.db", **ui)
        data["sources"]["github"] = {
            "type": "github",
            "webhook_secret": GITHUB_SECRET,
            "token": GH_TOKEN,
            "api_url": github_url,
            "repos": [REPO],
            "poll_interval": "1h",
        }
        self.app = app_module.build(make_config(data))
        self.url = await self._serve(self.app)
        self.session = aiohttp.ClientSession()

    def first_poll_done(self) -> bool:
        assert self.app is not None
        return self.app[POLLER].last_cycle("github") is not None

    def send_webhook(self, run_id: int, job: dict[str, Any] | None = None) -> int:
        """A signed delivery as GitHub sends it: workflow_run for the run, or workflow_job for `job`."""
        assert self.session is not None
        extra = {"event": "workflow_job", "payload": self.github.job_payload(job)} if job else {}
        url = f"{self.url}/hooks/github"
        delivery = self.call(self.github.send_webhook(self.session, url, run_id, GITHUB_SECRET, **extra))
        return delivery.status

    def stop(self) -> None:
        async def _stop() -> None:
            if self.session is not None:
                await self.session.close()
            for runner in reversed(self.runners):
                await runner.cleanup()

        self.call(_stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
