"""The dispatcher: sends due outbox rows through their sinks (docs/architecture.md).

One worker per sink, so a slow sink delays only itself. Each worker, in order:
  expire   a row older than `max_age` is dead without being sent;
  pace     at most one message per `min_interval` of the sink (Slack: 1 s per webhook), and nothing
           while the sink asked us to wait (429 Retry-After);
  group    due rows of the same rule, sink and commit (group_wait) become one message;
  send     through the sink plugin;
  record   sent, or retried later (Retry-After, else exponential backoff with full jitter), or dead on
           a permanent error. A row stays pending until its outcome is committed, so a notification
           in flight when the daemon stops is sent after restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import Callable
from typing import Any

from flowforged import logs
from flowforged.backoff import backoff
from flowforged.errors import PermanentSinkError, SinkError
from flowforged.plugin import Notification, Sink, SinkContext
from flowforged.store import Store, outbox, threads

log = logs.get("flowforged.dispatch")
Observer = Callable[[str, str, float | None], None]  # (sink, outcome, latency seconds when sent)
IDLE_CHECK = 2.0  # seconds: picks up rows changed by the CLI (retry) without a wake-up


def notification(row: dict[str, Any], failed_jobs: list[str], others: list[dict[str, Any]]) -> Notification:
    payload = json.loads(row["payload"])
    return Notification(
        id=row["id"],
        sink=row["sink"],
        transition=row["transition"],
        source=payload["source"],
        pipeline=payload["pipeline"],
        branch=payload.get("branch"),
        run_id=str(payload.get("run_id")),
        attempt=payload.get("attempt") or 1,
        url=payload.get("url"),
        sha=payload.get("sha"),
        commit_message=payload.get("commit_message"),
        author=payload.get("author"),
        duration_seconds=payload.get("duration_seconds"),
        failed_jobs=tuple(failed_jobs),
        pipeline_name=payload.get("pipeline_name") or "",
        finished_at=payload.get("finished_at"),
        others=tuple(json.loads(o["payload"]) | {"id": o["id"]} for o in others),
    )


class Dispatcher:
    def __init__(
        self,
        store: Store,
        sinks: dict[str, Sink],
        http: Any,
        *,
        max_age: float = 86400.0,
        backoff_base: float = 1.0,
        backoff_cap: float = 600.0,
        clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
    ):
        self.store = store
        self.sinks = sinks
        self.context = SinkContext(http=http, log=logs.get("flowforged.sink"), threads=threads.Threads(store))
        self.max_age = max_age
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.clock = clock
        self.rng = rng
        self.observers: list[Observer] = []
        self._wake = {name: asyncio.Event() for name in sinks}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._last_sent: dict[str, float] = {}
        self._paused_until: dict[str, float] = {}

    def start(self) -> None:
        for name in self.sinks:
            self._start(name)

    def _start(self, name: str) -> None:
        self._wake[name] = asyncio.Event()
        self._tasks[name] = asyncio.create_task(self._worker(name), name=f"sink-{name}")

    async def stop(self) -> None:
        await self._stop(list(self._tasks))

    async def _stop(self, names: list[str]) -> None:
        tasks = [self._tasks.pop(name) for name in names if name in self._tasks]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def reload(self, sinks: dict[str, Sink]) -> dict[str, list[str]]:
        """Take the sinks of a new configuration. A sink whose config is unchanged keeps its object
        (and its pacing); a changed one is swapped, and its worker uses it from its next message on; a
        removed sink's worker stops (a message it was sending stays pending, as at shutdown)."""
        added = [name for name in sinks if name not in self.sinks]
        changed = [name for name in sinks if name in self.sinks and sinks[name].config != self.sinks[name].config]
        removed = [name for name in self.sinks if name not in sinks]
        for name in added + changed:
            self.sinks[name] = sinks[name]
        for name in added:
            self._start(name)
        await self._stop(removed)
        for name in removed:
            del self.sinks[name]
            self._wake.pop(name, None)
        return {"added": added, "changed": changed, "removed": removed}

    def wake(self) -> None:
        for event in self._wake.values():
            event.set()

    async def _worker(self, name: str) -> None:
        while True:
            try:
                # Cleared before looking, not after waiting: a wake-up that comes while this worker
                # reads or sends is kept for the next round instead of lost until IDLE_CHECK.
                self._wake[name].clear()
                await self.run_once(name)
                wait = IDLE_CHECK
                next_due = await self.store.peek(outbox.next_due, name)
                if next_due is not None:
                    wait = min(wait, max(next_due - self.clock(), 0.0))
                if wait > 0:
                    # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
                    # lands as its timeout fires, and then stop() waits for this worker for ever.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(wait):
                            await self._wake[name].wait()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("dispatcher error; retrying", sink=name)
                await asyncio.sleep(1.0)

    async def run_once(self, name: str) -> int:
        """Send every row of this sink that is due now; return how many messages were sent."""
        sent = 0
        rows = await self.store.peek(outbox.due, name, self.clock())
        done: set[int] = set()
        for row in rows:
            if row["id"] in done:
                continue
            group = [row]
            if row["group_key"]:
                group = await self.store.peek(outbox.group, row["group_key"]) or [row]
            done.update(r["id"] for r in group)
            sent += await self._deliver(name, group)
        return sent

    async def _deliver(self, name: str, group: list[dict[str, Any]]) -> int:
        sink, first, ids = self.sinks[name], group[0], [r["id"] for r in group]
        now = self.clock()
        if now - first["created_at"] > self.max_age:
            await self._record(
                name,
                "dead",
                outbox.mark_dead,
                ids,
                f"expired: not sent within max_age ({self.max_age:g} s); last error: {first['last_error'] or 'none'}",
            )
            return 0
        await self._pace(name, sink.min_interval)
        jobs = await self.store.peek(outbox.failed_jobs, first["source"], first["run"])
        message = notification(first, jobs, group[1:])
        try:
            answer = await sink.send(message, self.context)
        except PermanentSinkError as exc:
            log.error("notification dead: the sink refused it", sink=name, notification=first["id"], error=str(exc))
            await self._record(name, "dead", outbox.mark_dead, ids, str(exc))
            return 0
        except (SinkError, Exception) as exc:  # a sink's bug is retried like an outage, until max_age
            retry_after = exc.retry_after if isinstance(exc, SinkError) else None
            if retry_after is not None:
                self._paused_until[name] = self.clock() + retry_after
            delay = (
                retry_after
                if retry_after is not None
                else backoff(first["attempts"], self.backoff_base, self.backoff_cap, self.rng)
            )
            error = f"{type(exc).__name__}: {exc}"
            log.warning(
                "notification not sent; will retry",
                sink=name,
                notification=first["id"],
                error=error,
                retry_in=round(delay, 3),
                attempt=first["attempts"] + 1,
            )
            await self._record(name, "retried", outbox.mark_retry, ids, self.clock() + delay, error)
            return 0
        # Pace posted messages only: a failed attempt follows the backoff, and a 429 pauses the sink.
        self._last_sent[name] = self.clock()
        await self._record(name, "sent", outbox.mark_sent, ids, str(answer)[:500], self.clock())
        for row in group:
            self._observe(name, "sent", self.clock() - row["created_at"])
        log.info(
            "notification sent",
            sink=name,
            notification=first["id"],
            transition=first["transition"],
            pipeline=first["pipeline"],
            grouped=len(group),
        )
        return 1

    async def _pace(self, name: str, interval: float) -> None:
        not_before = max(self._last_sent.get(name, 0.0) + interval, self._paused_until.get(name, 0.0))
        delay = not_before - self.clock()
        if delay > 0:
            await asyncio.sleep(delay)

    async def _record(self, name: str, outcome: str, fn: Callable[..., None], *args: Any) -> None:
        await self.store.write(fn, *args)
        if outcome != "sent":
            for _ in args[0]:
                self._observe(name, outcome, None)

    def _observe(self, sink: str, outcome: str, latency: float | None) -> None:
        for observer in self.observers:
            observer(sink, outcome, latency)
