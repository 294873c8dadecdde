"""Message threads of a chat sink, and the operations people asked for from a chat message.

A breakage is one thread: the sink posts the broken message, keeps its ids here, and the still-failing
runs and the fix of the same pipeline+branch find that thread here, after a restart or days later.
When someone clicks a button on that message, the request is recorded with who asked for it.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flowforged.store import Store


def open_thread(
    conn: sqlite3.Connection, sink: str, source: str, pipeline: str, branch: str | None
) -> dict[str, Any] | None:
    row = conn.execute(
        "SELECT * FROM chat_threads WHERE sink = ? AND source = ? AND pipeline = ? AND branch = ? AND state = 'open'",
        (sink, source, pipeline, branch or ""),
    ).fetchone()
    return dict(row) if row else None


def start_thread(conn: sqlite3.Connection, thread: dict[str, Any]) -> int:
    """A new breakage's thread. One still open for the same pipeline+branch (its fix was never told,
    say by a rule without `fixed`) is replaced: the next message belongs to the new breakage."""
    conn.execute(
        "UPDATE chat_threads SET state = 'replaced', updated_at = ?"
        " WHERE sink = ? AND source = ? AND pipeline = ? AND branch = ? AND state = 'open'",
        (thread["opened_at"], thread["sink"], thread["source"], thread["pipeline"], thread["branch"] or ""),
    )
    row = thread | {"branch": thread["branch"] or "", "state": "open", "updated_at": thread["opened_at"]}
    cursor = conn.execute(
        f"INSERT INTO chat_threads ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",  # noqa: S608
        tuple(row.values()),
    )
    return cursor.lastrowid  # type: ignore[return-value]


def close_thread(conn: sqlite3.Connection, thread_id: int, fixed_sha: str | None, now: float) -> None:
    conn.execute(
        "UPDATE chat_threads SET state = 'fixed', fixed_sha = ?, updated_at = ? WHERE id = ? AND state = 'open'",
        (fixed_sha, now, thread_id),
    )


def thread_of_message(conn: sqlite3.Connection, channel: str, ts: str) -> dict[str, Any] | None:
    """The thread whose parent is this message (a button was clicked on it)."""
    row = conn.execute("SELECT * FROM chat_threads WHERE channel = ? AND ts = ?", (channel, ts)).fetchone()
    return dict(row) if row else None


def record_request(conn: sqlite3.Connection, request: dict[str, Any]) -> int:
    """An operation someone asked for from a chat message, with who asked and what came of it."""
    cursor = conn.execute(
        f"INSERT INTO operation_requests ({', '.join(request)}) VALUES ({', '.join('?' * len(request))})",  # noqa: S608
        tuple(request.values()),
    )
    return cursor.lastrowid  # type: ignore[return-value]


class Threads:
    """What a sink is lent (SinkContext.threads): threads, through the store's reader and writer."""

    def __init__(self, store: Store):
        self.store = store

    async def open(self, sink: str, source: str, pipeline: str, branch: str | None) -> dict[str, Any] | None:
        return await self.store.read(open_thread, sink, source, pipeline, branch)

    async def start(self, thread: dict[str, Any]) -> int:
        return await self.store.write(start_thread, thread)

    async def close(self, thread_id: int, fixed_sha: str | None, now: float) -> None:
        await self.store.write(close_thread, thread_id, fixed_sha, now)
