"""How an event is kept in its `events` row, and read back (docs/architecture.md, "The store").

An event is read back exactly as it was normalized: the same fields, the same values, in the same order.
What a row holds to give that back, since schema 10:

- its columns: source, kind, run_id, attempt, job_id, status, provider_status, updated_at, and its key
  (a 12-byte digest of the state it reports, `key_digest()`: the same state told twice is stored once);
- the facts of its run (commit, URL, message, author, number...) are not repeated in every event: they
  are read from the run's `runs` row, which holds them once. `events.data` holds only what the event
  tells that the run's row does not: its own fields (a job's name, start and finish times) and any fact
  whose value differs from the run's (JSON null where the event told none and the run has one).
  A later state may change a fact of the run's row (a value the earlier states did not tell, or another
  one): before it does, `pin()` writes the old value into the events that took it from the row.

Rows written before schema 10 hold the whole event in `data`, with its `kind`, and are read as they are:
nothing is rewritten. A `data` without `kind` (or none at all) is a row of the compact form.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sqlite3
from collections.abc import Mapping
from typing import Any

import msgspec

from flowforged.model import Event, JobEvent, RunEvent

# Columns of the events row that are fields of the event.
COLUMNS = ("source", "kind", "run_id", "attempt", "job_id", "status", "provider_status", "updated_at")
# The run's facts an event takes from the run's row, by kind; each is a column of `runs`.
INHERITED = {
    "run": (
        "pipeline",
        "pipeline_name",
        "branch",
        "sha",
        "url",
        "created_at",
        "repo",
        "default_branch",
        "commit_message",
        "author",
        "trigger",
        "number",
        "pull_request",
        "head_repo",
    ),
    "job": ("pipeline", "branch", "sha"),  # a job's url is its own
}
RUN_FACTS = INHERITED["run"]
FIELDS = {kind: tuple(f.name for f in dataclasses.fields(cls)) for kind, cls in (("run", RunEvent), ("job", JobEvent))}
# What an events query selects to read its rows back with `event_dict()` (the run's facts as r_<name>).
_NAMES = ", ".join([*(f"e.{column}" for column in COLUMNS), *(f"r.{fact} AS r_{fact}" for fact in RUN_FACTS)])
SELECT = (
    f"SELECT e.id, d.origin, e.data, {_NAMES} FROM events e"  # noqa: S608 - column names, no values
    " LEFT JOIN deliveries d ON d.id = e.delivery"
    " LEFT JOIN runs r ON r.source = e.source AND r.run_id = e.run_id AND r.attempt = e.attempt"
)
_json = msgspec.json.Encoder()


def event_data(event: Event) -> dict[str, Any]:
    """The event as a flat dict, None left out, with its kind: what the bus publishes and what rows from
    before schema 10 hold (dataclasses.asdict deep-copies: too slow for the ingest path)."""
    data = {name: value for name in FIELDS[event.kind] if (value := getattr(event, name)) is not None}
    data["kind"] = event.kind
    return data


def key_digest(key: str) -> bytes:
    """What events.key holds: 12 bytes of the key's BLAKE2b, where the key itself took ~80 (and as much
    again in its unique index). Two of 10 million states share a digest with odds of about 1e-15."""
    return hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=12).digest()


def recorded_before_digests(conn: sqlite3.Connection, key: str) -> bool:
    """Whether a state was recorded, under its key as text, before events.key held digests."""
    legacy = getattr(conn, "legacy_event_keys", None)
    if legacy is None:
        row = conn.execute("SELECT value FROM store_marks WHERE name = 'legacy_event_keys'").fetchone()
        legacy = row[0] if row else 0
        if hasattr(conn, "legacy_event_keys"):
            conn.legacy_event_keys = legacy  # type: ignore[attr-defined]
    return bool(legacy) and conn.execute("SELECT 1 FROM events WHERE key = ?", (key,)).fetchone() is not None


def own_data(event: Event, run: Mapping[str, Any] | None) -> str | None:
    """events.data for `event`, given its run's row as it is once the event is applied (None: no row)."""
    inherited = INHERITED[event.kind]
    data: dict[str, Any] = {}
    for name in FIELDS[event.kind]:
        if name in COLUMNS:
            continue
        value = getattr(event, name)
        if name in inherited:
            if value != (run[name] if run is not None else None):
                data[name] = value  # None is written as null: "this event told none"
        elif value is not None:
            data[name] = value
    return _json.encode(data).decode() if data else None


def pin(conn: sqlite3.Connection, source: str, run_id: str, attempt: int, old: Mapping[str, Any], before: int) -> None:
    """Before a run's row changes the facts in `old` (name: value before), write those values into the
    compact events of that run recorded before event `before` that took them from the row, so that they
    still read as recorded."""
    rows = conn.execute(
        "SELECT id, kind, data FROM events WHERE source = ? AND run_id = ? AND attempt = ? AND id < ?",
        (source, run_id, attempt, before),
    ).fetchall()
    for row_id, kind, text in rows:
        data = json.loads(text) if text else {}
        if "kind" in data:
            continue  # the whole event, as written before schema 10
        missing = {name: old[name] for name in INHERITED[kind] if name in old and name not in data}
        if missing:
            conn.execute("UPDATE events SET data = ? WHERE id = ?", (_json.encode(data | missing).decode(), row_id))


def event_dict(row: sqlite3.Row) -> dict[str, Any]:
    """A stored event (a row of SELECT) in the shape the bus publishes it (flowforged.ingest.Ingest.commit)."""
    data = json.loads(row["data"]) if row["data"] else {}
    head = {"id": row["id"], "type": "event", "origin": row["origin"]}
    if "kind" in data:
        return head | data  # written before schema 10: the whole event
    kind = row["kind"]
    inherited = INHERITED[kind]
    for name in FIELDS[kind]:
        if name in COLUMNS:
            value = row[name]
        elif name in data:
            value = data[name]
        elif name in inherited:
            value = row[f"r_{name}"]
        else:
            continue
        if value is not None:
            head[name] = value
    head["kind"] = kind
    return head
