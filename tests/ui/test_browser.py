"""The board in a real browser (Debian's Chromium through Playwright): sign in, watch a tile turn red
from a webhook without reloading, re-run from the run page and see it reach the fake GitHub, add a
silence, sign out and be refused. axe-core checks every page on the way: nothing serious or critical.

One browser and one daemon for the module: the tests follow each other like one visit.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import API_TOKEN
from tests.test_poller import CI, REPO, completed
from tests.ui.world import CHROMIUM, CHROMIUM_ARGS, World, require_chromium, wait_for

require_chromium()
sync_api = pytest.importorskip("playwright.sync_api")
axe_sync = pytest.importorskip("axe_playwright_python.sync_playwright")

BAD = {"serious", "critical"}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    world = World(tmp_path_factory.mktemp("board"))
    # Before the daemon starts: its first poll runs at once and must see this run, whatever the load.
    completed(world.github, "main", "success", created=900, jobs=True)
    world.start()
    try:
        yield world
    finally:
        world.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def page(browser: Any, world: World) -> Iterator[Any]:
    context = browser.new_context(base_url=world.url)
    page = context.new_page()
    page.set_default_timeout(10_000)
    yield page
    context.close()


def accessible(page: Any) -> None:
    """axe-core (shipped inside axe-playwright-python, nothing downloaded) finds nothing serious."""
    results = axe_sync.Axe().run(page)
    assert results.response["testEngine"]["name"] == "axe-core"
    bad = [v for v in results.response["violations"] if v["impact"] in BAD]
    assert not bad, results.generate_report()


def test_sign_in_then_the_board(page: Any, world: World) -> None:
    wait_for(world.first_poll_done, "the first poll of the fake GitHub")
    page.goto("/")
    assert page.url.startswith(f"{world.url}/signin")
    accessible(page)
    page.get_by_label("Token").fill(API_TOKEN)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{world.url}/")
    tile = page.locator("li.tile").first
    assert "passing" in tile.inner_text()
    accessible(page)


def test_a_failing_webhook_turns_the_tile_red_without_reload(page: Any, world: World) -> None:
    page.wait_for_selector("#live:text('live')")
    page.evaluate("window.__sameDocument = true")  # gone if the page reloads
    failed = world.github.add_run(REPO, CI, branch="main", status="in_progress")
    job = world.github.add_job(failed["id"], "test (ubuntu-latest)", status="completed", conclusion="failure")
    world.github.set_run_status(failed["id"], "completed", "failure")
    assert world.send_webhook(failed["id"], job) == 202
    assert world.send_webhook(failed["id"]) == 202
    page.wait_for_selector("li.tile.t-failing")
    tile = page.locator("li.tile.t-failing")
    assert "failing" in tile.inner_text() and "Failed: test (ubuntu-latest)" in tile.inner_text()
    assert page.evaluate("window.__sameDocument") is True


def test_re_run_failed_jobs_from_the_run_page_reaches_github(page: Any, world: World) -> None:
    page.locator("li.tile.t-failing").get_by_role("link", name="last run").click()
    page.wait_for_selector("h1:has-text('failed')")
    accessible(page)
    [run_id] = [r for r in world.github.runs if world.github.runs[r].get("conclusion") == "failure"]
    world.github.requests.clear()
    page.get_by_role("button", name="Re-run failed jobs").click()
    page.wait_for_selector("text=Re-run of the failed jobs requested.")
    posts = [(r.method, r.path) for r in world.github.requests if r.method == "POST"]
    assert posts == [("POST", f"/repos/{REPO}/actions/runs/{run_id}/rerun-failed-jobs")]


def test_the_pipeline_page(page: Any) -> None:
    page.get_by_role("link", name=CI.rsplit("/", 1)[-1].split(".")[0], exact=False).first.click()
    page.wait_for_selector("h2:has-text('Duration and outcome')")
    assert page.locator("svg.chart rect").count() == 2
    assert "Success rate" in page.inner_text("main")
    accessible(page)


def test_add_a_silence(page: Any) -> None:
    page.goto("/silences")
    page.get_by_label("Pipelines").fill(f"{REPO}/*")
    page.get_by_label("For (30m, 2h, 1d)").fill("4h")
    page.get_by_label("Why").fill("flaky runner, fixing")
    page.get_by_role("button", name="Silence").click()
    page.wait_for_selector("text=Silence added.")
    assert "flaky runner, fixing" in page.inner_text("table")
    accessible(page)


def test_dark_and_phone_width(page: Any) -> None:
    page.emulate_media(color_scheme="dark")
    page.set_viewport_size({"width": 375, "height": 800})
    page.goto("/")
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(13, 17, 23)"
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    accessible(page)
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    page.emulate_media(color_scheme="light")
    page.set_viewport_size({"width": 1280, "height": 800})


def test_sign_out_and_be_refused(page: Any, world: World) -> None:
    page.goto("/")
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(f"{world.url}/signin")
    page.goto("/silences")
    assert page.url.startswith(f"{world.url}/signin")
    assert page.request.get("/ui/tiles?source=github&pipeline=x").status == 401
    assert page.request.get("/ui/static/live.js").status == 401
