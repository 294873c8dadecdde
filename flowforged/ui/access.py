"""Who may see and operate the web board: sign-in with a token, server-side sessions, CSRF tokens and
the security headers every answer of the board carries (docs/architecture.md, "Web board").

Signing in with `api.token` gives an operator session, with `ui.viewer_token` a read-only one; with
`ui.public: true` anyone may read the board without signing in, and nobody may operate it without
signing in. A session lives in the daemon's memory only: its id is the cookie (HttpOnly,
SameSite=Strict, Secure behind TLS) and a restart signs everyone out. Every form carries the
session's CSRF token; a POST without it is 403. Wrong tokens are limited per address like the API's.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from flowforged import logs
from flowforged.api.auth import FailedTokens
from flowforged.config import UiConfig

log = logs.get("flowforged.ui")
COOKIE = "flowforged_session"
SIGNIN_COOKIE = "flowforged_signin"  # the sign-in form's own CSRF token, before any session exists
MAX_SESSIONS = 10_000
VIEWER, OPERATOR = "viewer", "operator"
# No inline script or style, nothing from another origin: every asset comes from the daemon.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclasses.dataclass(frozen=True)
class Session:
    role: str  # viewer | operator
    csrf: str
    expires: float
    signed_in: bool = True  # False: an anonymous reader of a public board

    @property
    def operator(self) -> bool:
        return self.role == OPERATOR


class Sessions:
    """Sessions by id, oldest dropped first past MAX_SESSIONS (a flood of sign-ins cannot grow memory)."""

    def __init__(self, lifetime: float, clock: Callable[[], float] = time.time):
        self.lifetime, self.clock = lifetime, clock
        self._by_id: collections.OrderedDict[str, Session] = collections.OrderedDict()

    def create(self, role: str) -> tuple[str, Session]:
        while len(self._by_id) >= MAX_SESSIONS:
            self._by_id.popitem(last=False)
        session_id = secrets.token_urlsafe(32)
        session = Session(role, secrets.token_urlsafe(32), self.clock() + self.lifetime)
        self._by_id[session_id] = session
        return session_id, session

    def get(self, session_id: str | None) -> Session | None:
        session = self._by_id.get(session_id or "")
        if session is not None and session.expires <= self.clock():
            del self._by_id[session_id or ""]
            return None
        return session

    def drop(self, session_id: str | None) -> None:
        self._by_id.pop(session_id or "", None)


@dataclasses.dataclass
class Access:
    """The board's access state, one per daemon; the config is read at each request (SIGHUP swaps it)."""

    config: Callable[[], Any]  # the daemon's Config
    sessions: Sessions
    failed_tokens: FailedTokens = dataclasses.field(default_factory=FailedTokens)

    @property
    def ui(self) -> UiConfig:
        return self.config().ui

    def role_of(self, token: str) -> str | None:
        """The role a token signs in with; both are compared, in constant time, whatever matches."""
        given = token.strip().encode()
        roles = [(self.config().api.token, OPERATOR), (self.ui.viewer_token, VIEWER)]
        found = None
        for secret, role in roles:
            if secret is not None and hmac.compare_digest(given, secret.get().encode()) and found is None:
                found = role
        return found

    def secure(self, request: web.Request) -> bool:
        """Whether the browser reached us over TLS: directly, by config, or as a trusted proxy says."""
        if self.ui.secure_cookie or request.secure:
            return True
        forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
        return forwarded == "https" and request.remote in self.ui.trusted_proxies


ACCESS = web.AppKey("ui_access", Access)
SESSION_KEY = web.RequestKey("ui_session", Session)


def session_of(request: web.Request) -> Session:
    return request[SESSION_KEY]


def current(request: web.Request) -> Session | None:
    """The signed-in session, the anonymous reader of a public board, or None."""
    access = request.app[ACCESS]
    session = access.sessions.get(request.cookies.get(COOKIE))
    if session is None and access.ui.public:
        # Anonymous readers have no session to hold a CSRF token: they never post anything.
        return Session(VIEWER, "", float("inf"), signed_in=False)
    return session


def protect(handler: Handler, *, role: str = VIEWER, kind: str = "page") -> Handler:
    """Let the request through only with a session of `role` (and its CSRF token, for a POST).

    Without a session a page redirects to the sign-in form and anything else (an asset, a fragment,
    the stream, a POST) is 401; a viewer asking to operate is 403.
    """

    @functools.wraps(handler)
    async def guarded(request: web.Request) -> web.StreamResponse:
        session = current(request)
        if session is None:
            if kind == "page" and request.method == "GET":
                target = request.rel_url.path_qs
                raise with_headers(web.HTTPSeeOther(f"/signin?{_next_query(target)}"))
            raise with_headers(web.HTTPUnauthorized(text="sign in first", headers={"WWW-Authenticate": "Cookie"}))
        if role == OPERATOR and not session.operator:
            raise with_headers(web.HTTPForbidden(text="this session may only read: sign in with the API token"))
        if request.method == "POST":
            form = await request.post()
            given = str(form.get("csrf", ""))
            if not session.csrf or not hmac.compare_digest(given.encode(), session.csrf.encode()):
                log.warning("ui: a form without its CSRF token was refused", path=request.path, remote=request.remote)
                raise with_headers(web.HTTPForbidden(text="the form's CSRF token is missing or wrong: reload the page"))
        request[SESSION_KEY] = session
        try:
            return with_headers(await handler(request))
        except web.HTTPException as exc:  # redirects after a form, and the router's refusals
            raise with_headers(exc) from None

    return guarded


def with_headers(response: Any) -> Any:
    for name, value in HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def _next_query(target: str) -> str:
    from urllib.parse import urlencode

    return urlencode({"next": target})


def local_target(value: str | None) -> str:
    """Where to go after signing in: a path of this daemon only, never another site (`//evil`)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


def set_session_cookie(response: web.StreamResponse, request: web.Request, session_id: str | None) -> None:
    access = request.app[ACCESS]
    secure = access.secure(request)
    if session_id is None:
        response.del_cookie(COOKIE, path="/", secure=secure, httponly=True, samesite="Strict")
        return
    response.set_cookie(
        COOKIE,
        session_id,
        max_age=int(access.ui.session_lifetime),
        path="/",
        secure=secure,
        httponly=True,
        samesite="Strict",
    )
