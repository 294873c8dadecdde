"""A GitHub App instead of a token: the App's JWT, its installation's access token, and the
repositories the installation can see.

https://docs.github.com/en/apps/creating-github-apps/authenticating-with-a-github-app: the App signs a
short-lived JWT with its private key (RS256), exchanges it for an installation access token (an hour's
life), and every other request carries that token. The installation token has a rate limit of its
own, not any person's: one source is one installation, so the source's client counts exactly that
budget. The token is kept in memory only and fetched again before it expires (RenewableToken, in
flowforged/credentials.py).

The pure helpers come first (config checks, the JWT); `Installation` is the thin async part. Its
requests with the JWT go through a ProviderClient of their own, so that they never spend or
overwrite the installation's budget (the App's JWT requests count against the App's) and the JWT is
scrubbed from their errors as any credential.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from flowforged import logs
from flowforged.credentials import RenewableToken, tls_context
from flowforged.errors import ProviderError
from flowforged.http import MemoryEtags, ProviderClient
from flowforged.polling import epoch
from flowforged_plugins.github import remote

if TYPE_CHECKING:
    import aiohttp

    from flowforged.plugin import PollContext, Provider
    from flowforged_plugins.github import GitHubSourceConfig

log = logs.get("flowforged.github")

# The installation token is fetched again this long before it expires (or after half its life when
# it lives less than twice that): GitHub's answers and our clock may differ by a few minutes.
TOKEN_MARGIN = 300.0
# "iat: ... 60 seconds in the past", "exp: ... no more than 10 minutes into the future"
# (generating-a-json-web-token-jwt-for-a-github-app): 9 minutes ahead leaves room for a clock ahead.
JWT_BACKDATE = 60
JWT_LIFETIME = 540
JWT_MARGIN = 60.0


# --- pure half ---------------------------------------------------------------------------------


def load_key(text: str) -> rsa.RSAPrivateKey:
    """The App's private key, PEM as GitHub hands it out (PKCS#1, or PKCS#8). ValueError when it is
    not an RSA private key; the message never carries the key."""
    try:
        key = serialization.load_pem_private_key(text.strip().encode(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ValueError("not an RSA private key in PEM format (the .pem file from the App's settings)") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("not an RSA private key: GitHub Apps sign with RS256")
    return key


def sign_jwt(app_id: str, key: rsa.RSAPrivateKey, now: float) -> tuple[str, float]:
    """The App's JWT and when it expires. `iss` is the App's id (or client id) as a string, as in
    GitHub's own examples; PyJWT refuses a number there when it verifies."""
    issued, expires = int(now) - JWT_BACKDATE, int(now) + JWT_LIFETIME
    claims = {"iat": issued, "exp": expires, "iss": app_id}
    return jwt.encode(claims, key, algorithm="RS256"), float(expires)


def renew_at(expires_at: float, now: float) -> float:
    """When to stop using an installation token that expires at `expires_at`."""
    return expires_at - min(TOKEN_MARGIN, max(expires_at - now, 0.0) / 2)


def accounts(entries: list[str]) -> list[str]:
    """The accounts (organizations or users) that a source's `repos` name."""
    found: list[str] = []
    for entry in entries:  # one at a time: in the order they are written
        repos, owners = remote.parse_repos([entry])
        found += [repo.split("/", 1)[0] for repo in repos] + owners
    return list(dict.fromkeys(name.lower() for name in found))


def config_problems(config: GitHubSourceConfig) -> list[tuple[str, str]]:
    """A GitHub App source's checks: app_id and private_key together, not with a token; a private key
    that parses; one installation, named or found from the one account `repos` names."""
    app_id, key, installation = config.app_id, config.private_key, config.installation_id
    found: list[tuple[str, str]] = []
    if config.token is not None:
        found.append(("token", "a source authenticates one way: remove token, or app_id and private_key"))
    if app_id is None:
        found.append(("app_id", "missing: a GitHub App's private_key needs the App's id (or client id)"))
    if key is None:
        found.append(("private_key", "missing: a GitHub App (app_id) signs its requests with its private key"))
    elif key.origin != "missing":
        try:
            load_key(key.get())
        except ValueError as exc:
            found.append(("private_key", f"{exc} ({key.where})"))
    try:
        names = accounts(config.repos)
    except ValueError:
        return found  # the repos entry is named by the source's own check
    if len(names) > 1:
        several = f"names several accounts ({', '.join(names)}): an App's token is one installation's, on one"
        found.append(("repos", f"{several} account; make a source per installation"))
    elif installation is None and not names:
        missing = "missing: name the App's installation, or the organization in repos (org:NAME) to look it up"
        found.append(("installation_id", missing))
    return found


def delivered_elsewhere(config: GitHubSourceConfig, payload: Any) -> bool:
    """Whether a delivery of the App's webhook (one for all its installations, each payload naming its
    `installation`) belongs to another installation than this source's: that installation's source
    polls it, and ingesting it here too would tell its runs twice."""
    if not isinstance(payload, dict) or not isinstance(payload.get("installation"), dict):
        return False
    wanted = config.installation_id
    if wanted is not None:
        return payload["installation"].get("id") != wanted
    owner = ((payload.get("repository") or {}).get("owner") or {}).get("login")
    names = accounts(config.repos)
    return bool(owner and names) and owner.lower() not in names


# --- the installation token ------------------------------------------------------------------------


class Installation:
    """One installation of the App: finds its id when only its account is known, and fetches its
    access token with the App's JWT."""

    def __init__(
        self,
        provider: Provider,
        session: aiohttp.ClientSession,
        clock: Callable[[], float] = time.time,
    ) -> None:
        config: GitHubSourceConfig = provider.config  # type: ignore[assignment]
        self.source = provider.name
        self.app_id = str(config.app_id)
        self.id: int | None = config.installation_id
        names = accounts(config.repos)
        self.account = names[0] if names else None
        self._key = load_key(config.private_key.get() if config.private_key else "")  # checked with the config
        self._clock = clock
        self.app = ProviderClient(
            self.source,
            provider.api_url(),
            RenewableToken(self._jwt, margin=JWT_MARGIN, clock=clock),
            session,
            MemoryEtags(),
            rate_limits=remote.GitHubRateLimits(),
            tls=tls_context(config.ca_bundle),
            headers=remote.API_HEADERS,
            clock=clock,
        )

    async def _jwt(self) -> tuple[str, float]:
        return sign_jwt(self.app_id, self._key, self._clock())

    async def token(self) -> tuple[str, float]:
        """A new installation access token, and when to stop using it (RenewableToken's `fetch`)."""
        installation = self.id if self.id is not None else await self.find()
        # https://docs.github.com/en/rest/apps/apps#create-an-installation-access-token-for-an-app
        try:
            response = await self.app.request("POST", f"/app/installations/{installation}/access_tokens")
        except ProviderError as exc:
            raise self.explain(exc, f"installation {installation}") from None
        data = response.data if isinstance(response.data, dict) else {}
        if not data.get("token") or not data.get("expires_at"):
            raise ProviderError(f"{self.source}: GitHub answered no installation token", status=502)
        now = self._clock()
        log.info("GitHub App installation token fetched", source=self.source, installation=installation)
        return data["token"], renew_at(epoch(data["expires_at"]), now)

    async def find(self) -> int:
        """The id of the App's installation on the account `repos` names: an organization's, else a
        user's (https://docs.github.com/en/rest/apps/apps#get-an-organization-installation-for-the-authenticated-app)."""
        account = quote(self.account or "", safe="")
        for kind in ("orgs", "users"):
            try:
                response = await self.app.get(f"/{kind}/{account}/installation")
            except ProviderError as exc:
                if exc.status == 404:
                    continue
                raise self.explain(exc, f"the installation on {self.account}") from None
            self.id = int(response.data["id"])
            log.info("GitHub App installation found", source=self.source, account=self.account, installation=self.id)
            return self.id
        raise ProviderError(
            f"{self.source}: GitHub App {self.app_id} is not installed on {self.account}: install it there, "
            "or give installation_id",
            status=502,
            code="provider_auth_failed",
        )

    def explain(self, error: ProviderError, subject: str) -> ProviderError:
        """A refused JWT or a missing installation in words that say what to check; other errors as
        they are (a 5xx after retries, a 403 for a suspended installation)."""
        if error.code == "provider_auth_failed":  # a 401 to the JWT (flowforged.http.error_for)
            text = (
                f"{self.source}: GitHub refused the App's JWT: check app_id ({self.app_id}), private_key, "
                "and this host's clock"
            )
        elif error.status == 404:
            text = f"{self.source}: {subject} of GitHub App {self.app_id} was not found: uninstalled, or a wrong id"
        else:
            return error
        return ProviderError(text, status=502, code="provider_auth_failed")


def installation_auth(provider: Provider, session: aiohttp.ClientSession) -> RenewableToken:
    """The source's credential: the installation token, renewed before it expires. The margin is in
    the time `Installation.token` answers, which depends on the token's life."""
    return RenewableToken(Installation(provider, session).token, margin=0.0)


# --- polling -----------------------------------------------------------------------------------


async def installation_repos(client: ProviderClient, ctx: PollContext) -> list[str]:
    """Every repository the installation can see, listed again at most every OWNER_REFRESH
    (https://docs.github.com/en/rest/apps/installations#list-repositories-accessible-to-the-app-installation)."""
    cached = ctx.memory.get("installation")
    if cached is not None and ctx.now - cached["at"] < remote.OWNER_REFRESH:
        return cached["repos"]
    items: list[dict[str, Any]] = []
    async for page in client.pages("/installation/repositories", params={"per_page": remote.MAX_PAGE}):
        items += (page.data or {}).get("repositories") or []
    # Archived repositories run no workflows.
    live = [r for r in items if not r.get("archived")]
    branches: dict[str, str] = ctx.memory.setdefault("default_branch", {})
    branches.update({r["full_name"]: r["default_branch"] for r in live if r.get("default_branch")})
    ctx.memory["installation"] = {"at": ctx.now, "repos": [r["full_name"] for r in live]}
    return ctx.memory["installation"]["repos"]
