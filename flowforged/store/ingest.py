"""The ingest transaction's SQL (docs/architecture.md, "The store").

Runs on the writer thread inside the batch's transaction: store the raw delivery, drop it if the
provider already sent it, record each new state of a run or job, upsert the run's current state, and
decide the transition of its pipeline+branch. Everything is idempotent: the same delivery or the same
polled state a second time changes nothing and yields no transition.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from flowforged.model import Event, JobEvent, RunEvent, Status, iso, next_transition, seconds_between
from flowforged.store import eventrows, raw, totals

_RANK = {Status.PENDING: 0, Status.BLOCKED: 1, Status.RUNNING: 2}
_REPLACED = frozenset({"status", "provider_status", "updated_at", "finished_at", "duration_seconds"})


@dataclasses.dataclass(frozen=True, slots=True)
class Delivery:
    source: str
    delivery_id: str
    origin: str  # webhook | poll
    event: str
    received_at: str
    headers: Mapping[str, str]
    body: bytes
    parse_error: str | None = None


@dataclasses.dataclass
class IngestResult:
    delivery: int | None  # deliveries.id; None for a duplicate
    delivery_id: str = ""  # the provider's id (or the derived one)
    duplicate: bool = False
    events: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # newly recorded
    finished: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # runs newly terminal
    transitions: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # run rows + transition


# Called inside the transaction for each transition, so that notifications are written atomically
# with the delivery that caused them (the outbox).
TransitionHook = Callable[[sqlite3.Connection, dict[str, Any], bool], None]


def run_order(created_at: str | None, run_id: str, attempt: int, number: int | None = None) -> str:
    """Later runs sort after earlier ones: by creation time, then the run's number (Buildkite's ids are
    UUIDs and Jenkins' are `job#9`, which do not sort; every provider numbers its runs), then the
    run id, then the attempt (a re-run attempt of a run is later than the run)."""
    key = str(number) if number is not None else run_id
    padded = key.rjust(20, "0") if key.isdigit() else key
    return f"{created_at or ''}|{padded}|{attempt:05d}"


def state_branch(event: RunEvent) -> str:
    """What a run's status is the state of. A run of a pull request (or of a fork's branch) says
    nothing about the branches of the repository it would be merged into, even when its head branch
    is called `main`: it has a state of its own, by its head repository and branch where the provider
    names them on every run (GitHub: `someone/repo:main`), else by its number (GitLab: `pull/12`)."""
    if not event.proposed:
        return event.branch or ""
    if event.head_repo is not None:
        return f"{event.head_repo}:{event.branch or ''}"
    if event.pull_request is not None:
        return f"pull/{event.pull_request}"
    return f"pull:{event.branch or ''}"


def event_key(event: Event) -> str:
    job = event.job_id if isinstance(event, JobEvent) else ""
    return "|".join(
        (
            event.source,
            event.kind,
            event.run_id,
            str(event.attempt),
            job,
            event.status.value,
            event.provider_status,
            event.updated_at,
        )
    )


def insert_delivery(conn: sqlite3.Connection, delivery: Delivery) -> int | None:
    headers = raw.header_set(conn, delivery.headers, delivery.event, delivery.delivery_id)
    cursor = conn.execute(
        "INSERT INTO deliveries (source, delivery_id, origin, event, received_at, headers, header_set, body,"
        " parse_error) VALUES (?, ?, ?, ?, ?, '', ?, ?, ?) ON CONFLICT (source, delivery_id) DO NOTHING",
        (
            delivery.source,
            delivery.delivery_id,
            delivery.origin,
            delivery.event,
            delivery.received_at,
            headers,
            raw.STORED if delivery.body else b"",
            delivery.parse_error,
        ),
    )
    if not cursor.rowcount:
        return None
    if delivery.body:
        raw.write(conn, cursor.lastrowid, delivery.source, delivery.body)  # type: ignore[arg-type]
    return cursor.lastrowid


def append(conn: sqlite3.Connection, delivery: Delivery) -> int | None:
    """Store a webhook's raw delivery, to be applied after it is acknowledged (apply_delivery()).
    Returns its deliveries.id; None for a duplicate, which is dropped."""
    row = insert_delivery(conn, delivery)
    if row is not None:
        conn.execute("INSERT INTO unapplied (delivery) VALUES (?)", (row,))
    return row


# (source, headers, body, event, received_at) -> (event, events, parse error): the provider's decode,
# event name and normalization of a stored delivery (flowforged/ingest.py: Ingest.decode()).
Decode = Callable[[str, dict[str, str], bytes, str, str], tuple[str, list[Event], str | None]]


def oldest_unapplied(conn: sqlite3.Connection, limit: int) -> list[int]:
    """The oldest deliveries acknowledged but not yet applied, in the order they arrived."""
    return [row for (row,) in conn.execute("SELECT delivery FROM unapplied ORDER BY delivery LIMIT ?", (limit,))]


def apply_delivery(
    conn: sqlite3.Connection, row: int, decode: Decode, now: str, on_transition: TransitionHook | None
) -> tuple[IngestResult, str, str]:
    """Decode, normalize and apply one stored delivery, and strike it off `unapplied`.
    Returns its result, source and origin. Applying is idempotent, like ingest()."""
    source, origin, event, stored, header_set, delivery_id, body, received_at = conn.execute(
        "SELECT source, origin, event, headers, header_set, delivery_id, body, received_at FROM deliveries"
        " WHERE id = ?",
        (row,),
    ).fetchone()
    headers = raw.headers(conn, stored, header_set, event, delivery_id)
    named, events, error = decode(source, headers, raw.read(conn, row, body), event, received_at)
    if named != event:  # the event is named in the body (Jenkins): its headers are kept against the name
        conn.execute(
            "UPDATE deliveries SET event = ?, header_set = ? WHERE id = ?",
            (named, raw.header_set(conn, headers, named, delivery_id), row),
        )
    if error is not None:
        conn.execute("UPDATE deliveries SET parse_error = ? WHERE id = ?", (error, row))
    result = IngestResult(delivery=row, delivery_id=delivery_id)
    apply_events(conn, row, events, now, result, on_transition, notify=True)
    conn.execute("DELETE FROM unapplied WHERE delivery = ?", (row,))
    return result, source, origin


def set_aside(conn: sqlite3.Connection, row: int, error: str) -> None:
    """A delivery whose applying failed (a bug): kept raw with the error, for reindex, so that it does
    not hold up the deliveries behind it."""
    conn.execute("UPDATE deliveries SET parse_error = ? WHERE id = ?", (error[:1000], row))
    conn.execute("DELETE FROM unapplied WHERE delivery = ?", (row,))


def ingest(
    conn: sqlite3.Connection,
    delivery: Delivery,
    events: list[Event],
    now: str,
    on_transition: TransitionHook | None = None,
) -> IngestResult:
    """Store a delivery and apply its events. A delivery seen before is a duplicate and does nothing."""
    row = insert_delivery(conn, delivery)
    if row is None:
        return IngestResult(delivery=None, delivery_id=delivery.delivery_id, duplicate=True)
    result = IngestResult(delivery=row, delivery_id=delivery.delivery_id)
    apply_events(conn, row, events, now, result, on_transition, notify=True)
    return result


def apply_events(
    conn: sqlite3.Connection,
    delivery: int,
    events: list[Event],
    now: str,
    result: IngestResult,
    on_transition: TransitionHook | None,
    notify: bool,
) -> None:
    for event in events:
        key = event_key(event)
        if eventrows.recorded_before_digests(conn, key):
            continue
        if isinstance(event, RunEvent):
            plan = _plan_run(conn, event)
            facts = plan.after
        else:
            row = conn.execute(_JOB_FACTS, (event.source, event.run_id, event.attempt)).fetchone()
            facts = dict(zip(eventrows.INHERITED["job"], row, strict=True)) if row else None
        # The event's columns, and in data only what its run's row will not tell (store/eventrows.py).
        cursor = conn.execute(
            "INSERT INTO events (delivery, source, kind, run_id, attempt, job_id, status, provider_status,"
            " updated_at, key, data) VALUES (?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT (key) DO NOTHING",
            (
                delivery,
                event.source,
                event.kind,
                event.run_id,
                event.attempt,
                event.job_id if isinstance(event, JobEvent) else None,
                event.status.value,
                event.provider_status,
                event.updated_at,
                eventrows.key_digest(key),
                eventrows.own_data(event, facts),
            ),
        )
        if not cursor.rowcount:
            continue  # this state of this run was recorded before (webhook and poll, or a redelivery)
        data = eventrows.event_data(event)
        data["id"] = cursor.lastrowid
        result.events.append(data)
        if isinstance(event, RunEvent):
            _apply_run(conn, event, plan, cursor.lastrowid, now, result, on_transition, notify)  # type: ignore[arg-type]
        else:
            _apply_job(conn, event)


_JOB_FACTS = (
    f"SELECT {', '.join(eventrows.INHERITED['job'])} FROM runs"  # noqa: S608 - column names, no values
    " WHERE source = ? AND run_id = ? AND attempt = ?"
)
_EXISTING = (
    f"SELECT id, status, updated_at, created_at, started_at, {', '.join(eventrows.RUN_FACTS)} FROM runs"  # noqa: S608
    " WHERE source = ? AND run_id = ? AND attempt = ?"
)


@dataclasses.dataclass(slots=True)
class _RunPlan:
    """What applying a run's state will do to its row: `values` to write (None: the row has moved on),
    and the run's facts before and after."""

    existing: Sequence[Any] | None
    values: dict[str, Any] | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None


def _plan_run(conn: sqlite3.Connection, event: RunEvent) -> _RunPlan:
    existing = conn.execute(_EXISTING, (event.source, event.run_id, event.attempt)).fetchone()
    before = dict(zip(eventrows.RUN_FACTS, existing[5:], strict=True)) if existing is not None else None
    if existing is not None and not _newer(event, existing[2], existing[1]):
        return _RunPlan(existing, None, before, before)  # an older state arriving late: the run moved on
    values = _run_values(event, existing)
    if before is None:
        return _RunPlan(existing, values, None, {name: values[name] for name in eventrows.RUN_FACTS})
    # An update keeps what this state does not tell (COALESCE in _apply_run).
    after = {name: before[name] if values[name] is None else values[name] for name in eventrows.RUN_FACTS}
    return _RunPlan(existing, values, before, after)


def _newer(event: Event, updated_at: str, status: str) -> bool:
    current = Status(status)
    mine = (event.updated_at, 3 if event.status.terminal else _RANK[event.status])
    theirs = (updated_at, 3 if current.terminal else _RANK[current])
    return mine > theirs


def _apply_run(
    conn: sqlite3.Connection,
    event: RunEvent,
    plan: _RunPlan,
    event_row: int,
    now: str,
    result: IngestResult,
    on_transition: TransitionHook | None,
    notify: bool,
) -> None:
    conn.execute(
        "INSERT INTO pipelines (source, pipeline, name, repo, default_branch, first_seen, last_seen)"
        " VALUES (?,?,?,?,?,?,?) ON CONFLICT (source, pipeline) DO UPDATE SET last_seen = excluded.last_seen,"
        " name = COALESCE(NULLIF(excluded.name, ''), name),"
        " default_branch = COALESCE(excluded.default_branch, default_branch)",
        (event.source, event.pipeline, event.pipeline_name, event.repo, event.default_branch, now, now),
    )
    values, existing = plan.values, plan.existing
    if values is None:
        return  # an older state arriving late: the run already moved on
    # Earlier events of the run that took a fact from its row keep the value they were recorded with.
    before = plan.before or dict.fromkeys(eventrows.RUN_FACTS)
    changed = {name: before[name] for name in eventrows.RUN_FACTS if plan.after[name] != before[name]}  # type: ignore[index]
    if changed:
        eventrows.pin(conn, event.source, event.run_id, event.attempt, changed, event_row)
    if existing is None:
        columns = ", ".join(values)
        cursor = conn.execute(
            f"INSERT INTO runs ({columns}) VALUES ({', '.join('?' * len(values))})",  # noqa: S608
            tuple(values.values()),
        )
        run_row, previous = cursor.lastrowid, None
    else:
        run_row, previous = existing[0], existing[1]
        # A run that is running again (a GitLab retry) has no finish time until it ends again.
        assignments = ", ".join(f"{k} = ?" if k in _REPLACED else f"{k} = COALESCE(?, {k})" for k in values)
        conn.execute(
            f"UPDATE runs SET {assignments}, transition = CASE WHEN status = ? THEN transition END"  # noqa: S608
            " WHERE id = ?",
            (*values.values(), event.status.value, run_row),
        )
    if not event.status.terminal or previous == event.status.value:
        return
    run = {"id": run_row, **values}
    if event.proposed:
        # Its state, its totals and its notifications are the pull request's, not the base branch's.
        run |= {"branch": state_branch(event), "head_branch": event.branch, "proposed": True}
    result.finished.append(run)
    totals.add(conn, run)  # what Metrics.run_finished() will count, for rebuild() at the next start
    if event.status.decisive:
        _decide(conn, run, event, now, result, on_transition, notify)


def _run_values(event: RunEvent, existing: Sequence[Any] | None) -> dict[str, Any]:
    """The columns of `runs` for this state, with what an earlier state told that this one does not."""
    # A run's creation is the earliest moment anyone told (Jenkins: QUEUED, before STARTED).
    created = min(filter(None, (event.created_at, existing[3] if existing else None)), default=None)
    started = event.started_at or (existing[4] if existing else None)
    finished = event.finished_at
    if finished is None and event.status.terminal and started and event.duration_seconds is not None:
        finished = plus_seconds(started, event.duration_seconds)  # the start told earlier, and its duration
    values = {
        "source": event.source,
        "pipeline": event.pipeline,
        "run_id": event.run_id,
        "attempt": event.attempt,
        "number": event.number,
        "branch": event.branch,
        "sha": event.sha,
        "status": event.status.value,
        "provider_status": event.provider_status,
        "url": event.url,
        "created_at": created,
        "started_at": started,
        "finished_at": finished,
        "updated_at": event.updated_at,
        # The provider's own figures where it gives them (GitLab's duration leaves out the time a
        # pipeline waited for a runner, and GitLab's hooks carry no started_at).
        "duration_seconds": _first(event.duration_seconds, seconds_between(started, finished)),
        "queue_seconds": _first(event.queue_seconds, seconds_between(created, started)),
        "commit_message": event.commit_message,
        "author": event.author,
        "trigger": event.trigger,
        "pull_request": event.pull_request,
        "head_repo": event.head_repo,
        "pipeline_name": event.pipeline_name,
        "repo": event.repo,
        "default_branch": event.default_branch,
    }
    return values


def _decide(
    conn: sqlite3.Connection,
    run: dict[str, Any],
    event: RunEvent,
    now: str,
    result: IngestResult,
    on_transition: TransitionHook | None,
    notify: bool,
) -> None:
    """Compare a decisive run with the previous decisive run of its pipeline+branch."""
    branch = state_branch(event)
    order = run_order(run["created_at"], event.run_id, event.attempt, event.number)
    state = conn.execute(
        "SELECT status, run_order, consecutive_failures FROM pipeline_state"
        " WHERE source = ? AND pipeline = ? AND branch = ?",
        (event.source, event.pipeline, branch),
    ).fetchone()
    if state is not None and state[1] > order:
        return  # a run older than the one that set the current state: history, not news
    previous = Status(state[0]) if state is not None else None
    transition = next_transition(previous, event.status)
    failures = ((state[2] if previous is Status.FAILED else 0) + 1) if event.status is Status.FAILED else 0
    since = now if previous is not event.status or state is None else None
    conn.execute(
        "INSERT INTO pipeline_state (source, pipeline, branch, status, run, run_order, consecutive_failures,"
        " since) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT (source, pipeline, branch) DO UPDATE SET"
        " status = excluded.status, run = excluded.run, run_order = excluded.run_order,"
        " consecutive_failures = excluded.consecutive_failures, since = COALESCE(?, since)",
        (event.source, event.pipeline, branch, event.status.value, run["id"], order, failures, since or now, since),
    )
    if transition is None:
        return
    conn.execute("UPDATE runs SET transition = ? WHERE id = ?", (transition.value, run["id"]))
    record = {
        **run,
        "transition": transition.value,
        "consecutive_failures": failures,
        "previous_failures": state[2] if previous is Status.FAILED else 0,
    }
    result.transitions.append(record)
    if on_transition is not None:
        on_transition(conn, record, notify)


def _first(*values: float | None) -> float | None:
    return next((v for v in values if v is not None), None)


def plus_seconds(moment: str, seconds: float) -> str:
    return iso(datetime.fromisoformat(moment.replace("Z", "+00:00")) + timedelta(seconds=seconds))


def _apply_job(conn: sqlite3.Connection, event: JobEvent) -> None:
    existing = conn.execute(
        "SELECT status, updated_at FROM jobs WHERE source = ? AND job_id = ?", (event.source, event.job_id)
    ).fetchone()
    if existing is not None and not _newer(event, existing[1], existing[0]):
        return
    conn.execute(
        "INSERT INTO jobs (source, run_id, attempt, job_id, name, stage, status, provider_status, url,"
        " started_at, finished_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"
        " ON CONFLICT (source, job_id) DO UPDATE SET status = excluded.status,"
        " provider_status = excluded.provider_status, name = excluded.name,"
        " started_at = COALESCE(excluded.started_at, started_at), finished_at = excluded.finished_at,"
        " updated_at = excluded.updated_at, url = COALESCE(excluded.url, url)",
        (
            event.source,
            event.run_id,
            event.attempt,
            event.job_id,
            event.name,
            event.stage,
            event.status.value,
            event.provider_status,
            event.url,
            event.started_at,
            event.finished_at,
            event.updated_at,
        ),
    )
