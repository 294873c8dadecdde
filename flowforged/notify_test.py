"""`flowforged notify-test SINK`: a sample notification through a configured sink, and its answer."""

from __future__ import annotations

import dataclasses

import aiohttp

from flowforged import __version__, logs
from flowforged.errors import PermanentSinkError, SinkError
from flowforged.plugin import Notification, Sink, SinkContext

SAMPLE = Notification(
    id=0,
    sink="",
    transition="broken",
    source="github",
    pipeline="octo-org/octo-repo/.github/workflows/ci.yml",
    branch="main",
    run_id="0",
    attempt=1,
    url="https://github.com/octo-org/octo-repo/actions",
    sha="3484a3fb816e0859fd6e1cea078d76385ff50625",
    commit_message="This is a test notification from flowforged notify-test",
    author="FlowForge",
    duration_seconds=252.0,
    failed_jobs=("test (example)",),
    pipeline_name="CI",
)


async def send_sample(sink: Sink) -> tuple[bool, str]:
    timeout = aiohttp.ClientTimeout(total=30, connect=10)
    async with aiohttp.ClientSession(timeout=timeout, headers={"User-Agent": f"flowforged/{__version__}"}) as http:
        context = SinkContext(http=http, log=logs.get("flowforged.sink"))
        try:
            return True, await sink.send(dataclasses.replace(SAMPLE, sink=sink.name), context)
        except (SinkError, PermanentSinkError) as exc:
            kind = "permanent" if isinstance(exc, PermanentSinkError) else "transient"
            return False, f"{kind} error: {exc}"
