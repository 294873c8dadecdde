"""The poller's memory in `poll_state(source, key, etag, cursor, updated_at)`, and what it asks of `runs`.

Two kinds of rows share the table: an ETag row is keyed by the request's URL (flowforged.http.cache_key),
a cursor row by a name the provider plugin chooses (`runs:octo-org/octo-repo`). Each write touches
only its own column, so the two never clobber each other.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

from flowforged.model import Status, utcnow

OPEN = (Status.PENDING.value, Status.RUNNING.value, Status.BLOCKED.value)
_CHUNK = 500  # host parameters per IN (...) list, well under SQLite's limit


# --- SQL, run on a reader connection or on the writer thread ----------------------------------


def etags_of(conn: sqlite3.Connection, source: str) -> dict[str, str]:
    rows = conn.execute("SELECT key, etag FROM poll_state WHERE source = ? AND etag IS NOT NULL", (source,)).fetchall()
    return {key: etag for key, etag in rows}


def put_etag(conn: sqlite3.Connection, source: str, key: str, etag: str, now: str) -> None:
    conn.execute(
        "INSERT INTO poll_state (source, key, etag, updated_at) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (source, key) DO UPDATE SET etag = excluded.etag, updated_at = excluded.updated_at",
        (source, key, etag, now),
    )


def get_cursor(conn: sqlite3.Connection, source: str, key: str) -> str | None:
    row = conn.execute("SELECT cursor FROM poll_state WHERE source = ? AND key = ?", (source, key)).fetchone()
    return row[0] if row else None


def set_cursor(conn: sqlite3.Connection, source: str, key: str, cursor: str, now: str) -> None:
    conn.execute(
        "INSERT INTO poll_state (source, key, cursor, updated_at) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (source, key) DO UPDATE SET cursor = excluded.cursor, updated_at = excluded.updated_at",
        (source, key, cursor, now),
    )


def prune(conn: sqlite3.Connection, before: str) -> int:
    """Forget ETags not refreshed since `before` (a run's URL once it is over, say). Cursors stay: losing
    one would cost a backfill. A pruned ETag costs one full request the next time its URL is read."""
    cursor = conn.execute("DELETE FROM poll_state WHERE cursor IS NULL AND updated_at < ?", (before,))
    return cursor.rowcount


def known_runs(
    conn: sqlite3.Connection, source: str, runs: Sequence[tuple[str, int]]
) -> dict[tuple[str, int], tuple[str, str]]:
    """The stored (status, updated_at) of each (run_id, attempt) the store holds."""
    found: dict[tuple[str, int], tuple[str, str]] = {}
    wanted = set(runs)
    ids = sorted({run_id for run_id, _ in wanted})
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start : start + _CHUNK]
        rows = conn.execute(
            "SELECT run_id, attempt, status, updated_at FROM runs WHERE source = ?"  # noqa: S608
            f" AND run_id IN ({', '.join('?' * len(chunk))})",
            (source, *chunk),
        ).fetchall()
        for run_id, attempt, status, updated_at in rows:
            if (run_id, attempt) in wanted:
                found[(run_id, attempt)] = (status, updated_at)
    return found


def open_runs(conn: sqlite3.Connection, source: str, created_after: str, limit: int) -> list[dict[str, Any]]:
    """Runs the store last saw pending, running or blocked, newest first: a poller looks at those a
    list of recent runs no longer shows."""
    rows = conn.execute(
        "SELECT pipeline, run_id, attempt, created_at, status FROM runs WHERE source = ?"  # noqa: S608
        f" AND status IN ({', '.join('?' * len(OPEN))}) AND coalesce(created_at, updated_at) >= ?"
        " ORDER BY id DESC LIMIT ?",
        (source, *OPEN, created_after, limit),
    ).fetchall()
    names = ("pipeline", "run_id", "attempt", "created_at", "status")
    return [dict(zip(names, row, strict=True)) for row in rows]


# --- the EtagStore of flowforged.http -----------------------------------------------------------


class SqliteEtags:
    """ETags that survive a restart, so that the first cycle after one is conditional too.

    Each source's ETags are read once, on first use, and then served from memory: a cycle over 1000
    repositories does not make 1000 reads. Writes go through the store's writer.
    """

    def __init__(self, store: Any) -> None:
        self.store = store
        self._cache: dict[str, dict[str, str]] = {}

    async def get(self, source: str, key: str) -> str | None:
        if source not in self._cache:
            self._cache[source] = await self.store.read(etags_of, source)
        return self._cache[source].get(key)

    async def put(self, source: str, key: str, etag: str) -> None:
        if self._cache.get(source, {}).get(key) == etag:
            return
        await self.store.write(put_etag, source, key, etag, utcnow())
        self._cache.setdefault(source, {})[key] = etag


class Cursors:
    """Cursor get/set through the store (reads on a reader connection, writes through the writer),
    kept in memory once read: the poller is their only writer, and a quiet cycle over 1000
    repositories then reads none."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self._cache: dict[tuple[str, str], str | None] = {}

    async def get(self, source: str, key: str) -> str | None:
        if (source, key) not in self._cache:
            self._cache[(source, key)] = await self.store.read(get_cursor, source, key)
        return self._cache[(source, key)]

    async def set(self, source: str, key: str, cursor: str) -> None:
        await self.store.write(set_cursor, source, key, cursor, utcnow())
        self._cache[(source, key)] = cursor

    async def known(self, source: str, runs: Iterable[tuple[str, int]]) -> dict[tuple[str, int], tuple[str, str]]:
        wanted = list(runs)
        return await self.store.read(known_runs, source, wanted) if wanted else {}

    async def open_runs(self, source: str, created_after: str, limit: int = 200) -> list[dict[str, Any]]:
        return await self.store.read(open_runs, source, created_after, limit)

    async def prune(self, before: str) -> int:
        return await self.store.write(prune, before)
