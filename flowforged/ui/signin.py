"""Signing in and out of the web board (flowforged.ui.access holds the rules)."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import math
import secrets
from importlib import resources

import aiohttp_jinja2
from aiohttp import web

from flowforged.ui import access
from flowforged.ui.access import ACCESS, SIGNIN_COOKIE, local_target, log, set_session_cookie, with_headers


@functools.cache
def stylesheet() -> str:
    return resources.files("flowforged.ui").joinpath("static/app.css").read_text()


@functools.cache
def _signin_csp() -> str:
    """The sign-in page inlines the stylesheet (allowed by its hash): no asset is served without a session."""
    digest = base64.b64encode(hashlib.sha256(stylesheet().encode()).digest()).decode()
    return access.CSP.replace("style-src 'self'", f"style-src 'sha256-{digest}'")


def _page(request: web.Request, csrf: str, status: int = 200, problem: str | None = None) -> web.Response:
    config = request.app[ACCESS].config()
    context = {
        "csrf": csrf,
        "next": local_target(request.query.get("next")),
        "problem": problem,
        "css": stylesheet(),
        "no_tokens": config.api.token is None and config.ui.viewer_token is None,
    }
    response = aiohttp_jinja2.render_template("signin.html", request, context, status=status)
    response.headers["Content-Security-Policy"] = _signin_csp()
    response.headers["Cache-Control"] = "no-store"
    return with_headers(response)


async def form(request: web.Request) -> web.Response:
    csrf = request.cookies.get(SIGNIN_COOKIE) or secrets.token_urlsafe(32)
    response = _page(request, csrf)
    response.set_cookie(
        SIGNIN_COOKIE,
        csrf,
        path="/signin",
        httponly=True,
        samesite="Strict",
        secure=request.app[ACCESS].secure(request),
    )
    return response


async def sign_in(request: web.Request) -> web.StreamResponse:
    board = request.app[ACCESS]
    data = await request.post()
    expected = request.cookies.get(SIGNIN_COOKIE, "")
    given = str(data.get("csrf", ""))
    if not expected or not hmac.compare_digest(given.encode(), expected.encode()):
        raise with_headers(web.HTTPForbidden(text="the form's CSRF token is missing or wrong: reload the sign-in page"))
    address = request.remote or "unknown"
    wait = board.failed_tokens.retry_after(address)
    if wait is not None:
        response = _page(request, expected, 429, "Too many wrong tokens from this address: try again later.")
        response.headers["Retry-After"] = str(max(math.ceil(wait), 1))
        return response
    role = board.role_of(str(data.get("token", "")))
    if role is None:
        if board.failed_tokens.failed(address) is not None:
            log.warning("ui: sign-in with a wrong token; more from this address are not logged", remote=address)
        return _page(request, expected, 401, "That token is not the API token or the viewer token.")
    session_id, _ = board.sessions.create(role)
    log.info("ui: signed in", role=role, remote=address)
    target = local_target(str(data.get("next", "")) or None)
    response = web.HTTPSeeOther(target)
    set_session_cookie(response, request, session_id)
    raise with_headers(response)


async def sign_out(request: web.Request) -> web.StreamResponse:
    request.app[ACCESS].sessions.drop(request.cookies.get(access.COOKIE))
    response = web.HTTPSeeOther("/signin")
    set_session_cookie(response, request, None)
    raise response
