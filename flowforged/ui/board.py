"""The board's tiles, made from what flowforged.store.board.board read: pure, so that the page, a tile's
live update, `flowforged status` and the benchmark all show the same thing.

A tile is one pipeline on one branch (its default branch, and the branches in metrics.branches):
its state (failing or passing, from the last decisive run), since when, the last run's duration against
the usual one (the median of recent successful runs), the last runs as a strip, and the failed jobs of
a broken one. Failing tiles come first, the longest broken at the top.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

ACTIVE = frozenset({"pending", "running", "blocked"})
# What a tile says, in words and a symbol (never colour alone).
STATES = {
    "failing": ("✗", "failing"),
    "passing": ("✓", "passing"),
    "running": ("◔", "running"),
    "other": ("•", "no result yet"),
}
FILTER_STATES = ("failing", "passing", "running", "other")
MAX_FAILED_JOBS = 5


@dataclasses.dataclass(slots=True)
class Tile:
    id: int  # pipelines.id: the pipeline page
    source: str
    provider: str
    pipeline: str
    name: str
    where: str  # the repository (or the pipeline's path): two workflows named "ci" are told apart
    branch: str
    state: str  # failing | passing | running | other
    since: str | None
    failures: int
    running: bool  # a run is in progress now
    last_run: int | None  # runs.id of the newest run
    last_duration: float | None
    usual_duration: float | None
    strip: list[str]  # statuses, oldest first
    failed_jobs: list[str]

    @property
    def symbol(self) -> str:
        return STATES[self.state][0]

    @property
    def word(self) -> str:
        return STATES[self.state][1]

    def matches(self, text: str) -> bool:
        text = text.lower()
        return any(text in value.lower() for value in (self.pipeline, self.name, self.where, self.branch, self.source))


def tiles(data: Mapping[str, Any], providers: Mapping[str, str], branches: Iterable[str]) -> list[Tile]:
    """Every tile, broken first. `providers` maps a source to its provider type."""
    shown = set(branches)
    states = {(s["source"], s["pipeline"], s["branch"]): s for s in data["states"]}
    runs: dict[tuple[str, str, str], list[Any]] = {}
    branches_of: dict[tuple[str, str], set[str]] = {}
    for run in data["runs"]:
        runs.setdefault((run["source"], run["pipeline"], run["branch"]), []).append(run)
        branches_of.setdefault((run["source"], run["pipeline"]), set()).add(run["branch"])
    failed: dict[tuple[str, str, str], list[str]] = {}
    for job in data["failed_jobs"]:
        names = failed.setdefault((job["source"], job["pipeline"], job["branch"]), [])
        if job["name"] not in names:
            names.append(job["name"])
    out = []
    for p in data["pipelines"]:
        default = p["default_branch"]
        found = branches_of.get((p["source"], p["pipeline"]), set())
        wanted = {b for b in found if b == default or b in shown} or {default or ""}
        for branch in sorted(wanted, key=lambda b: (b != default, b)):
            key = (p["source"], p["pipeline"], branch)
            out.append(_tile(p, branch, states.get(key), runs.get(key, []), failed.get(key, []), providers))
    return ordered(out)


def ordered(found: list[Tile]) -> list[Tile]:
    return sorted(found, key=_order)


def _tile(
    p: Any, branch: str, state: Any, runs: list[Any], failed_jobs: list[str], providers: Mapping[str, str]
) -> Tile:
    newest = runs[-1] if runs else None
    running = newest is not None and newest["status"] in ACTIVE
    if state is not None:
        word = "failing" if state["status"] == "failed" else "passing"
    else:
        word = "running" if running else "other"
    finished = [r for r in runs if r["status"] not in ACTIVE]
    last = finished[-1] if finished else None
    usual = [r["duration_seconds"] for r in finished if r["status"] == "success" and r["duration_seconds"]]
    since = state["since"] if state is not None else None
    if state is not None and finished:
        since = min(since or "~", _streak_start(finished, state["status"]) or "~")
    return Tile(
        id=p["id"],
        source=p["source"],
        provider=providers.get(p["source"], "?"),
        pipeline=p["pipeline"],
        name=p["name"] or p["pipeline"],
        where=p["repo"] or p["pipeline"],
        branch=branch or "",
        state=word,
        since=since,
        failures=state["consecutive_failures"] if state is not None else 0,
        running=running,
        last_run=newest["id"] if newest is not None else None,
        last_duration=last["duration_seconds"] if last is not None else None,
        usual_duration=statistics.median(usual) if usual else None,
        strip=[r["status"] for r in runs],
        failed_jobs=failed_jobs[:MAX_FAILED_JOBS] if word == "failing" else [],
    )


def _streak_start(finished: list[Any], status: str) -> str | None:
    """When the newest finished runs began to be `status`, as far back as they go: the state was first
    recorded when the daemon heard of it, which for runs found by a backfill is later."""
    start = None
    for run in reversed(finished):
        if run["status"] in ("success", "failed") and run["status"] != status:
            break
        if run["status"] == status:
            start = run["finished_at"] or start
    return start


def _order(tile: Tile) -> tuple[Any, ...]:
    rank = {"failing": 0, "running": 1, "other": 2, "passing": 3}[tile.state]
    # The longest broken first: `since` is ISO 8601 UTC, so text order is time order.
    return (rank, tile.since or "" if rank == 0 else "", tile.name.lower(), tile.branch)


def select(found: list[Tile], source: str = "", provider: str = "", state: str = "", text: str = "") -> list[Tile]:
    """The tiles the board's filters (kept in the URL) let through."""
    return [
        t
        for t in found
        if (not source or t.source == source)
        and (not provider or t.provider == provider)
        and (not state or t.state == state)
        and (not text or t.matches(text))
    ]


def counts(found: list[Tile]) -> dict[str, int]:
    out = dict.fromkeys(FILTER_STATES, 0)
    for tile in found:
        out[tile.state] += 1
    return out


# --- words for times and durations ------------------------------------------------------------------


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def ago(value: str | None, now: datetime | None = None) -> str:
    """`3h ago`: how long since an ISO 8601 time, in its largest unit."""
    when = parse_time(value)
    if when is None:
        return "-"
    seconds = max(((now or datetime.now(UTC)) - when).total_seconds(), 0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return "just now"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
