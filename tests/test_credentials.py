"""The auth hook of the provider client (flowforged/credentials.py) and a source's TLS options, against
a fake server built on the test kit's base (flowforged/fakeapi.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from flowforged.credentials import FileToken, RenewableToken
from flowforged.errors import ProviderError
from flowforged.fakeapi import FakeProviderAPI
from flowforged.http import ProviderClient
from flowforged_plugins.github import GitHubSourceConfig


class FakeTokens(FakeProviderAPI):
    """An API that accepts one Bearer token at a time, as one whose tokens expire or rotate."""

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/whoami", self.whoami)

    async def whoami(self, request: web.Request) -> web.Response:
        return self.body(request, {"login": "flowforge"})


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def fake(aiohttp_server: Any) -> Any:
    api = FakeTokens("token-1", rate_limit=100, window=60)
    api.server = await aiohttp_server(api.app)
    return api


async def test_a_renewable_token_is_asked_for_each_request_and_renewed_before_it_expires(fake: Any) -> None:
    clock, issued = Clock(), []

    async def fetch() -> tuple[str, float]:
        issued.append(f"token-{len(issued) + 1}")
        return issued[-1], clock.now + 3600  # an installation token lives an hour

    auth = RenewableToken(fetch, margin=300, clock=clock)
    async with aiohttp.ClientSession() as session:
        client = ProviderClient("app", str(fake.server.make_url("")), auth, session, clock=clock)
        assert (await client.get("/whoami")).data == {"login": "flowforge"}
        assert (await client.get("/whoami")).status == 200 and issued == ["token-1"]
        clock.now += 3300 + 1  # within the margin of its expiry: a new one before the next request
        fake.token = "token-2"
        assert (await client.get("/whoami")).status == 200 and issued == ["token-1", "token-2"]
    assert [r.status for r in fake.requests] == [200, 200, 200]  # renewed before, not after a 401


async def test_a_token_revoked_early_is_fetched_again_once_after_a_401(fake: Any) -> None:
    clock, issued = Clock(), []

    async def fetch() -> tuple[str, float]:
        issued.append(f"token-{len(issued) + 1}")
        return issued[-1], clock.now + 3600

    async with aiohttp.ClientSession() as session:
        client = ProviderClient("app", str(fake.server.make_url("")), RenewableToken(fetch, clock=clock), session)
        await client.get("/whoami")
        fake.token = "token-2"  # revoked before its time
        assert (await client.get("/whoami")).status == 200 and issued == ["token-1", "token-2"]
        fake.token = "never-issued"
        with pytest.raises(ProviderError, match="was rejected") as caught:
            await client.get("/whoami")
    assert issued == ["token-1", "token-2", "token-3"]  # one more try after the 401, not a loop
    assert all(token not in str(caught.value) for token in issued)


async def test_a_token_file_is_read_again_when_it_is_rotated(fake: Any, tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("token-1\n")
    async with aiohttp.ClientSession() as session:
        client = ProviderClient("kube", str(fake.server.make_url("")), FileToken(str(path)), session)
        assert (await client.get("/whoami")).status == 200
        path.write_text("token-2-rotated\n")  # the kubelet writes the new token in place
        os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000))
        fake.token = "token-2-rotated"
        assert (await client.get("/whoami")).status == 200
    assert fake.requests[-1].headers.get("Authorization") is None  # the fake keeps no credentials


def test_a_ca_bundle_that_cannot_be_read_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="ca_bundle") as caught:
        GitHubSourceConfig.model_validate({"type": "github", "ca_bundle": str(tmp_path / "missing.pem")})
    assert "not a readable PEM file" in str(caught.value)
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("not a certificate")
    with pytest.raises(ValueError, match="ca_bundle"):
        GitHubSourceConfig.model_validate({"type": "github", "ca_bundle": str(not_pem)})
