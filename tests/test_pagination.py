"""Pagination styles (flowforged/pagination.py) followed by the client, against fakes built on the test
kit's base: a `next` URL in the body (Bitbucket Cloud) and Kubernetes `continue` tokens."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from aiohttp import web

from flowforged.fakeapi import FakeProviderAPI, continue_offset, continue_token, int_param, page_of
from flowforged.http import ProviderClient
from flowforged.pagination import ContinueToken, LinkHeader, NextInBody, NextPageHeader, Single

ITEMS = [{"id": n} for n in range(1, 8)]


class FakeLists(FakeProviderAPI):
    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/values", self.values)
        router.add_get("/items", self.items)

    async def values(self, request: web.Request) -> web.Response:
        # https://developer.atlassian.com/cloud/bitbucket/rest/intro/#pagination: `next` until the last page
        page, size = int_param(request, "page", 1), int_param(request, "pagelen", 10)
        chunk, last = page_of(ITEMS, page, size)
        body: dict[str, Any] = {"values": chunk, "page": page, "pagelen": size}
        if (url := self.next_url(request, page, last)) is not None:
            body["next"] = url
        return self.body(request, body)

    async def items(self, request: web.Request) -> web.Response:
        try:
            start = continue_offset(request.query.get("continue"))
        except ValueError:
            return self.error(410, "the continue token is expired or not valid")
        limit = int_param(request, "limit", 500)
        chunk = ITEMS[start : start + limit]
        return self.body(request, {"items": chunk, "metadata": {"continue": continue_token(start + limit, len(ITEMS))}})


@pytest.fixture
async def lists(aiohttp_server: Any) -> Any:
    fake = FakeLists("t", rate_limit=100, window=60)
    server = await aiohttp_server(fake.app)
    async with aiohttp.ClientSession() as session:
        yield (
            fake,
            lambda **kw: ProviderClient("p", str(server.make_url("")), ("Authorization", "Bearer t"), session, **kw),
        )


async def test_a_next_url_in_the_body(lists: Any) -> None:
    fake, client = lists
    pages = [p async for p in client(pagination=NextInBody("next")).pages("/values", params={"pagelen": 3})]
    assert [item["id"] for p in pages for item in p.data["values"]] == list(range(1, 8))
    assert [r.query.get("page") for r in fake.requests] == [None, "2", "3"]
    assert all(r.query.get("pagelen") == "3" for r in fake.requests)  # the next URL carries them


async def test_kubernetes_continue_tokens(lists: Any) -> None:
    fake, client = lists
    pages = [p async for p in client(pagination=ContinueToken()).pages("/items", params={"limit": 3})]
    assert [item["id"] for p in pages for item in p.data["items"]] == list(range(1, 8))
    assert len(fake.requests) == 3 and all(r.query["limit"] == "3" for r in fake.requests)
    assert fake.requests[0].query.get("continue") is None and fake.requests[1].query["continue"]


async def test_a_style_given_to_one_call_wins_and_single_reads_one_page(lists: Any) -> None:
    fake, client = lists
    paged = client(pagination=Single())
    assert len([p async for p in paged.pages("/items", params={"limit": 3})]) == 1
    assert len([p async for p in paged.pages("/items", params={"limit": 3}, pagination=ContinueToken())]) == 3


def test_each_style_says_when_the_last_page_was_read() -> None:
    from flowforged.http import Response

    last = Response(200, {"x-next-page": ""}, {"metadata": {"continue": ""}, "values": []})
    for style in (LinkHeader(), NextPageHeader(), NextInBody(), ContinueToken(), Single()):
        assert style.following(last, "/x", {"a": 1}) is None
    more = Response(200, {"x-next-page": "3"}, {"next": "https://h/x?page=2", "metadata": {"continue": "abc"}})
    assert NextPageHeader().following(more, "/x", {"a": 1}) == ("/x", {"a": 1, "page": 3})
    assert NextInBody().following(more, "/x", {"a": 1}) == ("https://h/x?page=2", None)
    assert ContinueToken().following(more, "/x", {"a": 1}) == ("/x", {"a": 1, "continue": "abc"})
