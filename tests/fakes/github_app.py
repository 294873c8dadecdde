"""The fake GitHub API as a GitHub App's installation sees it, following GitHub's documentation.

    key = rsa_key()
    fake = FakeGitHubApp(app_id=1234, public_key=key.public_key(), token_lifetime=4)
    installation = fake.install("octo-org", repos=["octo-org/octo-repo"])
    server = await aiohttp_server(fake.app)

The App's own endpoints (`/app/...`, `/orgs/{org}/installation`) take a JWT signed with the App's
private key (RS256; `iat`, `exp` no more than 10 minutes ahead, `iss` the App's id as a string), which
the fake verifies with the public key and refuses with 401 as GitHub does: expired, badly signed,
another issuer. Every other endpoint takes an installation access token, which expires
`token_lifetime` seconds after it was issued (an hour on GitHub) and is then refused with 401 "Bad
credentials". https://docs.github.com/en/apps/creating-github-apps/authenticating-with-a-github-app

The installation's answers carry the installation's own rate limit, the App's answers the App's:
GitHub counts them apart (https://docs.github.com/en/rest/using-the-rest-api/rate-limits-for-the-rest-api#primary-rate-limit-for-github-app-installations).
"""

from __future__ import annotations

import contextvars
import secrets
import time
from collections.abc import Callable
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.fakes.github_api import DOCS, FakeGitHub, _iso

# Whose budget a request spends: the App's (JWT) or the installation's; set per request (each its own task).
_caller: contextvars.ContextVar[str] = contextvars.ContextVar("caller", default="installation")
INSTALLATION = web.RequestKey("installation", int)  # the installation whose token the request carries


def rsa_key() -> rsa.RSAPrivateKey:
    """A fresh App key: GitHub makes 2048-bit RSA keys."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem(key: rsa.RSAPrivateKey) -> str:
    """The private key as GitHub hands it out: PKCS#1 PEM (-----BEGIN RSA PRIVATE KEY-----)."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    ).decode()


class FakeGitHubApp(FakeGitHub):
    """FakeGitHub whose credentials are a GitHub App's: JWTs for the App, expiring installation tokens."""

    def __init__(
        self,
        app_id: int,
        public_key: rsa.RSAPublicKey,
        *,
        token_lifetime: float = 3600.0,
        app_rate_limit: int = 5000,
        rate_limit: int = 15000,  # an installation of a GitHub Enterprise Cloud organization
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.app_remaining = app_rate_limit  # before super(): its `remaining` is the property below
        self._installation_remaining = rate_limit
        super().__init__("", rate_limit=rate_limit, clock=clock)
        self.app_id = app_id
        self.public_key = public_key
        self.token_lifetime = token_lifetime
        self.app_rate_limit = app_rate_limit
        self.installations: dict[int, dict[str, Any]] = {}
        self.tokens: dict[str, tuple[int, float]] = {}  # token -> (installation id, expires at)
        self.issued: list[str] = []  # every installation token, in order
        self.refusals: list[str] = []  # why each 401 was answered
        self.jwts: list[str] = []  # every JWT presented, good or not

    # --- the world ---

    def install(self, account: str, repos: list[str], *, account_type: str = "Organization") -> dict[str, Any]:
        """The App installed on `account` with access to `repos` (created when missing)."""
        installation_id = next(self._ids)
        for name in repos:
            self.add_repo(name, owner_type=account_type)
        self.installations[installation_id] = {
            "id": installation_id,
            "account": {"login": account, "type": account_type},
            "app_id": self.app_id,
            "repository_selection": "selected",
            "permissions": {"actions": "write", "metadata": "read"},
            "events": ["workflow_run", "workflow_job"],
            "repos": list(repos),
        }
        return self.installations[installation_id]

    def expire_tokens(self) -> None:
        """Every installation token issued so far expires now (GitHub: after an hour)."""
        self.tokens = {token: (owner, self.clock() - 1) for token, (owner, _) in self.tokens.items()}

    # --- the provider's words ---

    def authorized(self, request: web.Request) -> bool:
        scheme, _, credential = request.headers.get("Authorization", "").partition(" ")
        app_endpoint = request.path.startswith("/app/") or request.path.endswith("/installation")
        _caller.set("app" if app_endpoint else "installation")
        if scheme.lower() not in ("bearer", "token"):
            return self._refuse("no credential")
        if app_endpoint:
            return self._jwt_valid(credential)
        held = self.tokens.get(credential)
        if held is None:
            return self._refuse("not an installation token")
        if self.clock() >= held[1]:
            return self._refuse("installation token expired")
        request[INSTALLATION] = held[0]
        return True

    def _jwt_valid(self, credential: str) -> bool:
        # https://docs.github.com/en/apps/creating-github-apps/authenticating-with-a-github-app/generating-a-json-web-token-jwt-for-a-github-app
        self.jwts.append(credential)
        try:
            claims = jwt.decode(
                credential,
                self.public_key,
                algorithms=["RS256"],
                issuer=str(self.app_id),
                options={"require": ["iat", "exp", "iss"]},
            )
        except jwt.PyJWTError as exc:
            return self._refuse(f"JWT refused: {type(exc).__name__}")
        if claims["exp"] > self.clock() + 600:
            return self._refuse("JWT expires more than 10 minutes ahead")
        return True

    def _refuse(self, why: str) -> bool:
        self.refusals.append(why)
        return False

    def unauthorized(self) -> web.Response:
        if _caller.get() == "app":
            message = "A JSON web token could not be decoded"
        else:
            message = "Bad credentials"
        return web.json_response({"message": message, "documentation_url": DOCS, "status": "401"}, status=401)

    @property
    def remaining(self) -> int:  # type: ignore[override]
        return self.app_remaining if _caller.get() == "app" else self._installation_remaining

    @remaining.setter
    def remaining(self, value: int) -> None:
        if _caller.get() == "app":
            self.app_remaining = value
        else:
            self._installation_remaining = value

    @property
    def installation_remaining(self) -> int:
        return self._installation_remaining

    def rate_headers(self) -> dict[str, str]:
        headers = super().rate_headers()
        if _caller.get() == "app":
            used = self.app_rate_limit - self.app_remaining
            headers.update({"x-ratelimit-limit": str(self.app_rate_limit), "x-ratelimit-used": str(used)})
        return headers

    # --- routes ---

    def add_routes(self, router: web.UrlDispatcher) -> None:
        super().add_routes(router)
        router.add_get("/app/installations", self.list_installations)
        router.add_post("/app/installations/{id:\\d+}/access_tokens", self.access_token)
        router.add_get("/orgs/{account}/installation", self.account_installation)
        router.add_get("/users/{account}/installation", self.account_installation)
        router.add_get("/installation/repositories", self.installation_repositories)

    def _public(self, installation: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in installation.items() if k != "repos"}

    async def list_installations(self, request: web.Request) -> web.Response:
        # https://docs.github.com/en/rest/apps/apps#list-installations-for-the-authenticated-app
        items = [self._public(i) for i in self.installations.values()]
        return self.listing(request, items, lambda chunk: chunk)

    async def account_installation(self, request: web.Request) -> web.Response:
        # https://docs.github.com/en/rest/apps/apps#get-an-organization-installation-for-the-authenticated-app
        kind = "Organization" if request.path.startswith("/orgs/") else "User"
        account = request.match_info["account"].lower()
        for installation in self.installations.values():
            if installation["account"]["login"].lower() == account and installation["account"]["type"] == kind:
                return self.body(request, self._public(installation))
        return self.error(404, "Not Found")

    async def access_token(self, request: web.Request) -> web.Response:
        # https://docs.github.com/en/rest/apps/apps#create-an-installation-access-token-for-an-app: 201,
        # `expires_at` to the second.
        installation = self.installations.get(int(request.match_info["id"]))
        if installation is None:
            return self.error(404, "Not Found")
        token = "ghs_" + secrets.token_urlsafe(27)
        expires = int(self.clock() + self.token_lifetime)
        self.tokens[token] = (installation["id"], float(expires))
        self.issued.append(token)
        body = {
            "token": token,
            "expires_at": _iso(expires),
            "permissions": installation["permissions"],
            "repository_selection": installation["repository_selection"],
        }
        return self.body(request, body, status=201)

    async def installation_repositories(self, request: web.Request) -> web.Response:
        # https://docs.github.com/en/rest/apps/installations#list-repositories-accessible-to-the-app-installation
        installation = self.installations[request[INSTALLATION]]
        repos = [self.repos[name] for name in installation["repos"]]
        return self.listing(
            request,
            repos,
            lambda chunk: {
                "total_count": len(repos),
                "repository_selection": installation["repository_selection"],
                "repositories": chunk,
            },
        )
