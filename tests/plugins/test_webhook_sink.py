"""The webhook sink against a receiver that verifies Standard Webhooks signatures from the spec."""

from __future__ import annotations

import base64
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pydantic
import pytest

from flowforged import logs
from flowforged.errors import PermanentSinkError, SinkError
from flowforged.plugin import Notification, SinkContext
from flowforged.secrets import SecretContext
from flowforged_plugins.sinks import webhook
from flowforged_plugins.sinks.webhook import WebhookSink
from tests.fakes.receiver import Receiver, verify_signature

# The Standard Webhooks test vector, published with the spec's reference libraries.
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

FIXED = Notification(
    id=1207,
    sink="chatops",
    transition="fixed",
    source="gitlab",
    pipeline="gitlab-org/gitlab-test",
    branch="master",
    run_id="31",
    attempt=1,
    url="https://gitlab.example.com/gitlab-org/gitlab-test/-/pipelines/31",
    sha="bcbb5ec396a2c0f828686f14fac9b80b780504f2",
    commit_message="Add simple search to projects in public area",
    author="Administrator",
    duration_seconds=63.0,
    pipeline_name="gitlab-test",
    finished_at="2016-08-12T15:26:29Z",
)


def make_sink(config: dict[str, Any], environ: dict[str, str] | None = None) -> WebhookSink:
    secrets = SecretContext(environ=environ or {}, use_keyring=False)
    validated = WebhookSink.config_model.model_validate({"type": "webhook", **config}, context={"secrets": secrets})
    return WebhookSink("chatops", validated)


@pytest.fixture
async def context() -> AsyncIterator[SinkContext]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
        yield SinkContext(http=http, log=logs.get("flowforged.sinks"))


@pytest.fixture
def serve(aiohttp_server: Callable[..., Any]) -> Callable[..., Any]:
    async def start(receiver: Receiver) -> str:
        server = await aiohttp_server(receiver.app())
        return str(server.make_url(receiver.path))

    return start


def test_signatures_match_the_standard_webhooks_test_vector() -> None:
    key = webhook.signing_key(VECTOR_SECRET)
    signature = webhook.sign(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}')
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


async def test_a_signed_notification_verifies_at_the_receiver(serve, context) -> None:
    receiver = Receiver(secret=VECTOR_SECRET)
    url = await serve(receiver)
    answer = await make_sink({"url": url, "secret": VECTOR_SECRET}).send(FIXED, context)

    assert answer == "HTTP 200"
    [request] = receiver.received
    assert request.verified is True
    assert request.headers["webhook-id"] == "ff_1207"
    assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 60
    assert request.headers["Content-Type"] == "application/json"
    body = request.json()
    assert body["type"] == "flowforge.notification" and body["version"] == 1
    assert body["id"] == 1207 and body["transition"] == "fixed"
    assert body["pipeline"] == "gitlab-org/gitlab-test" and body["failed_jobs"] == []
    assert body["duration_seconds"] == 63.0 and body["sha"] == FIXED.sha


async def test_a_raw_secret_without_the_prefix_signs_with_its_bytes(serve, context) -> None:
    receiver = Receiver(secret="a plain shared secret")
    url = await serve(receiver)
    await make_sink({"url": url, "secret": "a plain shared secret"}).send(FIXED, context)
    assert receiver.received[0].verified is True


async def test_a_receiver_with_another_secret_refuses_it(serve, context) -> None:
    other = "whsec_" + base64.b64encode(b"another key of thirty-two bytes!").decode()
    receiver = Receiver(secret=other)
    url = await serve(receiver)
    with pytest.raises(PermanentSinkError, match="HTTP 401"):
        await make_sink({"url": url, "secret": VECTOR_SECRET}).send(FIXED, context)
    assert receiver.received[0].verified is False


async def test_a_retry_keeps_the_id_so_the_receiver_can_drop_duplicates(serve, context) -> None:
    receiver = Receiver(secret=VECTOR_SECRET).script(["500"])
    url = await serve(receiver)
    sink = make_sink({"url": url, "secret": VECTOR_SECRET})
    with pytest.raises(SinkError):
        await sink.send(FIXED, context)
    assert await sink.send(FIXED, context) == "HTTP 200"
    first, second = receiver.received
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == "ff_1207"
    assert second.verified is True


async def test_without_a_secret_nothing_is_signed_and_headers_are_sent(serve, context) -> None:
    receiver = Receiver()
    url = await serve(receiver)
    sink = make_sink(
        {"url": url, "headers": {"Authorization": {"env": "RECEIVER_TOKEN"}, "X-Team": "ci"}},
        environ={"RECEIVER_TOKEN": "Bearer rcv-token-77f1"},
    )
    await sink.send(FIXED, context)
    [request] = receiver.received
    assert "webhook-signature" not in request.headers
    assert request.headers["Authorization"] == "Bearer rcv-token-77f1"
    assert request.headers["X-Team"] == "ci"


@pytest.mark.parametrize(("script", "retry_after"), [("500", None), ("503:7", 7), ("429:3", 3), ("408", None)])
async def test_transient_answers_are_retried(serve, context, script, retry_after) -> None:
    receiver = Receiver().script([script])
    url = await serve(receiver)
    with pytest.raises(SinkError) as caught:
        await make_sink({"url": url}).send(FIXED, context)
    assert not isinstance(caught.value, PermanentSinkError)
    assert caught.value.retry_after == retry_after
    assert f"HTTP {script.partition(':')[0]}" in str(caught.value)


@pytest.mark.parametrize("script", ["400:payload not understood", "404", "410", "422"])
async def test_refusals_are_permanent_and_say_what_the_receiver_said(serve, context, script) -> None:
    receiver = Receiver().script([script])
    url = await serve(receiver)
    with pytest.raises(PermanentSinkError) as caught:
        await make_sink({"url": url}).send(FIXED, context)
    status, _, said = script.partition(":")
    assert f"answered HTTP {status}" in str(caught.value)
    assert said in str(caught.value)


async def test_a_redirect_is_not_followed(aiohttp_server, context) -> None:
    from aiohttp import web

    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPMovedPermanently("/new-place")

    app = web.Application()
    app.router.add_post("/hook", moved)
    server = await aiohttp_server(app)
    with pytest.raises(PermanentSinkError, match="HTTP 301.*new location"):
        await make_sink({"url": str(server.make_url("/hook"))}).send(FIXED, context)


async def test_a_secret_url_never_shows_in_errors(aiohttp_server, context) -> None:
    token_path = "/hooks/T0K3N-5b2f8e41c7a9"
    # A receiver that quotes the request path back in its error, as many frameworks do.
    receiver = Receiver(path=token_path).script([f"400:no route for POST {token_path}?key=k3y-abc123"])
    server = await aiohttp_server(receiver.app())
    url = str(server.make_url(token_path)) + "?key=k3y-abc123"
    sink = make_sink({"url": {"secret": "hook-url"}}, environ={"FLOWFORGED_SECRET_HOOK_URL": url})
    with pytest.raises(PermanentSinkError) as caught:
        await sink.send(FIXED, context)
    for part in ("T0K3N-5b2f8e41c7a9", "k3y-abc123"):
        assert part not in str(caught.value)
    assert "no route for POST" in str(caught.value)


async def test_an_unreachable_receiver_is_retried_without_showing_a_secret_url(context) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/hooks/T0K3N-5b2f8e41c7a9"
    sink = make_sink({"url": {"secret": "hook-url"}}, environ={"FLOWFORGED_SECRET_HOOK_URL": url})
    with pytest.raises(SinkError) as caught:
        await sink.send(FIXED, context)
    assert not isinstance(caught.value, PermanentSinkError)
    assert f"cannot connect to 127.0.0.1 (127.0.0.1:{port})" in str(caught.value)
    assert "T0K3N" not in str(caught.value)


async def test_a_receiver_that_does_not_answer_times_out(serve, context) -> None:
    receiver = Receiver().script(["hang"])
    url = await serve(receiver)
    with pytest.raises(SinkError, match="did not answer in time"):
        await make_sink({"url": url, "timeout": "300ms"}).send(FIXED, context)


def test_a_malformed_whsec_secret_is_refused_without_repeating_it() -> None:
    with pytest.raises(pydantic.ValidationError) as caught:
        make_sink({"url": "https://receiver.example.com/hook", "secret": "whsec_not*base64!"})
    messages = "; ".join(error["msg"] for error in caught.value.errors())
    assert "must continue with base64" in messages
    assert "not*base64" not in messages


def test_the_receiver_check_refuses_a_replayed_old_request() -> None:
    body = b'{"test": 2432232314}'
    headers = {
        "webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "webhook-timestamp": "1614265330",
        "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
    }
    assert verify_signature(VECTOR_SECRET, headers, body, now=1614265330) is True
    assert verify_signature(VECTOR_SECRET, headers, body, now=1614265330 + 3600) is False


def test_webhooks_have_no_pace_of_their_own() -> None:
    assert WebhookSink.min_interval == 0.0


async def test_a_secret_url_cut_by_the_excerpt_limit_never_shows_in_part(aiohttp_server, context) -> None:
    token_path = "/hooks/T0K3N-5b2f8e41c7a9"
    # The receiver's error is long and quotes the secret path where the 200-character excerpt ends:
    # scrubbing after the cut would leave its first half in the stored error.
    prefix = "x" * 165
    receiver = Receiver(path=token_path).script([f"400:{prefix} no route for POST {token_path} at all"])
    server = await aiohttp_server(receiver.app())
    url = str(server.make_url(token_path))
    sink = make_sink({"url": {"secret": "hook-url"}}, environ={"FLOWFORGED_SECRET_HOOK_URL": url})
    with pytest.raises(PermanentSinkError) as caught:
        await sink.send(FIXED, context)
    message = str(caught.value)
    assert "T0K3N" not in message
    assert message.endswith("…") and prefix in message
