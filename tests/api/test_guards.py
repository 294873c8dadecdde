"""What hostile clients send to /api/v1: token guesses, ids and cursors beyond any id, bodies nested
thousands deep. Each is a 4xx that names what is wrong, never a 500, and a guesser is slowed down."""

from __future__ import annotations

import json
import logging

import pytest

from flowforged.api import auth
from flowforged.api.auth import FailedTokens
from tests.api.client import Api
from tests.conftest import API_TOKEN

# --- token guesses ------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "wrong bearer token" in r.getMessage()]


async def test_wrong_tokens_are_refused_with_429_after_the_limit_and_logged_once(api: Api, caplog):
    for _ in range(auth.LIMIT):
        assert (await api.get("/runs", token="guess")).status == 401
    reply = await api.get("/runs", token="guess")
    assert (reply.status, reply.body["error"]["code"]) == (429, "too_many_requests")
    assert 1 <= int(reply.headers["Retry-After"]) <= auth.WINDOW
    # Refused before the token is compared: the right one waits too, so a guess cannot be confirmed.
    assert (await api.get("/runs")).status == 429
    assert len(_warnings(caplog)) == 1  # one line for the burst, not one per attempt
    assert "guess" not in caplog.text and API_TOKEN not in caplog.text


async def test_the_window_ends_and_a_new_burst_is_logged_again(api: Api, caplog):
    clock = Clock()
    api.context.failed_tokens = FailedTokens(limit=3, window=60, clock=clock)
    for _ in range(3):
        assert (await api.get("/runs", token="guess")).status == 401
    reply = await api.get("/runs")
    assert (reply.status, reply.headers["Retry-After"]) == (429, "60")
    clock.now += 59.5
    assert (await api.get("/runs")).headers["Retry-After"] == "1"
    clock.now += 1
    assert (await api.get("/runs")).status == 200
    assert (await api.get("/runs", token="guess")).status == 401
    first, second = _warnings(caplog)
    assert "previous_burst_failures" in second.getMessage() and "3" in second.getMessage()


def test_failures_are_counted_per_address_and_the_addresses_remembered_are_bounded():
    clock = Clock()
    failures = FailedTokens(limit=2, window=60, clock=clock, addresses=3)
    for address in ("10.0.0.1", "10.0.0.1", "10.0.0.2"):
        failures.failed(address)
    assert failures.retry_after("10.0.0.1") == 60 and failures.retry_after("10.0.0.2") is None
    for n in range(10):  # a guesser with many addresses cannot grow the table
        failures.failed(f"192.0.2.{n}")
    assert len(failures._bursts) == 3


# --- ids, cursors and `after` beyond any id -------------------------------------------------------------

HUGE = "9" * 25
BEYOND = str(2**63)  # one more than SQLite's largest integer


@pytest.mark.parametrize(
    ("method", "path", "params", "named"),
    [
        ("GET", f"/runs/{HUGE}", {}, "id"),
        ("GET", f"/runs/{BEYOND}", {}, "id"),
        ("GET", f"/pipelines/{HUGE}", {}, "id"),
        ("POST", f"/runs/{HUGE}/rerun", {}, "id"),
        ("POST", f"/runs/{BEYOND}/cancel", {}, "id"),
        ("POST", f"/pipelines/{BEYOND}/trigger", {}, "id"),
        ("POST", f"/notifications/{HUGE}/retry", {}, "id"),
        ("GET", f"/silences/{HUGE}", {}, "id"),
        ("POST", f"/silences/{BEYOND}/expire", {}, "id"),
        ("GET", "/runs", {"cursor": f"runs:{HUGE}"}, "cursor"),
        ("GET", "/runs", {"cursor": f"runs:{BEYOND}"}, "cursor"),
        ("GET", "/runs", {"cursor": "cnVuczo5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5"}, "cursor"),  # base64 of one
        ("GET", "/runs", {"cursor": "runs:-1"}, "cursor"),
        ("GET", "/runs", {"cursor": "runs:١٢"}, "cursor"),  # digits, but not ASCII ones
        ("GET", "/pipelines", {"cursor": "\x00" * 2000}, "cursor"),
        ("GET", "/notifications", {"cursor": f"notifications:{HUGE}"}, "cursor"),
        ("GET", "/events", {"cursor": f"events.after:{BEYOND}"}, "cursor"),
        ("GET", "/events", {"after": HUGE}, "after"),
        ("GET", "/events", {"after": BEYOND}, "after"),
        ("GET", "/events", {"after": "9" * 5000}, "after"),  # past the 4300 digits int() converts
        ("GET", "/runs", {"limit": HUGE}, "limit"),
        ("GET", "/runs", {"limit": ""}, "limit"),
    ],
)
async def test_out_of_range_ids_cursors_and_after_are_400(api: Api, method, path, params, named):
    await api.seed()
    body = {"ref": "main"} if path.endswith("/trigger") else None
    reply = await api.call(method, path, body=body, **params)
    assert (reply.status, reply.body["error"]["code"]) == (400, "invalid_parameter"), reply.body
    assert reply.body["error"]["message"].startswith(f"{named}:")
    assert api.operations.calls == []


async def test_the_largest_id_is_simply_not_found(api: Api):
    largest = str(2**63 - 1)
    assert (await api.get(f"/runs/{largest}")).status == 404
    assert (await api.get("/events", after=largest)).body == {"events": [], "next_cursor": None}
    assert (await api.get("/runs", cursor=f"runs:{10**18 - 1}")).status == 200


# --- bodies ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/runs/1/rerun", b"[" * 100_000 + b"]" * 100_000),
        ("/runs/1/cancel", b'{"force": ' + b"[" * 5000 + b"]" * 5000 + b"}"),
        ("/pipelines/1/trigger", b'{"ref": "main", "inputs": {"a": ' + b'{"b": ' * 3000 + b"1" + b"}" * 3001 + b"}"),
        ("/silences", b'{"comment": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"),
    ],
)
async def test_bodies_nested_thousands_deep_are_400(api: Api, path, body):
    await api.seed()
    reply = await api.call("POST", path, data=body)
    assert (reply.status, reply.body["error"]["code"]) == (400, "invalid_body")
    assert api.operations.calls == []


async def test_a_lone_surrogate_in_a_body_is_400_and_stores_nothing(api: Api):
    reply = await api.call("POST", "/silences", data=json.dumps({"comment": "\ud800"}).encode())
    assert (reply.status, reply.body["error"]["message"]) == (400, "body: not UTF-8 text (a lone surrogate?)")
    assert (await api.get("/silences", all="true")).body["silences"] == []
