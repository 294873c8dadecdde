"""Who may read and operate the board: sessions, CSRF, the viewer token, a public board, the headers."""

from __future__ import annotations

import re
import sqlite3

import pytest
import yarl

from flowforged.errors import ConfigError
from tests.conftest import API_TOKEN, make_config
from tests.ui.helpers import VIEWER_TOKEN, board_config, csrf_of, seed, sign_in, start

PAGES = ["/", "/pipelines/1", "/runs/1", "/silences", "/pipelines/1?branch=master&status=failed"]
OTHERS = ["/ui/tiles?source=github&pipeline=x", "/ui/events", "/ui/static/app.css", "/ui/static/live.js"]
FORMS = ["/runs/1/rerun", "/runs/1/cancel", "/pipelines/1/trigger", "/silences", "/silences/1/expire", "/signout"]


def silences(db_path) -> int:
    with sqlite3.connect(db_path) as conn:
        return conn.execute("SELECT count(*) FROM silences").fetchone()[0]


async def test_nothing_is_readable_without_a_session(aiohttp_client, db_path):
    client = await start(aiohttp_client, db_path)
    await seed(client)
    for path in PAGES:
        reply = await client.get(path, allow_redirects=False)
        assert reply.status == 303, path
        target = yarl.URL(reply.headers["Location"])
        assert (target.path, target.query["next"]) == ("/signin", path)
        assert "Content-Security-Policy" in reply.headers
    for path in OTHERS:
        reply = await client.get(path, allow_redirects=False)
        assert (reply.status, path) == (401, path)
        assert "github" not in await reply.text() and "{" not in await reply.text()
    for path in FORMS:
        reply = await client.post(path, data={"csrf": "x"}, allow_redirects=False)
        assert (reply.status, path) == (401, path)
    assert silences(db_path) == 0


async def test_the_sign_in_page_inlines_its_only_style_under_a_hash_and_takes_no_asset(aiohttp_client, db_path):
    client = await start(aiohttp_client, db_path)
    reply = await client.get("/signin")
    page = await reply.text()
    policy = reply.headers["Content-Security-Policy"]
    assert "style-src 'sha256-" in policy and "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert "<script" not in page and 'href="/ui/static' not in page


async def test_signing_in_gives_an_http_only_strict_cookie_and_the_board(aiohttp_client, db_path):
    client = await start(aiohttp_client, db_path)
    await seed(client)
    answer, csrf = await sign_in(client, next_path="/silences")
    assert answer.status == 303 and answer.headers["Location"] == "/silences"
    cookie = answer.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" not in cookie
    board = await client.get("/")
    page = await board.text()
    assert board.status == 200 and csrf
    assert "octo-org" in page or "Build" in page  # the GitHub fixture's workflow
    assert "failing" in page and "passing" in page


@pytest.mark.parametrize(
    ("ui", "forwarded", "secure"),
    [
        ({"trusted_proxies": ["127.0.0.1"]}, "https", True),
        ({"trusted_proxies": ["10.0.0.9"]}, "https", False),  # anyone can send the header
        ({"trusted_proxies": ["127.0.0.1"]}, "http", False),
        ({"secure_cookie": True}, None, True),
    ],
)
async def test_the_cookie_is_secure_behind_tls(aiohttp_client, db_path, ui, forwarded, secure):
    client = await start(aiohttp_client, db_path, **ui)
    headers = {"X-Forwarded-Proto": forwarded} if forwarded else {}
    form = await client.get("/signin", headers=headers)
    csrf = csrf_of(await form.text())
    # A Secure cookie is not sent back over plain HTTP by the client: give the sign-in token by hand.
    cookies = {"flowforged_signin": csrf}
    answer = await client.post(
        "/signin", data={"csrf": csrf, "token": API_TOKEN}, headers=headers, cookies=cookies, allow_redirects=False
    )
    assert answer.status == 303
    assert ("Secure" in answer.headers["Set-Cookie"]) is secure


async def test_a_wrong_token_is_refused_and_not_echoed_and_guessing_is_limited(aiohttp_client, db_path):
    client = await start(aiohttp_client, db_path)
    for _ in range(10):
        answer, _ = await sign_in(client, token="wrong-token-123")
        assert answer.status == 401
        assert "wrong-token-123" not in await answer.text()
    answer, _ = await sign_in(client, token=API_TOKEN)  # even the right one, for a while
    assert answer.status == 429 and int(answer.headers["Retry-After"]) > 0


async def test_sign_in_goes_back_only_to_a_page_of_this_daemon(aiohttp_client, db_path):
    client = await start(aiohttp_client, db_path)
    for target in ["//evil.example/x", "https://evil.example/", "/\\evil.example"]:
        answer, _ = await sign_in(client, next_path=target)
        assert answer.headers["Location"] == "/", target


async def test_sign_in_without_its_csrf_token_is_403(aiohttp_client, db_path):
    client = await start(aiohttp_client, db_path)
    answer = await client.post("/signin", data={"token": API_TOKEN}, allow_redirects=False)
    assert answer.status == 403 and "Set-Cookie" not in answer.headers


async def test_a_post_without_the_csrf_token_is_403_and_changes_nothing(aiohttp_client, db_path):
    client = await start(aiohttp_client, db_path)
    await seed(client)
    _, csrf = await sign_in(client)
    form = {"sources": "github", "duration": "2h"}
    for data in (form, {**form, "csrf": "not-the-token"}, {**form, "csrf": ""}):
        reply = await client.post("/silences", data=data, allow_redirects=False)
        assert reply.status == 403
    assert silences(db_path) == 0
    reply = await client.post("/silences", data={**form, "csrf": csrf}, allow_redirects=False)
    assert (reply.status, reply.headers["Location"]) == (303, "/silences?done=silenced")
    assert silences(db_path) == 1


async def test_the_viewer_token_reads_but_cannot_operate(aiohttp_client, db_path):
    client = await start(aiohttp_client, db_path)
    await seed(client)
    answer, csrf = await sign_in(client, token=VIEWER_TOKEN)
    assert answer.status == 303
    run = await client.get("/runs/2")
    page = await run.text()
    assert run.status == 200 and "Re-run" not in page and "Operations" not in page
    assert "Trigger" not in await (await client.get("/pipelines/1")).text()
    for path in FORMS[:-1]:
        reply = await client.post(path, data={"csrf": csrf, "duration": "1h", "ref": "main"}, allow_redirects=False)
        assert (reply.status, path) == (403, path)
    assert silences(db_path) == 0


async def test_a_public_board_is_read_only_without_signing_in(aiohttp_client, db_path):
    client = await start(aiohttp_client, db_path, public=True)
    await seed(client)
    for path in PAGES + OTHERS[:1] + OTHERS[2:]:
        reply = await client.get(path, allow_redirects=False)
        assert reply.status in (200, 404), path  # pipeline 1 exists; the tile filter may match nothing
    page = await (await client.get("/runs/2")).text()
    assert "Re-run" not in page and "Sign in" in page
    for path in FORMS:
        reply = await client.post(path, data={"csrf": "", "duration": "1h"}, allow_redirects=False)
        assert reply.status == 403, path
    assert silences(db_path) == 0


async def test_signing_out_ends_the_session(aiohttp_client, db_path):
    client = await start(aiohttp_client, db_path)
    _, csrf = await sign_in(client)
    cookie = client.session.cookie_jar.filter_cookies(client.make_url("/"))["flowforged_session"].value
    reply = await client.post("/signout", data={"csrf": csrf}, allow_redirects=False)
    assert (reply.status, reply.headers["Location"]) == (303, "/signin")
    again = await client.get("/", cookies={"flowforged_session": cookie}, allow_redirects=False)
    assert again.status == 303  # the old cookie names no session any more


async def test_every_answer_carries_a_strict_policy_and_pages_hold_no_inline_script_or_style(aiohttp_client, db_path):
    client = await start(aiohttp_client, db_path)
    await seed(client)
    await sign_in(client)
    for path in [*PAGES, "/ui/static/app.css", "/ui/tiles?source=github&pipeline=x"]:
        reply = await client.get(path)
        policy = reply.headers["Content-Security-Policy"]
        assert "default-src 'none'" in policy and "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
        assert reply.headers["X-Content-Type-Options"] == "nosniff"
        if reply.content_type == "text/html":
            page = await reply.text()
            assert not re.search(r"<script(?![^>]*\ssrc=)", page), path
            assert not re.search(r"\sstyle=|\son[a-z]+=|<style", page), path
            assert not re.search(r"(src|href)=\"(https?:)?//", page.replace('href="https://github.com', "")), path


def test_a_bad_ui_key_is_named(tmp_path):
    data = board_config(tmp_path / "flowforge.db", public="sometimes", viewer_tokn="x")
    with pytest.raises(ConfigError) as error:
        make_config(data)
    assert {path for path, _ in error.value.problems} == {"ui.public", "ui.viewer_tokn"}
