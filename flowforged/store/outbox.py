"""The outbox and the silences: SQL for notifications.

Rows are written inside the ingest transaction that caused them, so a notification exists exactly when
its transition does; the dispatcher reads due rows on a reader connection and records each outcome
through the writer.
"""

from __future__ import annotations

import fnmatch
import json
import sqlite3
from typing import Any

STATES = ("pending", "sent", "dead", "suppressed", "superseded")


def insert(conn: sqlite3.Connection, row: dict[str, Any]) -> int | None:
    columns = ", ".join(row)
    cursor = conn.execute(
        f"INSERT INTO outbox ({columns}) VALUES ({', '.join('?' * len(row))})"  # noqa: S608
        " ON CONFLICT (dedupe_key) DO NOTHING",
        tuple(row.values()),
    )
    return cursor.lastrowid if cursor.rowcount else None


def last_failure_notice(
    conn: sqlite3.Connection, rule: str, sink: str, source: str, pipeline: str, branch: str | None
) -> float | None:
    """When this rule last told this sink that the pipeline+branch is failing (for repeat_interval)."""
    row = conn.execute(
        "SELECT max(created_at) FROM outbox WHERE source = ? AND pipeline = ? AND branch IS ? AND rule = ?"
        " AND sink = ? AND transition IN ('broken', 'still_failing') AND state IN ('pending', 'sent')",
        (source, pipeline, branch, rule, sink),
    ).fetchone()
    return row[0]


def supersede_waiting_breakage(
    conn: sqlite3.Connection, source: str, pipeline: str, branch: str | None, now: float
) -> int:
    """A fix that arrives while the breakage is still in its group wait: neither is worth a message."""
    cursor = conn.execute(
        "UPDATE outbox SET state = 'superseded', last_error = 'fixed within group_wait'"
        " WHERE source = ? AND pipeline = ? AND branch IS ? AND state = 'pending' AND attempts = 0"
        " AND transition = 'broken' AND due_at > ?",
        (source, pipeline, branch, now),
    )
    return cursor.rowcount


def active_silence(conn: sqlite3.Connection, source: str, pipeline: str, branch: str | None, now: float) -> int | None:
    rows = conn.execute(
        "SELECT id, sources, pipelines, branches FROM silences WHERE until > ? AND expired_at IS NULL", (now,)
    ).fetchall()
    for silence_id, sources, pipelines, branches in rows:
        if (
            _matches(source, json.loads(sources))
            and _matches(pipeline, json.loads(pipelines))
            and _matches(branch or "", json.loads(branches))
        ):
            return silence_id
    return None


def _matches(value: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(value, pattern) for pattern in patterns)


def due(conn: sqlite3.Connection, sink: str, now: float, limit: int = 200) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT * FROM outbox WHERE state = 'pending' AND sink = ? AND due_at <= ? ORDER BY due_at, id LIMIT ?",
        (sink, now, limit),
    ).fetchall()
    return [dict(row) for row in rows]


def next_due(conn: sqlite3.Connection, sink: str) -> float | None:
    return conn.execute("SELECT min(due_at) FROM outbox WHERE state = 'pending' AND sink = ?", (sink,)).fetchone()[0]


def group(conn: sqlite3.Connection, group_key: str) -> list[dict[str, Any]]:
    """Every pending row of a group: as in Alertmanager, the wait starts with the group's first row,
    and whatever joined the group by then goes with it."""
    rows = conn.execute(
        "SELECT * FROM outbox WHERE group_key = ? AND state = 'pending' ORDER BY id", (group_key,)
    ).fetchall()
    return [dict(row) for row in rows]


def failed_jobs(conn: sqlite3.Connection, source: str, run: int) -> list[str]:
    rows = conn.execute(
        "SELECT jobs.name FROM jobs JOIN runs ON runs.source = jobs.source AND runs.run_id = jobs.run_id"
        " AND runs.attempt = jobs.attempt WHERE runs.id = ? AND jobs.source = ? AND jobs.status = 'failed'"
        " ORDER BY jobs.name",
        (run, source),
    ).fetchall()
    return [row[0] for row in rows]


def mark_sent(conn: sqlite3.Connection, ids: list[int], answer: str, now: float) -> None:
    conn.executemany(
        "UPDATE outbox SET state = 'sent', sent_at = ?, answer = ?, attempts = attempts + 1, last_error = NULL"
        " WHERE id = ? AND state = 'pending'",
        [(now, answer, row_id) for row_id in ids],
    )


def mark_retry(conn: sqlite3.Connection, ids: list[int], due_at: float, error: str) -> None:
    conn.executemany(
        "UPDATE outbox SET due_at = ?, attempts = attempts + 1, last_error = ? WHERE id = ? AND state = 'pending'",
        [(due_at, error, row_id) for row_id in ids],
    )


def mark_dead(conn: sqlite3.Connection, ids: list[int], reason: str) -> None:
    conn.executemany(
        "UPDATE outbox SET state = 'dead', attempts = attempts + 1, last_error = ? WHERE id = ? AND state = 'pending'",
        [(reason, row_id) for row_id in ids],
    )


def retry(conn: sqlite3.Connection, row_id: int, now: float) -> bool:
    """Send a dead (or any unsent) notification again, now."""
    cursor = conn.execute(
        "UPDATE outbox SET state = 'pending', due_at = ?, created_at = ?, attempts = 0"
        " WHERE id = ? AND state IN ('dead', 'pending', 'suppressed')",
        (now, now, row_id),
    )
    return bool(cursor.rowcount)


def notifications(
    conn: sqlite3.Connection, state: str | None = None, before: int | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    clauses, params = [], []
    if state is not None:
        clauses.append("state = ?")
        params.append(state)
    if before is not None:
        clauses.append("id < ?")
        params.append(before)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    columns = (
        "id, sink, rule, transition, source, pipeline, branch, run, sha, state, created_at, due_at,"
        " attempts, last_error, sent_at, answer"
    )
    sql = f"SELECT {columns} FROM outbox {where} ORDER BY id DESC LIMIT ?"  # noqa: S608 - placeholders only
    rows = conn.execute(sql, (*params, limit)).fetchall()
    return [dict(row) for row in rows]


def depth(conn: sqlite3.Connection) -> dict[str, int]:
    """The rows still in the outbox, pending or dead, each counted in idx_outbox_state_due_at: the rows
    that have left it (sent, suppressed, superseded) grow with history and are never read here."""
    return {
        state: conn.execute("SELECT count(*) FROM outbox WHERE state = ?", (state,)).fetchone()[0]
        for state in ("pending", "dead")
    }


def add_silence(
    conn: sqlite3.Connection,
    sources: list[str],
    pipelines: list[str],
    branches: list[str],
    until: float,
    comment: str,
    now: float,
) -> int:
    cursor = conn.execute(
        "INSERT INTO silences (sources, pipelines, branches, until, comment, created_at) VALUES (?,?,?,?,?,?)",
        (json.dumps(sources), json.dumps(pipelines), json.dumps(branches), until, comment, now),
    )
    return cursor.lastrowid  # type: ignore[return-value]


def silences(conn: sqlite3.Connection, now: float, include_expired: bool = False) -> list[dict[str, Any]]:
    where = "" if include_expired else "WHERE until > ? AND expired_at IS NULL"
    params = () if include_expired else (now,)
    rows = conn.execute(f"SELECT * FROM silences {where} ORDER BY id", params).fetchall()  # noqa: S608 - constant
    out = []
    for row in rows:
        item = dict(row)
        for key in ("sources", "pipelines", "branches"):
            item[key] = json.loads(item[key])
        item["active"] = item["expired_at"] is None and item["until"] > now
        out.append(item)
    return out


def expire_silence(conn: sqlite3.Connection, silence_id: int, now: float) -> bool:
    cursor = conn.execute("UPDATE silences SET expired_at = ? WHERE id = ? AND expired_at IS NULL", (now, silence_id))
    return bool(cursor.rowcount)
