"""ProviderClient: the pure header logic with real header shapes, then the client against the fake
GitHub and GitLab servers (127.0.0.1 only). Time never passes for real: the client gets a clock and a
sleep that only record and advance."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import json
import random
import socket
import time
import traceback
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from flowforged import logs
from flowforged.backoff import backoff
from flowforged.errors import ProviderError, RateLimited
from flowforged.http import MemoryEtags, ProviderClient, cache_key, error_for, query_items, same_origin
from flowforged.model import Status
from flowforged.pagination import parse_link
from flowforged.ratelimits import Budget, retry_after
from flowforged_plugins.github import normalize_run
from flowforged_plugins.github import remote as github_remote
from flowforged_plugins.gitlab import normalize_pipeline
from flowforged_plugins.gitlab import remote as gitlab_remote
from flowforged_plugins.gitlab import sign as gitlab_sign
from tests.fakes.github_api import FakeGitHub, etag_matches
from tests.fakes.gitlab_api import FakeGitLab

TOKEN = "ghp_Zq81testTOKENvalue0000000000000001"
GL_TOKEN = "glpat-Zq81testTOKENvalue0002"
REPO = "octo-org/octo-repo"
NOW = 1_800_000_000.0


class Clock:
    """Wall and monotonic time for the client; sleep() records the delay and moves time on."""

    def __init__(self, start: float) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class Ceiling(random.Random):
    """A jitter source that always draws the top of the range: the backoff caps themselves."""

    def random(self) -> float:
        return 1.0


# --- pure half ---------------------------------------------------------------------------------


def test_link_header_as_github_sends_it() -> None:
    # https://docs.github.com/en/rest/using-the-rest-api/using-pagination-in-the-rest-api
    header = (
        '<https://api.github.com/repositories/1300192/issues?page=2>; rel="prev", '
        '<https://api.github.com/repositories/1300192/issues?page=4>; rel="next", '
        '<https://api.github.com/repositories/1300192/issues?page=515>; rel="last", '
        '<https://api.github.com/repositories/1300192/issues?page=1>; rel="first"'
    )
    assert parse_link(header) == {
        "prev": "https://api.github.com/repositories/1300192/issues?page=2",
        "next": "https://api.github.com/repositories/1300192/issues?page=4",
        "last": "https://api.github.com/repositories/1300192/issues?page=515",
        "first": "https://api.github.com/repositories/1300192/issues?page=1",
    }


def test_link_header_with_commas_in_urls_and_several_rels() -> None:
    header = '<https://x.test/a?q=a,b&page=2>; rel="next last"; title="t, u", <https://x.test/a?page=1>;rel=first'
    assert parse_link(header) == {
        "next": "https://x.test/a?q=a,b&page=2",
        "last": "https://x.test/a?q=a,b&page=2",
        "first": "https://x.test/a?page=1",
    }
    assert parse_link(None) == {} == parse_link("")


def test_github_rate_limit_headers() -> None:
    headers = {
        "X-RateLimit-Limit": "5000",
        "X-RateLimit-Remaining": "4987",
        "X-RateLimit-Used": "13",
        "X-RateLimit-Reset": "1800000600",
        "X-RateLimit-Resource": "core",
    }
    parse_budget = github_remote.REMOTE.rate_limits.budget
    assert parse_budget(headers, NOW) == Budget(5000, 4987, 1800000600.0, "core")
    search = {**headers, "X-RateLimit-Limit": "30", "X-RateLimit-Resource": "search"}
    assert parse_budget(search, NOW).resource == "search"


def test_gitlab_rate_limit_headers() -> None:
    parse_budget = gitlab_remote.REMOTE.rate_limits.budget
    headers = {"RateLimit-Limit": "2000", "RateLimit-Remaining": "1990", "RateLimit-Reset": "1800000060"}
    assert parse_budget(headers, NOW) == Budget(2000, 1990, 1800000060.0)
    observed_only = {"RateLimit-Limit": "600", "RateLimit-Observed": "598", "RateLimit-Reset": "1800000060"}
    assert parse_budget(observed_only, NOW).remaining == 2
    # The IETF draft's seconds-until-reset, not an epoch time.
    assert parse_budget({"RateLimit-Limit": "10", "RateLimit-Remaining": "1", "RateLimit-Reset": "30"}, NOW) == (
        Budget(10, 1, NOW + 30)
    )
    assert parse_budget({"Content-Type": "application/json"}, NOW) is None


def test_retry_after_in_seconds_or_as_a_date() -> None:
    assert retry_after({"Retry-After": "2"}, NOW) == 2.0
    sent = datetime(2027, 1, 15, 8, 0, 0, tzinfo=UTC)
    date = format_datetime(sent + timedelta(seconds=30), usegmt=True)  # "Fri, 15 Jan 2027 08:00:30 GMT"
    assert retry_after({"retry-after": date}, sent.timestamp()) == 30.0
    assert retry_after({"Retry-After": "soon"}, NOW) is None
    assert retry_after({}, NOW) is None


@pytest.mark.parametrize(
    ("status", "headers", "data", "limited"),
    [
        (429, {}, None, True),
        (403, {"Retry-After": "60"}, {"message": "whatever"}, True),
        (403, {"x-ratelimit-remaining": "0"}, {"message": "API rate limit exceeded for user ID 1."}, True),
        (
            403,
            {"x-ratelimit-remaining": "4000"},
            {"message": "You have exceeded a secondary rate limit."},
            True,
        ),
        (
            403,
            {"x-ratelimit-remaining": "4000"},
            {"message": "Resource not accessible by integration"},
            False,
        ),
        (404, {"Retry-After": "60"}, {"message": "Not Found"}, False),
    ],
)
def test_rate_limit_answers_are_told_from_permission_errors(
    status: int, headers: dict[str, str], data: Any, limited: bool
) -> None:
    assert github_remote.GitHubRateLimits().limited(status, headers, data) is limited


def test_block_time_prefers_retry_after_then_the_reset_then_a_minute() -> None:
    block_seconds = github_remote.GitHubRateLimits().block_seconds
    reset = {"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(int(NOW) + 900)}
    assert block_seconds({**reset, "Retry-After": "5"}, NOW) == 5
    assert block_seconds(reset, NOW) == 900
    assert block_seconds({"x-ratelimit-remaining": "12", "x-ratelimit-reset": str(int(NOW) + 900)}, NOW) == 60
    assert block_seconds({}, NOW) == 60


@pytest.mark.parametrize(
    ("status", "data", "code", "mapped"),
    [
        (401, {"message": "Bad credentials"}, "provider_auth_failed", 502),
        (403, {"message": "Must have admin rights"}, "forbidden", 403),
        (404, {"message": "Not Found"}, "not_found", 404),
        (409, {"message": "Cannot cancel a workflow run that is completed."}, "conflict", 409),
        (422, {"message": "Validation Failed"}, "conflict", 409),
        (400, {"error": "ref is missing"}, "provider_error", 502),
        (400, {"message": {"ref": ["is missing"]}}, "provider_error", 502),
    ],
)
def test_error_answers_map_to_provider_errors(status: int, data: Any, code: str, mapped: int) -> None:
    error = error_for("github", status, data)
    assert (error.code, error.status) == (code, mapped)
    if status == 401:
        assert str(error) == "the API token for source github was rejected"
    else:
        assert "is missing" in str(error) or data["message"] in str(error)


def test_cache_key_sorts_all_query_parameters() -> None:
    a = cache_key("https://api.github.com/repos/o/r/actions/runs?per_page=100", [("branch", "main")])
    b = cache_key("https://api.github.com/repos/o/r/actions/runs", [("per_page", "100"), ("branch", "main")])
    assert a == b == "https://api.github.com/repos/o/r/actions/runs?branch=main&per_page=100"
    assert cache_key("https://gitlab.test/api/v4/projects/g%2Fp/pipelines", []).endswith("g%2Fp/pipelines")


def test_query_items() -> None:
    assert query_items({"scope[]": ["failed", "success"], "include_subgroups": True, "page": 2, "x": None}) == [
        ("scope[]", "failed"),
        ("scope[]", "success"),
        ("include_subgroups", "true"),
        ("page", "2"),
    ]


def test_same_origin_and_resources() -> None:
    assert same_origin("https://ghe.test/api/v3/repos?page=2", "https://ghe.test/api/v3")
    assert not same_origin("https://evil.test/api/v3/repos", "https://ghe.test/api/v3")
    assert not same_origin("http://ghe.test/api/v3/repos", "https://ghe.test/api/v3")  # no downgrade
    assert not same_origin("https://ghe.test:8443/repos", "https://ghe.test")
    resource_for = github_remote.GitHubRateLimits().resource  # the path below the API's root
    assert resource_for("/search/issues") == "search" and resource_for("/graphql") == "graphql"
    assert resource_for("/repos/o/r") == "core"


def test_budget_keeps_headroom_but_never_most_of_a_small_limit() -> None:
    budget = Budget(limit=5000, remaining=50, reset_at=NOW + 10)
    assert budget.spent(50, NOW) and not budget.spent(49, NOW)
    assert not budget.spent(50, NOW + 10)  # the window has reset
    small = Budget(limit=60, remaining=20, reset_at=NOW + 10)
    assert small.reserve(50) == 15 and not small.spent(50, NOW)


@given(attempt=st.integers(min_value=0, max_value=40), seed=st.integers())
def test_backoff_is_full_jitter_under_a_cap(attempt: int, seed: int) -> None:
    delay = backoff(attempt, 1.0, 60.0, random.Random(seed).random)
    assert 0 <= delay <= min(60.0, 2.0**attempt)


def test_weak_etags_compare_weakly() -> None:
    assert etag_matches('W/"abc"', 'W/"abc"') and etag_matches('"abc"', 'W/"abc"')
    assert etag_matches('W/"x", W/"abc"', 'W/"abc"') and etag_matches("*", 'W/"abc"')
    assert not etag_matches('W/"abd"', 'W/"abc"') and not etag_matches(None, 'W/"abc"')


# --- the client against the fakes ----------------------------------------------------------------


@pytest.fixture
async def session() -> Any:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


@pytest.fixture
def clock() -> Clock:
    # The fakes keep real time for their reset; the client's clock starts there and moves only on sleep.
    return Clock(time.time())


@pytest.fixture
async def gh(aiohttp_server: Any, session: aiohttp.ClientSession, clock: Clock) -> SimpleNamespace:
    fake = FakeGitHub(token=TOKEN)
    fake.add_run(REPO, status="completed", conclusion="success")
    server = await aiohttp_server(fake.app)
    base = str(server.make_url("")).rstrip("/")

    def client(**kwargs: Any) -> ProviderClient:
        kwargs.setdefault("rng", random.Random(7))
        kwargs.setdefault("rate_limits", github_remote.REMOTE.rate_limits)
        return ProviderClient(
            "github",
            base,
            ("Authorization", f"Bearer {kwargs.pop('token', TOKEN)}"),
            session,
            MemoryEtags(),
            clock=clock,
            monotonic=clock,
            sleep=clock.sleep,
            headers={"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28"},
            **kwargs,
        )

    return SimpleNamespace(fake=fake, server=server, base=base, client=client, clock=clock)


@pytest.fixture
async def gl(aiohttp_server: Any, session: aiohttp.ClientSession, clock: Clock) -> SimpleNamespace:
    fake = FakeGitLab(token=GL_TOKEN)
    server = await aiohttp_server(fake.app)
    client = ProviderClient(
        "gitlab",
        str(server.make_url("/api/v4")),
        ("PRIVATE-TOKEN", GL_TOKEN),
        session,
        pagination=gitlab_remote.REMOTE.pagination,
        rate_limits=gitlab_remote.REMOTE.rate_limits,
        clock=clock,
        monotonic=clock,
        sleep=clock.sleep,
    )
    return SimpleNamespace(fake=fake, server=server, client=client, clock=clock)


RUNS = f"/repos/{REPO}/actions/runs"


async def test_etag_round_trip_costs_nothing_until_something_changes(gh: SimpleNamespace) -> None:
    client = gh.client()
    first = await client.get(RUNS, params={"per_page": 100}, conditional=True)
    assert first.status == 200 and first.data["total_count"] == 1 and not first.not_modified
    remaining = gh.fake.remaining

    again = await client.get(RUNS, params={"per_page": 100}, conditional=True)
    assert again.not_modified and again.status == 304 and again.data is None
    assert gh.fake.remaining == remaining  # GitHub: a 304 does not count against the rate limit
    assert gh.fake.requests[-1].headers["If-None-Match"] == first.headers["ETag"]

    run_id = first.data["workflow_runs"][0]["id"]
    gh.fake.set_run_status(run_id, "in_progress")
    changed = await client.get(RUNS, params={"per_page": 100}, conditional=True)
    assert changed.status == 200 and changed.data["workflow_runs"][0]["status"] == "in_progress"
    assert client.stats.requests == {"ok": 2, "not_modified": 1, "rate_limited": 0, "error": 0}
    assert client.stats.budget_remaining == gh.fake.remaining


async def test_unconditional_requests_send_no_if_none_match(gh: SimpleNamespace) -> None:
    client = gh.client()
    await client.get(RUNS, conditional=True)
    await client.get(RUNS)
    assert "If-None-Match" not in gh.fake.requests[-1].headers


async def test_spent_budget_refuses_without_sending(gh: SimpleNamespace) -> None:
    client = gh.client(headroom=50)
    gh.fake.set_rate_limit(remaining=51, reset_at=gh.clock.now + 600)
    await client.get(RUNS)  # the answer says 50 left: all of it is headroom
    sent = len(gh.fake.requests)

    with pytest.raises(RateLimited) as caught:
        await client.get(RUNS)
    assert len(gh.fake.requests) == sent  # nothing reached GitHub
    assert caught.value.retry_after == pytest.approx(600, abs=1)
    assert gh.clock.sleeps == []  # the caller skips its cycle: nobody slept an hour inside request()
    assert client.stats.requests["rate_limited"] == 1 and client.stats.budget_remaining == 50

    gh.clock.now += 601  # after the reset the budget is unknown again: ask
    assert (await client.get(RUNS)).status == 200
    assert len(gh.fake.requests) == sent + 1


async def test_search_budget_does_not_block_core_requests(gh: SimpleNamespace) -> None:
    client = gh.client()
    await client.get(RUNS)
    search = {
        "x-ratelimit-limit": "30",
        "x-ratelimit-remaining": "0",
        "x-ratelimit-resource": "search",
        "x-ratelimit-reset": str(int(gh.clock.now) + 60),
    }
    client._observe(CIMultiDictProxy(CIMultiDict(search)))  # what a /search answer would have said
    assert (await client.get(RUNS)).status == 200
    with pytest.raises(RateLimited):
        await client.get("/search/issues", params={"q": "x"})


async def test_429_blocks_for_retry_after(gh: SimpleNamespace) -> None:
    client = gh.client()
    gh.fake.rate_limit_next(retry_after=2)
    with pytest.raises(RateLimited) as caught:
        await client.get(RUNS)
    assert caught.value.retry_after == 2
    assert client.stats.blocked_until == pytest.approx(gh.clock.now + 2)
    sent = len(gh.fake.requests)

    gh.clock.now += 1.5
    with pytest.raises(RateLimited) as again:
        await client.get(RUNS)
    assert again.value.retry_after == pytest.approx(0.5)
    assert len(gh.fake.requests) == sent

    gh.clock.now += 0.6
    assert (await client.get(RUNS)).status == 200
    assert client.stats.blocked_until is None
    assert client.stats.requests["rate_limited"] == 2


@pytest.mark.parametrize(("retry_after_header", "blocked"), [(30, 30), (None, 60)])
async def test_secondary_rate_limit_403_blocks(
    gh: SimpleNamespace, retry_after_header: int | None, blocked: float
) -> None:
    client = gh.client()
    gh.fake.secondary_limit_next(retry_after=retry_after_header)
    with pytest.raises(RateLimited) as caught:
        await client.request("POST", f"{RUNS}/1/cancel")
    assert caught.value.retry_after == blocked
    sent = len(gh.fake.requests)
    with pytest.raises(RateLimited):
        await client.get(RUNS)
    assert len(gh.fake.requests) == sent


async def test_primary_limit_exhausted_blocks_until_reset(gh: SimpleNamespace) -> None:
    client = gh.client()
    gh.fake.exhaust(reset_in=900)
    with pytest.raises(RateLimited) as caught:
        await client.get(RUNS)
    assert caught.value.retry_after == pytest.approx(900, abs=1)


async def test_plain_403_is_a_permission_error(gh: SimpleNamespace) -> None:
    client = gh.client()
    gh.fake.forbid_next()
    with pytest.raises(ProviderError) as caught:
        await client.request("POST", f"{RUNS}/1/rerun")
    assert (caught.value.status, caught.value.code) == (403, "forbidden")
    assert "Resource not accessible by integration" in str(caught.value)
    assert client.stats.blocked_until is None
    assert (await client.get(RUNS)).status == 200  # not blocked


async def test_5xx_is_retried_with_growing_jittered_backoff(gh: SimpleNamespace) -> None:
    client = gh.client()
    gh.fake.fail_next(2, status=500)
    response = await client.get(RUNS)
    assert response.status == 200
    assert len(gh.fake.requests) == 3
    first, second = gh.clock.sleeps
    assert 0 <= first <= 1 and 0 <= second <= 2


async def test_backoff_caps_double(gh: SimpleNamespace) -> None:
    client = gh.client(rng=Ceiling())
    gh.fake.fail_next(3, status=502)
    assert (await client.get(RUNS)).status == 200
    assert gh.clock.sleeps == [1, 2, 4]


async def test_5xx_forever_gives_up_after_max_retries(gh: SimpleNamespace) -> None:
    client = gh.client(max_retries=4, rng=Ceiling())
    gh.fake.fail_next(100, status=500)
    with pytest.raises(ProviderError) as caught:
        await client.get(RUNS)
    assert (caught.value.status, caught.value.code) == (502, "provider_unavailable")
    assert "github" in str(caught.value) and "HTTP 500" in str(caught.value)
    assert len(gh.fake.requests) == 5
    assert gh.clock.sleeps == [1, 2, 4, 8]
    assert client.stats.requests["error"] == 1 and "HTTP 500" in client.last_error


async def test_post_is_retried_only_when_it_surely_did_not_run(gh: SimpleNamespace) -> None:
    client = gh.client()
    run_id = gh.fake.add_run(REPO, status="in_progress")["id"]
    gh.fake.fail_next(1, status=500)
    with pytest.raises(ProviderError):
        await client.request("POST", f"{RUNS}/{run_id}/cancel")
    assert len(gh.fake.requests) == 1

    gh.fake.fail_next(1, status=503)
    response = await client.request("POST", f"{RUNS}/{run_id}/cancel")
    assert response.status == 202 and len(gh.fake.requests) == 3


async def test_connection_refused_is_retried_then_unavailable(session: aiohttp.ClientSession, clock: Clock) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = ProviderClient(
        "github",
        f"http://127.0.0.1:{port}",
        ("Authorization", f"Bearer {TOKEN}"),
        session,
        max_retries=2,
        clock=clock,
        monotonic=clock,
        sleep=clock.sleep,
    )
    with pytest.raises(ProviderError) as caught:
        await client.request("POST", "/repos/o/r/actions/workflows/ci.yml/dispatches", json={"ref": "main"})
    assert caught.value.code == "provider_unavailable" and len(clock.sleeps) == 2


async def test_timeouts_are_retried(aiohttp_server: Any, clock: Clock) -> None:
    calls = []

    async def slow(request: web.Request) -> web.Response:
        calls.append(request)
        if len(calls) == 1:
            await asyncio.Event().wait()  # never answers; the client times out
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/slow", slow)
    server = await aiohttp_server(app)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.05)) as short:
        client = ProviderClient(
            "github",
            str(server.make_url("")),
            ("Authorization", "Bearer x"),
            short,
            clock=clock,
            monotonic=clock,
            sleep=clock.sleep,
        )
        assert (await client.get("/slow")).data == {"ok": True}
    assert len(calls) == 2 and len(clock.sleeps) == 1


async def test_link_pagination_is_followed(gh: SimpleNamespace) -> None:
    for _ in range(74):
        gh.fake.add_run(REPO, status="completed", conclusion="failure")
    client = gh.client()
    pages = [page async for page in client.pages(RUNS, params={"per_page": 30})]
    assert [len(p.data["workflow_runs"]) for p in pages] == [30, 30, 15]
    assert pages[0].links["next"].startswith(gh.base + RUNS)
    assert set(pages[0].links) == {"next", "last"} and set(pages[2].links) == {"first", "prev"}
    ids = [run["id"] for page in pages for run in page.data["workflow_runs"]]
    assert len(set(ids)) == 75 and ids == sorted(ids, reverse=True)  # newest first


async def test_pages_stop_at_an_unchanged_first_page(gh: SimpleNamespace) -> None:
    for _ in range(40):
        gh.fake.add_run(REPO)
    client = gh.client()
    assert len([p async for p in client.pages(RUNS, conditional=True)]) == 2
    sent = len(gh.fake.requests)
    again = [p async for p in client.pages(RUNS, conditional=True)]
    assert [p.not_modified for p in again] == [True] and len(gh.fake.requests) == sent + 1


async def test_a_link_to_another_host_gets_no_token(gh: SimpleNamespace) -> None:
    client = gh.client()
    for url in ("https://evil.example/repos/x", gh.base.replace("http://", "https://") + RUNS):
        with pytest.raises(ProviderError) as caught:
            await client.get(url)
        assert "refusing to send the API token" in str(caught.value)
    assert gh.fake.requests == []
    assert (await client.get(gh.base + RUNS + "?per_page=1")).status == 200  # same host is fine


async def test_a_redirect_to_another_host_is_not_followed(aiohttp_server: Any, session: Any, clock: Clock) -> None:
    seen: list[str] = []

    async def moved(request: web.Request) -> web.Response:
        seen.append(request.path)
        if request.path == "/old":
            raise web.HTTPMovedPermanently("/new")
        if request.path == "/new":
            return web.json_response({"here": True})
        raise web.HTTPFound("http://other.invalid/steal")

    app = web.Application()
    app.router.add_get("/{name}", moved)
    server = await aiohttp_server(app)
    client = ProviderClient(
        "gitlab",
        str(server.make_url("")),
        ("PRIVATE-TOKEN", TOKEN),
        session,
        clock=clock,
        monotonic=clock,
        sleep=clock.sleep,
    )
    assert (await client.get("/old")).data == {"here": True}
    with pytest.raises(ProviderError, match="refusing to send the API token to other.invalid"):
        await client.get("/away")
    assert seen == ["/old", "/new", "/away"]


async def test_max_rps_spaces_request_starts(gh: SimpleNamespace) -> None:
    client = gh.client(max_rps=2)
    for _ in range(5):
        await client.get(RUNS)
    assert gh.clock.sleeps == [0.5, 0.5, 0.5, 0.5]
    assert sum(gh.clock.sleeps) == pytest.approx(2.0)


async def test_points_per_minute_holds_every_minute_with_writes_weighing_five(gh: SimpleNamespace) -> None:
    # GitHub's secondary limit counts points: a GET 1, a POST 5; the fake refuses (403) past 30 a minute.
    gh.fake.clock, gh.fake.per_minute = gh.clock, 30
    gh.fake.add_workflow(REPO)
    client = gh.client(points_per_minute=30, points=github_remote.points)
    dispatch = f"/repos/{REPO}/actions/workflows/ci.yml/dispatches"
    for n in range(40):
        if n % 4 == 0:
            await client.request("POST", dispatch, json={"ref": "main"})
        else:
            await client.get(RUNS)
    assert [r.status for r in gh.fake.requests if r.status not in (200, 204)] == []
    assert gh.fake.max_points_per_minute() <= 30
    # 80 points (10 POSTs, 30 GETs): 30 in the first minute, the other 50 at 30 a minute after it.
    assert gh.fake.requests[-1].at - gh.fake.requests[0].at >= 60 * (80 - 30) / 30


async def test_provider_errors(gh: SimpleNamespace) -> None:
    client = gh.client()
    with pytest.raises(ProviderError) as missing:
        await client.get(f"/repos/{REPO}/actions/runs/999")
    assert (missing.value.status, missing.value.code) == (404, "not_found")

    done = gh.fake.add_run(REPO, status="completed", conclusion="success")
    with pytest.raises(ProviderError) as conflict:
        await client.request("POST", f"{RUNS}/{done['id']}/cancel")
    assert conflict.value.code == "conflict" and "Cannot cancel a workflow run that is completed." in str(
        conflict.value
    )
    with pytest.raises(ProviderError) as invalid:
        await client.request("POST", f"/repos/{REPO}/actions/workflows/ci.yml/dispatches", json={"inputs": {}})
    assert invalid.value.code == "conflict"
    assert client.stats.requests["error"] == 3


async def test_rejected_token(gh: SimpleNamespace) -> None:
    client = gh.client(token="ghp_wrong")
    with pytest.raises(ProviderError) as caught:
        await client.get(RUNS)
    assert (caught.value.status, caught.value.code) == (502, "provider_auth_failed")
    assert str(caught.value) == "the API token for source github was rejected"


def _chain(exc: BaseException | None) -> list[BaseException]:
    found = []
    while exc is not None:
        found.append(exc)
        exc = exc.__cause__ or exc.__context__
    return found


async def test_the_token_never_shows(gh: SimpleNamespace, session: aiohttp.ClientSession) -> None:
    output = io.StringIO()
    logs.setup(level="debug", stream=output)
    try:
        client = gh.client(max_rps=100)
        errors: list[BaseException] = []
        gh.fake.fail_next(5, status=500, body={"message": f"echo {TOKEN}"})
        gh.fake.secondary_limit_next(retry_after=1)
        gh.fake.forbid_next(message=f"you used {TOKEN}")
        for _ in range(3):
            try:
                await client.get(RUNS)
            except (ProviderError, RateLimited) as exc:
                errors.append(exc)
            gh.clock.now += 5
        for path in (f"{RUNS}/1", "https://evil.example/x"):
            try:
                await client.get(path)
            except ProviderError as exc:
                errors.append(exc)
        try:
            await gh.client(token=TOKEN + "x").get(RUNS)
        except ProviderError as exc:
            errors.append(exc)
        assert (await client.get(RUNS, conditional=True)).status == 200
        assert len(errors) == 6
        for error in errors:
            for exc in _chain(error):
                assert TOKEN not in str(exc) and TOKEN not in repr(exc)
            assert TOKEN not in "".join(traceback.format_exception(error))
        assert TOKEN not in repr(client) and TOKEN not in repr(client.stats) and TOKEN not in str(client.last_error)
        text = output.getvalue()
        assert '"event": "provider request"' in text and '"event": "provider rate limited"' in text
        assert TOKEN not in text
        assert "If-None-Match" not in text and "Authorization" not in text
    finally:
        logs.setup(level="info")


# --- GitLab ---------------------------------------------------------------------------------------


async def test_gitlab_path_ids_rate_headers_and_pages(gl: SimpleNamespace) -> None:
    for _ in range(45):
        gl.fake.add_pipeline("group/sub/project", status="success")
    gl.fake.add_pipeline("group/other")
    client = gl.client
    path = "/projects/group%2Fsub%2Fproject/pipelines"
    pages = [p async for p in client.pages(path, params={"per_page": 20, "order_by": "updated_at"})]
    assert [len(p.data) for p in pages] == [20, 20, 5]
    assert [p.headers["x-next-page"] for p in pages] == ["2", "3", ""]
    assert pages[0].headers["x-total"] == "45"
    assert client.stats.budget_remaining == gl.fake.remaining == 2000 - 3
    assert gl.fake.requests[0].path == "/api/v4/projects/group%2Fsub%2Fproject/pipelines"
    assert "PRIVATE-TOKEN" not in gl.fake.requests[0].headers  # the fake keeps no credentials either


async def test_gitlab_etag_and_429(gl: SimpleNamespace) -> None:
    pipeline = gl.fake.add_pipeline("group/project", status="running")
    client = gl.client
    path = f"/projects/{pipeline['project_id']}/pipelines/{pipeline['id']}"
    assert (await client.get(path, conditional=True)).data["status"] == "running"
    assert (await client.get(path, conditional=True)).not_modified
    gl.fake.rate_limit_next(retry_after=7)
    with pytest.raises(RateLimited) as caught:
        await client.get(path, conditional=True)
    assert caught.value.retry_after == 7
    gl.clock.now += 8
    gl.fake.set_pipeline_status(pipeline["id"], "failed")
    assert (await client.get(path, conditional=True)).data["status"] == "failed"


async def test_gitlab_exhausted_budget(gl: SimpleNamespace) -> None:
    gl.fake.add_project("group/project")
    gl.fake.exhaust(reset_in=40)
    with pytest.raises(RateLimited) as caught:
        await gl.client.get("/projects/group%2Fproject/pipelines")
    assert caught.value.retry_after == pytest.approx(40, abs=1.5)


async def test_gitlab_bearer_and_rejected_token(gl: SimpleNamespace, session: aiohttp.ClientSession) -> None:
    gl.fake.add_project("group/project")
    base = str(gl.server.make_url("/api/v4"))
    bearer = ProviderClient("gitlab", base, ("Authorization", f"Bearer {GL_TOKEN}"), session)
    assert (await bearer.get("/projects/group%2Fproject/pipelines")).data == []
    wrong = ProviderClient("gitlab", base, ("PRIVATE-TOKEN", "nope"), session)
    with pytest.raises(ProviderError, match="API token for source gitlab was rejected"):
        await wrong.get("/projects/group%2Fproject/pipelines")


# --- the fakes follow the providers' documentation ------------------------------------------------


async def test_fake_github_filters_runs_as_github_does(gh: SimpleNamespace) -> None:
    fake, client, repo = gh.fake, gh.client(), "octo-org/filters"
    runs = f"/repos/{repo}/actions/runs"
    fake.add_run(repo, branch="dev", status="completed", conclusion="failure", created_at="2026-11-25T10:00:00Z")
    fake.add_run(repo, branch="release", status="in_progress", created_at="2026-11-26T10:00:00Z")
    fake.add_run(repo, ".github/workflows/deploy.yml", branch="release", created_at="2026-11-27T10:00:00Z")

    async def ids(**params: Any) -> list[str]:
        data = (await client.get(runs, params=params)).data
        assert data["total_count"] == len(data["workflow_runs"])
        return [r["created_at"] for r in data["workflow_runs"]]

    assert await ids(branch="dev") == ["2026-11-25T10:00:00Z"]
    assert await ids(status="failure") == ["2026-11-25T10:00:00Z"]
    assert await ids(status="in_progress") == ["2026-11-26T10:00:00Z"]
    assert await ids(created=">=2026-11-26T00:00:00Z", branch="release") == [
        "2026-11-27T10:00:00Z",
        "2026-11-26T10:00:00Z",
    ]
    assert await ids(created="2026-11-25..2026-11-26T23:59:59Z") == [
        "2026-11-26T10:00:00Z",
        "2026-11-25T10:00:00Z",
    ]
    run = (await client.get(runs, params={"per_page": 1, "branch": "release"})).data["workflow_runs"][0]
    assert run["url"].startswith(gh.base) and run["path"] == ".github/workflows/deploy.yml"
    assert normalize_run("github", run).pipeline == f"{repo}/.github/workflows/deploy.yml"
    with pytest.raises(ProviderError):
        await client.get("/repos/nobody/nothing/actions/runs")


async def test_fake_github_jobs_attempts_and_reruns(gh: SimpleNamespace) -> None:
    fake, client = gh.fake, gh.client()
    run = fake.add_run(REPO, status="in_progress")
    fake.add_job(run["id"], "lint", status="completed", conclusion="success")
    fake.add_job(run["id"], "test", status="completed", conclusion="failure")
    fake.set_run_status(run["id"], "completed", "failure")
    assert (await client.request("POST", f"{RUNS}/{run['id']}/rerun-failed-jobs")).status == 201
    latest = (await client.get(f"{RUNS}/{run['id']}/jobs")).data
    everything = (await client.get(f"{RUNS}/{run['id']}/jobs", params={"filter": "all"})).data
    first = (await client.get(f"{RUNS}/{run['id']}/attempts/1/jobs")).data
    assert {(j["name"], j["status"]) for j in latest["jobs"]} == {("lint", "completed"), ("test", "queued")}
    assert everything["total_count"] == 4 and first["total_count"] == 2
    assert (await client.get(f"{RUNS}/{run['id']}")).data["run_attempt"] == 2
    with pytest.raises(ProviderError):
        await client.get(f"{RUNS}/{run['id']}/attempts/3/jobs")
    assert (await client.request("POST", f"{RUNS}/{run['id']}/force-cancel")).status == 202


async def test_fake_github_dispatch_both_ways(gh: SimpleNamespace) -> None:
    client = gh.client()
    path = f"/repos/{REPO}/actions/workflows/ci.yml/dispatches"
    plain = await client.request("POST", path, json={"ref": "main", "inputs": {"env": "prod"}})
    assert plain.status == 204 and plain.data is None
    detailed = await client.request("POST", path, json={"ref": "dev", "return_run_details": True})
    assert detailed.status == 200 and set(detailed.data) == {"workflow_run_id", "run_url", "html_url"}
    run = (await client.get(detailed.data["run_url"])).data
    assert (run["event"], run["head_branch"]) == ("workflow_dispatch", "dev")
    assert gh.fake.dispatches[0]["inputs"] == {"env": "prod"}


async def test_fake_github_org_repos_paginate(gh: SimpleNamespace) -> None:
    for n in range(4):
        gh.fake.add_repo(f"octo-org/repo-{n}")
    pages = [p async for p in gh.client().pages("/orgs/octo-org/repos", params={"per_page": 2})]
    assert [len(p.data) for p in pages] == [2, 2, 1]


async def test_fake_github_webhook_is_signed(aiohttp_server: Any, session: aiohttp.ClientSession) -> None:
    received: list[tuple[Any, bytes]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append((request.headers, await request.read()))
        return web.json_response({"ok": True}, status=202)

    app = web.Application()
    app.router.add_post("/hooks/github", hook)
    server = await aiohttp_server(app)
    fake = FakeGitHub()
    run = fake.add_run(REPO, status="completed", conclusion="failure")
    delivery = await fake.send_webhook(session, server.make_url("/hooks/github"), run["id"], "It's a Secret")
    assert delivery.status == 202
    headers, body = received[0]
    expected = "sha256=" + hmac.new(b"It's a Secret", body, hashlib.sha256).hexdigest()
    assert headers["X-Hub-Signature-256"] == expected and headers["X-GitHub-Event"] == "workflow_run"
    assert headers["X-GitHub-Delivery"] == delivery.delivery_id
    payload = json.loads(body)
    assert payload["action"] == "completed" and payload["workflow"]["path"] == ".github/workflows/ci.yml"
    assert normalize_run("github", payload["workflow_run"], payload["repository"]).status is Status.FAILED


async def test_fake_gitlab_lists_short_pipelines_with_filters(gl: SimpleNamespace) -> None:
    fake, client = gl.fake, gl.client
    old = fake.add_pipeline("group/project", ref="main", status="success", created_at="2026-11-27T09:00:00.000Z")
    new = fake.add_pipeline("group/project", ref="dev", status="failed", created_at="2026-11-27T10:00:00.000Z")
    path = f"/projects/{old['project_id']}/pipelines"
    listed = (await client.get(path)).data
    assert [p["id"] for p in listed] == [new["id"], old["id"]]
    assert "user" not in listed[0] and set(listed[0]) >= {
        "id",
        "iid",
        "status",
        "ref",
        "updated_at",
        "web_url",
    }
    after = (await client.get(path, params={"updated_after": "2026-11-27T09:30:00Z", "sort": "asc"})).data
    assert [p["id"] for p in after] == [new["id"]]
    assert [p["ref"] for p in (await client.get(path, params={"order_by": "id", "sort": "asc"})).data] == [
        "main",
        "dev",
    ]
    assert (await client.get(path, params={"status": "failed", "ref": "dev"})).data[0]["id"] == new["id"]
    full = (await client.get(f"{path}/{old['id']}")).data
    assert full["user"]["username"] == "root" and full["finished_at"] == "2026-11-27T09:00:00.000Z"


async def test_fake_gitlab_operations(gl: SimpleNamespace) -> None:
    fake, client = gl.fake, gl.client
    project = fake.add_project("group/sub/project")
    created = await client.request(
        "POST",
        "/projects/group%2Fsub%2Fproject/pipeline",
        json={
            "ref": "main",
            "variables": [{"key": "A", "value": "1", "variable_type": "env_var"}],
            "inputs": {},
        },
    )
    assert created.status == 201 and created.data["status"] == "created" and created.data["source"] == "api"
    assert fake.triggered[0]["variables"][0]["key"] == "A"
    pid = created.data["id"]
    fake.add_job(pid, "build", stage="build", status="success")
    fake.add_job(pid, "test", status="failed")
    fake.set_pipeline_status(pid, "failed")
    failed = (await client.get(f"/projects/{project['id']}/pipelines/{pid}/jobs", params={"scope[]": ["failed"]})).data
    assert [j["name"] for j in failed] == ["test"]
    retried = await client.request("POST", f"/projects/{project['id']}/pipelines/{pid}/retry")
    assert retried.status == 201 and retried.data["status"] == "pending"
    cancelled = await client.request("POST", f"/projects/{project['id']}/pipelines/{pid}/cancel")
    assert cancelled.status == 200 and cancelled.data["status"] == "canceled"
    with pytest.raises(ProviderError, match="ref is missing"):
        await client.request("POST", f"/projects/{project['id']}/pipeline", json={})


async def test_fake_gitlab_group_projects(gl: SimpleNamespace) -> None:
    for path in ("top/a", "top/b", "top/sub/c", "elsewhere/d"):
        gl.fake.add_project(path)
    direct = (await gl.client.get("/groups/top/projects")).data
    nested = await gl.client.get("/groups/top/projects", params={"include_subgroups": True, "per_page": 2})
    assert {p["path_with_namespace"] for p in direct} == {"top/a", "top/b"}
    assert nested.headers["x-total"] == "3" and nested.headers["x-next-page"] == "2"


async def test_fake_gitlab_webhook(aiohttp_server: Any, session: aiohttp.ClientSession) -> None:
    received: list[tuple[Any, bytes]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append((request.headers, await request.read()))
        return web.json_response({}, status=202)

    app = web.Application()
    app.router.add_post("/hooks/gitlab", hook)
    server = await aiohttp_server(app)
    fake = FakeGitLab()
    pipeline = fake.add_pipeline("group/project", status="running", created_at="2026-11-27T09:01:13.000Z")
    fake.set_pipeline_status(pipeline["id"], "success", at="2026-11-27T09:04:13.000Z")
    delivery = await fake.send_webhook(
        session,
        server.make_url("/hooks/gitlab"),
        pipeline["id"],
        "hook-token",
        signing_token="whsec_c2VjcmV0",
    )
    headers, body = received[0]
    assert delivery.status == 202 and headers["X-Gitlab-Event"] == "Pipeline Hook"
    assert headers["X-Gitlab-Token"] == "hook-token" and headers["Idempotency-Key"] == delivery.delivery_id
    assert headers["webhook-signature"] == gitlab_sign(
        "whsec_c2VjcmV0", headers["webhook-id"], headers["webhook-timestamp"], body
    )
    payload = json.loads(body)
    attrs = payload["object_attributes"]
    assert attrs["created_at"] == "2026-11-27 09:01:13 UTC" and attrs["detailed_status"] == "passed"
    event = normalize_pipeline("gitlab", payload)
    assert event.status is Status.SUCCESS and event.pipeline == "group/project"
    assert event.finished_at == "2026-11-27T09:04:13Z"
