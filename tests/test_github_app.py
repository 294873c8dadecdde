"""A GitHub source authenticated as a GitHub App, against the fake GitHub that verifies the App's JWT
with its public key and issues installation tokens that expire (in seconds here, an hour on GitHub)."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import jwt
import pytest

from flowforged import logs
from flowforged.errors import ConfigError
from flowforged_plugins.github import app
from tests.conftest import GH_TOKEN, GITHUB_SECRET, applied, base_config, make_config
from tests.fakes.github_app import FakeGitHubApp, pem, rsa_key
from tests.test_notify import until
from tests.test_poller import CI, Daemon, runs

APP_ID = 123456
ORG = "octo-org"
REPOS = [f"{ORG}/octo-repo", f"{ORG}/second-repo"]
KEY = rsa_key()  # generating one takes a moment: once for the module
PEM = pem(KEY)


def app_source(server: Any, **extra: Any) -> dict[str, Any]:
    return {
        "type": "github",
        "webhook_secret": GITHUB_SECRET,
        "app_id": APP_ID,
        "private_key": PEM,
        "api_url": str(server.make_url("")),
        "repos": "installation",
        "poll_interval": "1h",  # the first cycle runs at start; the tests run the others
        **extra,
    }


@pytest.fixture
async def fake(aiohttp_server: Callable[..., Any]) -> FakeGitHubApp:
    # GitHub's clock is a second ahead of the daemon's, as two hosts' clocks are: a token used until the
    # daemon's clock reaches its expires_at would be refused by GitHub for that last second.
    github = FakeGitHubApp(APP_ID, KEY.public_key(), token_lifetime=4, clock=lambda: time.time() + 1.0)
    github.server = await aiohttp_server(github.app)
    return github


@pytest.fixture
def log_lines() -> io.StringIO:
    stream = io.StringIO()
    logs.setup("debug", stream=stream)
    return stream


@pytest.fixture
def start(aiohttp_client: Callable[..., Any], db_path: Any) -> Callable[..., Any]:
    async def start(source: dict[str, Any]) -> Daemon:
        config = make_config(base_config(db_path, sources={"github": source}))
        from flowforged import app as app_module

        return Daemon(await aiohttp_client(app_module.build(config)))

    return start


def refused(fake: FakeGitHubApp) -> list[tuple[str, str]]:
    return [(r.method, r.path) for r in fake.requests if r.status == 401]


# --- config --------------------------------------------------------------------------------------


def problems(db_path: Any, source: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ConfigError) as caught:
        make_config(base_config(db_path, sources={"github": source}))
    return dict(caught.value.problems)


def test_an_app_source_validates_and_needs_no_token(db_path: Any) -> None:
    source = {"type": "github", "webhook_secret": GITHUB_SECRET, "app_id": APP_ID, "private_key": PEM}
    config = make_config(base_config(db_path, sources={"github": {**source, "installation_id": 42}}))
    assert config.source_configs["github"].installation_id == 42
    by_org = {**source, "repos": [f"org:{ORG}", f"{ORG}/octo-repo"], "poll_interval": "5m"}
    assert make_config(base_config(db_path, sources={"github": by_org}))
    listed = {**source, "installation_id": 42, "repos": "installation", "poll_interval": "5m"}
    assert make_config(base_config(db_path, sources={"github": listed})).source_configs["github"].repos == [
        "installation"
    ]


def test_exactly_one_way_to_authenticate_naming_the_key_at_fault(db_path: Any) -> None:
    base = {"type": "github", "webhook_secret": GITHUB_SECRET, "installation_id": 42}
    both = problems(db_path, {**base, "app_id": APP_ID, "private_key": PEM, "token": GH_TOKEN})
    assert list(both) == ["sources.github.token"] and "one way" in both["sources.github.token"]
    assert list(problems(db_path, {**base, "app_id": APP_ID})) == ["sources.github.private_key"]
    assert list(problems(db_path, {**base, "private_key": PEM})) == ["sources.github.app_id"]
    no_installation = problems(db_path, {**base, "installation_id": None, "app_id": APP_ID, "private_key": PEM})
    assert no_installation["sources.github.installation_id"].startswith("missing")
    two_accounts = {**base, "app_id": APP_ID, "private_key": PEM, "repos": ["org:a", "b/c"]}
    assert "several accounts (a, b)" in problems(db_path, two_accounts)["sources.github.repos"]
    with_token = {**base, "installation_id": None, "token": GH_TOKEN, "repos": "installation", "poll_interval": "5m"}
    assert "GitHub App" in problems(db_path, with_token)["sources.github.repos"]


def test_a_private_key_that_does_not_parse_is_named_never_echoed(db_path: Any) -> None:
    garbled = PEM.replace("\n", "\n ", 3)[:-60] + "SECRETMATERIALxyz\n-----END RSA PRIVATE KEY-----\n"
    for bad in (garbled, "hunter2-not-a-key", pem(rsa_key())[:200]):
        source = {"type": "github", "webhook_secret": GITHUB_SECRET, "installation_id": 42, "app_id": APP_ID}
        with pytest.raises(ConfigError) as caught:
            make_config(base_config(db_path, sources={"github": {**source, "private_key": bad}}))
        assert [key for key, _ in caught.value.problems] == ["sources.github.private_key"]
        text = str(caught.value)
        assert "not an RSA private key" in text
        assert "SECRETMATERIAL" not in text and "hunter2" not in text and "MII" not in text


def test_the_token_is_renewed_five_minutes_before_it_expires_or_half_way_when_short_lived() -> None:
    assert app.renew_at(10_000 + 3600, 10_000) == 10_000 + 3300
    assert app.renew_at(10_000 + 4, 10_000) == 10_000 + 2
    assert app.renew_at(10_000, 10_001) == 10_000  # already expired: now


def test_the_jwt_says_what_github_asks() -> None:
    token, expires = app.sign_jwt("123456", KEY, 10_000.0)
    unchecked = {"verify_exp": False, "verify_iat": False}  # 10,000 s after the epoch is long gone
    claims = jwt.decode(token, KEY.public_key(), algorithms=["RS256"], options=unchecked)
    assert claims == {"iat": 10_000 - 60, "exp": 10_000 + 540, "iss": "123456"} and expires == 10_540
    assert jwt.get_unverified_header(token)["alg"] == "RS256"


# --- the fake holds the App to GitHub's rules ----------------------------------------------------


async def test_the_fake_refuses_jwts_github_would_refuse(fake: FakeGitHubApp) -> None:
    installation = fake.install(ORG, REPOS)
    url = fake.server.make_url(f"/app/installations/{installation['id']}/access_tokens")
    now = int(time.time())
    good = {"iat": now - 60, "exp": now + 540, "iss": str(APP_ID)}
    cases = {
        "good": jwt.encode(good, KEY, algorithm="RS256"),
        "expired": jwt.encode({**good, "exp": now - 1}, KEY, algorithm="RS256"),
        "another key": jwt.encode(good, rsa_key(), algorithm="RS256"),
        "another app": jwt.encode({**good, "iss": "654321"}, KEY, algorithm="RS256"),
        "too long": jwt.encode({**good, "exp": now + 3600}, KEY, algorithm="RS256"),
    }
    answers = {}
    async with aiohttp.ClientSession() as session:
        for name, token in cases.items():
            async with session.post(url, headers={"Authorization": f"Bearer {token}"}) as response:
                answers[name] = (response.status, (await response.json()).get("message"))
        token = (await (await session.post(url, headers={"Authorization": f"Bearer {cases['good']}"})).json())["token"]
        runs_url = fake.server.make_url(f"/repos/{REPOS[0]}/actions/runs")
        assert (await session.get(runs_url, headers={"Authorization": f"Bearer {token}"})).status == 200
        fake.expire_tokens()
        async with session.get(runs_url, headers={"Authorization": f"Bearer {token}"}) as response:
            expired = (response.status, (await response.json())["message"])
    assert answers["good"][0] == 201
    refusal = (401, "A JSON web token could not be decoded")
    assert {name: answer for name, answer in answers.items() if name != "good"} == dict.fromkeys(
        ["expired", "another key", "another app", "too long"], refusal
    )
    assert expired == (401, "Bad credentials")


# --- the daemon, as an App -----------------------------------------------------------------------


async def test_polls_every_repository_of_the_installation_across_a_token_renewal(
    fake: FakeGitHubApp, start: Callable[..., Any], db_path: Any, log_lines: io.StringIO
) -> None:
    installation = fake.install(ORG, REPOS)
    fake.add_repo("someone-else/not-installed")
    fake.add_run("someone-else/not-installed", CI, status="completed", conclusion="failure")
    for repo in REPOS:
        fake.add_run(repo, CI, status="completed", conclusion="failure")
    daemon = await start(app_source(fake.server, installation_id=installation["id"]))
    await daemon.first_cycle("github")
    assert {r["pipeline"] for r in runs(db_path)} == {f"{repo}/{CI}" for repo in REPOS}
    [first] = fake.issued
    # Cycles go on while the first token nears its end: a request must carry a new one before it ends.
    deadline = time.monotonic() + 20
    while len(fake.issued) < 2:
        assert time.monotonic() < deadline, "no new token within 20 s"
        await daemon.poller.poll_once("github")
    later = fake.add_run(REPOS[1], CI, status="completed", conclusion="failure")
    await until(lambda: fake.clock() >= fake.tokens[first][1], what="the first token to expire")
    await daemon.poller.poll_once("github")
    assert str(later["id"]) in {r["run_id"] for r in runs(db_path)}
    assert refused(fake) == [], fake.refusals  # renewed before it expired: no request failed
    assert len(fake.issued) == 2  # and only then: not a token per request
    async with aiohttp.ClientSession() as session:  # and the fake does refuse the old token now
        url = fake.server.make_url(f"/repos/{REPOS[0]}/actions/runs")
        assert (await session.get(url, headers={"Authorization": f"Bearer {first}"})).status == 401
    # The budget counted is the installation's own (15,000 here), not the App's (5,000).
    budget = daemon.poller.clients["github"].budget
    assert (budget.limit, budget.remaining) == (15000, fake.installation_remaining)
    assert_no_credential_logged(log_lines, fake)


async def test_the_installation_is_found_from_the_organization(
    fake: FakeGitHubApp, start: Callable[..., Any], db_path: Any, log_lines: io.StringIO
) -> None:
    fake.install("someone-else", ["someone-else/repo"])
    installation = fake.install(ORG, REPOS)
    fake.add_run(REPOS[0], CI, status="completed", conclusion="failure")
    daemon = await start(app_source(fake.server, repos=[f"org:{ORG}"]))
    await daemon.first_cycle("github")
    app_requests = [(r.method, r.path, r.status) for r in fake.requests if "installation" in r.path]
    assert app_requests[:2] == [
        ("GET", f"/orgs/{ORG}/installation", 200),
        ("POST", f"/app/installations/{installation['id']}/access_tokens", 201),
    ]
    assert [r["pipeline"] for r in runs(db_path)] == [f"{REPOS[0]}/{CI}"]
    assert_no_credential_logged(log_lines, fake)


async def test_a_revoked_token_is_replaced_after_one_401(fake: FakeGitHubApp, start: Callable[..., Any]) -> None:
    installation = fake.install(ORG, REPOS[:1])  # one repository: one request in flight at a time
    daemon = await start(app_source(fake.server, installation_id=installation["id"]))
    await daemon.first_cycle("github")
    fake.token_lifetime = 3600
    fake.expire_tokens()  # revoked, say: GitHub answers 401 before the expiry the client knows
    await daemon.poller.poll_once("github")
    assert refused(fake) == [("GET", f"/repos/{REPOS[0]}/actions/runs")] and len(fake.issued) == 2
    assert fake.requests[-1].status == 304  # the same request again, with the new token: unchanged
    assert daemon.poller.status()["github"]["last_error"] is None


async def test_an_app_not_installed_says_so(fake: FakeGitHubApp, start: Callable[..., Any]) -> None:
    daemon = await start(app_source(fake.server, repos=[f"org:{ORG}"]))
    await daemon.first_cycle("github")
    error = daemon.poller.status()["github"]["last_error"]
    assert f"github: GitHub App {APP_ID} is not installed on {ORG}: install it there, or give installation_id" in error


async def test_an_unknown_installation_id_says_so(fake: FakeGitHubApp, start: Callable[..., Any]) -> None:
    fake.install(ORG, REPOS)
    daemon = await start(app_source(fake.server, installation_id=999))
    await daemon.first_cycle("github")
    error = daemon.poller.status()["github"]["last_error"]
    assert f"installation 999 of GitHub App {APP_ID} was not found: uninstalled, or a wrong id" in error


async def test_a_wrong_app_id_names_the_jwt(fake: FakeGitHubApp, start: Callable[..., Any]) -> None:
    installation = fake.install(ORG, REPOS)
    daemon = await start(app_source(fake.server, app_id=999, installation_id=installation["id"]))
    await daemon.first_cycle("github")
    assert "refused the App's JWT: check app_id (999)" in daemon.poller.status()["github"]["last_error"]


async def test_the_apps_webhook_works_as_a_repository_webhook(
    fake: FakeGitHubApp, start: Callable[..., Any], db_path: Any
) -> None:
    installation = fake.install(ORG, REPOS)
    other = fake.install("someone-else", ["someone-else/repo"])
    daemon = await start(app_source(fake.server, installation_id=installation["id"], poll_interval="0s"))
    url = daemon.client.make_url("/hooks/github")
    ours = fake.add_run(REPOS[0], CI, status="completed", conclusion="failure")
    theirs = fake.add_run("someone-else/repo", CI, status="completed", conclusion="failure")
    for run, owner in ((ours, installation), (theirs, other)):
        payload = {**fake.webhook_payload(run["id"]), "installation": {"id": owner["id"], "node_id": "MDIz"}}
        delivery = await fake.send_webhook(daemon.client.session, url, run["id"], GITHUB_SECRET, payload=payload)
        assert delivery.status == 202
    # The other installation's delivery is its own source's: authentic, stored raw, no run here.
    applied(db_path)
    assert [(r["run_id"], r["status"]) for r in runs(db_path)] == [(str(ours["id"]), "failed")]
    forged = await fake.send_webhook(daemon.client.session, url, ours["id"], "not-the-secret")
    assert forged.status == 401


def assert_no_credential_logged(stream: io.StringIO, fake: FakeGitHubApp) -> None:
    text = stream.getvalue()
    assert "GitHub App installation token fetched" in text  # the log was captured
    assert fake.issued and fake.jwts
    for secret in [*fake.issued, *fake.jwts]:
        assert secret not in text
    body = [line for line in PEM.splitlines() if not line.startswith("-----")]
    assert not any(line in text for line in body)
    for line in text.splitlines():
        json.loads(line)  # every line is a whole JSON line: nothing was printed around the logger
