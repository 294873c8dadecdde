"""`make screenshots`: PNGs of the board, a pipeline and a run, light and dark, into docs/screenshots/.

The store is filled the way a daemon fills it: fake GitHub, GitLab, Buildkite and Jenkins servers
(tests/fakes/, built from the providers' real payloads) hold a few days of runs, and the daemon's first
poll of each reads them through the ingest path. Run: python -m tests.ui.screenshots [DIRECTORY]
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from flowforged import app as app_module
from tests.conftest import API_TOKEN, GH_TOKEN, GITHUB_SECRET, GITLAB_TOKEN, GL_TOKEN, make_config
from tests.fakes.buildkite_api import FakeBuildkite
from tests.fakes.gitlab_api import FakeGitLab
from tests.fakes.jenkins_api import FakeJenkins
from tests.ui.helpers import board_config
from tests.ui.world import CHROMIUM, CHROMIUM_ARGS, World, wait_for

BK_TOKEN, BK_SECRET = "bkua_screens0token00000000000000000000000", "bk-webhook-token-screens"
JK_TOKEN, JK_SECRET = "11d0e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0", "jk-webhook-secret-screens"
HOUR = 3600.0
SOURCES = ("github", "gitlab", "buildkite", "jenkins")
GITLAB_PROJECTS = ["platform/payments", "platform/search", "tools/docs"]


def iso(epoch: float, millis: bool = False) -> str:
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch))
    return text + (".000Z" if millis else "Z")


class Showcase(World):
    """Four providers, a dozen pipelines, three days of runs: some broken, some running, most green."""

    def __init__(self, tmp: Path):
        super().__init__(tmp)
        self.gitlab, self.buildkite, self.jenkins = FakeGitLab(GL_TOKEN), FakeBuildkite(BK_TOKEN), FakeJenkins()
        self.random = random.Random(7)  # the same pictures each time

    def outcome(self, n: int, last: int, broken: bool) -> bool:
        """Mostly green; the last few runs of a broken pipeline red."""
        return not (broken and n >= last - 2) and self.random.random() > 0.12

    def fill(self) -> None:
        now = time.time()
        for repo, workflow, broken in [
            ("acme/web", ".github/workflows/ci.yml", True),
            ("acme/web", ".github/workflows/deploy.yml", False),
            ("acme/api", ".github/workflows/ci.yml", False),
            ("acme/mobile", ".github/workflows/release.yml", False),
        ]:
            self.github.add_repo(repo)
            for n in range(14):
                started = now - (14 - n) * 5 * HOUR if n < 13 else now - 540
                run = self.github.add_run(repo, workflow, branch="main", status="in_progress", created_at=iso(started))
                ok = self.outcome(n, 14, broken)
                conclusion = "success" if ok else "failure"
                self.github.add_job(run["id"], "lint", status="completed", conclusion="success")
                test = self.github.add_job(run["id"], "test (ubuntu-latest)", status="completed", conclusion=conclusion)
                if broken and n == 13:
                    self.late, self.late_job = run, test  # still running at the first poll; its webhooks tell the end
                    continue
                self.github.set_run_status(run["id"], "completed", conclusion)
                run["updated_at"] = iso(started + self.random.uniform(4, 9) * 60)
        for project, broken in zip(GITLAB_PROJECTS, (True, False, False), strict=True):
            self.gitlab.add_project(project)
            for n in range(12):
                started = now - (12 - n) * 6 * HOUR
                pipeline = self.gitlab.add_pipeline(project, created_at=iso(started))
                self.gitlab.add_job(pipeline["id"], "build", stage="build")
                self.gitlab.set_pipeline_status(pipeline["id"], "running", at=iso(started + 30))
                status = "success" if self.outcome(n, 12, broken) else "failed"
                self.gitlab.set_pipeline_status(
                    pipeline["id"], status, at=iso(started + self.random.uniform(8, 15) * 60)
                )
        for key, broken in [("acme/monorepo", False), ("acme/infra", True)]:
            self.buildkite.add_pipeline(key)
            for n in range(12):
                started = now - (12 - n) * 6 * HOUR
                build = self.buildkite.add_build(key, state="running", created_at=iso(started, millis=True))
                state = "passed" if self.outcome(n, 12, broken) else "failed"
                ended = iso(started + self.random.uniform(10, 25) * 60, millis=True)
                self.buildkite.set_state(build["id"], state, at=ended)
            self.buildkite.add_build(key, state="running", created_at=iso(now - 300, millis=True))
        self.jenkins.add_folder("org/backend", multibranch=True)
        for job, broken in [("org/backend/main", False), ("nightly/integration", True)]:
            self.jenkins.add_job(job)
            for n in range(10):
                started = now - (10 - n) * 8 * HOUR
                result = "SUCCESS" if self.outcome(n, 10, broken) else "FAILURE"
                duration = self.random.uniform(15, 40) * 60
                self.jenkins.add_build(job, result=result, started=started, duration=duration, branch="main")

    async def _start(self, ui: dict[str, Any]) -> None:
        self.fill()
        github = await self._serve(self.github.app)
        gitlab = await self._serve(self.gitlab.app)
        buildkite = await self._serve(self.buildkite.app)
        jenkins = await self._serve(self.jenkins.app)
        common = {"poll_interval": "1h", "backfill": "7d"}
        data = board_config(self.tmp / "flowforge.db", **ui)
        data["sources"] = {
            "github": {
                "type": "github",
                "webhook_secret": GITHUB_SECRET,
                "token": GH_TOKEN,
                "api_url": github,
                "repos": ["acme/web", "acme/api", "acme/mobile"],
                **common,
            },
            "gitlab": {
                "type": "gitlab",
                "webhook_secret": GITLAB_TOKEN,
                "token": GL_TOKEN,
                "api_url": f"{gitlab}/api/v4",
                "repos": GITLAB_PROJECTS,
                **common,
            },
            "buildkite": {
                "type": "buildkite",
                "webhook_secret": BK_SECRET,
                "token": BK_TOKEN,
                "api_url": f"{buildkite}/v2",
                "repos": ["acme/*"],
                **common,
            },
            "jenkins": {
                "type": "jenkins",
                "webhook_secret": JK_SECRET,
                "username": "flowforge",
                "token": self.jenkins.token,
                "api_url": f"{jenkins}/",
                "repos": ["*"],
                **common,
            },
        }
        every = ["broken", "still_failing", "fixed"]
        rule = {"name": "all", "branches": ["*"], "on": every, "sinks": ["console"], "repeat_interval": "0s"}
        data["rules"] = [rule]
        self.app = app_module.build(make_config(data))
        self.url = await self._serve(self.app)
        self.session = aiohttp.ClientSession()

    def finish_late_run(self) -> None:
        """The run the poll saw running fails, and GitHub's webhooks say so (the timeline shows both)."""
        self.github.set_run_status(self.late["id"], "completed", "failure")
        assert self.send_webhook(self.late["id"], self.late_job) == 202
        assert self.send_webhook(self.late["id"]) == 202

    def polled(self) -> bool:
        from flowforged.poller import POLLER

        assert self.app is not None
        return all(
            self.app[POLLER].last_cycle(name) is not None for name in ("github", "gitlab", "buildkite", "jenkins")
        )


def shoot(directory: Path) -> list[Path]:
    from playwright.sync_api import sync_playwright

    directory.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        world = Showcase(Path(tmp)).start()
        try:
            wait_for(world.polled, "the first poll of every source", timeout=60)
            world.finish_late_run()
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                page = browser.new_page(base_url=world.url, viewport={"width": 1280, "height": 860})
                page.goto("/signin")
                page.get_by_label("Token").fill(API_TOKEN)
                page.get_by_role("button", name="Sign in").click()
                page.wait_for_selector("li.tile")
                page.wait_for_selector("#live:text('live')")
                ci = page.get_by_role("link", name="ci", exact=True)
                web = page.locator("li.tile", has=ci).filter(has_text="acme/web")
                pipeline = web.locator("h3 a").get_attribute("href")
                run = web.get_by_role("link", name="last run").get_attribute("href")
                for scheme in ("light", "dark"):
                    page.emulate_media(color_scheme=scheme)
                    for name, path in (("board", "/"), ("pipeline", pipeline), ("run", run)):
                        page.goto(path)
                        page.wait_for_selector("#live:text('live')")
                        target = directory / f"{name}-{scheme}.png"
                        page.screenshot(path=str(target), full_page=name != "board")
                        written.append(target)
                browser.close()
        finally:
            world.stop()
    return written


if __name__ == "__main__":
    for path in shoot(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/screenshots")):
        print(path)
