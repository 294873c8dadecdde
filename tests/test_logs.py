"""The log redactor: a registered secret never reaches a log line, whatever characters it holds."""

from __future__ import annotations

import io
import json
import logging

import pytest

from flowforged import logs

# JSON escapes `"` and `\`, and ensure_ascii turns `é` into `\u00e9`: a redactor that matches the
# rendered line finds none of these.
SECRETS = ['pa"ss-word-91', "back\\slash-key-42", "clé-secrète-77"]


@pytest.fixture
def output():
    stream = io.StringIO()
    logs.setup(level="debug", stream=stream)
    for secret in SECRETS:
        logs.redact(secret)
    yield stream
    logs.setup(level="info")


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def assert_nowhere(stream: io.StringIO) -> None:
    text = stream.getvalue()
    for secret in SECRETS:
        shown = (secret, repr(secret)[1:-1])  # as it is, and as repr() shows it (a KeyError, a `!r`)
        fragments = {
            form
            for each in shown
            for form in (each, json.dumps(each)[1:-1], json.dumps(each, ensure_ascii=False)[1:-1])
        }
        assert not [fragment for fragment in fragments if fragment in text], (secret, text)
    for line in lines(stream):
        decoded = json.dumps(line, ensure_ascii=False)
        assert not [secret for secret in SECRETS if secret in decoded or repr(secret)[1:-1] in decoded]


@pytest.mark.parametrize("secret", SECRETS)
def test_a_secret_in_a_field_the_message_or_a_nested_value_is_redacted(output, secret) -> None:
    logs.get("test").warning(f"login with {secret} failed", token=secret, nested={"list": [f"x{secret}x", 3]})
    assert_nowhere(output)
    [line] = lines(output)
    assert line["token"] == logs.REDACTED
    assert line["event"] == f"login with {logs.REDACTED} failed"
    assert line["nested"] == {"list": [f"x{logs.REDACTED}x", 3]}


@pytest.mark.parametrize("secret", SECRETS)
def test_a_secret_in_an_exception_and_its_traceback_is_redacted(output, secret) -> None:
    try:
        try:
            raise KeyError(secret)  # repr() of the key escapes `\` once more
        except KeyError as exc:
            raise ValueError(f"could not use {secret}") from exc
    except ValueError:
        logs.get("test").exception("request failed")
    assert_nowhere(output)
    assert "could not use" in output.getvalue()


@pytest.mark.parametrize("secret", SECRETS)
def test_a_secret_logged_by_the_standard_library_is_redacted(output, secret) -> None:
    logging.getLogger("aiohttp.server").error("bad request from %s", secret)
    assert_nowhere(output)
    assert lines(output)[0]["event"] == f"bad request from {logs.REDACTED}"


def test_an_object_whose_repr_holds_a_secret_is_redacted(output) -> None:
    class Credentials:
        def __repr__(self) -> str:
            return f"Credentials({SECRETS[0]!r})"

    logs.get("test").info("using", credentials=Credentials())
    assert_nowhere(output)
