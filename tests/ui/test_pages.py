"""The board's pages and forms without a browser: what they offer per provider, the 422 for an option
a provider cannot honour (before anything is sent), the live fragments and the stream's replay."""

from __future__ import annotations

import re

from tests.conftest import gitlab_headers, gitlab_pipeline
from tests.ui.helpers import seed, sign_in, start

GITHUB_FAILED, GITLAB_RUN = 2, 3  # runs.id of the seeded runs


async def test_the_board_shows_each_tile_with_its_state_in_words_broken_first(aiohttp_client, db_path):
    client = await start(aiohttp_client, db_path)
    await seed(client)
    await sign_in(client)
    page = await (await client.get("/")).text()
    tiles = re.findall(r'<li class="tile t-(\w+)" data-source="(\w+)"', page)
    assert tiles == [("failing", "github"), ("passing", "gitlab")]
    assert "✗</span> failing" in page and "✓</span> passing" in page
    only = await (await client.get("/", params={"provider": "gitlab"})).text()
    assert re.findall(r'data-source="(\w+)"', only) == ["gitlab"]
    assert "<option selected>gitlab</option>" in only  # the filter stays in the URL and the form
    none = await (await client.get("/", params={"q": "no-such-pipeline"})).text()
    assert "No pipeline matches these filters" in none


async def test_a_run_page_offers_only_what_its_provider_can_do(aiohttp_client, db_path):
    client = await start(aiohttp_client, db_path)
    await seed(client)
    await sign_in(client)
    github = await (await client.get(f"/runs/{GITHUB_FAILED}")).text()
    assert ">Re-run</button>" in github and ">Re-run failed jobs</button>" in github
    gitlab = await (await client.get(f"/runs/{GITLAB_RUN}")).text()
    assert ">Re-run</button>" not in gitlab and ">Re-run failed jobs</button>" in gitlab  # GitLab retries failed jobs
    assert "webhook" in gitlab  # the timeline names where each event came from


async def test_an_option_the_provider_cannot_honour_is_422_naming_it(aiohttp_client, db_path):
    client = await start(aiohttp_client, db_path)
    await seed(client)
    _, csrf = await sign_in(client)
    reply = await client.post(f"/runs/{GITLAB_RUN}/rerun", data={"csrf": csrf, "jobs": "all"})
    assert reply.status == 422
    assert "failed_only: gitlab can re-run only the failed jobs" in await reply.text()
    pipeline = await (await client.get("/pipelines/1")).text()  # GitHub: inputs, no variables
    assert 'name="inputs"' in pipeline and 'name="variables"' not in pipeline
    reply = await client.post("/pipelines/1/trigger", data={"csrf": csrf, "ref": "main", "variables": "A=1"})
    assert reply.status == 422 and "variables: github pipelines take no variables" in await reply.text()
    reply = await client.post("/pipelines/1/trigger", data={"csrf": csrf, "ref": "main", "inputs": "no equals"})
    assert reply.status == 422 and "inputs: expected name=value lines" in await reply.text()


async def test_an_operation_without_an_api_token_says_what_to_set(aiohttp_client, db_path):
    client = await start(aiohttp_client, db_path)
    await seed(client)
    _, csrf = await sign_in(client)
    reply = await client.post(f"/runs/{GITHUB_FAILED}/rerun", data={"csrf": csrf, "jobs": "failed"})
    assert reply.status == 409 and "sources.github.token" in await reply.text()


async def test_the_tile_fragment_and_a_missing_run(aiohttp_client, db_path):
    client = await start(aiohttp_client, db_path)
    await seed(client)
    await sign_in(client)
    pipeline = re.search(r'data-pipeline="([^"]+)"', await (await client.get("/")).text()).group(1)
    fragment = await client.get("/ui/tiles", params={"source": "github", "pipeline": pipeline})
    assert fragment.status == 200 and (await fragment.text()).count('<li class="tile t-failing"') == 1
    missing = await client.get("/runs/999")
    assert missing.status == 404 and "no run 999" in await missing.text()


async def test_the_stream_replays_what_came_after_last_event_id(aiohttp_client, db_path):
    client = await start(aiohttp_client, db_path)
    await seed(client)
    await sign_in(client)
    async with client.get("/ui/events", headers={"Last-Event-ID": "1"}) as stream:
        assert stream.headers["Content-Type"] == "text/event-stream"
        seen: list[int] = []
        while len(seen) < 2:
            line = (await stream.content.readline()).decode()
            if line.startswith("id: "):
                seen.append(int(line[4:]))
    assert seen == [2, 3]


async def test_the_board_kept_in_memory_follows_each_commit(aiohttp_client, db_path):
    client = await start(aiohttp_client, db_path)
    await seed(client)
    await sign_in(client)
    assert 'class="tile t-passing" data-source="gitlab"' in await (await client.get("/")).text()
    failed = gitlab_pipeline("failed", pipeline_id=32, finished_at="2016-08-12 16:00:00 UTC")
    reply = await client.post("/hooks/gitlab", json=failed, headers=gitlab_headers())
    assert reply.status == 202
    page = await (await client.get("/")).text()
    # Both broken now; the one broken longest (GitLab's fixture is from 2016) comes first.
    assert re.findall(r'<li class="tile t-(\w+)" data-source="(\w+)"', page) == [
        ("failing", "gitlab"),
        ("failing", "github"),
    ]
