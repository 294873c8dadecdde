"""GET /api/v1/events/stream: server-sent events, Last-Event-ID replay, keepalives, shutdown."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from tests.api.client import PREFIX, Api, validate
from tests.conftest import API_TOKEN, github_run, gitlab_pipeline

STREAMS = 50

# --- the event stream ----------------------------------------------------------------------------------


async def _read_stream(response: Any, count: int, timeout: float = 5.0) -> tuple[list[dict[str, Any]], list[str]]:
    """`count` events (id line checked against the data's id, data against the Event schema) and the
    comments seen on the way."""
    events: list[dict[str, Any]] = []
    comments: list[str] = []
    fields: dict[str, str] = {}
    async with asyncio.timeout(timeout):
        while len(events) < count:
            line = (await response.content.readline()).decode()
            assert line, "the stream ended"
            line = line.rstrip("\n")
            if line.startswith(":"):
                comments.append(line)
            elif line:
                name, _, value = line.partition(": ")
                fields[name] = value
            elif fields:
                event = json.loads(fields["data"])
                validate(event, {"$ref": "#/components/schemas/Event"})
                assert fields["id"] == str(event["id"]) and set(fields) == {"id", "data"}
                events.append(event)
                fields = {}
    return events, comments


async def _stream(api: Api, token: str = API_TOKEN, **headers: str) -> Any:
    response = await api.client.get(PREFIX + "/events/stream", headers={"Authorization": f"Bearer {token}", **headers})
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/event-stream"
    return response


async def test_stream_sends_an_event_posted_after_connecting(api):
    await api.seed()  # before connecting: not sent
    response = await _stream(api)
    await api.github(github_run("failure", run_id=777))
    [event], _ = await _read_stream(response, 1)
    assert (event["run_id"], event["status"], event["source"], event["kind"]) == ("777", "failed", "github", "run")
    [stored] = (await api.get("/events", run_id="777")).body["events"]
    assert event == stored  # the stream and the log show an event the same way
    response.close()


async def test_stream_replays_after_last_event_id_then_follows(api):
    await api.seed()
    ids = sorted(e["id"] for e in (await api.get("/events")).body["events"])
    response = await _stream(api, **{"Last-Event-ID": str(ids[2])})
    replayed, _ = await _read_stream(response, len(ids) - 3)
    assert [e["id"] for e in replayed] == ids[3:]
    await api.gitlab(gitlab_pipeline("success", pipeline_id=40))
    [new], _ = await _read_stream(response, 1)
    assert new["id"] == ids[-1] + 1 and new["run_id"] == "40"
    response.close()


async def test_a_last_event_id_beyond_the_log_does_not_hide_new_events(api):
    await api.seed()
    response = await _stream(api, **{"Last-Event-ID": "999999"})
    await api.github(github_run("failure", run_id=778))
    [event], _ = await _read_stream(response, 1)
    assert event["run_id"] == "778"
    response.close()


async def test_stream_filters_by_source_and_keeps_alive(api):
    response = await api.client.get(
        PREFIX + "/events/stream", params={"source": "gitlab"}, headers={"Authorization": f"Bearer {API_TOKEN}"}
    )
    await api.github(github_run("success", run_id=5))
    await api.gitlab(gitlab_pipeline("success", pipeline_id=41))
    [event], _ = await _read_stream(response, 1)
    assert event["run_id"] == "41"
    async with asyncio.timeout(5):  # keepalive is 0.2 s in these tests, 15 s by default
        while (line := await response.content.readline()) != b": keepalive\n":
            assert line in (b"\n",), line
    response.close()


async def test_stream_ends_when_the_daemon_shuts_down(api):
    response = await _stream(api)
    await api.client.app.shutdown()
    async with asyncio.timeout(5):
        assert await response.content.read() == b""


async def test_stream_refuses_a_bad_last_event_id(api):
    response = await api.client.get(
        PREFIX + "/events/stream", headers={"Authorization": f"Bearer {API_TOKEN}", "Last-Event-ID": "abc"}
    )
    assert response.status == 400 and (await response.json())["error"]["message"].startswith("Last-Event-ID:")


async def test_an_event_is_serialized_once_for_every_stream(api, monkeypatch):
    """What the streams are given is one bytes object, not one encoding per stream (500 streams
    encoding each event made ingest 18 times slower)."""
    written: list[bytes] = []  # kept alive, so that no two of them can share an id()
    write = web.StreamResponse.write

    async def recording(self: web.StreamResponse, data: bytes) -> None:
        if data.startswith(b"id: "):
            written.append(data)
        await write(self, data)

    monkeypatch.setattr(web.StreamResponse, "write", recording)
    streams = [await _stream(api) for _ in range(STREAMS)]
    await api.github(github_run("failure", run_id=779))
    for response in streams:
        [event], _ = await _read_stream(response, 1)
        assert event["run_id"] == "779"
        response.close()
    assert len(written) == STREAMS
    assert len({id(frame) for frame in written}) == 1
