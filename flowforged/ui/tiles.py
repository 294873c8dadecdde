"""The board's tiles kept in memory, so that a board of thousands of pipelines is fast to serve.

The first request reads every pipeline (flowforged.store.board.board, a second or so for thousands);
after that, each commit's events (the ingest listeners, webhooks and polls alike) mark their pipelines
stale, and the next request reads only those again. Writers outside the daemon (`flowforged reindex`)
are caught up by a full read every FULL_AFTER seconds. Each tile's HTML is kept too, rendered again
only when the tile or the words of its age ("3h ago") change.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from markupsafe import Markup

from flowforged.store import Store
from flowforged.store import board as board_reads
from flowforged.ui import board

FULL_AFTER = 600.0
MAX_STALE = 200  # more stale pipelines than this: one full read is cheaper than as many small ones

Key = tuple[str, str]  # (source, pipeline)


class Tiles:
    def __init__(self, store: Store, config: Callable[[], Any], clock: Callable[[], float] = time.monotonic):
        self.store, self.config, self.clock = store, config, clock
        self._by_pipeline: dict[Key, list[board.Tile]] = {}
        self._sorted: list[board.Tile] | None = None
        self._stale: set[Key] = set()
        self._run_pipelines: dict[tuple[str, str], str] = {}  # (source, run_id) -> pipeline, for job events
        self._loaded_at: float | None = None
        self._settings: tuple[Any, ...] = ()
        self._lock = asyncio.Lock()
        self._html: dict[tuple[str, str, str], tuple[board.Tile, str, Markup]] = {}

    def ingested(self, result: Any, source: str, origin: str) -> None:
        """An ingest listener: the pipelines of a commit's new events are read again when next asked."""
        for event in result.events:
            pipeline = event.get("pipeline") or self._run_pipelines.get((event["source"], event["run_id"]))
            if pipeline is None:  # a job whose run has not been seen: only a full read finds it
                self._loaded_at = None
            else:
                self._stale.add((event["source"], pipeline))

    def _current_settings(self) -> tuple[Any, ...]:
        config = self.config()
        providers = tuple(sorted((name, source.type) for name, source in config.source_configs.items()))
        return providers, tuple(config.metrics.branches)

    async def all(self) -> list[board.Tile]:
        """Every tile, broken first."""
        async with self._lock:
            settings = self._current_settings()
            full = self._loaded_at is None or self.clock() - self._loaded_at > FULL_AFTER
            if full or settings != self._settings or len(self._stale) > MAX_STALE:
                self._settings, self._stale, self._run_pipelines = settings, set(), {}
                self._by_pipeline = await self.store.read(self._read, None)
                self._loaded_at, self._sorted = self.clock(), None
            while self._stale:
                key = self._stale.pop()
                self._by_pipeline.update(await self.store.read(self._read, key))
                self._sorted = None
            if self._sorted is None:
                self._sorted = board.ordered([t for tiles in self._by_pipeline.values() for t in tiles])
            return self._sorted

    def _read(self, conn: Any, key: Key | None) -> dict[Key, list[board.Tile]]:
        """On a reader thread: the rows and the tiles made of them (both take time for thousands)."""
        providers, branches = dict(self._settings[0]), list(self._settings[1])
        data = board_reads.board(conn, branches, *(key or (None, None)))
        for run in data["runs"]:
            self._run_pipelines[(run["source"], run["run_id"])] = run["pipeline"]
        out: dict[Key, list[board.Tile]] = {key: []} if key else {}
        for tile in board.tiles(data, providers, branches):
            out.setdefault((tile.source, tile.pipeline), []).append(tile)
        return out

    def html(self, tile: board.Tile, render: Callable[[board.Tile, str], Markup]) -> Markup:
        """The tile's HTML, rendered again only when the tile or the words of its age changed."""
        since = board.ago(tile.since)
        key = (tile.source, tile.pipeline, tile.branch)
        kept = self._html.get(key)
        if kept is not None and kept[0] is tile and kept[1] == since:
            return kept[2]
        markup = render(tile, since)
        self._html[key] = (tile, since, markup)
        return markup
