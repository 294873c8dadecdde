"""The Slack sink against a fake incoming webhook that answers as Slack documents."""

from __future__ import annotations

import dataclasses
import json
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pydantic
import pytest

from flowforged import logs
from flowforged.errors import PermanentSinkError, SinkError
from flowforged.plugin import Notification, SinkContext
from flowforged.secrets import SecretContext
from flowforged_plugins.sinks import slack
from flowforged_plugins.sinks.slack import SlackSink
from tests.fakes.receiver import Receiver
from tests.fakes.slack import FakeSlack, validate

SHA = "3484a3fb816e0859fd6e1cea078d76385ff50625"
RUN_URL = "https://github.com/octo-org/octo-repo/actions/runs/9876543210/attempts/2"
SECRET_PARTS = [part for part in FakeSlack.PATH.split("/") if part and part != "services"]

BROKEN = Notification(
    id=42,
    sink="team-slack",
    transition="broken",
    source="github",
    pipeline="octo-org/octo-repo/.github/workflows/test.yml",
    branch="main",
    run_id="9876543210",
    attempt=2,
    url=RUN_URL,
    sha=SHA,
    commit_message="Retry flaky <Redis> & cache tests\n\nThe body of the message.",
    author="monalisa",
    duration_seconds=252.4,
    failed_jobs=("test (ubuntu-latest, 3.11)", "lint"),
    pipeline_name="Tests",
    finished_at="2024-05-01T10:04:12Z",
)


def other(n: int, **changes: Any) -> dict[str, Any]:
    """A further pipeline of the same commit, as the dispatcher groups them."""
    item = dataclasses.asdict(BROKEN) | {
        "id": 100 + n,
        "pipeline": f"octo-org/octo-repo/.github/workflows/check-{n}.yml",
        "pipeline_name": f"Check {n}",
        "run_id": str(9876543300 + n),
        "attempt": 1,
        "url": f"https://github.com/octo-org/octo-repo/actions/runs/{9876543300 + n}",
        "failed_jobs": [f"job-{n}"],
        "duration_seconds": 61.0,
    }
    return item | changes


def block_texts(payload: dict[str, Any]) -> list[str]:
    texts = []
    for block in payload["blocks"]:
        if block["type"] == "section":
            texts.append(block["text"]["text"])
        elif block["type"] == "context":
            texts += [element["text"] for element in block["elements"]]
    return texts


def make_sink(url: str) -> SlackSink:
    secrets = SecretContext(environ={"FLOWFORGED_SECRET_SLACK_WEBHOOK": url}, use_keyring=False)
    config = SlackSink.config_model.model_validate(
        {"type": "slack", "webhook_url": {"secret": "slack-webhook"}}, context={"secrets": secrets}
    )
    return SlackSink("team-slack", config)


def assert_no_secret(text: str) -> None:
    for part in SECRET_PARTS:
        assert part not in text


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # As the core makes it: one session for the app, a timeout on every request, its User-Agent.
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout, headers={"User-Agent": "flowforged/test"}) as session:
        yield session


@pytest.fixture
def context(http: aiohttp.ClientSession) -> SinkContext:
    return SinkContext(http=http, log=logs.get("flowforged.sinks"))


@pytest.fixture
async def fake(aiohttp_server: Callable[..., Any]) -> AsyncIterator[tuple[FakeSlack, str]]:
    fake = FakeSlack()
    server = await aiohttp_server(fake.app())
    yield fake, str(server.make_url(fake.path))


# --- sending ------------------------------------------------------------------------------------


async def test_a_broken_pipeline_is_posted_to_the_channel(fake, context) -> None:
    slack_fake, url = fake
    answer = await make_sink(url).send(BROKEN, context)

    assert answer == "ok"
    [message] = slack_fake.messages
    assert message["text"] == "🔴 Broken: Tests on main (3484a3f)"
    text = "\n".join(block_texts(message))
    assert "*Broken:* *Tests* on `main`" in text
    assert "`octo-org/octo-repo/.github/workflows/test.yml`" in text
    assert f"<{RUN_URL}|run 9876543210 (attempt 2)>" in text
    assert "`3484a3f` Retry flaky &lt;Redis&gt; &amp; cache tests" in text
    assert "The body of the message" not in text
    assert "*Author:* monalisa" in text
    assert "*Duration:* 4m 12s" in text
    assert "*Failed jobs:* test (ubuntu-latest, 3.11), lint" in text
    # Sent over the session the core lends, not a session of its own.
    assert slack_fake.received[0].headers["User-Agent"] == "flowforged/test"
    assert slack_fake.received[0].headers["Content-Type"].startswith("application/json")


async def test_a_fixed_pipeline_is_green(fake, context) -> None:
    slack_fake, url = fake
    fixed = dataclasses.replace(BROKEN, transition="fixed", failed_jobs=())
    await make_sink(url).send(fixed, context)
    [message] = slack_fake.messages
    assert message["text"].startswith("🟢 Fixed: Tests on main")
    assert "Failed jobs" not in json.dumps(message)


async def test_rate_limited_waits_as_long_as_slack_says(fake, context) -> None:
    slack_fake, url = fake
    slack_fake.script(["429:2"])
    sink = make_sink(url)

    with pytest.raises(SinkError) as caught:
        await sink.send(BROKEN, context)
    assert not isinstance(caught.value, PermanentSinkError)
    assert caught.value.retry_after == 2
    assert await sink.send(BROKEN, context) == "ok"
    assert len(slack_fake.messages) == 1


def test_a_429_without_retry_after_waits_one_second() -> None:
    with pytest.raises(SinkError) as caught:
        slack.answer(429, "rate_limited", None)
    assert caught.value.retry_after == 1.0


@pytest.mark.parametrize(
    ("script", "error"),
    [
        ("400", "invalid_payload"),
        ("400:invalid_blocks", "invalid_blocks"),
        ("403", "invalid_token"),
        ("403:action_prohibited", "action_prohibited"),
        ("404", "no_service"),
        ("404:channel_not_found", "channel_not_found"),
        ("410", "channel_is_archived"),
        ("400:posting_to_general_channel_denied", "posting_to_general_channel_denied"),
        ("418:teapot", "teapot"),
    ],
)
async def test_refusals_are_permanent_and_name_slacks_error(fake, context, script, error) -> None:
    slack_fake, url = fake
    slack_fake.script([script])
    with pytest.raises(PermanentSinkError) as caught:
        await make_sink(url).send(BROKEN, context)
    assert error in str(caught.value)
    assert_no_secret(str(caught.value))
    assert slack_fake.messages == []


async def test_a_revoked_webhook_says_to_create_a_new_one(fake, context) -> None:
    slack_fake, url = fake
    revoked = url.replace(slack_fake.path, "/services/T0FAKETEAM/B0FAKEHOOK/revokedTOKENvalue")
    with pytest.raises(PermanentSinkError, match="no_service.*create a new one") as caught:
        await make_sink(revoked).send(BROKEN, context)
    assert "revokedTOKENvalue" not in str(caught.value)


async def test_a_server_error_is_retried(fake, context) -> None:
    slack_fake, url = fake
    slack_fake.script(["500", "503"])
    sink = make_sink(url)
    messages = []
    for _ in range(2):
        with pytest.raises(SinkError) as caught:
            await sink.send(BROKEN, context)
        assert not isinstance(caught.value, PermanentSinkError)
        assert_no_secret(str(caught.value))
        messages.append(str(caught.value))
    assert messages == ["Slack answered HTTP 500: rollup_error", "Slack answered HTTP 503: error"]
    assert await sink.send(BROKEN, context) == "ok"


async def test_an_unreachable_slack_is_retried_without_showing_the_url(context) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}{FakeSlack.PATH}"  # nothing listens there any more
    with pytest.raises(SinkError) as caught:
        await make_sink(url).send(BROKEN, context)
    assert not isinstance(caught.value, PermanentSinkError)
    assert "cannot connect to Slack" in str(caught.value)
    assert_no_secret(str(caught.value))
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


async def test_a_slack_that_does_not_answer_times_out(fake) -> None:
    slack_fake, url = fake
    slack_fake.script(["hang"])
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.3)) as http:
        context = SinkContext(http=http, log=logs.get("flowforged.sinks"))
        with pytest.raises(SinkError, match="did not answer in time") as caught:
            await make_sink(url).send(BROKEN, context)
    assert_no_secret(str(caught.value))


async def test_a_grouped_notification_with_everything_too_long_is_still_posted(fake, context) -> None:
    slack_fake, url = fake
    huge = dataclasses.replace(
        BROKEN,
        commit_message="x" * 10_000,
        failed_jobs=tuple(f"integration / shard {n} of 60 ({'y' * 150})" for n in range(60)),
        others=tuple(other(n) for n in range(80)),
    )
    assert await make_sink(url).send(huge, context) == "ok"
    assert len(slack_fake.messages) == 1


# --- configuration ------------------------------------------------------------------------------


def test_slack_accepts_one_message_per_second() -> None:
    assert SlackSink.min_interval == 1.0


def test_a_webhook_url_that_is_not_a_url_is_refused_without_repeating_it() -> None:
    with pytest.raises(pydantic.ValidationError) as caught:
        SlackSink.config_model.model_validate({"type": "slack", "webhook_url": "hooks.slack.com/T0/B0/zzzz"})
    assert "zzzz" not in "; ".join(error["msg"] for error in caught.value.errors())


def test_commands_that_need_no_secret_accept_a_missing_webhook_url() -> None:
    # `flowforged runs` resolves secrets leniently: a missing one must not make the config invalid.
    lenient = SecretContext(environ={}, use_keyring=False, lenient=True)
    config = SlackSink.config_model.model_validate(
        {"type": "slack", "webhook_url": {"secret": "slack-webhook"}}, context={"secrets": lenient}
    )
    assert config.webhook_url.origin == "missing"


def test_unknown_keys_are_refused() -> None:
    with pytest.raises(pydantic.ValidationError, match="channel"):
        SlackSink.config_model.model_validate(
            {"type": "slack", "webhook_url": "https://hooks.slack.com/services/T0/B0/x", "channel": "#ci"}
        )


def test_the_webhook_url_never_shows_in_the_config_repr() -> None:
    config = SlackSink.config_model.model_validate(
        {"type": "slack", "webhook_url": "https://hooks.slack.com/services/T0/B0/zzzzsecret"}
    )
    assert "zzzzsecret" not in repr(config)


# --- rendering (pure) ---------------------------------------------------------------------------


def test_sixty_failed_jobs_and_eighty_others_stay_within_slacks_limits() -> None:
    crowded = dataclasses.replace(
        BROKEN,
        failed_jobs=tuple(f"test / shard {n}" for n in range(60)),
        others=tuple(other(n, failed_jobs=[f"job {n}.{m}" for m in range(60)]) for n in range(80)),
    )
    payload = slack.render(crowded)

    assert validate(payload) is None
    assert len(payload["blocks"]) <= 50
    assert all(len(text) <= 3000 for text in block_texts(payload))
    text = "\n".join(block_texts(payload))
    assert "test / shard 0, test / shard 1" in text
    assert "and 40 more" in text  # of the failed jobs: 20 listed
    assert "…and 60 more pipelines of this commit" in text
    assert "Check 19" in text and "Check 20*" not in text
    assert payload["text"].endswith("and 80 more pipelines of this commit")


def test_a_ten_thousand_character_commit_message_is_cut() -> None:
    payload = slack.render(dataclasses.replace(BROKEN, commit_message="Refactor " + "z" * 10_000))
    assert validate(payload) is None
    [commit_line] = [
        line for text in block_texts(payload) for line in text.splitlines() if line.startswith("*Commit:*")
    ]
    assert commit_line.endswith("…")
    assert len(commit_line) < 400


def test_long_job_names_still_fit() -> None:
    payload = slack.render(dataclasses.replace(BROKEN, failed_jobs=tuple("j" * 5000 for _ in range(60))))
    assert validate(payload) is None
    assert all(len(text) <= 3000 for text in block_texts(payload))


def test_user_text_cannot_ping_the_channel_or_forge_links() -> None:
    sneaky = dataclasses.replace(
        BROKEN,
        commit_message="<!channel> see <https://evil.example|the fix>",
        author="<@U012AB3CD>",
        pipeline_name="Tests & <!here>",
        failed_jobs=("<!everyone>",),
    )
    payload = slack.render(sneaky)
    everything = json.dumps(payload, ensure_ascii=False)
    for raw in ("<!channel>", "<!here>", "<!everyone>", "<@U012AB3CD>", "<https://evil.example"):
        assert raw not in everything
    assert "&lt;!channel&gt;" in everything
    assert "Tests &amp; &lt;!here&gt;" in payload["text"]


def test_a_url_cannot_end_its_link_early() -> None:
    odd = dataclasses.replace(BROKEN, url="https://ci.example.com/run?a=1&b=<2>|x")
    text = slack.render(odd)["blocks"][0]["text"]["text"]
    assert "<https://ci.example.com/run?a=1&amp;b=%3C2%3E%7Cx|run 9876543210 (attempt 2)>" in text


def test_still_failing_is_red_and_says_so() -> None:
    payload = slack.render(dataclasses.replace(BROKEN, transition="still_failing"))
    assert payload["text"].startswith("🔴 Still failing: Tests")


def test_a_notification_with_little_known_is_still_valid() -> None:
    bare = Notification(
        id=7,
        sink="team-slack",
        transition="broken",
        source="gitlab",
        pipeline="gitlab-org/gitlab-test",
        branch=None,
        run_id="31",
        attempt=1,
        url=None,
        sha=None,
        commit_message=None,
        author=None,
        duration_seconds=None,
    )
    payload = slack.render(bare)
    assert validate(payload) is None
    assert payload["text"] == "🔴 Broken: gitlab-test"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (252.4, "4m 12s"),
        (45, "45s"),
        (0.2, "0s"),
        (60, "1m"),
        (3720, "1h 2m"),
        (7200, "2h"),
        (3601, "1h"),
    ],
)
def test_durations_read_like_a_person_would_say_them(seconds: float, text: str) -> None:
    assert slack.human_duration(seconds) == text


def test_the_fake_refuses_what_slack_refuses() -> None:
    # Otherwise the limit tests above would prove nothing.
    section = {"type": "section", "text": {"type": "mrkdwn", "text": "x"}}
    assert validate({"text": "hi", "blocks": [section] * 51}) == "invalid_blocks"
    too_long = {"type": "section", "text": {"type": "mrkdwn", "text": "x" * 3001}}
    assert validate({"text": "hi", "blocks": [too_long]}) == "invalid_blocks"
    assert validate({"blocks": []}) == "no_text"
    assert validate([]) == "invalid_payload"
    assert validate({"text": "hi", "blocks": [section] * 50}) is None


async def test_a_webhook_url_echoed_in_a_long_error_never_shows_in_part(aiohttp_server, context) -> None:
    # A proxy in front of Slack may quote the request path in its error page; the excerpt's cut must
    # not leave half of it in the stored error.
    path = FakeSlack.PATH
    receiver = Receiver(path=path).script([f"502:{'x' * 60} bad gateway for POST {path}"])
    server = await aiohttp_server(receiver.app())
    with pytest.raises(SinkError) as caught:
        await make_sink(str(server.make_url(path))).send(BROKEN, context)
    assert "bad gateway for POST" in str(caught.value)
    assert_no_secret(str(caught.value))
    assert not [part for part in SECRET_PARTS if part[:4] in str(caught.value)]
